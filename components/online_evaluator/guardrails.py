"""The guardrail readings of a comparison, measured from the impressions as served: plain functions, no TFX.

While a comparison is open the server logs, on every line of a request (pipelines/serve/app.py):

* `arm_latency_ms`: how long the call of the model that scored the request took (ms, as the request waited
  for it, thread-pool hand-off included);
* `challenger_fallback`: 1 when the request's draw chose the challenger but the challenger did not answer
  (it failed on the request, or it failed before, or never loaded) and the champion scored it instead (the
  line's `arm` is then "champion", its propensity 1: the champion is what served); 0 otherwise.

JoinExampleGen measures each span's joined (shown) impressions per challenger and arm (`measure`), beside
each arm's counts in the span's `arm_counts` property (arm_counts.py). The measures are **mergeable** sums,
so the controller adds each span's once (the same exactly-once counting as the counts) to the comparison's
running totals, which each `OnlineDecision` records in ML Metadata; a restarted controller continues from
the newest decision's totals and loses nothing:

* `requests`, `fallbacks`: requests (distinct `request_id`s with at least one shown impression, from a server
  that logs `challenger_fallback`), and those the challenger was drawn for but the champion answered;
* `latency_ms`: a histogram of the requests' model-call latency, in log-spaced buckets 2^(1/16) apart (4.4 %),
  sparse ({bucket index: requests}); its p99 is read as the upper edge of the bucket that holds the 99th
  percentile (nearest rank), so it is never below the true p99 and at most 4.4 % above it;
* `scored`, `score_sum`, `scored_successes`: the shown impressions with a score, their scores' sum and their
  successes (the reward field > 0), for the calibration.

`reading` turns the challenger's totals into the `GuardrailReading` that `decision.decide` judges:

* latency p99 (ms) over the challenger's answered requests, once it has `min_requests` of them;
* error rate = fallbacks / (the challenger's answered requests + fallbacks), once that is >= `min_requests`;
* calibration error = |mean predicted score / observed success rate - 1| over its shown impressions, once
  they hold `min_calibration_successes` successes (the observed rate's relative standard error is about
  1/sqrt(successes): 50 successes, 14 %).

A reading that is not judged yet is None, and recorded as such. The champion's reading is computed the same
way and recorded beside it, for reference: it is never judged.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterable, Mapping, Optional

from components.online_evaluator.decision import CHALLENGER, CHAMPION, GuardrailReading

# The impression fields the server writes for the guardrails.
LATENCY_FIELD = "arm_latency_ms"
FALLBACK_FIELD = "challenger_fallback"
REQUEST_FIELD = "request_id"
SCORE_FIELD = "score"

# The latency histogram: bucket i holds latencies in (2^((i-1)/16), 2^(i/16)] ms; a latency of at most
# 2^(MIN_BUCKET/16) ms (about 1 microsecond, or a clock that went backwards) falls in MIN_BUCKET.
BUCKETS_PER_OCTAVE = 16
MIN_BUCKET = -20 * BUCKETS_PER_OCTAVE

# Defaults of the minimum evidence before a reading is judged (the `online` section can change them).
DEFAULT_MIN_REQUESTS = 100
DEFAULT_MIN_CALIBRATION_SUCCESSES = 50


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a latency of `ms` milliseconds."""
    if not ms > 0:  # 0 or a clock that went backwards (NaN and infinities are left out before)
        return MIN_BUCKET
    return max(MIN_BUCKET, math.ceil(math.log2(ms) * BUCKETS_PER_OCTAVE - 1e-9))


def bucket_upper_ms(bucket: int) -> float:
    return 2.0 ** (bucket / BUCKETS_PER_OCTAVE)


def _whole(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {v!r}")
    return v


@dataclasses.dataclass(frozen=True)
class ArmStats:
    """One arm's mergeable measures over some spans (see the module doc)."""

    requests: int = 0
    fallbacks: int = 0  # the challenger's arm only: requests drawn for it that the champion answered
    latency_ms: Mapping[int, int] = dataclasses.field(default_factory=dict)  # bucket -> requests
    scored: int = 0
    score_sum: float = 0.0
    scored_successes: int = 0

    def __post_init__(self) -> None:
        for name in ("requests", "fallbacks", "scored", "scored_successes"):
            _whole(name, getattr(self, name))
        if self.scored_successes > self.scored:
            raise ValueError(f"scored_successes ({self.scored_successes}) cannot exceed scored ({self.scored})")
        if not math.isfinite(self.score_sum):
            raise ValueError(f"score_sum must be finite, got {self.score_sum!r}")
        for bucket, n in self.latency_ms.items():
            _whole(f"latency bucket {bucket!r}", n)

    def __add__(self, other: "ArmStats") -> "ArmStats":
        latency = dict(self.latency_ms)
        for bucket, n in other.latency_ms.items():
            latency[bucket] = latency.get(bucket, 0) + n
        return ArmStats(self.requests + other.requests, self.fallbacks + other.fallbacks, latency,
                        self.scored + other.scored, self.score_sum + other.score_sum,
                        self.scored_successes + other.scored_successes)

    @property
    def timed(self) -> int:
        """Requests with a measured latency."""
        return sum(self.latency_ms.values())

    def to_dict(self) -> Dict[str, Any]:
        return {"requests": self.requests, "fallbacks": self.fallbacks,
                "latency_ms": {str(b): n for b, n in sorted(self.latency_ms.items())}, "scored": self.scored,
                "score_sum": self.score_sum, "scored_successes": self.scored_successes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArmStats":
        return cls(int(d.get("requests", 0)), int(d.get("fallbacks", 0)),
                   {int(b): int(n) for b, n in (d.get("latency_ms") or {}).items()}, int(d.get("scored", 0)),
                   float(d.get("score_sum", 0.0)), int(d.get("scored_successes", 0)))


ArmsStats = Dict[str, ArmStats]  # arm -> its measures


def empty() -> ArmsStats:
    return {CHAMPION: ArmStats(), CHALLENGER: ArmStats()}


def merge(a: Optional[Mapping[str, ArmStats]], b: Optional[Mapping[str, ArmStats]]) -> ArmsStats:
    out = empty()
    for part in (a, b):
        for arm, stats in (part or {}).items():
            out[arm] = out.get(arm, ArmStats()) + stats
    return out


def to_dict(stats: Mapping[str, ArmStats]) -> Dict[str, Any]:
    return {arm: s.to_dict() for arm, s in sorted(stats.items())}


def from_dict(d: Optional[Mapping[str, Any]]) -> ArmsStats:
    return merge({arm: ArmStats.from_dict(s) for arm, s in (d or {}).items()}, None)


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def measure(events: Iterable[Mapping[str, Any]], reward_field: str, arm_field: str = "arm",
            challenger_field: str = "challenger_model_id") -> Dict[int, ArmsStats]:
    """{challenger_model_id: {arm: ArmStats}} over joined impressions, like arm_counts.count_arms counts them.

    A request is counted once, on the arm of its lines, whichever of its lines were shown; its latency and
    fallback flag are read from its first line (the server writes the same on all of them). Lines from a
    server that logs no `challenger_fallback` count for no request (the error rate's denominator would
    mix in requests whose failures were never logged); their scores still count for the calibration.
    """
    seen: Dict[int, set] = {}
    tally: Dict[int, Dict[str, Dict[str, Any]]] = {}
    for event in events:
        challenger_id, arm = event.get(challenger_field), event.get(arm_field)
        if challenger_id is None or arm not in (CHAMPION, CHALLENGER):
            continue
        cid = int(challenger_id)
        arms = tally.setdefault(cid, {a: {"requests": 0, "fallbacks": 0, "latency_ms": {}, "scored": 0,
                                          "score_sum": 0.0, "scored_successes": 0} for a in (CHAMPION, CHALLENGER)})
        t = arms[arm]
        score = _number(event.get(SCORE_FIELD))
        if score is not None:
            reward = event.get(reward_field)
            t["scored"] += 1
            t["score_sum"] += score
            t["scored_successes"] += int(reward is not None and reward > 0)
        fallback = event.get(FALLBACK_FIELD)
        request_id = event.get(REQUEST_FIELD)
        if fallback is None or request_id is None:
            continue
        requests = seen.setdefault(cid, set())
        if request_id in requests:
            continue
        requests.add(request_id)
        t["requests"] += 1
        if fallback:
            # The champion answered a request drawn for the challenger: the challenger's failure.
            arms[CHALLENGER]["fallbacks"] += 1
        latency = _number(event.get(LATENCY_FIELD))
        if latency is not None:
            bucket = latency_bucket(latency)
            t["latency_ms"][bucket] = t["latency_ms"].get(bucket, 0) + 1
    return {cid: {arm: ArmStats(**t) for arm, t in arms.items()} for cid, arms in tally.items()}


def latency_p99_ms(stats: ArmStats, min_requests: int = DEFAULT_MIN_REQUESTS) -> Optional[float]:
    """The p99 of the timed requests (nearest rank, the bucket's upper edge), or None below `min_requests`."""
    n = stats.timed
    if n == 0 or n < min_requests:
        return None
    rank = math.ceil(0.99 * n)  # the nearest-rank 99th percentile: the rank-th smallest latency
    passed = 0
    for bucket in sorted(stats.latency_ms):
        passed += stats.latency_ms[bucket]
        if passed >= rank:
            return bucket_upper_ms(bucket)
    raise AssertionError("unreachable: the ranks add up to n")


def error_rate(challenger: ArmStats, min_requests: int = DEFAULT_MIN_REQUESTS) -> Optional[float]:
    """Fallbacks / requests drawn for the challenger (answered + fallbacks), or None below `min_requests`."""
    drawn = challenger.requests + challenger.fallbacks
    if drawn == 0 or drawn < min_requests:
        return None
    return challenger.fallbacks / drawn


def calibration_error(stats: ArmStats, min_successes: int = DEFAULT_MIN_CALIBRATION_SUCCESSES) -> Optional[float]:
    """|mean score / success rate - 1| over the scored shown impressions; None below `min_successes` (or 0)."""
    if stats.scored_successes == 0 or stats.scored_successes < min_successes:
        return None
    return abs((stats.score_sum / stats.scored) / (stats.scored_successes / stats.scored) - 1.0)


def reading(stats: ArmStats, min_requests: int = DEFAULT_MIN_REQUESTS,
            min_calibration_successes: int = DEFAULT_MIN_CALIBRATION_SUCCESSES) -> GuardrailReading:
    """One arm's reading (the challenger's is judged; see the module doc)."""
    return GuardrailReading(latency_p99_ms(stats, min_requests), error_rate(stats, min_requests),
                            calibration_error(stats, min_calibration_successes))


def reading_dict(r: GuardrailReading) -> Dict[str, Optional[float]]:
    return dataclasses.asdict(r)
