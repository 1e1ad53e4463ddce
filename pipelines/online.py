"""The controller's online mode (`online.enabled`): challengers beside the champion, judged on live reward.

After every cycle (and once on start), `reconcile` brings the comparison in ML Metadata up to date with
what ML Metadata already holds, in two idempotent steps:

1. **Count.** Every published span (`Examples`) whose `arm_counts` (written by JoinExampleGen, see
   components/online_evaluator/arm_counts.py) hold impressions of the open comparison's challenger and
   that no decision has counted yet is added to the comparison by one `update_and_decide`; the decision
   has those spans' Examples as its inputs in the same ML Metadata write, so a controller killed before
   it counts them next time, and one killed after never counts them again. The same spans' guardrail
   measures (each arm's requests, the challenger's fallbacks, the latency histogram, the scores:
   components/online_evaluator/guardrails.py) are added, once, to the comparison's totals that the decision
   records; the challenger's latency p99, error rate and calibration error read from them are what the
   guardrails judge. A promotion pushes the challenger atomically (record.push_challenger); a retirement
   leaves serving untouched.
2. **Deploy.** The newest candidate blessed by the gate (and by the LatencyValidator when it is on) that
   is newer than the serving champion and than every model any decision named, and that was never
   pushed, becomes the challenger: a START decision, or a REPLACE of the running challenger. BlessingPusher
   in challenger mode did not push it over the champion (its PushedModel says pushed=0, challenger=1), so
   nothing but this record deploys it; the server routes by the open comparison. A controller killed
   between the cycle and this record deploys it on the next reconcile.

Counting comes first, so the span a cycle just joined is judged against the challenger it was served with
before a newer candidate restarts the comparison.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.mlmd_store import pipeline_artifacts
from components.mlmd_vocabulary import ARM_COUNTS_PROPERTY, EXAMPLES_TYPE, PUBLISHED_STATES, prop
from components.online_evaluator import arm_counts, guardrails, record
from components.online_evaluator.decision import CHALLENGER, CHAMPION, Counts
from pipelines.config import DriftlineConfig


@dataclasses.dataclass(frozen=True)
class OnlineStep:
    """What one reconcile did: the spans it counted and the decision that counted them, the deployment."""

    counted_spans: List[int]
    decision: Optional[record.RecordedDecision]
    deployed: Optional[record.RecordedDecision]
    # Spans with arm counts for other challengers only (an ended or replaced comparison): left uncounted.
    ignored_spans: List[int] = dataclasses.field(default_factory=list)

    @property
    def anything(self) -> bool:
        return self.decision is not None or self.deployed is not None

    def to_dict(self) -> Dict[str, object]:
        return {"counted_spans": self.counted_spans, "ignored_spans": self.ignored_spans,
                "decision": self.decision.to_dict() if self.decision is not None else None,
                "deployed": self.deployed.to_dict() if self.deployed is not None else None}

    def describe(self) -> str:
        parts = []
        if self.decision is not None:
            parts.append(f"spans {self.counted_spans} counted: {self.decision.describe()}")
        if self.deployed is not None:
            parts.append(f"deployed: {self.deployed.describe()}")
        return "; ".join(parts) or "online evaluation: nothing new"


def champion_model_id(store: metadata_store.MetadataStore, config: DriftlineConfig) -> Optional[int]:
    """The Model serving now: the one behind the serving folder's highest version (None: nothing serves)."""
    from pipelines.lineage_queries import serving

    return serving(store, config.serving_dir, config.pipeline_name).model_id


def _spans(store: metadata_store.MetadataStore, pipeline_name: str) -> List[metadata_store_pb2.Artifact]:
    """The pipeline's published Examples that carry arm counts, oldest first."""
    return [a for a in pipeline_artifacts(store, pipeline_name, EXAMPLES_TYPE)
            if a.state in PUBLISHED_STATES and ARM_COUNTS_PROPERTY in a.custom_properties]


def count_new_spans(store: metadata_store.MetadataStore, config: DriftlineConfig,
                    at_ms: Optional[int] = None) -> OnlineStep:
    """Step 1: the open comparison updated, once, with every span not yet counted (see the module doc)."""
    from components import lease

    running = record.open_comparison(store, config.pipeline_name)
    if running is None:
        return OnlineStep([], None, None)
    counted = record.counted_examples_ids(store, config.pipeline_name)
    take, ignored = [], []
    champion, challenger = Counts(), Counts()
    stats = guardrails.empty()
    for span in _spans(store, config.pipeline_name):
        if span.id in counted:
            continue
        text = prop(span, ARM_COUNTS_PROPERTY)
        counts = arm_counts.from_json(text)
        arms = arm_counts.for_challenger(counts, running.challenger_model_id)
        if arms is None:
            # Impressions served under another challenger's comparison (one that was replaced or ended before
            # the server saw the decision, or a server that had not reloaded yet) are no evidence about this
            # challenger, and that comparison is closed: its counts would mix two models in one arm.
            if counts:
                ignored.append(span.properties["span"].int_value)
            continue
        take.append(span)
        champion, challenger = champion + arms[CHAMPION], challenger + arms[CHALLENGER]
        stats = guardrails.merge(stats, arm_counts.stats_from_json(text).get(running.challenger_model_id))
    if not take:
        return OnlineStep([], None, None, ignored)
    # On MySQL: a controller that lost the pipeline's lease records (and pushes) nothing.
    lease.fence("the online decision")
    decision = record.update_and_decide(store, config.pipeline_name, champion, challenger, config.online.rule(),
                                        serving_dir=config.serving_dir, at_ms=at_ms, counted_examples=take,
                                        stats=stats)
    return OnlineStep(sorted(a.properties["span"].int_value for a in take), decision, None, ignored)


def newest_candidate(store: metadata_store.MetadataStore, config: DriftlineConfig,
                     champion_id: int) -> Optional[int]:
    """The newest blessed, never pushed model newer than the champion and than every model a decision named."""
    from pipelines.lineage_queries import models

    named = {champion_id}
    for d in record.decisions(store, config.pipeline_name):
        named.update((d.champion_model_id, d.challenger_model_id))
    floor = max(named)
    found = None
    for m in models(store, config.pipeline_name):
        latency_ok = (m.latency is not None and m.latency.blessed) if config.latency.enabled else \
            (m.latency is None or m.latency.blessed)
        if m.blessed and latency_ok and m.pushed_version is None and not m.payload_deleted and m.model_id > floor:
            found = m.model_id if found is None else max(found, m.model_id)
    return found


def deploy_newest(store: metadata_store.MetadataStore, config: DriftlineConfig,
                  at_ms: Optional[int] = None) -> Optional[record.RecordedDecision]:
    """Step 2: the newest blessed candidate deployed as the challenger (START or REPLACE), if there is one."""
    from components import lease

    champion = champion_model_id(store, config)
    if champion is None:
        return None  # nothing serves: the first blessed model is pushed by BlessingPusher, not compared
    candidate = newest_candidate(store, config, champion)
    if candidate is None:
        return None
    lease.fence(f"deploying model {candidate} as the challenger")
    return record.start(store, config.pipeline_name, champion, candidate, config.online.rule(), at_ms=at_ms)


def reconcile(config: DriftlineConfig, store: Optional[metadata_store.MetadataStore] = None,
              at_ms: Optional[int] = None) -> OnlineStep:
    """Counts the new spans into the open comparison, then deploys the newest blessed candidate; idempotent."""
    from pipelines.metadata import open_store

    store = store or open_store(config.metadata_connection)
    counted = count_new_spans(store, config, at_ms)
    deployed = deploy_newest(store, config, at_ms)
    return dataclasses.replace(counted, deployed=deployed)


def challenge(config: DriftlineConfig, model_id: int, note: str = "",
              store: Optional[metadata_store.MetadataStore] = None) -> record.RecordedDecision:
    """`driftline challenge`: deploys Model `model_id` as the challenger of the serving champion by hand.

    Any Model with a SavedModel will do, blessed or not (an operator's hunch, or a test's deliberately worse
    model); it replaces a running challenger. Recorded as a manual START or REPLACE decision."""
    from components.blessing_pusher import serving
    from pipelines.metadata import open_store

    store = store or open_store(config.metadata_connection)
    champion = champion_model_id(store, config)
    if champion is None:
        raise record.OnlineEvalError(f"nothing serves from {config.serving_dir}: a challenger is compared with a "
                                     "serving champion; run a cycle (or push a model) first")
    if model_id == champion:
        raise record.OnlineEvalError(f"model {model_id} is the serving champion: name another Model "
                                     "(`driftline lineage` lists them)")
    model = record.model_artifact(store, model_id)
    if model is None:
        raise record.OnlineEvalError(f"ML Metadata has no artifact {model_id}: name a Model (`driftline lineage` "
                                     "lists them)")
    # The layouts the server loads a challenger from (as record.push_challenger pushes them).
    if not any(serving.has_saved_model(p) for p in (f"{model.uri}/Format-Serving", f"{model.uri}/serving_model_dir",
                                                     model.uri)):
        raise record.OnlineEvalError(f"Model {model_id} has no SavedModel under {model.uri} (its payload may have "
                                     "been deleted by retention): it cannot serve as the challenger")
    return record.start(store, config.pipeline_name, champion, model_id, config.online.rule(), manual=True,
                        note=note)
