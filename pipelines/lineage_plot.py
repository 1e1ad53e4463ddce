"""A picture of a pipeline's models over time: `plot_lineage(models, path)`.

* every candidate's AUC on its eval span, at the time the model was created:
  blessed ones as filled green circles, rejected ones as red crosses, cold
  starts ringed; the baseline's AUC on the same data as a small grey dash;
* the AUC of the model serving at each moment as a step line (it changes at
  each push and rollback);
* pushes (green, dashed) and rollbacks (orange, dash-dotted) as vertical
  lines labelled with the version they made serve.

matplotlib's Agg backend is used, so no display is needed.
"""
from __future__ import annotations

import datetime
from typing import Optional, Sequence

from pipelines.lineage import ModelRecord, serving_events


def _time(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000.0, tz=datetime.timezone.utc)


def plot_lineage(models: Sequence[ModelRecord], path: str, title: Optional[str] = None,
                 serving_model_id: Optional[int] = None) -> str:
    """Writes the picture of `models` (e.g. `lineage.models(...)`, any order) to `path` (PNG by extension).

    `serving_model_id` (optional) marks the model serving now. Returns `path`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    records = sorted(models, key=lambda m: (m.created_ms, m.model_id))
    by_id = {m.model_id: m for m in records}
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    try:
        blessed = [m for m in records if m.blessed is True and m.candidate_auc is not None]
        rejected = [m for m in records if m.blessed is False and m.candidate_auc is not None]
        unjudged = [m for m in records if m.blessed is None or m.candidate_auc is None]
        if blessed:
            ax.scatter([_time(m.created_ms) for m in blessed], [m.candidate_auc for m in blessed], s=60,
                       color="tab:green", zorder=4, label="candidate AUC, blessed")
        if rejected:
            ax.scatter([_time(m.created_ms) for m in rejected], [m.candidate_auc for m in rejected], s=80,
                       marker="X", color="tab:red", zorder=4, label="candidate AUC, rejected")
        with_baseline = [m for m in records if m.baseline_auc is not None]
        if with_baseline:
            ax.scatter([_time(m.created_ms) for m in with_baseline], [m.baseline_auc for m in with_baseline],
                       s=90, marker="_", color="dimgray", linewidths=2, zorder=3,
                       label="baseline AUC on the same eval span")
        cold = [m for m in records if m.start == "cold" and m.candidate_auc is not None]
        if cold:
            ax.scatter([_time(m.created_ms) for m in cold], [m.candidate_auc for m in cold], s=260,
                       facecolors="none", edgecolors="tab:blue", linewidths=1.5, zorder=5, label="cold start")
        for m in records:
            if m.candidate_auc is not None:
                ax.annotate(f"m{m.model_id}", (_time(m.created_ms), m.candidate_auc), textcoords="offset points",
                            xytext=(7, -12), fontsize=8, color="black")

        # Serving: the served model's AUC as a step line, from each push or rollback on.
        events = [e for e in serving_events(records) if e["at_ms"] is not None]
        aucs = [m.candidate_auc for m in records if m.candidate_auc is not None]
        if aucs:
            low, high = min(aucs + [m.baseline_auc for m in with_baseline]), max(aucs)
        else:
            low, high = 0.4, 1.0
        step_x, step_y = [], []
        for i, e in enumerate(events):
            auc = by_id[e["model_id"]].candidate_auc if e["model_id"] in by_id else None
            step_x.append(_time(e["at_ms"]))
            step_y.append(auc if auc is not None else float("nan"))
            is_push = e["kind"] == "push"
            ax.axvline(_time(e["at_ms"]), color="tab:green" if is_push else "tab:orange",
                       linestyle="--" if is_push else "-.", linewidth=1, alpha=0.7, zorder=1)
            text = f"v{e['version']}" if is_push else f"v{e['version']} = rollback to v{e['rollback_of']}"
            # Labels at the top of the axes, alternating in height so that close events stay legible.
            ax.annotate(text, (mdates.date2num(_time(e["at_ms"])), 0.985 - 0.05 * (i % 2)),
                        xycoords=ax.get_xaxis_transform(),
                        xytext=(3, 0), textcoords="offset points", fontsize=8, va="top",
                        color="darkgreen" if is_push else "darkorange")
        if step_x:
            end_ms = max([m.created_ms for m in records] + [e["at_ms"] for e in events])
            step_x.append(_time(end_ms + 30_000))
            step_y.append(step_y[-1])
            ax.step(step_x, step_y, where="post", color="tab:purple", linewidth=2, alpha=0.8, zorder=2,
                    label="serving model's AUC")
        if serving_model_id is not None and serving_model_id in by_id:
            m = by_id[serving_model_id]
            if m.candidate_auc is not None:
                ax.scatter([_time(m.created_ms)], [m.candidate_auc], s=150, marker="*", color="gold",
                           edgecolors="black", zorder=6, label=f"serving now (model {m.model_id})")
        # Legend entries for the vertical markers.
        if any(e["kind"] == "push" for e in events):
            ax.plot([], [], color="tab:green", linestyle="--", label="push (version)")
        if any(e["kind"] == "rollback" for e in events):
            ax.plot([], [], color="tab:orange", linestyle="-.", label="rollback (version)")
        if unjudged:
            ax.plot([], [], " ", label=f"{len(unjudged)} model(s) without an AUC not shown")

        pad = 0.12 * max(high - low, 0.05)
        ax.set_ylim(low - pad, high + 2.5 * pad)
        ax.set_ylabel("AUC on the model's eval span")
        ax.set_xlabel("time (UTC): model created / pushed")
        locator = mdates.AutoDateLocator(tz=datetime.timezone.utc)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=datetime.timezone.utc))
        ax.grid(True, alpha=0.3)
        ax.set_title(title or "driftline: candidate AUC, gate verdicts and serving over time")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8, framealpha=0.85)
        else:
            ax.text(0.5, 0.5, "no models yet", transform=ax.transAxes, ha="center", color="gray")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
