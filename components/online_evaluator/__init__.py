"""Online evaluation of a challenger beside the serving champion, by Thompson sampling.

`decision` holds the decision core as plain typed functions (Beta posteriors, P(challenger better),
the Thompson-sampling arm choice with its propensity, the promote / retire / continue rule and the
replacement of a challenger); `record` writes each decision to ML Metadata as a
`driftline.OnlineDecision` execution and rebuilds a running comparison from those executions.
"""
