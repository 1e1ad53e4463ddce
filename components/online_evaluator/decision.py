"""The decision core of online evaluation: plain, typed functions, no TFX and no ML Metadata.

A comparison has two arms, the serving **champion** and a **challenger**. The reward is a success per
impression (by default a click: clicks per impression), so each arm's rate has a Beta posterior:
Beta(prior_alpha + successes, prior_beta + trials - successes).

* `prob_better` is P(challenger's rate > champion's rate) under the two posteriors, computed
  **exactly** when either posterior's alpha is a whole number (always, with the default Beta(1, 1)
  prior and counted clicks), by the closed-form sum over that alpha (Evan Miller's formula, in log
  space); otherwise by Monte Carlo with a fixed seed and 200,000 draws (standard error <= 0.0012).
* `choose_arm` is Thompson sampling: one draw from each posterior, the larger wins. The chosen arm's
  propensity is the probability that its draw wins, i.e. `prob_better` (or 1 minus it): exact, so an
  off-policy estimate can weight by it.
* `decide` applies the rule: retire on a broken guardrail (latency p99, error rate, calibration: the
  challenger's readings, measured from its served impressions by guardrails.py) at any time; with at least
  `min_impressions` impressions in the comparison (both arms), promote when P(better) >= threshold and the
  challenger itself served at least `min_challenger_impressions`, retire when P(worse) >= threshold;
  otherwise continue.
* `Comparison.replace_challenger` restarts the comparison with a newer candidate: both arms' counts
  start again from zero, so the two arms are always measured over the same stretch of traffic (the
  population drifts; a champion's older clicks are not comparable with a new challenger's).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import numpy as np
from scipy import special

CHAMPION = "champion"
CHALLENGER = "challenger"

# Actions and the rules that fire them (recorded in ML Metadata as they are spelled here).
PROMOTE, RETIRE, CONTINUE, START, REPLACE = "promote", "retire", "continue", "start", "replace"
ACTIONS = (PROMOTE, RETIRE, CONTINUE, START, REPLACE)
RULE_P_BETTER = "p_better"  # P(challenger better) >= threshold with enough impressions
RULE_P_WORSE = "p_worse"  # P(challenger worse) >= threshold with enough impressions
RULE_LATENCY = "guardrail_latency_p99"
RULE_ERROR_RATE = "guardrail_error_rate"
RULE_CALIBRATION = "guardrail_calibration"
RULE_MIN_IMPRESSIONS = "min_impressions"  # continue: too few impressions to decide on the posteriors
RULE_MIN_CHALLENGER_IMPRESSIONS = "min_challenger_impressions"  # continue: the challenger itself served too few
RULE_UNDECIDED = "undecided"  # continue: enough impressions, neither probability past the threshold
RULE_MANUAL = "manual"  # `driftline promote` / `driftline retire`
RULE_NEWER_CANDIDATE = "newer_candidate"  # a newer candidate replaced the challenger
RULE_NEW_COMPARISON = "new_comparison"

MONTE_CARLO_DRAWS = 200_000
MONTE_CARLO_SEED = 20261205


def _whole(x: float) -> bool:
    return float(x).is_integer()


@dataclasses.dataclass(frozen=True)
class Counts:
    """Successes (clicks, by default) out of trials (impressions) for one arm."""

    successes: int = 0
    trials: int = 0

    def __post_init__(self) -> None:
        for name in ("successes", "trials"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {v!r}")
        if self.successes > self.trials:
            raise ValueError(f"successes ({self.successes}) cannot exceed trials ({self.trials}): count each "
                             "impression's reward once (e.g. clicked = 1 if any click was attributed to it)")

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.successes + other.successes, self.trials + other.trials)

    @property
    def rate(self) -> Optional[float]:
        return self.successes / self.trials if self.trials else None


@dataclasses.dataclass(frozen=True)
class Prior:
    """The Beta prior of each arm's rate; Beta(1, 1) (uniform) by default."""

    alpha: float = 1.0
    beta: float = 1.0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"the prior's {name} must be a finite number > 0, got {v!r}")


@dataclasses.dataclass(frozen=True)
class BetaPosterior:
    alpha: float
    beta: float

    @classmethod
    def from_counts(cls, counts: Counts, prior: Prior = Prior()) -> "BetaPosterior":
        return cls(prior.alpha + counts.successes, prior.beta + counts.trials - counts.successes)

    def update(self, counts: Counts) -> "BetaPosterior":
        return BetaPosterior(self.alpha + counts.successes, self.beta + counts.trials - counts.successes)

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)


def _p_second_greater_exact(a: BetaPosterior, b: BetaPosterior) -> float:
    """P(X_b > X_a) for X_a ~ a, X_b ~ b, with b.alpha a whole number: a sum of b.alpha terms."""
    i = np.arange(int(b.alpha), dtype=np.float64)
    log_terms = (special.betaln(a.alpha + i, a.beta + b.beta) - np.log(b.beta + i)
                 - special.betaln(1.0 + i, b.beta) - special.betaln(a.alpha, a.beta))
    top = log_terms.max()
    return float(math.exp(top) * np.exp(log_terms - top).sum())


def prob_better(champion: BetaPosterior, challenger: BetaPosterior) -> float:
    """P(challenger's rate > champion's rate), exact when either alpha is whole (see the module doc)."""
    whole = [p for p in (champion, challenger) if _whole(p.alpha)]
    if whole:
        # Sum over the smaller whole alpha (fewer terms); P(A > B) = 1 - P(B > A) (ties have probability 0).
        if _whole(challenger.alpha) and (not _whole(champion.alpha) or challenger.alpha <= champion.alpha):
            p = _p_second_greater_exact(champion, challenger)
        else:
            p = 1.0 - _p_second_greater_exact(challenger, champion)
    else:
        rng = np.random.default_rng(MONTE_CARLO_SEED)
        p = float((rng.beta(challenger.alpha, challenger.beta, MONTE_CARLO_DRAWS)
                   > rng.beta(champion.alpha, champion.beta, MONTE_CARLO_DRAWS)).mean())
    return min(1.0, max(0.0, p))


def choose_arm(champion: BetaPosterior, challenger: BetaPosterior,
               rng: np.random.Generator, p_better: Optional[float] = None) -> Tuple[str, float]:
    """Thompson sampling: (the arm whose posterior draw is larger, the probability it is chosen).

    `p_better`: `prob_better(champion, challenger)` when the caller already has it (`driftline serve`
    computes it once per change of the posteriors, not per request: the Monte Carlo case costs milliseconds).
    """
    p = prob_better(champion, challenger) if p_better is None else p_better
    if rng.beta(challenger.alpha, challenger.beta) > rng.beta(champion.alpha, champion.beta):
        return CHALLENGER, p
    return CHAMPION, 1.0 - p


def _optional_limit(name: str, v: Optional[float]) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
        raise ValueError(f"guardrail {name} must be a number >= 0 (or None: not checked), got {v!r}")


@dataclasses.dataclass(frozen=True)
class Guardrails:
    """Limits on the challenger; None: not checked. A breach retires it whatever the posteriors say."""

    max_latency_p99_ms: Optional[float] = None
    # requests drawn for the challenger that it did not answer (the champion did) / requests drawn for it
    max_error_rate: Optional[float] = None
    # |mean predicted click probability / observed click rate - 1| over the challenger's shown impressions
    max_calibration_error: Optional[float] = None
    # The evidence a reading needs before it is judged (guardrails.py): requests for the latency p99 and the
    # error rate, successes for the calibration.
    min_requests: int = 100
    min_calibration_successes: int = 50

    def __post_init__(self) -> None:
        for name in ("max_latency_p99_ms", "max_error_rate", "max_calibration_error"):
            _optional_limit(name, getattr(self, name))
        for name in ("min_requests", "min_calibration_successes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                setting = "guardrail_min_requests" if name == "min_requests" else name
                raise ValueError(f"guardrail {name} (online.{setting}) must be a whole number >= 1, got {v!r}")


@dataclasses.dataclass(frozen=True)
class GuardrailReading:
    """What was measured of the challenger since the comparison (re)started (guardrails.py); None (or NaN):
    not measured, or too little evidence yet, so not judged."""

    latency_p99_ms: Optional[float] = None
    error_rate: Optional[float] = None
    calibration_error: Optional[float] = None


def calibration_error(mean_score: float, counts: Counts) -> Optional[float]:
    """|mean predicted probability / observed rate - 1|; None without a click to compare with."""
    if not counts.trials or not counts.successes:
        return None
    return abs(mean_score / counts.rate - 1.0)


@dataclasses.dataclass(frozen=True)
class DecisionRule:
    threshold: float = 0.95
    min_impressions: int = 1000  # in the comparison, both arms together
    prior: Prior = Prior()
    guardrails: Guardrails = Guardrails()
    # A promotion also needs this many impressions served by the challenger itself. Without it, a challenger
    # that never answers (every draw for it falls back to the champion, logged as the champion's) gathers no
    # evidence, and its prior alone reads P(better) ~ 1 - the champion's rate: >= 0.95 for any CTR under 5 %.
    min_challenger_impressions: int = 100

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.5 < t < 1.0:
            raise ValueError(f"the decision threshold must be a probability in (0.5, 1), got {t!r} "
                             "(0.95: promote when P(challenger better) >= 0.95)")
        for name in ("min_impressions", "min_challenger_impressions"):
            m = getattr(self, name)
            if isinstance(m, bool) or not isinstance(m, int) or m < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {m!r}")


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str  # PROMOTE, RETIRE or CONTINUE (START, REPLACE when recording a comparison's start)
    rule: str  # the RULE_* that fired
    reason: str  # the same, in words, with the numbers
    p_better: float  # P(challenger better)
    champion: BetaPosterior
    challenger: BetaPosterior
    impressions: int  # both arms

    @property
    def p_worse(self) -> float:
        return 1.0 - self.p_better


def _breach(value: Optional[float], limit: Optional[float]) -> bool:
    return limit is not None and value is not None and math.isfinite(value) and value > limit


def decide(champion: Counts, challenger: Counts, rule: DecisionRule = DecisionRule(),
           reading: Optional[GuardrailReading] = None) -> Decision:
    """Promote, retire or continue, and which rule fired (see the module doc)."""
    post_champion = BetaPosterior.from_counts(champion, rule.prior)
    post_challenger = BetaPosterior.from_counts(challenger, rule.prior)
    p = prob_better(post_champion, post_challenger)
    n = champion.trials + challenger.trials

    def made(action: str, fired: str, reason: str) -> Decision:
        return Decision(action, fired, reason, p, post_champion, post_challenger, n)

    g, r = rule.guardrails, reading or GuardrailReading()
    for value, limit, fired, what, unit in (
            (r.latency_p99_ms, g.max_latency_p99_ms, RULE_LATENCY, "latency p99", " ms"),
            (r.error_rate, g.max_error_rate, RULE_ERROR_RATE, "error rate", ""),
            (r.calibration_error, g.max_calibration_error, RULE_CALIBRATION, "calibration error", "")):
        if _breach(value, limit):
            return made(RETIRE, fired, f"guardrail broken: the challenger's {what} {value:.4g}{unit} > {limit:.4g}{unit}")
    if n < rule.min_impressions:
        return made(CONTINUE, RULE_MIN_IMPRESSIONS,
                    f"{n} impressions < the minimum {rule.min_impressions}; P(better) = {p:.4f}")
    if p >= rule.threshold and challenger.trials < rule.min_challenger_impressions:
        return made(CONTINUE, RULE_MIN_CHALLENGER_IMPRESSIONS,
                    f"P(challenger better) = {p:.4f} >= {rule.threshold}, but the challenger served "
                    f"{challenger.trials} impressions < the minimum {rule.min_challenger_impressions}")
    if p >= rule.threshold:
        return made(PROMOTE, RULE_P_BETTER, f"P(challenger better) = {p:.4f} >= {rule.threshold} after {n} impressions")
    if 1.0 - p >= rule.threshold:
        return made(RETIRE, RULE_P_WORSE, f"P(challenger worse) = {1.0 - p:.4f} >= {rule.threshold} after {n} impressions")
    return made(CONTINUE, RULE_UNDECIDED, f"P(challenger better) = {p:.4f}, neither it nor P(worse) >= "
                f"{rule.threshold} after {n} impressions")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A running comparison: which models, and the evidence gathered since it (re)started."""

    champion_model_id: int
    challenger_model_id: int
    champion: Counts = Counts()
    challenger: Counts = Counts()

    def __post_init__(self) -> None:
        if self.champion_model_id == self.challenger_model_id:
            raise ValueError(f"model {self.champion_model_id} cannot be both champion and challenger")

    def update(self, champion: Counts, challenger: Counts) -> "Comparison":
        """The comparison with one cycle's new counts (from its joined outcomes) added."""
        return dataclasses.replace(self, champion=self.champion + champion, challenger=self.challenger + challenger)

    def replace_challenger(self, model_id: int) -> "Comparison":
        """A newer candidate takes the challenger's place; the evidence starts again (see the module doc)."""
        if model_id == self.challenger_model_id:
            raise ValueError(f"model {model_id} is already the challenger")
        return Comparison(self.champion_model_id, model_id)
