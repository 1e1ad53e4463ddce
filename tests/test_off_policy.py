"""The off-policy estimator (components/evaluator/off_policy.py) and the gate's rule on it (gate.off_policy_checks).

Hand-computed values on tiny logs, a simulated exploring ranker whose candidate's true CTR is known exactly,
and the edges: no exploration, propensity 1, a propensity no policy gives, an empty span, other arms.
No TFX here.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from components.config_base import ConfigError
from components.evaluator import gate as gate_lib
from components.evaluator import off_policy
from components.evaluator.config import GateConfig
from components.event_schema import ad_click_schema


def lines_of(request_id, greedy_order, shown_order, eps, labels, explored, t=1000, arm=None, **extra):
    """The server's lines for one request: `greedy_order`/`shown_order` are item names best first."""
    n = len(greedy_order)
    out = []
    for item in greedy_order:
        g, p = greedy_order.index(item), shown_order.index(item)
        line = {"impression_id": item, "event_time": t, "request_id": request_id, "model_version": 1,
                "position": p, "greedy_position": g, "explored": int(explored),
                "propensity": (1 - eps) * (p == g) + eps / n, **extra}
        if arm is not None:
            line["arm"] = arm
        out.append(line)
    return out


def select(lines, labels, k):
    return off_policy.select_requests(lines, labels, "impression_id", "event_time", k)


def scores_for(selection, preferred):
    """Target scores: the items in `preferred` (best first) high, the rest low."""
    return np.asarray([10.0 - preferred.index(line["impression_id"]) if line["impression_id"] in preferred
                       else 0.0 for line in selection.lines])


def test_hand_computed_top1():
    # eps 0.3, N 3, k 1: P(shown) = 0.7 + 0.1 = 0.8 for the greedy first, 0.1 for the others.
    lines = (lines_of("A", ["a0", "a1", "a2"], ["a0", "a1", "a2"], 0.3, {}, explored=False)
             + lines_of("B", ["b0", "b1", "b2"], ["b1", "b2", "b0"], 0.3, {}, explored=True))
    labels = {"a0": 0.0, "b1": 1.0}  # only the shown lines became examples
    sel = select(lines, labels, k=1)
    assert sel.logged.requests == 2 and sel.skipped.total == 0
    np.testing.assert_allclose(sorted(sel.logged.shown_probability), [0.1] * 4 + [0.8] * 2)
    # The candidate shows a1 in A (not shown: no evidence) and b1 in B (shown, weight 1 / 0.1 = 10, clicked).
    scores = scores_for(sel, ["a1", "b1"])
    q = np.asarray([{"a1": 0.4, "b1": 0.6}.get(line["impression_id"], 0.1) for line in sel.lines])
    est = off_policy.estimate(sel.logged, scores, bootstrap=200, predicted=q)
    assert est.estimates["ips"].estimate == pytest.approx(10 / 2)
    assert est.estimates["snips"].estimate == pytest.approx(1.0)
    # DR: A: q(a1) = 0.4; B: q(b1) + 10 * (1 - q(b1)) = 0.6 + 4 = 4.6; per slot (2 slots): 2.5.
    assert est.estimates["dr"].estimate == pytest.approx((0.4 + 4.6) / 2)
    assert est.served.estimate == pytest.approx(0.5)
    assert est.ratios["snips"].estimate == pytest.approx(2.0)
    assert (est.requests, est.explored_requests, est.shown, est.clicks, est.matched) == (2, 1, 2, 1.0, 1)
    assert est.agreement == pytest.approx(0.0)  # a1 and b1 are neither request's greedy first


def test_hand_computed_top2():
    # eps 0.3, N 3, k 2: P(shown) = 0.7 + 0.3 * 2/3 = 0.9 for the greedy top 2, 0.3 * 2/3 = 0.2 for the third.
    lines = lines_of("C", ["c0", "c1", "c2"], ["c0", "c1", "c2"], 0.3, {}, explored=False)
    sel = select(lines, {"c0": 1.0, "c1": 0.0}, k=2)
    np.testing.assert_allclose(sel.logged.shown_probability, [0.9, 0.9, 0.2])
    est = off_policy.estimate(sel.logged, scores_for(sel, ["c0", "c2"]), bootstrap=200)
    assert est.estimates["ips"].estimate == pytest.approx((1 / 0.9) / 2)  # per shown slot
    assert est.estimates["snips"].estimate == pytest.approx(1.0)
    assert est.served.estimate == pytest.approx(0.5)
    assert "dr" not in est.estimates  # no predictions given


def test_the_target_equal_to_the_logger_without_exploration_estimates_the_served_ctr():
    # The logger's own greedy policy, when every request is greedy: SNIPS is the served CTR of the greedy ones.
    lines, labels = [], {}
    for r in range(5):
        items = [f"{r}-{i}" for i in range(4)]
        lines += lines_of(f"r{r}", items, items, 0.1, {}, explored=False)
        labels.update({items[0]: float(r % 2), items[1]: 1.0})
    sel = select(lines, labels, k=2)
    greedy_scores = -sel.logged.greedy_position.astype(float)
    est = off_policy.estimate(sel.logged, greedy_scores, bootstrap=200)
    assert est.estimates["snips"].estimate == pytest.approx(est.served.estimate)
    assert est.agreement == 1.0


def simulate(seed, requests=4000, n=10, k=2, eps=0.2):
    """An exploring logger and a candidate with different noise on the true logits; returns lines, labels,
    the candidate's scores by impression id, and its exact true CTR per shown slot."""
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-(rng.normal(-1.5, 1.0, (requests, n)))))
    logit = np.log(p / (1 - p))
    logger_score = logit + rng.normal(0, 1.5, p.shape)
    target_score = logit + rng.normal(0, 0.7, p.shape)
    target_top = np.argsort(-target_score, axis=1)[:, :k]
    truth = float(np.take_along_axis(p, target_top, axis=1).sum() / (requests * k))
    lines, labels, scores = [], {}, {}
    for r in range(requests):
        greedy = list(np.argsort(-logger_score[r]))
        explored = rng.random() < eps
        order = list(rng.permutation(n)) if explored else greedy
        names = [f"{r}-{i}" for i in range(n)]
        lines += lines_of(f"r{r}", [names[i] for i in greedy], [names[i] for i in order], eps, {}, explored)
        for slot in range(k):
            i = order[slot]
            labels[names[i]] = float(rng.random() < p[r, i])
        scores.update({names[i]: float(target_score[r, i]) for i in range(n)})
    return lines, labels, scores, truth


def test_simulation_with_a_known_true_ctr():
    covered = {e: 0 for e in off_policy.ESTIMATORS[:2]}
    errors = {e: [] for e in covered}
    seeds = range(12)
    for seed in seeds:
        lines, labels, scores, truth = simulate(seed)
        sel = select(lines, labels, k=2)
        assert sel.logged.requests == 4000
        est = off_policy.estimate(sel.logged, np.asarray([scores[line["impression_id"]] for line in sel.lines]),
                                  confidence=0.95, bootstrap=300, seed=seed)
        for e in covered:
            iv = est.estimates[e]
            covered[e] += iv.lower <= truth <= iv.upper
            errors[e].append(iv.estimate - truth)
    for e in covered:
        # Bounds at 95 % one-sided each: a 90 % interval; 12 seeds, so at least 9 cover (P(fewer) < 5 %).
        assert covered[e] >= 9, (e, covered[e])
        # Unbiased within noise: the mean error within 3 standard errors of 0 (truth ~0.40, served ~0.31).
        err = np.asarray(errors[e])
        assert abs(err.mean()) < 3 * err.std(ddof=1) / math.sqrt(len(err)), (e, err)
        assert np.mean(np.abs(err)) < 0.05, (e, err)


def test_doubly_robust_with_true_probabilities_covers_the_truth():
    lines, labels, scores, truth = simulate(99)
    sel = select(lines, labels, k=2)
    s = np.asarray([scores[line["impression_id"]] for line in sel.lines])
    # A reward model that knows nothing (0.5 everywhere) still leaves DR unbiased.
    est = off_policy.estimate(sel.logged, s, bootstrap=300, predicted=np.full(len(s), 0.5))
    assert est.estimates["dr"].lower <= truth <= est.estimates["dr"].upper
    # Outside [0, 1] is no probability: no DR.
    assert "dr" not in off_policy.estimate(sel.logged, s, bootstrap=100, predicted=s).estimates


def test_no_exploration_means_no_support_and_no_estimate():
    lines = lines_of("A", ["a0", "a1", "a2"], ["a0", "a1", "a2"], 0.0, {}, explored=False)
    assert all(line["propensity"] == 1.0 for line in lines)
    sel = select(lines, {"a0": 1.0}, k=1)
    assert sel.logged.requests == 0 and sel.skipped.no_support == 1
    est = off_policy.estimate(sel.logged, np.zeros(0), bootstrap=100)
    assert est.requests == 0 and est.estimates["snips"].estimate is None and est.served.estimate is None
    assert est.ratios["snips"].lower is None and est.agreement is None


def test_propensity_one_when_every_candidate_is_shown():
    # N <= k: every candidate is shown whatever the order: P(shown) = 1, and any target's estimate is the served CTR.
    lines = (lines_of("A", ["a0", "a1"], ["a0", "a1"], 0.0, {}, explored=False)
             + lines_of("B", ["b0", "b1"], ["b1", "b0"], 0.5, {}, explored=True))
    sel = select(lines, {"a0": 1.0, "a1": 0.0, "b0": 1.0, "b1": 1.0}, k=2)
    assert sel.logged.requests == 2
    np.testing.assert_allclose(sel.logged.shown_probability, 1.0)
    est = off_policy.estimate(sel.logged, np.arange(4, dtype=float), bootstrap=100)
    assert est.estimates["ips"].estimate == est.estimates["snips"].estimate == est.served.estimate == 0.75


def test_propensities_no_policy_gives_are_left_out():
    lines = lines_of("A", ["a0", "a1", "a2"], ["a1", "a0", "a2"], 0.3, {}, explored=True)
    lines[0]["propensity"] = 0.0  # a0 moved from its greedy place with probability 0: impossible
    sel = select(lines, {"a0": 0.0, "a1": 1.0}, k=1)
    assert sel.logged.requests == 0 and sel.skipped.inconsistent == 1
    bad = lines_of("B", ["b0", "b1", "b2"], ["b0", "b1", "b2"], 0.3, {}, explored=False)
    bad[1]["propensity"] = 0.9  # another epsilon than its neighbours'
    assert select(bad, {"b0": 1.0}, k=1).skipped.inconsistent == 1
    # Every line at propensity 0 or 1 (eps = 0), yet out of the score order: no policy logs that.
    swapped = lines_of("C", ["c0", "c1"], ["c1", "c0"], 0.0, {}, explored=False)
    assert [line["propensity"] for line in swapped] == [0.0, 0.0]
    assert select(swapped, {"c1": 1.0}, k=2).skipped.inconsistent == 1


def test_what_is_left_out_and_why():
    lines = (lines_of("ch", ["x0", "x1"], ["x0", "x1"], 0.2, {}, False, arm="challenger")
             + lines_of("pr", ["y0", "y1", "y2"], ["y0", "y1", "y2"], 0.2, {}, False)[1:]  # a line dropped
             + [{"impression_id": "z0", "event_time": 1, "request_id": "pred", "model_version": 1, "position": 0}]
             + lines_of("un", ["u0", "u1", "u2"], ["u0", "u1", "u2"], 0.2, {}, False)  # u0 not in the labels
             + lines_of("ok", ["o0", "o1", "o2"], ["o0", "o1", "o2"], 0.2, {}, True, arm="champion"))
    sel = select(lines, {"x0": 1.0, "y0": 1.0, "o0": 0.0}, k=1)
    assert sel.requests_read == 5 and sel.logged.requests == 1
    assert sel.skipped.to_dict() == {"challenger_arm": 1, "no_exploration_fields": 1, "unlabelled": 1,
                                     "incomplete": 1, "inconsistent": 0, "no_support": 0, "missing_features": 0}
    # A request id reused by another request (another event time) is another request.
    again = lines_of("ok", ["p0", "p1"], ["p0", "p1"], 0.2, {}, False, t=2000)
    assert select(lines + again, {"o0": 0.0, "p0": 1.0}, k=1).logged.requests == 2


def test_empty_span():
    sel = select([], {}, k=2)
    assert sel.requests_read == 0 and sel.logged.requests == 0
    est = off_policy.estimate(sel.logged, np.zeros(0), bootstrap=100)
    assert est.to_dict()["requests"] == 0 and est.estimates["ips"].estimate is None
    with pytest.raises(ValueError, match="target_score"):
        off_policy.estimate(sel.logged, np.zeros(3))


def test_epsilon_of_inverts_the_propensity():
    for eps in (0.0, 0.05, 0.5, 1.0):
        for n in (2, 3, 10):
            assert off_policy.epsilon_of(0, 0, (1 - eps) + eps / n, n) == pytest.approx(eps)
            assert off_policy.epsilon_of(1, 0, eps / n, n) == pytest.approx(eps)
    assert off_policy.epsilon_of(0, 0, 1.0, 1) == 0.0


def test_top_k_ties_break_by_the_logged_order():
    request = np.asarray([0, 0, 0, 1, 1])
    mask = off_policy.top_k(request, np.asarray([1.0, 1.0, 0.0, 5.0, 6.0]), 1, np.asarray([1, 0, 2, 0, 1]))
    assert mask.tolist() == [False, True, False, False, True]


# -- the gate's rule -------------------------------------------------------------------------------------

def record(ratio_lower, explored=500, estimator="snips"):
    iv = {"estimate": 0.03, "lower": 0.02, "upper": 0.04}
    return {"estimates": {estimator: iv}, "served": {"estimate": 0.03, "lower": 0.028, "upper": 0.032},
            "ratios": {estimator: {"estimate": 1.0, "lower": ratio_lower, "upper": 1.3}}, "requests": 2000,
            "explored_requests": explored, "confidence": 0.95}


def test_the_gate_records_without_gating_by_default():
    checks, out = gate_lib.off_policy_checks(record(0.5), GateConfig())
    assert checks == [] and out["gated"] is False and "not gated" in out["note"]


def test_the_gate_refuses_below_the_minimum_ratio_and_passes_above():
    gate = GateConfig(off_policy_min_ratio=0.9)
    checks, out = gate_lib.off_policy_checks(record(0.85), gate)
    assert [c.passed for c in checks] == [False] and checks[0].name == "off_policy_min_ratio"
    assert out["gated"] is True and "0.850" in checks[0].message and "0.900" in checks[0].message
    checks, _ = gate_lib.off_policy_checks(record(0.95), gate)
    assert [c.passed for c in checks] == [True]


def test_too_little_exploration_or_no_estimate_does_not_block():
    gate = GateConfig(off_policy_min_ratio=0.9, off_policy_min_explored_requests=100)
    checks, out = gate_lib.off_policy_checks(record(0.1, explored=99), gate)
    assert checks == [] and out["gated"] is False and "99 explored requests (need >= 100" in out["note"]
    checks, out = gate_lib.off_policy_checks({"why": "join.max_position is unset"}, gate)
    assert checks == [] and "join.max_position is unset" in out["note"]
    checks, out = gate_lib.off_policy_checks(record(None), gate)
    assert checks == [] and "undefined" in out["note"]


METRICS = {"overall": {"auc": 0.8, "example_count": 5000, "positive_count": 1000, "calibration": 1.0,
                       "log_loss": 0.4, "mean_label": 0.2, "mean_prediction": 0.2, "auc_se": 0.005},
           "slices": {}}


def test_decide_refuses_on_the_estimate_and_the_verdict_round_trips():
    gate = GateConfig(off_policy_min_ratio=0.9, slice_feature=None)
    assert gate_lib.decide(METRICS, None, gate).blessed
    verdict = gate_lib.decide(METRICS, None, gate, off_policy=record(0.7))
    assert not verdict.blessed and verdict.failed_checks[0].name == "off_policy_min_ratio"
    assert verdict.reason.startswith("not blessed: off-policy SNIPS CTR 0.0300")
    back = gate_lib.Verdict.from_json(verdict.to_json())
    assert back.off_policy["ratios"]["snips"]["lower"] == 0.7 and back.off_policy["gated"] is True
    blessed = gate_lib.decide(METRICS, None, gate, off_policy=record(0.95))
    assert blessed.blessed and "off-policy SNIPS" in blessed.reason
    # NaN in a record is strict JSON's null.
    nan = record(0.95)
    nan["served"]["upper"] = math.nan
    assert '"upper": null' in gate_lib.decide(METRICS, None, gate, off_policy=nan).to_json()


@pytest.mark.parametrize("settings, fix", [
    ({"off_policy_estimator": "dm"}, "off_policy_estimator must be one of"),
    ({"off_policy_min_ratio": 0.0}, "off_policy_min_ratio is a share"),
    ({"off_policy_min_ratio": 0.9, "off_policy": False}, "set gate.off_policy: true"),
    ({"off_policy_min_explored_requests": 0}, "off_policy_min_explored_requests must be >= 1"),
    ({"off_policy_bootstrap": 10}, "off_policy_bootstrap"),
])
def test_config_is_validated_naming_the_fix(settings, fix):
    with pytest.raises(ConfigError, match=fix):
        GateConfig(**settings).validate(ad_click_schema())
