"""Text and JSON forms of lineage and status, for the CLI and notebooks.

Part of pipelines.lineage, which re-exports these names.
"""
from __future__ import annotations

import datetime
import json
from typing import Any, Dict, List, Optional, Sequence

from components.blessing_pusher.rollback import Pin
from pipelines.failures import QuarantinedSpan
from pipelines.lineage_records import ModelRecord, ServingInfo, Status, _f, _plain


def to_json(obj: Any, indent: Optional[int] = 2) -> str:
    """JSON for a Status, ServingInfo, ModelRecord, CycleOutcome, or a list/dict of them (NaN -> null)."""
    return json.dumps(_plain(obj), indent=indent, sort_keys=True, allow_nan=False)


def lineage_to_dict(chain_records: Sequence[ModelRecord], serving_info: Optional[ServingInfo] = None,
                    pipeline_name: Optional[str] = None,
                    quarantined: Sequence[QuarantinedSpan] = (), pin: Optional[Pin] = None) -> Dict[str, Any]:
    """What `driftline lineage --json` prints: {"pipeline_name", "serving", "pin", "chain" (newest first),
    "quarantined_spans" (spans quarantined after failing cycles: no model trained on them)}."""
    return _plain({"pipeline_name": pipeline_name, "serving": serving_info, "pin": pin,
                   "chain": list(chain_records), "quarantined_spans": list(quarantined)})


def _spans(spans: Sequence[int]) -> str:
    """Span numbers with runs of three or more collapsed: [1, 2, 3, 5] -> "1-3,5"."""
    if not spans:
        return "none"
    values = sorted(set(int(s) for s in spans))
    parts, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            run = values[start:i]
            parts.append(f"{run[0]}-{run[-1]}" if len(run) >= 3 else ",".join(str(v) for v in run))
            start = i
    return ",".join(parts)


def format_ms(ms: Optional[int]) -> str:
    """UTC time of an epoch-milliseconds value, to the second; "-" for None."""
    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000.0, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: Optional[float]) -> str:
    """A duration in its two largest units: "42 s", "3 min 5 s", "2 h 10 min", "326 d 17 h"; "-" for None."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    s = int(round(abs(seconds)))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days} d {hours} h"
    elif hours:
        text = f"{hours} h {minutes} min"
    elif minutes:
        text = f"{minutes} min {secs} s"
    else:
        text = f"{secs} s"
    return sign + text


def format_status(st: Status) -> str:
    """The short human summary `driftline status` prints."""
    lines = [f"driftline status of {st.home} (pipeline {st.pipeline_name})"]
    if not st.metadata_exists:
        lines.append("  nothing has run here yet (no ML Metadata)")
        lines.append(f"  controller:  {st.controller.describe()}")
        return "\n".join(lines)
    s = st.serving
    if s.version is None:
        serving_text = "nothing (no version in the serving folder)"
    else:
        model = f"model {s.model_id}" if s.model_id is not None else "model unknown to ML Metadata"
        serving_text = f"version {s.version}, {model}"
        if s.rollback_of is not None:
            serving_text += f" (a rollback to version {s.rollback_of})"
        if s.pushed_at_ms is not None:
            serving_text += f", since {format_ms(s.pushed_at_ms)} UTC"
    lines.append(f"  serving:     {serving_text}")
    if st.pin is not None:
        lines.append(f"  pinned:      {_pin_text(st.pin)}")
    if st.freshness_seconds is not None:
        lines.append(f"  freshness:   {format_duration(st.freshness_seconds)} (the serving model learned events up "
                     f"to {format_ms(st.newest_event_ms)} UTC)")
    else:
        lines.append("  freshness:   -")
    if st.click_freshness is not None:
        lines.append(f"  from click:  {st.click_freshness.describe()} (version {st.click_freshness.pushed_version})")
    if st.serving_latency is not None:
        lines.append(f"  latency:     {st.serving_latency.describe()}")
    c = st.last_cycle
    if c is None:
        lines.append("  last cycle:  none")
    else:
        resumed = ", resumed after an interrupted cycle" if c.resumed else ""
        lines.append(f"  last cycle:  {c.outcome} (run {c.run_id}{resumed}, started {format_ms(c.started_ms)} UTC)")
        lines.append(f"               {c.reason}")
    newest = f", newest span {st.newest_span}" if st.newest_span is not None else ""
    lines.append(f"  ingested:    {st.spans_ingested} spans, {st.events_ingested:,} events, {st.late_events:,} late, "
                 f"{st.dead_lettered_events:,} dead-lettered{newest}")
    if st.future_events or st.too_late_events or st.duplicate_events:
        lines.append(f"               of the dead letters {st.future_events:,} from the future and "
                     f"{st.too_late_events:,} too late; {st.duplicate_events:,} duplicate event ids kept out")
    if st.spans_payload_deleted:
        lines.append(f"               payload deleted by retention for {st.spans_payload_deleted} of the spans "
                     "(records kept)")
    if st.join is not None:
        j = st.join
        held = (f"the {j.held_back_by} stream holds the join back" if j.held_back_by
                else "neither stream holds the join back")
        lines.append(f"  join:        impressions watermark {format_ms(j.impressions_watermark_ms)} UTC, outcomes "
                     f"watermark {format_ms(j.outcomes_watermark_ms)} UTC: {held} (as of span {j.newest_span})")
        lines.append(f"               {j.attributed_outcomes:,} outcomes attributed, {j.late_outcomes:,} late, "
                     f"{j.orphan_outcomes:,} orphans (dead letters)")
    lines.append(f"  models:      {st.models_trained} trained, {st.models_blessed} blessed, "
                 f"{st.models_rejected} rejected; {st.pushes} pushed, {st.rollbacks} rollback"
                 f"{'' if st.rollbacks == 1 else 's'}")
    if st.models_payload_deleted:
        lines.append(f"               payload deleted by retention for {st.models_payload_deleted} of the models "
                     "(records kept)")
    if st.off_policy:
        lines.append(f"  off-policy:  model {st.off_policy_model_id}: {off_policy_text(st.off_policy)}")
    lines.append(f"  controller:  {st.controller.describe()}")
    f = st.last_failure
    if f is not None:
        lines.append(f"  failures:    {st.consecutive_failures} in a row" + (
            " (recovered: a run completed since)" if not st.consecutive_failures else "")
            + f"; the last at {format_ms(f.at_ms)} UTC{', resumed cycle' if f.resumed else ''}")
        lines.append(f"               {f.describe()}")
    lines += quarantine_lines(st.quarantined_spans, st.home)
    return "\n".join(lines)


def quarantine_lines(quarantined: Sequence[QuarantinedSpan], home: str) -> List[str]:
    """What `status` and `lineage` print about spans quarantined after failing cycles."""
    lines = []
    for q in quarantined:
        lines.append(f"  quarantined: span {q.span} since {format_ms(q.at_ms)} UTC (Examples {q.artifact_id}): "
                     f"{q.reason}")
    if quarantined:
        lines.append(f"               train one with `driftline replay --home {home} --span S`")
    return lines


def _examples(m: ModelRecord) -> str:
    roles = m.trained_examples_by_role
    if not roles:
        return str(m.trained_examples) if m.trained_examples is not None else "-"
    order = ["new", "previous_eval", "replay"]
    keys = [k for k in order if k in roles] + sorted(k for k in roles if k not in order)
    short = {"new": "new", "previous_eval": "prev", "replay": "replay"}
    return " ".join(f"{short.get(k, k)} {roles[k]}" for k in keys)


def _pair(m: ModelRecord, name: str, spec: str) -> str:
    cand = getattr(m.candidate, name) if m.candidate else None
    base = getattr(m.baseline, name) if m.baseline else None
    return f"{_f(cand, spec)} / {_f(base, spec)}" if m.baseline else _f(cand, spec)


def _latency_cells(m: ModelRecord) -> tuple:
    """(p50/p99 ms, candidates/s, verdict) of the LatencyValidator; "-" where it did not run or test."""
    lat = m.latency
    if lat is None:
        return "-", "-", "-"
    verdict = "ok" if lat.blessed else ("SLOW" if lat.p99_ms is not None and lat.slo_p99_ms is not None
                                        and lat.p99_ms > lat.slo_p99_ms else "refused")
    if not lat.load_tested:
        verdict = "skipped" if (lat.reason or "").startswith("not load-tested") else verdict
    if lat.p99_ms is None:
        return "-", "-", verdict
    return (f"{_f(lat.p50_ms, '.1f')}/{_f(lat.p99_ms, '.1f')}", _f(lat.candidates_per_second, ",.0f"), verdict)


def gate_tests_text(tests: Dict[str, Any]) -> str:
    """"AUC -0.012 [-0.030, +0.006] (DeLong, p=0.12); log loss ..." : candidate - baseline, one-sided bounds."""
    parts = []
    for key, what in (("auc", "AUC"), ("log_loss", "log loss")):
        t = tests.get(key)
        if not isinstance(t, dict):
            continue
        # Undefined numbers are null (or "inf") in the verdict's JSON: shown as "-".
        t = {k: (v if isinstance(v, (int, float)) or k == "test" else None) for k, v in t.items()}
        conf = t.get("confidence")
        parts.append(f"{what} {_f(t.get('diff'), '+.3f')} [{_f(t.get('lower'), '+.3f')}, {_f(t.get('upper'), '+.3f')}]"
                     f" at {_f(conf * 100 if isinstance(conf, (int, float)) else None, '.0f')}% "
                     f"({t.get('test', '?')}, p={_f(t.get('p_value'), '.3g')} for worse by > {_f(t.get('margin'), '.3f')})")
    return "candidate - baseline: " + "; ".join(parts) if parts else "-"


def off_policy_text(record: Dict[str, Any]) -> str:
    """"SNIPS CTR 0.0312 [0.0281, 0.0350] vs served 0.0300 [...]: ratio 1.04 (lower 0.94) on 812 requests (140
    explored); <the gate's note>" from a verdict's off_policy record."""
    name = record.get("estimator") or "snips"
    est = (record.get("estimates") or {}).get(name)
    if not isinstance(est, dict):
        return str(record.get("note") or record.get("why") or "-")
    served, ratio = record.get("served") or {}, (record.get("ratios") or {}).get(name) or {}
    return (f"{name.upper()} CTR {_f(est.get('estimate'), '.4f')} [{_f(est.get('lower'), '.4f')}, "
            f"{_f(est.get('upper'), '.4f')}] vs served {_f(served.get('estimate'), '.4f')} "
            f"[{_f(served.get('lower'), '.4f')}, {_f(served.get('upper'), '.4f')}]: ratio "
            f"{_f(ratio.get('estimate'), '.2f')} (lower {_f(ratio.get('lower'), '.2f')}) on {record.get('requests', 0)} "
            f"requests ({record.get('explored_requests', 0)} explored); "
            + ("gated" if record.get("gated") else str(record.get("note") or "not gated")))


def _pin_text(pin: Pin) -> str:
    when = f" at {format_ms(pin.at_ms)} UTC" if pin.at_ms else ""
    return pin.describe() + when


def format_lineage(chain_records: Sequence[ModelRecord], serving_info: Optional[ServingInfo] = None,
                   quarantined: Sequence[QuarantinedSpan] = (), home: str = "HOME", pin: Optional[Pin] = None) -> str:
    """The table and reasons `driftline lineage` prints, for a chain (newest first), and the pin if one stands.

    `quarantined`: spans quarantined after failing cycles, listed after the
    chain since no model in it trained on them.
    """
    text = _format_chain(chain_records, serving_info, pin)
    if quarantined:
        text += "\n\nSpans no model trained on, quarantined after failing cycles:\n" + "\n".join(
            quarantine_lines(quarantined, home))
    return text


def _format_chain(chain_records: Sequence[ModelRecord], serving_info: Optional[ServingInfo] = None,
                  pin: Optional[Pin] = None) -> str:
    from pipelines.report import format_table

    pinned = [f"pinned: {_pin_text(pin)}"] if pin is not None else []
    if not chain_records:
        return "\n".join(["no models: nothing has been trained (or pushed) yet"] + pinned)
    head = chain_records[0]
    where = ""
    if serving_info is not None and serving_info.model_id == head.model_id and serving_info.version is not None:
        where = f", serving as version {serving_info.version}"
    n = len(chain_records)
    tail = chain_records[-1]
    back_to = ("back to its last cold start" if tail.start == "cold"
               else f"back to model {tail.model_id} (its base model {tail.base_model_id} is not in this pipeline)")
    lines = [f"Lineage of model {head.model_id}{where}, {back_to}: {n} model{'s' if n != 1 else ''} (newest first)",
             *pinned,
             "AUC, calibration and log loss: candidate / baseline, on the same eval span; "
             "p50/p99 ms and cand/s: the LatencyValidator's load test", ""]
    rows = []
    for m in chain_records:
        gate = "-" if m.blessed is None else ("blessed" if m.blessed else "REJECTED")
        pushed = m.pushed_version or "-"
        if m.rollbacks:
            pushed += " (again as " + ", ".join(str(r.new_version) for r in m.rollbacks) + ")"
        rows.append((m.model_id, format_ms(m.created_ms)[5:16], m.start or "-",
                     m.base_model_id if m.base_model_id is not None else "-", _spans(m.trained_spans),
                     _examples(m), m.eval_span if m.eval_span is not None else "-",
                     _pair(m, "auc", ".3f"), _pair(m, "calibration", ".2f"), _pair(m, "log_loss", ".3f"),
                     _f(m.candidate.example_count if m.candidate else None, ".0f"), gate, *_latency_cells(m),
                     pushed, format_ms(m.pushed_at_ms)[5:16] if m.pushed_at_ms else "-"))
    lines.append(format_table(("model", "created", "start", "base", "spans", "examples", "eval span", "AUC",
                               "calibration", "log loss", "eval n", "gate", "p50/p99 ms", "cand/s", "latency",
                               "pushed", "pushed at"), rows))
    lines.append("")
    for m in chain_records:
        deleted = " (payload deleted by retention; record kept)" if m.payload_deleted else ""
        lines.append(f"model {m.model_id}{deleted}: {m.start_reason or m.start or 'start unknown'}")
        if m.blessing_reason:
            lines.append(f"  gate:  {m.blessing_reason}")
        if m.gate_tests:
            lines.append(f"  tests: {gate_tests_text(m.gate_tests)}")
        if m.off_policy:
            lines.append(f"  off-policy: {off_policy_text(m.off_policy)}")
        if m.latency is not None:
            lines.append(f"  latency: {m.latency.reason or m.latency.describe()}")
        if m.pushed_version is not None:
            lines.append(f"  push:  version {m.pushed_version} at {format_ms(m.pushed_at_ms)} UTC")
            if m.click_freshness is not None:
                lines.append(f"  from click: {m.click_freshness.describe()}")
        elif m.push_reason:
            lines.append(f"  push:  {m.push_reason}")
        for r in m.rollbacks:
            was = f" (was serving version {r.from_version})" if r.from_version is not None else ""
            lines.append(f"  rollback: version {r.new_version} serves it again (a copy of version {r.to_version}) "
                         f"at {format_ms(r.at_ms)} UTC{was}")
    return "\n".join(lines)
