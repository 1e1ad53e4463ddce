"""Off-policy estimates of a candidate ranker's click-through rate from a logged, exploring ranker's impressions.

Plain, typed numpy; no TFX, no TensorFlow. `off_policy_run` reads the logs and scores the candidates;
the gate (`gate.off_policy_checks`) judges the result; `benchmarks/online_eval.py` uses the same estimator.

**The logging policy** (the server's, issue 22's contract): per request of N candidates, with probability
epsilon the order is a uniformly random permutation, otherwise the arm's score order; each line logs its
`position`, its `greedy_position` (its place in the score order) and `propensity` = (1 - eps) *
[position == greedy_position] + eps / N. The client shows the top k (`join.max_position`). So the
probability that item i was **shown** is

    P(i shown) = (1 - eps) * [greedy_position_i < k] + eps * min(k, N) / N,

with eps recovered from any line of the request (`epsilon_of`). N is the request's number of lines.

**The target policy** (the candidate): its own greedy top k over all the request's N scored candidates
(the impressions log holds every candidate, shown or not).

**The unit**: clicks per shown slot, the served CTR's unit (clicks within the attribution window per ad
shown). Item-level estimators: an item's click is assumed to depend on the item and the request, not on
the slot it is shown in or its neighbours (no position bias), which is how the closed loop's users click.
For request r with the candidate's top-k set T_r, the logger's shown set S_r, reward y_i (the joined label)
and weight w_i = 1 / P(i shown):

* IPS   = sum_r sum_{i in T_r & S_r} w_i y_i  /  sum_r min(k, N_r)            (unbiased)
* SNIPS = sum_r sum_{i in T_r & S_r} w_i y_i  /  sum_r sum_{i in T_r & S_r} w_i  (self-normalised: biased
  by O(1/n), far lower variance; the weights' expectation is the denominator of IPS)
* DR    = sum_r [sum_{i in T_r} q_i + sum_{i in T_r & S_r} w_i (y_i - q_i)]  /  sum_r min(k, N_r), with q the
  candidate's own predicted click probability as the reward model (unbiased whatever q; lower variance
  when q is good).
* served = sum_r sum_{i in S_r} y_i / sum_r |S_r|: the logging policy's own measured CTR (its exploration
  included) on the same requests.

Intervals: a percentile bootstrap over requests (the same resamples for every estimator and the served CTR,
so the ratio estimate / served is paired), bounds at one-sided `confidence` each (the gate's convention:
the lower bound is the (1 - confidence) quantile). Fixed seed: the same data give the same interval.

A request whose logging policy gave some item no chance of being shown (eps = 0 with N > k) has no
support for a candidate that would show that item, so it is left out (`Skipped.no_support`), as are
requests of the challenger arm (another logging policy), incomplete or inconsistent ones.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

ESTIMATORS = ("ips", "snips", "dr")
CHAMPION = "champion"
# The contract's fields (issue 22) on each impression line of a rank request.
REQUEST_ID, POSITION, GREEDY_POSITION, EXPLORED, PROPENSITY, ARM = (
    "request_id", "position", "greedy_position", "explored", "propensity", "arm")
MODEL_VERSION = "model_version"
# Tolerance on the logged propensities (floats written as JSON): eps recovered from two lines may differ by this.
_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class Logged:
    """The usable logged requests, one line per candidate, grouped by request (rows of a request adjacent).

    `request`: 0..R-1, the request index of each line (non-decreasing); `shown`: position < k;
    `shown_probability`: P(i shown) under the logging policy; `reward`: the joined label of a shown line
    (0 for a line not shown); `explored`: per request, whether its order was the exploration draw.
    """

    request: np.ndarray
    shown: np.ndarray
    shown_probability: np.ndarray
    reward: np.ndarray
    greedy_position: np.ndarray
    explored: np.ndarray  # per request
    k: int

    @property
    def requests(self) -> int:
        return int(len(self.explored))

    @classmethod
    def empty(cls, k: int) -> "Logged":
        z = np.zeros(0)
        return cls(z.astype(np.int64), z.astype(bool), z, z, z.astype(np.int64), z.astype(bool), k)


def epsilon_of(position: int, greedy_position: int, propensity: float, n: int) -> float:
    """The exploration rate that makes `propensity` the probability of `position` (NaN if none can).

    propensity = (1 - eps) * [position == greedy_position] + eps / n; with n = 1 every eps fits (0 then).
    """
    if n == 1:
        return 0.0
    if position != greedy_position:
        return propensity * n
    return (1.0 - propensity) * n / (n - 1)


def shown_probability(greedy_position: np.ndarray, epsilon: np.ndarray, n: np.ndarray, k: int) -> np.ndarray:
    """P(item shown in the top k) under epsilon-greedy with uniform random permutations."""
    slots = np.minimum(k, n)
    return (1.0 - epsilon) * (greedy_position < k) + epsilon * slots / n


@dataclasses.dataclass
class Skipped:
    """Requests read but not used, by reason (each request counted once, under its first reason)."""

    challenger_arm: int = 0  # served by the challenger: another logging policy
    no_exploration_fields: int = 0  # no greedy_position / propensity (a predict request, an older server)
    unlabelled: int = 0  # a shown line without a joined label: not in the eval split, or dead-lettered
    incomplete: int = 0  # positions not exactly 0..N-1 (lines dropped by the server, a reused request id)
    inconsistent: int = 0  # propensities that no single epsilon explains
    no_support: int = 0  # eps = 0 with N > k: some candidates could never be shown
    missing_features: int = 0  # a line lacks a field the candidate model takes

    def to_dict(self) -> Dict[str, int]:
        return dataclasses.asdict(self)

    @property
    def total(self) -> int:
        return sum(self.to_dict().values())


@dataclasses.dataclass
class Selection:
    """What `select_requests` kept: the logged arrays, the kept lines (for scoring), and what it left out."""

    logged: Logged
    lines: List[Mapping[str, Any]]
    skipped: Skipped
    requests_read: int


def select_requests(lines: Iterable[Mapping[str, Any]], labels: Mapping[Any, float], id_field: str,
                    event_time_field: str, k: int, position_field: str = POSITION,
                    required_features: Sequence[str] = ()) -> Selection:
    """Groups impression lines into requests and keeps those the estimate can use.

    `labels`: impression id -> joined label (the span's examples: the join's rules already applied), for
    the lines that became examples; a request is used only if each of its shown lines has one. A request
    is (request_id, event time, model_version, arm): a client may reuse its request ids. Lines without
    `arm` were served with no comparison open: by the champion.
    """
    groups: Dict[Tuple, List[Mapping[str, Any]]] = {}
    for line in lines:
        key = (line.get(REQUEST_ID), line.get(event_time_field), line.get(MODEL_VERSION), line.get(ARM, CHAMPION))
        groups.setdefault(key, []).append(line)
    skipped = Skipped()
    kept: List[List[Mapping[str, Any]]] = []
    eps_kept: List[float] = []
    for key, group in groups.items():
        reason, eps = _judge(key[3], group, labels, id_field, k, position_field, required_features)
        if reason is None:
            kept.append(sorted(group, key=lambda line: line[position_field]))
            eps_kept.append(eps)
        else:
            setattr(skipped, reason, getattr(skipped, reason) + 1)
    if not kept:
        return Selection(Logged.empty(k), [], skipped, len(groups))
    n = np.concatenate([np.full(len(g), len(g)) for g in kept])
    request = np.concatenate([np.full(len(g), r) for r, g in enumerate(kept)]).astype(np.int64)
    flat = [line for g in kept for line in g]
    position = np.asarray([line[position_field] for line in flat], dtype=np.int64)
    greedy = np.asarray([line[GREEDY_POSITION] for line in flat], dtype=np.int64)
    eps = np.asarray(eps_kept)[request]
    shown = position < k
    reward = np.asarray([float(labels[line[id_field]]) if s else 0.0 for line, s in zip(flat, shown)])
    explored = np.asarray([bool(g[0].get(EXPLORED)) for g in kept])
    logged = Logged(request=request, shown=shown, shown_probability=shown_probability(greedy, eps, n, k),
                    reward=reward, greedy_position=greedy, explored=explored, k=k)
    return Selection(logged, flat, skipped, len(groups))


def _judge(arm: Any, group: List[Mapping[str, Any]], labels: Mapping[Any, float], id_field: str, k: int,
           position_field: str, required_features: Sequence[str]) -> Tuple[Optional[str], float]:
    """(the reason to leave the request out, or None; its epsilon)."""
    if arm != CHAMPION:
        return "challenger_arm", math.nan
    n = len(group)
    try:
        positions = sorted(int(line[position_field]) for line in group)
        greedy = sorted(int(line[GREEDY_POSITION]) for line in group)
        propensities = [float(line[PROPENSITY]) for line in group]
    except (KeyError, TypeError, ValueError):
        return "no_exploration_fields", math.nan
    if positions != list(range(n)) or greedy != list(range(n)):
        return "incomplete", math.nan
    eps = [epsilon_of(int(line[position_field]), int(line[GREEDY_POSITION]), p, n)
           for line, p in zip(group, propensities)]
    if not all(-_TOLERANCE <= e <= 1 + _TOLERANCE for e in eps) or max(eps) - min(eps) > _TOLERANCE * n:
        return "inconsistent", math.nan
    epsilon = min(max(float(np.mean(eps)), 0.0), 1.0)
    if epsilon == 0.0 and any(int(line[position_field]) != int(line[GREEDY_POSITION]) for line in group):
        return "inconsistent", math.nan  # out of the score order with probability 0
    if epsilon == 0.0 and n > k:
        return "no_support", epsilon
    if any(line[id_field] not in labels for line in group if int(line[position_field]) < k):
        return "unlabelled", epsilon
    if any(line.get(f) is None for line in group for f in required_features):
        return "missing_features", epsilon
    return None, epsilon


def top_k(request: np.ndarray, score: np.ndarray, k: int, tie_break: np.ndarray) -> np.ndarray:
    """Whether each line is in its request's top k by `score` (descending; ties by `tie_break` ascending)."""
    if not len(request):
        return np.zeros(0, dtype=bool)
    order = np.lexsort((tie_break, -np.asarray(score, dtype=np.float64), request))
    r = request[order]
    starts = np.searchsorted(r, r, side="left")  # the first row of each line's request in `order`
    rank = np.arange(len(order)) - starts
    mask = np.zeros(len(order), dtype=bool)
    mask[order] = rank < k
    return mask


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate and its one-sided bounds at `confidence` (None where undefined)."""

    estimate: Optional[float]
    lower: Optional[float]
    upper: Optional[float]

    def to_dict(self) -> Dict[str, Optional[float]]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class OffPolicyEstimate:
    """The candidate's estimated CTR per shown slot (each estimator), the served CTR, and their ratios."""

    estimates: Dict[str, Interval]  # "ips", "snips", "dr" (dr absent without the candidate's predictions)
    served: Interval
    ratios: Dict[str, Interval]  # estimate / served, paired bootstrap
    requests: int
    explored_requests: int
    shown: int
    clicks: float
    # Lines in the candidate's top k that the logger showed: the evidence the estimate rests on.
    matched: int
    # The candidate's top k agreed with the logger's greedy top k (as sets) on this share of requests.
    agreement: Optional[float]
    confidence: float
    bootstrap: int

    def to_dict(self) -> Dict[str, Any]:
        return {"estimates": {k: v.to_dict() for k, v in self.estimates.items()}, "served": self.served.to_dict(),
                "ratios": {k: v.to_dict() for k, v in self.ratios.items()}, "requests": self.requests,
                "explored_requests": self.explored_requests, "shown": self.shown, "clicks": self.clicks,
                "matched": self.matched, "agreement": self.agreement, "confidence": self.confidence,
                "bootstrap": self.bootstrap}


def estimate(logged: Logged, target_score: np.ndarray, confidence: float = 0.95, bootstrap: int = 1000,
             seed: Union[int, np.random.Generator] = 0, predicted: Optional[np.ndarray] = None) -> OffPolicyEstimate:
    """IPS, SNIPS (and DR when `predicted`, the candidate's click probabilities, is given) of the policy that
    shows the top `logged.k` by `target_score`, per shown slot, with bootstrap bounds over requests."""
    k, R = logged.k, logged.requests
    target_score = np.asarray(target_score, dtype=np.float64)
    if len(target_score) != len(logged.request):
        raise ValueError(f"target_score has {len(target_score)} values for {len(logged.request)} logged lines")
    target = top_k(logged.request, target_score, k, logged.greedy_position)
    hit = target & logged.shown
    with np.errstate(divide="ignore"):
        w = np.where(hit, 1.0 / logged.shown_probability, 0.0)
    per_request = {
        "wy": _sum_by(logged.request, w * logged.reward, R),
        "w": _sum_by(logged.request, w, R),
        "slots": _sum_by(logged.request, logged.shown.astype(float), R),
        "served": _sum_by(logged.request, logged.reward * logged.shown, R),
    }
    use_dr = predicted is not None and len(predicted) == len(logged.request) and bool(
        np.all((np.asarray(predicted) >= 0) & (np.asarray(predicted) <= 1)))
    if use_dr:
        q = np.asarray(predicted, dtype=np.float64)
        per_request["dr"] = _sum_by(logged.request, np.where(target, q, 0.0) + w * (logged.reward - q), R)

    def values(totals: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            out = {"ips": totals["wy"] / totals["slots"], "snips": totals["wy"] / totals["w"],
                   "served": totals["served"] / totals["slots"]}
            if use_dr:
                out["dr"] = totals["dr"] / totals["slots"]
        return out

    point = values({name: np.asarray([v.sum()]) for name, v in per_request.items()})
    boot = values(_bootstrap_totals(per_request, R, bootstrap, seed)) if R else {}
    names = [e for e in ESTIMATORS if e in point and e != "served"]
    estimates = {e: _interval(point[e][0], boot.get(e), confidence) for e in names}
    served = _interval(point["served"][0], boot.get("served"), confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = {e: _interval(point[e][0] / point["served"][0],
                               boot[e] / boot["served"] if boot else None, confidence) for e in names}
    greedy_top = logged.greedy_position < k
    agree = _sum_by(logged.request, (target != greedy_top).astype(float), R) == 0
    return OffPolicyEstimate(estimates=estimates, served=served, ratios=ratios, requests=R,
                             explored_requests=int(logged.explored.sum()), shown=int(logged.shown.sum()),
                             clicks=float(per_request["served"].sum()), matched=int(hit.sum()),
                             agreement=float(agree.mean()) if R else None, confidence=confidence,
                             bootstrap=bootstrap)


def _sum_by(request: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(request, weights=values, minlength=n).astype(np.float64)


def _bootstrap_totals(per_request: Mapping[str, np.ndarray], n: int, resamples: int,
                      seed: Union[int, np.random.Generator]) -> Dict[str, np.ndarray]:
    """Totals of each per-request array over `resamples` resamples of the n requests with replacement."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = {name: np.empty(resamples) for name in per_request}
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))  # bounded memory: chunk x n indices at a time
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, (min(chunk, resamples - start), n))
        for name, v in per_request.items():
            out[name][start:start + len(idx)] = v[idx].sum(axis=1)
    return out


def _interval(point: float, boot: Optional[np.ndarray], confidence: float) -> Interval:
    point = float(point) if np.isfinite(point) else None
    if boot is None or point is None:
        return Interval(point, None, None)
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return Interval(point, None, None)
    lower, upper = np.quantile(boot, [1.0 - confidence, confidence])
    return Interval(point, float(lower), float(upper))
