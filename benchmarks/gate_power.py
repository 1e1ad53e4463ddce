"""The gate's error rates by simulation: how often it refuses candidates whose true AUC is known.

Each trial draws an eval split of n examples with labels at a base rate and two
correlated score vectors from a binormal model (negatives' latent scores
N(0, 1), positives' N(d, 1), so the population AUC is Phi(d / sqrt 2)); the
candidate's and the baseline's noise have correlation rho, as a warm-started
candidate shares most of its errors with the model it continues. Scores are
turned into calibrated probabilities (the exact posterior of the binormal
model: logit p = logit(base rate) + d s - d^2 / 2), so log loss and
calibration follow the AUC. The gate's own functions then judge the pair:
`paired` computes the statistics `gate_metrics` computes in TFMA, and
`gate.decide` decides, with no TFX. A refusal for any reason counts (too
little evidence included).

Scenarios, against a baseline of true AUC 0.75: a candidate truly better
(+0.01), truly equal (the test's boundary: refused at about 1 - confidence by
construction), and truly worse by 0.02. Targets (issue #25): the better one
refused in <= 5 % of cycles, the worse one in >= 95 %.

Usage: python benchmarks/gate_power.py [--trials 1000] [--sizes 500 2000 10000]
Writes benchmarks/results/gate_power.json, gate_power.png and the RESULTS.md section.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_md  # noqa: E402
from components.evaluator import gate as gate_lib  # noqa: E402
from components.evaluator import paired  # noqa: E402
from pipelines.config import GateConfig  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_JSON = os.path.join(HERE, "results", "gate_power.json")
RESULTS_PNG = os.path.join(HERE, "results", "gate_power.png")
RESULTS_MD = os.path.join(HERE, "RESULTS.md")

BASELINE_AUC = 0.75
SCENARIOS = {"better by 0.01": 0.01, "equal": 0.0, "worse by 0.02": -0.02}
# The defaults, and a stricter evidence rule: an interval no wider than 0.02 means a 0.02 drop would have
# been detected with >= 95 % power (0.02 >= 2 x 1.645 se), so thinner evidence is refused as such.
CONFIGS = {
    "default": GateConfig(slice_feature=None),
    "max_auc_interval_width=0.02": GateConfig(slice_feature=None, max_auc_interval_width=0.02),
}


def separation(auc: float) -> float:
    """d such that the binormal AUC Phi(d / sqrt 2) is `auc`."""
    return math.sqrt(2.0) * float(stats.norm.ppf(auc))


def draw(rng: np.random.Generator, n: int, base_rate: float, d_candidate: float, d_baseline: float,
         rho: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, candidate probabilities, baseline probabilities) for one eval split."""
    labels = (rng.random(n) < base_rate).astype(np.float64)
    e_b = rng.standard_normal(n)
    e_c = rho * e_b + math.sqrt(1.0 - rho * rho) * rng.standard_normal(n)
    prior = math.log(base_rate / (1.0 - base_rate))

    def probability(d, e):
        s = d * labels + e
        return 1.0 / (1.0 + np.exp(-(prior + d * s - d * d / 2.0)))
    return labels, probability(d_candidate, e_c), probability(d_baseline, e_b)


def sliced_metrics(labels: np.ndarray, candidate: np.ndarray, baseline: np.ndarray) -> Tuple[dict, dict]:
    """The gate's inputs, as tfma_run reads them from GateMetrics (exact AUCs here, no histogram)."""
    def one(p):
        auc = paired.auc_with_se(labels, p)
        mean_label, mean_prediction = float(labels.mean()), float(p.mean())
        return {"auc": auc.diff, "auc_se": auc.se, "example_count": float(len(labels)),
                "positive_count": float(labels.sum()), "mean_label": mean_label, "mean_prediction": mean_prediction,
                "calibration": mean_prediction / mean_label if mean_label else float("nan"),
                "log_loss": float(paired.log_losses(labels, p).mean())}
    cand, base = one(candidate), one(baseline)
    auc = paired.auc_difference(labels, candidate, baseline)
    log_loss = paired.log_loss_difference(labels, candidate, baseline)
    cand.update(auc_diff=auc.diff, auc_diff_se=auc.se, log_loss_diff=log_loss.diff, log_loss_diff_se=log_loss.se)
    return {"overall": cand, "slices": {}}, {"overall": base, "slices": {}}


def category(verdict: gate_lib.Verdict) -> str:
    if verdict.blessed:
        return "blessed"
    names = {c.name for c in verdict.failed_checks}
    if verdict.reason.startswith("not blessed: too little evidence"):
        return "evidence"
    if "max_auc_drop" in names:
        return "auc test"
    if "max_log_loss_increase" in names:
        return "log loss test"
    return "other"


def run_cell(rng: np.random.Generator, trials: int, n: int, base_rate: float, delta: float, rho: float) -> Dict:
    d_b, d_c = separation(BASELINE_AUC), separation(BASELINE_AUC + delta)
    counts = {name: {"blessed": 0, "evidence": 0, "auc test": 0, "log loss test": 0, "other": 0}
              for name in CONFIGS}
    observed = []
    for _ in range(trials):
        cand, base = sliced_metrics(*draw(rng, n, base_rate, d_c, d_b, rho))
        observed.append(cand["overall"]["auc_diff"])
        for name, gate in CONFIGS.items():
            counts[name][category(gate_lib.decide(cand, base, gate))] += 1
    out = {"n": n, "base_rate": base_rate, "rho": rho, "true_auc_diff": delta, "trials": trials,
           "mean_observed_auc_diff": float(np.mean(observed)), "sd_observed_auc_diff": float(np.std(observed)),
           "configs": {}}
    for name, c in counts.items():
        refused = trials - c["blessed"]
        out["configs"][name] = {"refusal_rate": refused / trials, "refusal_rate_se": math.sqrt(
            max(refused * (trials - refused), 1) / trials ** 3), "by_reason": {k: v / trials for k, v in c.items()}}
    return out


def simulate(trials: int, sizes: List[int], base_rates: List[float], rhos: List[float], seed: int) -> List[Dict]:
    rng = np.random.default_rng(seed)
    cells = []
    for base_rate in base_rates:
        for rho in rhos:
            for n in sizes:
                for label, delta in SCENARIOS.items():
                    t0 = time.time()
                    cell = run_cell(rng, trials, n, base_rate, delta, rho)
                    cell["scenario"] = label
                    cells.append(cell)
                    rates = ", ".join(f"{k}: {v['refusal_rate']:.1%}" for k, v in cell["configs"].items())
                    print(f"base rate {base_rate:.2f} rho {rho:.2f} n {n:>6} {label:>15}: refused {rates} "
                          f"({time.time() - t0:.1f} s)", flush=True)
    return cells


def plot(cells: List[Dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(c["base_rate"], c["rho"]) for c in cells})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.2), squeeze=False, sharey=True)
    colors = {"better by 0.01": "tab:green", "equal": "tab:gray", "worse by 0.02": "tab:red"}
    styles = {name: style for name, style in zip(CONFIGS, ("-", "--"))}
    for ax, (base_rate, rho) in zip(axes[0], groups):
        for scenario in SCENARIOS:
            for name in CONFIGS:
                pts = sorted((c["n"], c["configs"][name]["refusal_rate"]) for c in cells
                             if c["base_rate"] == base_rate and c["rho"] == rho and c["scenario"] == scenario)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[name], marker="o", color=colors[scenario],
                        label=f"{scenario}, {name}")
        ax.axhline(0.05, color="k", lw=0.6, ls=":")
        ax.axhline(0.95, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("eval examples")
        ax.set_title(f"base rate {base_rate:.2f}, candidate/baseline noise corr {rho:.1f}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of cycles refused")
    axes[0][-1].legend(fontsize=7, loc="center right")
    fig.suptitle(f"Gate refusals by simulation (baseline AUC {BASELINE_AUC}); targets: better <= 5 %, "
                 f"worse by 0.02 >= 95 %", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(result: Dict) -> str:
    start, end = results_md.marks("gate_power")
    cells = result["cells"]
    lines = [start, "## The gate's error rates, by simulation", "",
             "Candidates whose true AUC is known (binormal scores, calibrated probabilities; the candidate's and "
             "the baseline's noise correlated), judged by the gate's own functions (`paired`, `gate.decide`) "
             f"{result['trials']} times per cell. Baseline AUC {BASELINE_AUC}. A refusal for any reason counts, "
             "too little evidence included.", "",
             f"* Date: {result['date']}",
             f"* Command: `{result['command']}`",
             f"* Gate: the defaults (one-sided 95 %, max_auc_drop 0, max_log_loss_increase 0, "
             f"max_auc_interval_width 0.1), no slices; and the same with max_auc_interval_width 0.02", "",
             "| base rate | corr | eval n | candidate | refused (default) | of which: evidence / AUC test / log-loss test / other "
             "| refused (width 0.02) | mean observed AUC diff (sd) |",
             "|---:|---:|---:|---|---:|---|---:|---|"]
    for c in cells:
        d, s = c["configs"]["default"], c["configs"]["max_auc_interval_width=0.02"]
        r = d["by_reason"]
        lines.append(f"| {c['base_rate']:.2f} | {c['rho']:.1f} | {c['n']:,} | {c['scenario']} | "
                     f"**{d['refusal_rate']:.1%}** | {r['evidence']:.1%} / {r['auc test']:.1%} / "
                     f"{r['log loss test']:.1%} / {r['other']:.1%} | {s['refusal_rate']:.1%} | "
                     f"{c['mean_observed_auc_diff']:+.4f} ({c['sd_observed_auc_diff']:.4f}) |")
    lines += ["", "![gate power](results/gate_power.png)", "", "What it says:", ""]
    lines += result["findings"]
    lines += [
        "* Why 0.02 is out of reach at 500-2,000 examples with the defaults: the test refuses when the "
        "one-sided upper bound diff + 1.645 se is below 0, so it refuses a candidate 0.02 worse in 95 % of "
        "cycles only when se <= 0.02 / 3.29 = 0.006. The table's sd of the observed difference is that se: "
        "at 500 examples it is several times larger. No test can have that power there; the default gate "
        "then blesses (a drop it cannot see is not evidence against the candidate).",
        "* The evidence rule is the lever: `max_auc_interval_width: 0.02` (an interval that narrow means a 0.02 "
        "drop would have been seen with 95 % power) refuses the worse candidate everywhere, but at the price of "
        "refusing most better ones where the split is thin, as too little evidence: the same power limit, "
        "paid the other way. Thin spans are for the evidence carry-over (#25) to fix, not the test.",
        "* A truly equal candidate is refused in about 5-8 % of cycles: each of the two tests (AUC, log loss) "
        "errs at 5 % on the boundary. A truly better one (+0.01) is refused in at most 2.3 % of cycles from "
        "2,000 examples up, and at 500 examples at a 55 % rate; at 500 examples and a 10 % rate (50 positives) "
        "it is refused more: for too little evidence (the interval of weakly correlated models is wider than "
        "0.1) and, under 'other', by the absolute calibration bounds, which 50 positives make noisy.",
    ]
    lines += ["", end]
    return "\n".join(lines) + "\n"


def findings(cells: List[Dict]) -> List[str]:
    out = []
    for name in CONFIGS:
        better = [c for c in cells if c["scenario"] == "better by 0.01"]
        worse = [c for c in cells if c["scenario"] == "worse by 0.02"]
        worst_better = max(better, key=lambda c: c["configs"][name]["refusal_rate"])
        ok_worse = sorted({c["n"] for c in worse if all(
            w["configs"][name]["refusal_rate"] >= 0.95 for w in worse if w["n"] == c["n"])})
        fail_worse = [c for c in worse if c["configs"][name]["refusal_rate"] < 0.95]
        out.append(f"* **{name}**: a truly better candidate is refused in at most "
                   f"{worst_better['configs'][name]['refusal_rate']:.1%} of cycles (worst cell: n "
                   f"{worst_better['n']:,}, base rate {worst_better['base_rate']:.2f}, corr {worst_better['rho']:.1f}); "
                   + (f"one worse by 0.02 is refused in >= 95 % of cycles in every cell at n = "
                      f"{', '.join(f'{n:,}' for n in ok_worse)}" if ok_worse
                      else "at no eval size is one worse by 0.02 refused in >= 95 % of cycles in every cell")
                   + ("" if not fail_worse else "; below 95 % in: " + ", ".join(
                       f"n {c['n']:,}/rate {c['base_rate']:.2f}/corr {c['rho']:.1f} "
                       f"({c['configs'][name]['refusal_rate']:.0%})" for c in fail_worse)) + ".")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 10000])
    p.add_argument("--base-rates", type=float, nargs="+", default=[0.55, 0.1])
    p.add_argument("--rhos", type=float, nargs="+", default=[0.8, 0.5])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--date", default=time.strftime("%Y-%m-%d", time.gmtime()))
    p.add_argument("--no-write", action="store_true", help="print only; write no results")
    p.add_argument("--from-json", action="store_true", help="re-render the plot and RESULTS.md from the JSON")
    args = p.parse_args(argv)
    if args.from_json:
        with open(RESULTS_JSON) as f:
            result = json.load(f)
        result["findings"] = findings(result["cells"])
        with open(RESULTS_JSON, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
        plot(result["cells"], RESULTS_PNG)
        results_md.replace_section(RESULTS_MD, "gate_power", section(result))
        return 0
    t0 = time.time()
    cells = simulate(args.trials, args.sizes, args.base_rates, args.rhos, args.seed)
    result = {"date": args.date, "command": "python benchmarks/gate_power.py " + " ".join(argv or sys.argv[1:]),
              "trials": args.trials, "baseline_auc": BASELINE_AUC, "scenarios": SCENARIOS,
              "configs": {k: dataclasses.asdict(v) for k, v in CONFIGS.items()}, "cells": cells,
              "seconds": round(time.time() - t0, 1), "machine": results_md.machine_info()}
    result["findings"] = findings(cells)
    print("\n".join(result["findings"]))
    if not args.no_write:
        os.makedirs(os.path.dirname(RESULTS_JSON), exist_ok=True)
        with open(RESULTS_JSON, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
        plot(cells, RESULTS_PNG)
        results_md.replace_section(RESULTS_MD, "gate_power", section(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
