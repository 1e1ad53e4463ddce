"""Paired tests for the gate: candidate and baseline scored on the same examples.

Plain numpy/scipy, no TFMA: `gate_metrics` calls these on the rows of each
slice, `gate.decide` turns the estimates and standard errors into one-sided
bounds and p-values, and `benchmarks/gate_power.py` calls both directly.

- AUC: DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two
  or more correlated receiver operating characteristic curves: a
  nonparametric approach". The variance of each AUC and their covariance come
  from the structural components (placement values) of every positive and
  negative; here computed with midranks as Sun & Xu (2014), "Fast
  implementation of DeLong's algorithm for comparing the areas under
  correlated receiver operating characteristic curves", O(n log n) instead of
  O(n_pos x n_neg). Ties count one half, as in the Mann-Whitney AUC.
- Log loss: a paired test on the per-example differences
  log loss(candidate) - log loss(baseline): their mean is the difference of
  the two models' log losses, its standard error is their standard deviation
  over sqrt(n) (the paired t-test; at gate sizes t and normal agree).

Why paired: on the same examples the two models' errors are strongly
correlated (a warm-started candidate is its baseline plus one span of
training), so the difference is known far more precisely than either
model's metric alone.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import numpy as np
from scipy import stats

# Predictions are clipped as Keras and gate_metrics clip them for the log loss.
LOG_LOSS_EPSILON = 1e-7


@dataclasses.dataclass(frozen=True)
class PairedEstimate:
    """An estimated difference (candidate - baseline) and its standard error."""

    diff: float
    se: float
    # Degrees of freedom for a t reference distribution; None: normal (DeLong's z).
    dof: Optional[float] = None


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties sharing the mean of their ranks (Sun & Xu's Algorithm 1, vectorised)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    n = len(x)
    # Start and end (exclusive) of each run of equal values in sorted order.
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [n]))
    run_ranks = 0.5 * (starts + ends - 1) + 1.0  # mean of the 1-based ranks start+1 .. end
    ranks_sorted = np.repeat(run_ranks, ends - starts)
    out = np.empty(n, dtype=np.float64)
    out[order] = ranks_sorted
    return out


def delong_components(labels: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(aucs [k], V10 [k, m], V01 [k, n]) for `scores` [k, rows] of k models on 0/1 `labels` [rows].

    V10[r, i]: the share of negatives that positive i outranks under model r
    (ties half); V01[r, j]: the share of positives that outrank negative j.
    Their means are the AUCs.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positive = labels == 1.0
    m, n = int(positive.sum()), int((~positive).sum())
    k = scores.shape[0]
    if m == 0 or n == 0:
        nan = np.full(k, np.nan)
        return nan, np.full((k, m), np.nan), np.full((k, n), np.nan)
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    for r in range(k):
        x, y = scores[r, positive], scores[r, ~positive]
        tx, ty, tz = midranks(x), midranks(y), midranks(np.concatenate((x, y)))
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    aucs = v10.mean(axis=1)
    return aucs, v10, v01


def delong_covariance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """DeLong's covariance matrix [k, k] of the k AUCs: S10 / m + S01 / n."""
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        return np.full((v10.shape[0], v10.shape[0]), np.nan)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return s10 / m + s01 / n


def auc_with_se(labels: np.ndarray, scores: np.ndarray) -> PairedEstimate:
    """One model's AUC and its DeLong standard error (NaN when a class has fewer than 2 examples)."""
    aucs, v10, v01 = delong_components(labels, np.asarray(scores)[None, :])
    cov = delong_covariance(v10, v01)
    return PairedEstimate(diff=float(aucs[0]), se=_sqrt(cov[0, 0]))


def auc_difference(labels: np.ndarray, candidate: np.ndarray, baseline: np.ndarray) -> PairedEstimate:
    """AUC(candidate) - AUC(baseline) on the same rows and DeLong's standard error of it."""
    aucs, v10, v01 = delong_components(labels, np.stack([np.asarray(candidate, dtype=np.float64).reshape(-1),
                                                         np.asarray(baseline, dtype=np.float64).reshape(-1)]))
    cov = delong_covariance(v10, v01)
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    return PairedEstimate(diff=float(aucs[0] - aucs[1]), se=_sqrt(var))


def log_losses(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Per-example log loss, predictions clipped to [1e-7, 1 - 1e-7]."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(predictions, dtype=np.float64).reshape(-1), LOG_LOSS_EPSILON, 1.0 - LOG_LOSS_EPSILON)
    return -(labels * np.log(p) + (1.0 - labels) * np.log1p(-p))


def log_loss_difference(labels: np.ndarray, candidate: np.ndarray, baseline: np.ndarray) -> PairedEstimate:
    """Mean log loss(candidate) - mean log loss(baseline) on the same rows, paired standard error."""
    d = log_losses(labels, candidate) - log_losses(labels, baseline)
    return log_loss_difference_from_sums(len(d), float(d.sum()), float((d * d).sum()))


def log_loss_difference_from_sums(count: float, total: float, total_sq: float) -> PairedEstimate:
    """The paired estimate from n, sum(d) and sum(d^2): what a Beam combiner can add up without the rows."""
    if count < 2:
        return PairedEstimate(diff=total / count if count else math.nan, se=math.nan, dof=None)
    mean = total / count
    var = max(total_sq - count * mean * mean, 0.0) / (count - 1)
    return PairedEstimate(diff=mean, se=math.sqrt(var / count), dof=count - 1)


# -- bounds and p-values ------------------------------------------------------------


def quantile(confidence: float, dof: Optional[float] = None) -> float:
    """The one-sided critical value at `confidence` (normal, or t with `dof` degrees of freedom)."""
    return float(stats.t.ppf(confidence, dof)) if dof else float(stats.norm.ppf(confidence))


def bounds(estimate: PairedEstimate, confidence: float) -> Tuple[float, float]:
    """(lower, upper): each a one-sided bound at `confidence`; together the two-sided (2c - 1) interval."""
    if not (_finite(estimate.diff) and _finite(estimate.se)):
        return math.nan, math.nan
    half = quantile(confidence, estimate.dof) * estimate.se
    return estimate.diff - half, estimate.diff + half


def p_value_below(estimate: PairedEstimate, margin: float = 0.0) -> float:
    """One-sided p-value of H0: diff >= -margin against H1: diff < -margin (the difference is below -margin)."""
    return _p(estimate, -(estimate.diff + margin))


def p_value_above(estimate: PairedEstimate, margin: float = 0.0) -> float:
    """One-sided p-value of H0: diff <= margin against H1: diff > margin."""
    return _p(estimate, estimate.diff - margin)


def _p(estimate: PairedEstimate, distance: float) -> float:
    if not (_finite(distance) and _finite(estimate.se)):
        return math.nan
    if estimate.se == 0.0:
        return 0.0 if distance > 0 else 1.0
    statistic = distance / estimate.se
    return float(stats.t.sf(statistic, estimate.dof)) if estimate.dof else float(stats.norm.sf(statistic))


def _sqrt(var: float) -> float:
    return math.sqrt(max(float(var), 0.0)) if _finite(var) else math.nan


def _finite(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)
