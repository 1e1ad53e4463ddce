"""A pipeline history written into a real SQLite ML Metadata store the way TFX writes it, without running TFX.

Contexts (pipeline, a child `pipeline_run` per cycle, one `node` context
per node), executions with INPUT and OUTPUT events, artifacts attributed to
all three, payload folders at `<root>/<node>/<key>/<execution id>`, and a
serving folder of version folders, as the pusher leaves them. Used by the
retention and recovery tests, which then assert what those modules decide
from it. Nothing here imports TFX or TensorFlow.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

from ml_metadata.proto import metadata_store_pb2 as pb

from pipelines.config import default_config
from pipelines.metadata import open_store

LIVE = pb.Artifact.LIVE
TYPES = {
    "Examples": {"span": pb.INT, "version": pb.INT, "split_names": pb.STRING},
    "Schema": {}, "TransformGraph": {}, "Model": {}, "ModelRun": {}, "ModelEvaluation": {},
    "ModelBlessing": {}, "InfraBlessing": {}, "PushedModel": {},
}
NODES = ("StreamingExampleGen", "ImportSchemaGen", "Transform", "WarmStartTrainer", "Evaluator", "BlessingPusher")


class History:
    def __init__(self, home: str, pipeline: str = "driftline", keep_versions: int = 3, metadata=None):
        self.home = home
        self.pipeline = pipeline
        self.root = os.path.join(home, "pipeline_root")
        self.serving_dir = os.path.join(home, "serving")
        self.keep_versions = keep_versions
        # Through the config, so that `--metadata mysql` (tests/conftest.py) puts this history on MySQL too.
        self.store = open_store(metadata if metadata is not None else default_config(home).metadata_connection)
        s = self.store
        self.type_ids = {name: s.put_artifact_type(pb.ArtifactType(name=name, properties=props))
                         for name, props in TYPES.items()}
        self.exec_types = {node: s.put_execution_type(pb.ExecutionType(name=f"test.{node}")) for node in NODES}
        ctx_types = {name: s.put_context_type(pb.ContextType(name=name)) for name in ("pipeline", "pipeline_run",
                                                                                        "node")}
        self.ctx_types = ctx_types
        [pid] = s.put_contexts([pb.Context(type_id=ctx_types["pipeline"], name=pipeline)])
        self.pipeline_ctx = s.get_contexts_by_id([pid])[0]
        ids = s.put_contexts([pb.Context(type_id=ctx_types["node"], name=f"{pipeline}.{n}") for n in NODES])
        self.node_ctx = dict(zip(NODES, s.get_contexts_by_id(ids)))
        self.runs: List[pb.Context] = []
        self.next_span = 100
        self.next_version = 1
        self.cycles: List[Dict[str, object]] = []

    # -- low level -------------------------------------------------------------------------------------------

    def new_run(self) -> pb.Context:
        n = len(self.runs) + 1
        [rid] = self.store.put_contexts([pb.Context(type_id=self.ctx_types["pipeline_run"], name=f"run-{n:03d}")])
        self.store.put_parent_contexts([pb.ParentContext(child_id=rid, parent_id=self.pipeline_ctx.id)])
        run = self.store.get_contexts_by_id([rid])[0]
        self.runs.append(run)
        return run

    def execute(self, run: pb.Context, node: str, inputs: Dict[str, Sequence[int]],
                outputs: Dict[str, Sequence[Tuple[str, dict]]], state=pb.Execution.COMPLETE,
                exec_props: Optional[dict] = None) -> Tuple[int, Dict[str, List[int]]]:
        """One execution; outputs are (type, custom properties) and get payload folders.

        A NEW/RUNNING execution publishes nothing (like a killed TFX run), but
        its output folders are written, as TFX's executor would have.
        """
        s = self.store
        execution = pb.Execution(type_id=self.exec_types[node], last_known_state=state)
        for key, value in (exec_props or {}).items():
            _set(execution.custom_properties[key], value)
        [eid] = s.put_executions([execution])
        execution.id = eid
        pairs = []
        for key, ids in inputs.items():
            for i, artifact in enumerate(s.get_artifacts_by_id(list(ids))):
                event = pb.Event(type=pb.Event.INPUT)
                event.path.steps.add().key = key
                event.path.steps.add().index = i
                pairs.append((artifact, event))
        out_keys = []
        for key, specs in outputs.items():
            for i, (type_name, props) in enumerate(specs):
                folder = os.path.join(self.root, node, key, str(eid))
                uri = os.path.join(folder, f"span-{props['span']}") if type_name == "Examples" else folder
                os.makedirs(uri, exist_ok=True)
                with open(os.path.join(uri, "payload.bin"), "wb") as f:
                    f.write(os.urandom(2048))
                if state != pb.Execution.COMPLETE:
                    continue
                artifact = pb.Artifact(type_id=self.type_ids[type_name], uri=uri, state=LIVE)
                for name, value in props.items():
                    if name in TYPES[type_name]:
                        _set(artifact.properties[name], value)
                    else:
                        _set(artifact.custom_properties[name], value)
                event = pb.Event(type=pb.Event.OUTPUT)
                event.path.steps.add().key = key
                event.path.steps.add().index = i
                pairs.append((artifact, event))
                out_keys.append(key)
        contexts = [self.pipeline_ctx, run, self.node_ctx[node]]
        _, artifact_ids, _ = s.put_execution(execution, pairs, contexts, force_reuse_context=True)
        n_in = sum(len(v) for v in inputs.values())
        result: Dict[str, List[int]] = {}
        for key, aid in zip(out_keys, artifact_ids[n_in:]):
            result.setdefault(key, []).append(aid)
        os.makedirs(os.path.join(self.root, node, ".system", "executor_execution", str(eid)), exist_ok=True)
        return eid, result

    # -- a whole cycle -----------------------------------------------------------------------------------------

    def ingest(self, run: pb.Context, n_spans: int = 1) -> List[int]:
        spans = []
        for _ in range(n_spans):
            spans.append(("Examples", {"span": self.next_span, "version": 0, "split_names": '["train","eval"]',
                                       "committed_state": json.dumps({"last_span": self.next_span}),
                                       "event_count": 100}))
            self.next_span += 1
        _, out = self.execute(run, "StreamingExampleGen", {}, {"examples": spans})
        return out.get("examples", [])

    def cycle(self, blessed: bool = True, push: bool = True, n_spans: int = 1) -> Dict[str, object]:
        """StreamingExampleGen, ImportSchemaGen, Transform, trainer (warm from the latest blessed model),
        evaluator and pusher; the serving folder keeps the newest `keep_versions` versions."""
        run = self.new_run()
        examples = self.ingest(run, n_spans)
        _, schema = self.execute(run, "ImportSchemaGen", {}, {"schema": [("Schema", {})]})
        _, tr = self.execute(run, "Transform", {"examples": examples, "schema": schema["schema"]},
                             {"transform_graph": [("TransformGraph", {})]})
        base = self.latest_blessed()
        inputs = {"examples": examples, "transform_graph": tr["transform_graph"]}
        if base is not None:
            inputs["base_model"] = [base]
        _, model_out = self.execute(run, "WarmStartTrainer", inputs, {
            "model": [("Model", {"newest_examples_id": max(examples), "base_model_id": base or -1,
                                 "start": "warm" if base else "cold"})],
            "model_run": [("ModelRun", {})]})
        model = model_out["model"][0]
        _, ev = self.execute(run, "Evaluator", {"examples": examples, "model": [model]}, {
            "evaluation": [("ModelEvaluation", {})],
            "blessing": [("ModelBlessing", {"blessed": int(blessed), "current_model_id": model,
                                            "reason": "blessed" if blessed else "not blessed"})]})
        pushed = None
        if blessed and push:
            version = self.next_version
            self.next_version += 1
            destination = os.path.join(self.serving_dir, str(version))
            self.put_model_files(os.path.join(destination))
            _, out = self.execute(run, "BlessingPusher", {"model": [model], "model_blessing": ev["blessing"]}, {
                "pushed_model": [("PushedModel", {"pushed": 1, "pushed_version": str(version), "model_id": model,
                                                  "pushed_destination": destination, "pushed_at_ms": version})]})
            pushed = out["pushed_model"][0]
            versions = sorted(int(v) for v in os.listdir(self.serving_dir) if v.isdigit())
            for old in versions[:-self.keep_versions]:
                shutil.rmtree(os.path.join(self.serving_dir, str(old)))
        record = {"run": run, "examples": examples, "model": model, "blessing": ev["blessing"][0],
                  "evaluation": ev["evaluation"][0], "transform_graph": tr["transform_graph"][0],
                  "schema": schema["schema"][0], "model_run": model_out["model_run"][0], "pushed": pushed}
        self.cycles.append(record)
        return record

    def latest_blessed(self) -> Optional[int]:
        blessed = [c["model"] for c in self.cycles
                   if self.custom(c["blessing"], "blessed") == 1
                   and self.store.get_artifacts_by_id([c["model"]])[0].state == LIVE]
        return max(blessed) if blessed else None

    def put_model_files(self, folder: str, content: bytes = b"saved model bytes") -> None:
        os.makedirs(os.path.join(folder, "variables"), exist_ok=True)
        with open(os.path.join(folder, "saved_model.pb"), "wb") as f:
            f.write(content)
        with open(os.path.join(folder, "variables", "variables.index"), "wb") as f:
            f.write(content[::-1])

    def artifact(self, artifact_id: int) -> pb.Artifact:
        return self.store.get_artifacts_by_id([artifact_id])[0]

    def custom(self, artifact_id: int, key: str):
        a = self.artifact(artifact_id)
        v = a.custom_properties[key]
        return getattr(v, v.WhichOneof("value"))


def _set(value: pb.Value, python_value) -> None:
    if isinstance(python_value, str):
        value.string_value = python_value
    elif isinstance(python_value, float):
        value.double_value = python_value
    else:
        value.int_value = int(python_value)
