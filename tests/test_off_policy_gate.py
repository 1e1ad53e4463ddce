"""The off-policy estimate through the evaluator's executor, on a real joined span.

The test writes what an exploring server and its users would: an impressions log in the server's format
with issue 22's fields (every candidate of each rank request: request_id, position, greedy_position,
explored, propensity, arm) and an outcomes log of the shown ads' clicks; the real join
(`join_run.run_join`, the closed loop's JoinConfig) makes the span's Examples and its properties; the
candidate is a real SavedModel of the default model (conftest's `serve_models`). DriftlineEvaluator's
executor runs TFMA and the gate on it, and the estimate it records in the ModelEvaluation and the
ModelBlessing is checked against one computed here, from the generator's own clicks and the candidate's
scores as the server's loader (`pipelines.serve.model_store`) gives them.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

SPAN_MS = 60_000
SPAN = 29_400_000  # 2025-11-24 UTC, in spans of a minute
N, K, EPS = 5, 2, 0.3
REQUESTS = 2000
EVAL_FRACTION = 0.2


def _write_logs(imp_dir, out_dir, rng):
    """The span's requests (event times spread over it) and the clicks on what was shown; returns the truth."""
    from components import event_log
    from serve_helpers import events

    pool = events(600, seed=5)
    start = SPAN * SPAN_MS
    cut = start + int(SPAN_MS * (1 - EVAL_FRACTION))
    imps, outs, requests = [], [], []
    for r in range(REQUESTS):
        t = int(start + (r + 0.5) * SPAN_MS / REQUESTS)
        ctx = pool[rng.integers(len(pool))]
        ads = [pool[i] for i in rng.choice(len(pool), N, replace=False)]
        arm = "challenger" if rng.random() < 0.1 else "champion"
        greedy = list(rng.permutation(N))  # the arm's score order: item index at each greedy place
        explored = bool(rng.random() < EPS)
        order = list(rng.permutation(N)) if explored else greedy
        items = []
        for i, ad in enumerate(ads):
            pos, g = order.index(i), greedy.index(i)
            line = {"event_id": f"r{r}-{i}", "event_time": t, "user_id": ctx["user_id"], "device": ctx["device"],
                    "hour_of_day": ctx["hour_of_day"], "ad_id": ad["ad_id"], "ad_category": ad["ad_category"],
                    "price": ad["price"], "request_id": f"q{r}", "model_version": 1, "score": float(-g),
                    "position": pos, "arm": arm, "arm_propensity": 0.9 if arm == "champion" else 0.1,
                    "greedy_position": g, "explored": int(explored),
                    "propensity": (1 - EPS) * (pos == g) + EPS / N}
            clicked = None
            if pos < K:
                clicked = int(rng.random() < 0.1 + 0.3 * (ad["price"] > 2.0) + 0.2 * (ctx["device"] == "mobile"))
                if clicked:
                    outs.append({"outcome_id": f"o{r}-{i}", "impression_id": line["event_id"],
                                 "event_time": t + 1000, "outcome_type": "click"})
            items.append((line, clicked))
            imps.append(line)
        requests.append({"t": t, "arm": arm, "eval": t >= cut, "items": items})
    # Traffic past the span's end plus the attribution window moves both watermarks, so the span is emitted.
    late = start + SPAN_MS + 15_000
    imps.append(dict(imps[0], event_id="later", event_time=late, request_id="later", position=0, greedy_position=0))
    outs.append({"outcome_id": "o-later", "impression_id": "later", "event_time": late, "outcome_type": "click"})
    with event_log.EventLogWriter(imp_dir) as w:
        w.write_events(imps)
    with event_log.EventLogWriter(out_dir) as w:
        w.write_events(outs)
    return requests


@pytest.fixture(scope="module")
def span(tmp_path_factory, serve_models):
    from components.streaming_example_gen import ingest, join, join_run, windowing
    from pipelines.population import PopulationConfig, closed_loop_join
    from pipelines.simulator import SimulatorConfig

    root = str(tmp_path_factory.mktemp("ope_span"))
    imp_dir, out_dir = os.path.join(root, "impressions"), os.path.join(root, "outcomes")
    requests = _write_logs(imp_dir, out_dir, np.random.default_rng(7))
    config = closed_loop_join(imp_dir, out_dir, PopulationConfig(world=SimulatorConfig(), origin_ms=0, candidates=N,
                                                                 shown=K))
    window = windowing.Window(span_ms=SPAN_MS, allowed_lateness_ms=0, eval_fraction=EVAL_FRACTION)
    run = join_run.run_join(config, window, join.JoinState(), os.path.join(root, "examples"))
    assert SPAN in run.result.emitted_spans
    props = join_run.span_properties(run, window, SPAN, config)
    model_uri = os.path.join(root, "model")
    shutil.copytree(serve_models[1], os.path.join(model_uri, "Format-Serving"))
    return {"root": root, "config": config, "props": props, "requests": requests, "model_uri": model_uri,
            "examples_uri": ingest.span_dir(os.path.join(root, "examples"), SPAN)}


def _expected(span):
    """IPS, SNIPS, DR and the served CTR per shown slot, from the generator's clicks, computed here."""
    from components.event_schema import ad_click_schema
    from pipelines.serve.model_store import load_saved_model

    model = load_saved_model(os.path.join(span["model_uri"], "Format-Serving"), 1, ad_click_schema())
    used = [q for q in span["requests"] if q["arm"] == "champion" and q["eval"]]
    lines = [line for q in used for line, _ in q["items"]]
    scores = model.predict({name: [line[name] for line in lines] for name in model.inputs}).astype(float)
    ips = snips_w = dr = served = slots = 0.0
    for r, q in enumerate(used):
        s = scores[r * N:(r + 1) * N]
        top = set(np.argsort(-s, kind="stable")[:K])
        for i, (line, clicked) in enumerate(q["items"]):
            p_shown = (1 - EPS) * (line["greedy_position"] < K) + EPS * K / N
            shown = line["position"] < K
            y = float(clicked) if shown else 0.0
            served += y
            slots += shown
            if i in top:
                dr += s[i]
                if shown:
                    ips += y / p_shown
                    snips_w += 1 / p_shown
                    dr += (y - s[i]) / p_shown
    return {"requests": len(used), "explored": sum(q["items"][0][0]["explored"] for q in used),
            "ips": ips / slots, "snips": ips / snips_w, "dr": dr / slots, "served": served / slots}


def _examples_artifact(span):
    from tfx.types import artifact_utils, standard_artifacts

    from components import mlmd_vocabulary as vocab

    a = standard_artifacts.Examples()
    a.uri = span["examples_uri"]
    a.span, a.version, a.id = SPAN, 0, 11
    a.split_names = artifact_utils.encode_split_names(["train", "eval"])
    vocab.set_custom_properties(a, span["props"])
    return a


def test_the_estimate_in_the_model_evaluation_and_the_gate_refusing_on_it(span, tmp_path):
    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import standard_artifacts

    from components.evaluator.config import GateConfig
    from components.evaluator.executor import Executor
    from components.streaming_example_gen.join_component import join_config_to_json
    from pipelines.config import BeamConfig

    want = _expected(span)
    assert want["explored"] >= 50 and want["requests"] > 300
    # An impossible minimum (5x the served CTR), so the refusal is the estimate's doing; the absolute bounds
    # are loosened for the untrained model.
    gate = GateConfig(off_policy_min_ratio=5.0, off_policy_min_explored_requests=20, off_policy_bootstrap=200,
                      min_auc=0.0, min_slice_auc=0.0, min_calibration=0.01, max_calibration=100.0,
                      max_log_loss_factor=100.0, max_auc_interval_width=1.0, slice_feature=None)
    model = standard_artifacts.Model()
    model.uri, model.id = span["model_uri"], 21
    evaluation = standard_artifacts.ModelEvaluation()
    evaluation.uri = str(tmp_path / "evaluation")
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    os.makedirs(blessing.uri)
    context = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=BeamConfig(direct_num_workers=1).args(), tmp_dir=str(tmp_path / "tmp"), unique_id="1")
    Executor(context).Do({"examples": [_examples_artifact(span)], "model": [model]},
                         {"evaluation": [evaluation], "blessing": [blessing]},
                         {"gate_config": json.dumps(gate.to_dict()), "label_key": "clicked", "eval_split": "eval",
                          "join_config": join_config_to_json(span["config"])})

    with open(os.path.join(evaluation.uri, "off_policy.json")) as f:
        record = json.load(f)
    assert json.loads(evaluation.get_string_custom_property("off_policy_json")) == record
    assert os.listdir(evaluation.uri) != ["off_policy.json"]  # beside TFMA's own output
    assert record["requests"] == want["requests"] and record["explored_requests"] == want["explored"]
    # The train split's requests (earlier in the span) are not read: the candidate trained on them.
    assert record["requests_read"] == sum(q["eval"] for q in span["requests"]) < REQUESTS
    assert record["skipped"]["challenger_arm"] == sum(q["arm"] == "challenger" and q["eval"] for q in span["requests"])
    assert record["skipped"]["unlabelled"] == 0
    for name in ("ips", "snips", "dr"):
        est = record["estimates"][name]
        assert est["estimate"] == pytest.approx(want[name], rel=1e-5), name
        assert est["lower"] < est["estimate"] < est["upper"]
    assert record["served"]["estimate"] == pytest.approx(want["served"], rel=1e-9)
    assert record["ratios"]["snips"]["estimate"] == pytest.approx(want["snips"] / want["served"], rel=1e-5)

    verdict = json.loads(blessing.get_string_custom_property("verdict_json"))
    assert not verdict["blessed"] and verdict["failed_checks"] == ["off_policy_min_ratio"]
    assert verdict["off_policy"]["gated"] is True and "off-policy SNIPS" in verdict["reason"]
    assert blessing.get_float_custom_property("off_policy_ctr") == pytest.approx(want["snips"], rel=1e-5)
    assert blessing.get_float_custom_property("served_ctr") == pytest.approx(want["served"], rel=1e-9)
    assert blessing.get_float_custom_property("off_policy_ratio_lower") == record["ratios"]["snips"]["lower"]
    assert blessing.get_int_custom_property("off_policy_explored_requests") == want["explored"]


def test_estimate_span_says_why_when_it_cannot_estimate(span, tmp_path):
    from components.evaluator import off_policy_run
    from components.evaluator.config import GateConfig

    config, gate = span["config"], GateConfig(off_policy_bootstrap=100)
    args = (config.impressions.log_dir, config.impressions.schema)
    model = os.path.join(span["model_uri"], "Format-Serving")
    no_k = off_policy_run.estimate_span(*args, None, "position", span["examples_uri"], span["props"], "eval",
                                        "clicked", model, gate)
    assert "join.max_position is unset" in no_k["why"]
    # Another span's time range: no request of the log falls in it.
    other = dict(span["props"], span_start_ms=0, span_end_ms=SPAN_MS)
    empty = off_policy_run.estimate_span(*args, K, "position", span["examples_uri"], other, "eval", "clicked",
                                         model, gate)
    assert empty["requests_read"] == 0 and "no usable request among 0" in empty["why"]


def test_status_and_lineage_show_the_estimate(tmp_path):
    """A blessing whose verdict (the gate's own, from `decide`) carries an off-policy record, in real SQLite ML
    Metadata: `driftline status` shows the newest estimate, `lineage` the model's."""
    from components.evaluator import gate as gate_lib
    from components.evaluator.config import GateConfig
    from mlmd_history import History, _set
    from pipelines import lineage
    from pipelines.config import default_config

    record = {"estimates": {"snips": {"estimate": 0.0312, "lower": 0.0281, "upper": 0.035}},
              "served": {"estimate": 0.03, "lower": 0.029, "upper": 0.031},
              "ratios": {"snips": {"estimate": 1.04, "lower": 0.94, "upper": 1.15}}, "requests": 812,
              "explored_requests": 140, "confidence": 0.95, "estimator": "snips"}
    metrics = {"overall": {"auc": 0.8, "example_count": 5000, "positive_count": 1000, "calibration": 1.0,
                           "log_loss": 0.4, "mean_label": 0.2, "mean_prediction": 0.2, "auc_se": 0.005}, "slices": {}}
    verdict = gate_lib.decide(metrics, None, GateConfig(slice_feature=None, off_policy_min_ratio=0.9),
                              off_policy=record)
    history = History(str(tmp_path))
    history.cycle()
    newest = history.cycle()
    artifact = history.store.get_artifacts_by_id([newest["blessing"]])[0]
    _set(artifact.custom_properties["verdict_json"], verdict.to_json())
    history.store.put_artifacts([artifact])

    st = lineage.status(default_config(str(tmp_path)))
    assert st.off_policy_model_id == newest["model"] and st.off_policy["gated"] is True
    text = lineage.format_status(st)
    want = ("SNIPS CTR 0.0312 [0.0281, 0.0350] vs served 0.0300 [0.0290, 0.0310]: ratio 1.04 (lower 0.94) on 812 "
            "requests (140 explored); gated")
    assert f"off-policy:  model {newest['model']}: {want}" in text
    records = lineage.models(history.store, "driftline")
    chain = lineage.chain(None, "driftline", model_id=newest["model"], records=records)
    assert f"  off-policy: {want}" in lineage.format_lineage(chain)
    assert json.loads(lineage.to_json(st))["off_policy"]["requests"] == 812  # status --json
