"""Online-evaluation decisions in ML Metadata, and the running comparison rebuilt from them.

Every decision is one `driftline.OnlineDecision` execution, attributed to the pipeline's context, with
the champion and challenger `Model` artifacts as its inputs (event keys "champion", "challenger"). Its
properties are the action (start, continue, promote, retire, replace), the rule that fired, the models'
ids, each arm's **cumulative** successes and trials since the comparison (re)started, P(challenger
better), the threshold and minimum it was judged against, and whether a person made it (`driftline
promote` / `retire`); the Beta posteriors are in a JSON custom property, the reason in words in another.
A decision the controller made from spans also records the comparison's cumulative guardrail measures
(`guardrail_stats`, JSON, guardrails.py) and the readings judged from them (`guardrail_readings`, JSON, per
arm; the challenger's as the double properties `challenger_latency_p99_ms`, `challenger_error_rate`,
`challenger_calibration_error` when measured), so a restart continues the measures as it continues the counts.

ML Metadata is the single source of truth: the running comparison is the newest decision's models and
counts, unless that decision ended it (promote, retire). A controller or server that restarts reads it
back with `open_comparison` and loses no evidence that was recorded. A decision made from spans' counts
(`update_and_decide(..., counted_examples=...)`, the controller in online mode) has those spans' `Examples`
as inputs (event key "examples") in the same write as its counts, so `counted_examples_ids` says which
spans are in the evidence: none is lost or counted twice, whenever a controller dies.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Dict, List, Optional, Sequence, Set

from ml_metadata import errors as mlmd_errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.blessing_pusher import serving
from components.mlmd_store import pipeline_context, pushed_model_type_id
from components.mlmd_vocabulary import MODEL_TYPE, ONLINE_DECISION_TYPE, PIPELINE_CONTEXT_TYPE
from components.online_evaluator import guardrails
from components.online_evaluator.decision import (
    CONTINUE, PROMOTE, REPLACE, RETIRE, RULE_MANUAL, RULE_NEW_COMPARISON, RULE_NEWER_CANDIDATE, START,
    CHALLENGER, CHAMPION, BetaPosterior, Comparison, Counts, Decision, DecisionRule, GuardrailReading, decide,
    prob_better)

TERMINAL_ACTIONS = (PROMOTE, RETIRE)
_INT, _DOUBLE, _STRING = metadata_store_pb2.INT, metadata_store_pb2.DOUBLE, metadata_store_pb2.STRING
_PROPERTIES = {
    "action": _STRING, "rule": _STRING, "champion_model_id": _INT, "challenger_model_id": _INT,
    "champion_successes": _INT, "champion_trials": _INT, "challenger_successes": _INT, "challenger_trials": _INT,
    "p_better": _DOUBLE, "threshold": _DOUBLE, "min_impressions": _INT, "at_ms": _INT, "manual": _INT,
}


# The input event key of the spans' Examples whose counts a decision added.
COUNTED_EXAMPLES_KEY = "examples"


class OnlineEvalError(RuntimeError):
    """The decision cannot be made or recorded as asked; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class RecordedDecision:
    execution_id: int
    action: str
    rule: str
    reason: str
    champion_model_id: int
    challenger_model_id: int
    champion: Counts
    challenger: Counts
    p_better: float
    at_ms: int
    manual: bool
    replaced_model_id: Optional[int] = None  # REPLACE: the challenger that made way
    pushed_version: Optional[int] = None  # PROMOTE with a serving folder: the version the push made
    # The comparison's cumulative guardrail measures per arm, and each arm's readings from them (the
    # challenger's judged): None for a decision that measured nothing (start, replace, a manual one early on).
    stats: Optional[Dict[str, guardrails.ArmStats]] = None
    readings: Optional[Dict[str, GuardrailReading]] = None

    @property
    def comparison(self) -> Optional[Comparison]:
        """The comparison still running after this decision (None once promoted or retired)."""
        if self.action in TERMINAL_ACTIONS:
            return None
        return Comparison(self.champion_model_id, self.challenger_model_id, self.champion, self.challenger)

    def describe(self) -> str:
        who = "by hand" if self.manual else f"rule {self.rule}"
        counts = (f"champion model {self.champion_model_id} {self.champion.successes}/{self.champion.trials}, "
                  f"challenger model {self.challenger_model_id} {self.challenger.successes}/{self.challenger.trials}")
        guard = ""
        if self.readings is not None:
            r = self.readings[CHALLENGER]
            guard = (f"; challenger guardrails: latency p99 {_shown(r.latency_p99_ms, ' ms')}, error rate "
                     f"{_shown(r.error_rate)}, calibration error {_shown(r.calibration_error)}")
        return (f"{self.action} ({who}, execution {self.execution_id}): {counts}; "
                f"P(challenger better) = {self.p_better:.4f}{guard}; {self.reason}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["champion"], d["challenger"] = dataclasses.asdict(self.champion), dataclasses.asdict(self.challenger)
        d["stats"] = guardrails.to_dict(self.stats) if self.stats is not None else None
        d["readings"] = ({arm: dataclasses.asdict(r) for arm, r in self.readings.items()}
                         if self.readings is not None else None)
        return d


def _shown(value: Optional[float], unit: str = "") -> str:
    return "not judged yet" if value is None else f"{value:.4g}{unit}"


def champion_model_id(store: metadata_store.MetadataStore, pipeline_name: str) -> Optional[int]:
    """The Model the newest recorded push put into serving (a BlessingPusher's, a promotion's or a rollback's
    `PushedModel` with pushed=1 and a model id), or None: online mode's base model and baseline. No TFX, no
    serving folder: what the resolver and retention can read from ML Metadata alone."""
    from components.mlmd_vocabulary import PUBLISHED_STATES, PUSHED_MODEL_TYPE, prop

    context = store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline_name)
    if context is None:
        return None
    try:
        type_id = store.get_artifact_type(PUSHED_MODEL_TYPE).id
    except mlmd_errors.NotFoundError:
        return None
    pushes = [a for a in store.get_artifacts_by_context(context.id)
              if a.type_id == type_id and a.state in PUBLISHED_STATES and prop(a, serving.PUSHED_PROPERTY) == 1
              and prop(a, serving.MODEL_ID_PROPERTY) is not None]
    if not pushes:
        return None
    return int(prop(max(pushes, key=lambda a: (a.create_time_since_epoch, a.id)), serving.MODEL_ID_PROPERTY))


def _type_id(store: metadata_store.MetadataStore) -> int:
    t = metadata_store_pb2.ExecutionType(name=ONLINE_DECISION_TYPE)
    for name, kind in _PROPERTIES.items():
        t.properties[name] = kind
    return store.put_execution_type(t, can_add_fields=True, can_omit_fields=True)


def _model(store: metadata_store.MetadataStore, model_id: int) -> Optional[metadata_store_pb2.Artifact]:
    found = store.get_artifacts_by_id([model_id])
    if not found:
        return None
    [type_] = store.get_artifact_types_by_id([found[0].type_id])
    if type_.name != MODEL_TYPE:
        raise OnlineEvalError(f"artifact {model_id} is a {type_.name}, not a Model: name the Model artifact ids "
                              "(`driftline lineage` lists them)")
    return found[0]


def model_artifact(store: metadata_store.MetadataStore, model_id: int) -> Optional[metadata_store_pb2.Artifact]:
    """The Model artifact `model_id` (None when ML Metadata has none; OnlineEvalError for another type)."""
    return _model(store, model_id)


def _event(key: str) -> metadata_store_pb2.Event:
    event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.INPUT)
    event.path.steps.add().key = key
    event.path.steps.add().index = 0
    return event


def record(store: metadata_store.MetadataStore, pipeline_name: str, comparison: Comparison, action: str,
           rule: str, reason: str, decision_rule: DecisionRule, manual: bool = False,
           replaced_model_id: Optional[int] = None, at_ms: Optional[int] = None,
           pushed: Optional[serving.PushResult] = None,
           counted_examples: Sequence[metadata_store_pb2.Artifact] = (),
           stats: Optional[Dict[str, guardrails.ArmStats]] = None) -> RecordedDecision:
    """Writes one decision (with `comparison`'s models and cumulative counts) as a new execution; a
    promotion's push, when given, as its output `PushedModel` (what `status` and `lineage` read as serving);
    `counted_examples`, the spans whose counts this decision added, as its inputs (key "examples"); `stats`, the
    comparison's cumulative guardrail measures, with each arm's readings judged from them by `decision_rule`."""
    at_ms = int(time.time() * 1000) if at_ms is None else int(at_ms)
    champion = BetaPosterior.from_counts(comparison.champion, decision_rule.prior)
    challenger = BetaPosterior.from_counts(comparison.challenger, decision_rule.prior)
    p = prob_better(champion, challenger)
    e = metadata_store_pb2.Execution(type_id=_type_id(store), last_known_state=metadata_store_pb2.Execution.COMPLETE)
    values = {"action": action, "rule": rule, "champion_model_id": comparison.champion_model_id,
              "challenger_model_id": comparison.challenger_model_id,
              "champion_successes": comparison.champion.successes, "champion_trials": comparison.champion.trials,
              "challenger_successes": comparison.challenger.successes,
              "challenger_trials": comparison.challenger.trials, "p_better": p,
              "threshold": decision_rule.threshold, "min_impressions": decision_rule.min_impressions,
              "at_ms": at_ms, "manual": int(manual)}
    for name, value in values.items():
        kind = _PROPERTIES[name]
        if kind == _STRING:
            e.properties[name].string_value = value
        elif kind == _DOUBLE:
            e.properties[name].double_value = float(value)
        else:
            e.properties[name].int_value = int(value)
    e.custom_properties["reason"].string_value = reason
    e.custom_properties["posteriors"].string_value = json.dumps(
        {"champion": dataclasses.asdict(champion), "challenger": dataclasses.asdict(challenger)}, sort_keys=True)
    if replaced_model_id is not None:
        e.custom_properties["replaced_model_id"].int_value = int(replaced_model_id)
    readings = None
    if stats is not None:
        stats = guardrails.merge(stats, None)
        readings = arm_readings(stats, decision_rule)
        e.custom_properties["guardrail_stats"].string_value = json.dumps(guardrails.to_dict(stats), sort_keys=True)
        e.custom_properties["guardrail_readings"].string_value = json.dumps(
            {arm: dataclasses.asdict(r) for arm, r in readings.items()}, sort_keys=True)
        for name, value in dataclasses.asdict(readings[CHALLENGER]).items():
            if value is not None:
                e.custom_properties[f"challenger_{name}"].double_value = float(value)
    inputs = []
    for key, model_id in (("champion", comparison.champion_model_id), ("challenger", comparison.challenger_model_id)):
        model = _model(store, model_id)
        if model is not None:
            inputs.append((model, _event(key)))
    for i, examples in enumerate(counted_examples):
        event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.INPUT)
        event.path.steps.add().key = COUNTED_EXAMPLES_KEY
        event.path.steps.add().index = i
        inputs.append((examples, event))
    if counted_examples:
        e.custom_properties["counted_spans"].string_value = json.dumps(sorted(a.properties["span"].int_value
                                                                              for a in counted_examples))
    if pushed is not None:
        artifact = metadata_store_pb2.Artifact(type_id=pushed_model_type_id(store), uri=pushed.destination,
                                               state=metadata_store_pb2.Artifact.LIVE)
        props = artifact.custom_properties
        props[serving.PUSHED_PROPERTY].int_value = 1
        props[serving.PUSHED_DESTINATION_PROPERTY].string_value = pushed.destination
        props[serving.PUSHED_VERSION_PROPERTY].string_value = str(pushed.version)
        props[serving.PUSHED_AT_MS_PROPERTY].int_value = at_ms
        props[serving.MODEL_ID_PROPERTY].int_value = comparison.challenger_model_id
        props[serving.REASON_PROPERTY].string_value = f"promoted online: {reason}"
        out = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
        out.path.steps.add().key = "pushed_model"
        out.path.steps.add().index = 0
        inputs.append((artifact, out))
        e.custom_properties["pushed_version"].int_value = pushed.version
    execution_id, _, _ = store.put_execution(e, inputs, [pipeline_context(store, pipeline_name)])
    return RecordedDecision(execution_id, action, rule, reason, comparison.champion_model_id,
                            comparison.challenger_model_id, comparison.champion, comparison.challenger, p, at_ms,
                            manual, replaced_model_id, pushed.version if pushed is not None else None, stats,
                            readings)


def arm_readings(stats: Dict[str, guardrails.ArmStats], decision_rule: DecisionRule) -> Dict[str, GuardrailReading]:
    """Each arm's guardrail reading from its cumulative measures, with the rule's minimum evidence."""
    g = decision_rule.guardrails
    return {arm: guardrails.reading(stats[arm], g.min_requests, g.min_calibration_successes)
            for arm in (CHAMPION, CHALLENGER)}


def _from_execution(e: metadata_store_pb2.Execution) -> RecordedDecision:
    p = e.properties
    replaced = e.custom_properties.get("replaced_model_id")
    stats = readings = None
    if "guardrail_stats" in e.custom_properties:
        stats = guardrails.from_dict(json.loads(e.custom_properties["guardrail_stats"].string_value))
        readings = {arm: GuardrailReading(**r) for arm, r in
                    json.loads(e.custom_properties["guardrail_readings"].string_value).items()}
    return RecordedDecision(
        execution_id=e.id, action=p["action"].string_value, rule=p["rule"].string_value,
        reason=e.custom_properties["reason"].string_value if "reason" in e.custom_properties else "",
        champion_model_id=p["champion_model_id"].int_value, challenger_model_id=p["challenger_model_id"].int_value,
        champion=Counts(p["champion_successes"].int_value, p["champion_trials"].int_value),
        challenger=Counts(p["challenger_successes"].int_value, p["challenger_trials"].int_value),
        p_better=p["p_better"].double_value, at_ms=p["at_ms"].int_value, manual=bool(p["manual"].int_value),
        replaced_model_id=replaced.int_value if replaced is not None else None,
        pushed_version=(e.custom_properties["pushed_version"].int_value
                        if "pushed_version" in e.custom_properties else None),
        stats=stats, readings=readings)


def decisions(store: metadata_store.MetadataStore, pipeline_name: str) -> List[RecordedDecision]:
    """Every recorded decision of the pipeline, oldest first (MLMD ids grow with every write)."""
    context = store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline_name)
    try:
        type_id = store.get_execution_type(ONLINE_DECISION_TYPE).id
    except mlmd_errors.NotFoundError:
        return []
    if context is None:
        return []
    rows = [e for e in store.get_executions_by_context(context.id) if e.type_id == type_id]
    return [_from_execution(e) for e in sorted(rows, key=lambda e: e.id)]


def latest_decision(store: metadata_store.MetadataStore, pipeline_name: str) -> Optional[RecordedDecision]:
    rows = decisions(store, pipeline_name)
    return rows[-1] if rows else None


def open_comparison(store: metadata_store.MetadataStore, pipeline_name: str) -> Optional[Comparison]:
    """The running comparison as ML Metadata holds it (None when none runs): what a restart continues."""
    latest = latest_decision(store, pipeline_name)
    return latest.comparison if latest is not None else None


def start(store: metadata_store.MetadataStore, pipeline_name: str, champion_model_id: int, challenger_model_id: int,
          decision_rule: DecisionRule = DecisionRule(), at_ms: Optional[int] = None, manual: bool = False,
          note: str = "") -> RecordedDecision:
    """Deploys a candidate as the challenger: starts a comparison, or restarts the running one with it.

    `manual`: a person did it (`driftline challenge`), recorded as such with `note`; the controller in
    online mode does it for the newest blessed candidate (pipelines/online.py).

    A newer candidate that arrives during a running comparison replaces its challenger (a `replace`
    decision naming the one that made way, its final counts recorded by the decision before); a new
    champion (a push happened meanwhile) also restarts the comparison. The same pair again is refused.
    """
    running = open_comparison(store, pipeline_name)
    if running is not None and (running.champion_model_id, running.challenger_model_id) == (
            champion_model_id, challenger_model_id):
        raise OnlineEvalError(f"model {challenger_model_id} is already the challenger of model {champion_model_id}")
    fresh = Comparison(champion_model_id, challenger_model_id)
    how = (" by hand" + (f": {note}" if note else "")) if manual else ""
    if running is None:
        return record(store, pipeline_name, fresh, START, RULE_NEW_COMPARISON,
                      f"model {challenger_model_id} deployed as the challenger of model {champion_model_id}{how}",
                      decision_rule, at_ms=at_ms, manual=manual)
    return record(store, pipeline_name, fresh, REPLACE, RULE_NEWER_CANDIDATE,
                  f"model {challenger_model_id} replaces challenger model {running.challenger_model_id} "
                  f"(which had {running.challenger.successes}/{running.challenger.trials} against the champion's "
                  f"{running.champion.successes}/{running.champion.trials}){how}; the comparison restarts",
                  decision_rule, replaced_model_id=running.challenger_model_id, at_ms=at_ms, manual=manual)


def _running(store: metadata_store.MetadataStore, pipeline_name: str) -> Comparison:
    running = open_comparison(store, pipeline_name)
    if running is None:
        raise OnlineEvalError(f"no comparison is running for pipeline {pipeline_name!r}: a candidate blessed by "
                              "the gate must first be deployed as the challenger")
    return running


def push_challenger(store: metadata_store.MetadataStore, serving_dir: str, model_id: int) -> serving.PushResult:
    """Promotion is the atomic push: the challenger's SavedModel becomes the highest serving version."""
    model = _model(store, model_id)
    if model is None:
        raise OnlineEvalError(f"ML Metadata has no Model {model_id}: it cannot be pushed")
    # The layouts BlessingPusher's serving_model_path tries, without importing TFX.
    for candidate in (f"{model.uri}/Format-Serving", f"{model.uri}/serving_model_dir", model.uri):
        if serving.has_saved_model(candidate):
            try:
                return serving.push(candidate, serving_dir)
            except serving.PushError as e:
                raise OnlineEvalError(f"pushing model {model_id} to {serving_dir} failed: {e}") from e
    raise OnlineEvalError(f"Model {model_id} has no SavedModel under {model.uri} (Format-Serving, "
                          "serving_model_dir or the folder itself): it cannot be pushed")


def update_and_decide(store: metadata_store.MetadataStore, pipeline_name: str, champion: Counts, challenger: Counts,
                      decision_rule: DecisionRule = DecisionRule(), reading: Optional[GuardrailReading] = None,
                      serving_dir: Optional[str] = None, at_ms: Optional[int] = None,
                      counted_examples: Sequence[metadata_store_pb2.Artifact] = (),
                      stats: Optional[Dict[str, guardrails.ArmStats]] = None) -> RecordedDecision:
    """One cycle: the running comparison plus this cycle's counts, judged by the rule, and recorded.

    `stats`: this cycle's guardrail measures (from the same spans as the counts), added to the running
    comparison's (the newest decision's); the challenger's reading from the sum is what the guardrails
    judge, unless `reading` is given. With `serving_dir`, a promotion pushes the challenger first; if the push
    fails nothing is recorded (OnlineEvalError), so the comparison and its evidence stand for the next cycle.
    `counted_examples`: the spans' Examples the counts came from, recorded as the decision's inputs in the
    same write."""
    latest = latest_decision(store, pipeline_name)
    running = _running(store, pipeline_name).update(champion, challenger)
    total = None
    if stats is not None or (latest is not None and latest.stats is not None):
        total = guardrails.merge(latest.stats if latest is not None else None, stats)
        if reading is None:
            reading = arm_readings(total, decision_rule)[CHALLENGER]
    d: Decision = decide(running.champion, running.challenger, decision_rule, reading)
    pushed = push_challenger(store, serving_dir, running.challenger_model_id) \
        if d.action == PROMOTE and serving_dir is not None else None
    return record(store, pipeline_name, running, d.action, d.rule, d.reason, decision_rule, at_ms=at_ms, pushed=pushed,
                  counted_examples=counted_examples, stats=total)


def counted_examples_ids(store: metadata_store.MetadataStore, pipeline_name: str) -> Set[int]:
    """The ids of the `Examples` (spans) whose counts some recorded decision added: never to be counted again."""
    ids = [d.execution_id for d in decisions(store, pipeline_name)]
    if not ids:
        return set()
    return {e.artifact_id for e in store.get_events_by_execution_ids(ids)
            if e.type == metadata_store_pb2.Event.INPUT and e.path.steps and e.path.steps[0].key == COUNTED_EXAMPLES_KEY}


def decide_by_hand(store: metadata_store.MetadataStore, pipeline_name: str, action: str,
                   decision_rule: DecisionRule = DecisionRule(), note: str = "", serving_dir: Optional[str] = None,
                   at_ms: Optional[int] = None) -> RecordedDecision:
    """`driftline promote` / `driftline retire`: ends the running comparison as a person decided, with
    the evidence gathered so far. A promotion with `serving_dir` pushes the challenger (as above);
    a retirement changes nothing that serves: the champion never stopped."""
    if action not in TERMINAL_ACTIONS:
        raise OnlineEvalError(f"a decision by hand is {' or '.join(TERMINAL_ACTIONS)}, not {action!r}")
    latest = latest_decision(store, pipeline_name)
    running = _running(store, pipeline_name)
    reason = f"{action} by hand" + (f": {note}" if note else "")
    pushed = push_challenger(store, serving_dir, running.challenger_model_id) \
        if action == PROMOTE and serving_dir is not None else None
    # The measures so far are recorded with the evidence (a person may have acted on a reading).
    return record(store, pipeline_name, running, action, RULE_MANUAL, reason, decision_rule, manual=True,
                  at_ms=at_ms, pushed=pushed, stats=latest.stats if latest is not None else None)


__all__ = ["OnlineEvalError", "RecordedDecision", "record", "decisions", "latest_decision", "open_comparison",
           "start", "update_and_decide", "counted_examples_ids", "decide_by_hand", "push_challenger", "CONTINUE"]
