"""Resolver strategies over spans in ML Metadata.

* `LatestSpansStrategy`, the replay window: the newest spans, minus quarantined ones (refused by
  the gate, or quarantined after failing cycles).
* `UntrainedSpansStrategy`, a resumed cycle's new spans: the spans an
  interrupted cycle published but no judged model trained on.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver

# The quarantine rule lives in a module without TFX, so retention applies the same one.
from components.warm_start_trainer.quarantine import has_key as _has_key  # noqa: F401  (re-exported)
from components.warm_start_trainer.quarantine import quarantined_after_failures, rejected_spans


class LatestSpansStrategy(resolver.ResolverStrategy):
    """Resolves the `Examples` of the newest `num_spans` spans (one artifact per span, the newest version).

    Use with an unbound channel so that it sees every earlier run::

        Resolver(strategy_class=LatestSpansStrategy, config={"num_spans": 4},
                 examples=Channel(type=Examples)).with_id("replay_resolver")

    Spans whose own candidate was refused by the gate are left out
    (`rejected_spans`). It may also see spans of the current run; the trainer
    only replays spans older than the ones it trains on. An empty result is
    normal early on.
    """

    def __init__(self, num_spans: int = 3, exclude_rejected: bool = True):
        if num_spans < 0:
            raise ValueError(f"num_spans must be >= 0, got {num_spans}")
        self._num_spans = num_spans
        self._exclude_rejected = exclude_rejected

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        result = {}
        for key, artifacts in input_dict.items():
            quarantined = rejected_spans(store, [a.id for a in artifacts]) if self._exclude_rejected else set()
            # A span cycles kept failing on would fail the cycles that replay it, too.
            quarantined |= quarantined_after_failures(store)
            newest_per_span: Dict[int, types.Artifact] = {}
            for a in artifacts:
                if a.id in quarantined:
                    continue
                kept = newest_per_span.get(a.span)
                if kept is None or (a.version, a.id) > (kept.version, kept.id):
                    newest_per_span[a.span] = a
            spans = sorted(newest_per_span)[-self._num_spans:] if self._num_spans else []
            result[key] = [newest_per_span[s] for s in spans]
        return result


class UntrainedSpansStrategy(resolver.ResolverStrategy):
    """Resolves the `Examples` that were published but that no judged model trained on as new spans.

    A cycle killed after StreamingExampleGen published its spans (their
    position is committed) but before the gate judged a model trained on
    them leaves such spans; a resumed cycle (`create_pipeline(config,
    resume=True)`) trains on exactly these, and on spans `driftline replay`
    released from quarantine; spans quarantined after failing cycles are
    left out. The rule is `pipelines.recovery.untrained_spans`::

        Resolver(strategy_class=UntrainedSpansStrategy, config={"pipeline_name": "driftline"},
                 examples=Channel(type=Examples)).with_id("untrained_spans_resolver")
    """

    def __init__(self, pipeline_name: str):
        self._pipeline_name = pipeline_name

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        from pipelines.recovery import untrained_spans

        wanted = {a.id for a in untrained_spans(store, self._pipeline_name)}
        return {key: sorted((a for a in artifacts if a.id in wanted), key=lambda a: (a.span, a.id))
                for key, artifacts in input_dict.items()}
