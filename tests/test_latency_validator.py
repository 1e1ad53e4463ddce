"""LatencyValidator: the load test on real SavedModels, and the component in a LocalDagRunner pipeline.

The models are the default model (`pipelines.ads_model`, exported with the
transform graph as the trainer exports it) and the same model with a
deliberately expensive extra layer (tests/latency_helpers.py). Requests are
tf.Examples of the built-in stream in StreamingExampleGen's layout.
"""
import json
import os

import pytest

import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from components.latency_validator import loadtest
from pipelines.config import ConfigError, LatencyConfig
import latency_helpers

LABEL = latency_helpers.SCHEMA.label_field
# The expensive layer: one 2048-wide Dense applied six times to every candidate,
# about 25 GFLOP for 1000 candidates (hundreds of ms here, against a few ms for the default model).
SLOW_REPEATS = 6


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("latency_artifacts")
    examples = str(root / "examples" / "span-3")
    n = latency_helpers.write_eval_examples(examples)
    transform_graph = latency_helpers.write_transform_graph(str(root / "transform_graph"))
    model = latency_helpers.write_model(str(root / "model"), transform_graph)
    slow = latency_helpers.write_model(str(root / "slow_model"), transform_graph, slow_repeats=SLOW_REPEATS)
    return {"examples": examples, "eval_pattern": os.path.join(examples, "Split-eval", "*"), "eval_count": n,
            "transform_graph": transform_graph, "model": model, "slow": slow,
            "model_dir": os.path.join(model, "Format-Serving"), "slow_dir": os.path.join(slow, "Format-Serving")}


# -- fast: configuration, percentiles, requests, the verdict ----------------------------------


@pytest.mark.parametrize("changes, fix", [
    ({"slo_p99_ms": 0}, "slo_p99_ms must be > 0"),
    ({"batch_sizes": ()}, "batch_sizes is empty"),
    ({"batch_sizes": (100, 2000)}, "each must be an int from 1 to latency.candidates_per_request (1000)"),
    ({"batch_sizes": (100, 100)}, "repeats a size"),
    ({"concurrency": 0}, "concurrency must be >= 1"),
    ({"seconds_per_batch_size": 0}, "seconds_per_batch_size must be > 0"),
    ({"candidates_per_request": 0}, "candidates_per_request must be >= 1"),
])
def test_config_errors_name_the_fix(changes, fix):
    with pytest.raises(ConfigError, match=fix.replace("(", r"\(").replace(")", r"\)")):
        LatencyConfig(**changes).validate()


def test_config_round_trips_through_json_and_is_part_of_the_driftline_config():
    from pipelines.config import default_config

    config = LatencyConfig(batch_sizes=(10, 50), candidates_per_request=50, slo_p99_ms=12.5)
    assert LatencyConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert default_config("h").validate().latency == LatencyConfig()
    with pytest.raises(ConfigError, match="latency.concurrency"):
        default_config("h", log_dir="l").replace(latency=LatencyConfig(concurrency=0)).validate()


def test_percentiles_interpolate_between_order_statistics():
    p = loadtest.percentiles_ms(list(range(100, 0, -1)))  # 1..100 ms, in any order
    assert p["p50_ms"] == pytest.approx(50.5) and p["p95_ms"] == pytest.approx(95.05)
    assert p["p99_ms"] == pytest.approx(99.01) and p["max_ms"] == 100 and p["mean_ms"] == pytest.approx(50.5)
    assert loadtest.percentiles_ms([7.0])["p99_ms"] == 7.0
    assert loadtest.percentiles_ms([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None,
                                           "mean_ms": None}


def test_requests_are_cut_round_robin_and_wrap_around():
    examples = [bytes([i]) for i in range(10)]
    requests = loadtest.build_requests(examples, candidates=4, count=3)
    assert requests == [[b"\x00", b"\x01", b"\x02", b"\x03"], [b"\x03", b"\x04", b"\x05", b"\x06"],
                        [b"\x06", b"\x07", b"\x08", b"\x09"]]
    # Fewer examples than a request holds: the request repeats them.
    assert loadtest.build_requests(examples[:3], candidates=7, count=1) == [
        [b"\x00", b"\x01", b"\x02", b"\x00", b"\x01", b"\x02", b"\x00"]]
    with pytest.raises(loadtest.LatencyTestError, match="eval split is empty"):
        loadtest.build_requests([], candidates=4, count=2)


def result(batch_size, p99, errors=0, requests=100):
    return loadtest.BatchSizeResult(
        batch_size=batch_size, calls_per_request=1000 // batch_size, requests=requests, errors=errors,
        wall_seconds=1.0, p50_ms=p99 / 2, p95_ms=p99 * 0.9, p99_ms=p99, max_ms=p99 * 1.1, mean_ms=p99 / 2,
        requests_per_second=float(requests), candidates_per_second=requests * 1000.0,
        first_error="InvalidArgumentError: boom" if errors else "")


def profile(*results, stages=None):
    return loadtest.LatencyProfile(candidates_per_request=1000, concurrency=2, seconds_per_batch_size=1.0,
                                   distinct_requests=8, eval_examples=2000, by_batch_size=list(results),
                                   stages=stages)


def test_verdict_takes_the_best_batch_size_against_the_slo():
    p = profile(result(100, 40.0), result(1000, 8.0),
                stages=loadtest.StageTimes(parse_ms=1.0, parse_transform_ms=1.5, serving_ms=2.0, repeats=10))
    within = loadtest.decide(p, slo_p99_ms=10.0)
    assert within.blessed and within.result.batch_size == 1000
    assert within.reason.startswith("blessed: p99 8.0 ms within the SLO of 10 ms")
    assert "batch size 1000" in within.reason and "parsing 50%, transform graph 25%, model 25%" in within.reason
    above = loadtest.decide(p, slo_p99_ms=5.0)
    assert not above.blessed and above.reason.startswith("not blessed: p99 8.0 ms above the SLO of 5 ms")
    # A failed call anywhere refuses the model, whatever the latency.
    failed = loadtest.decide(profile(result(100, 40.0, errors=1), result(1000, 1.0)), slo_p99_ms=100.0)
    assert not failed.blessed and "failed on replayed eval requests at batch size 100" in failed.reason
    assert "InvalidArgumentError: boom" in failed.reason


def test_stage_shares_split_the_whole_signature():
    st = loadtest.StageTimes(parse_ms=1.2, parse_transform_ms=1.1, serving_ms=4.0, repeats=5)
    # Noise can make parse + transform look faster than parse alone: the share is floored at 0.
    assert st.parse_share == pytest.approx(0.3) and st.transform_share == 0.0
    assert st.model_share == pytest.approx(0.725)


# -- real SavedModels -------------------------------------------------------------------------


def test_eval_examples_are_read_from_gzipped_tfrecords_without_the_label(artifacts):
    import tensorflow as tf

    examples = loadtest.eval_examples(artifacts["eval_pattern"], LABEL, limit=50)
    assert len(examples) == 50
    parsed = [tf.train.Example.FromString(e) for e in examples]
    assert all(LABEL not in p.features.feature and "ad_id" in p.features.feature for p in parsed)
    assert len(loadtest.read_serialized_examples(artifacts["eval_pattern"])) == artifacts["eval_count"]
    with pytest.raises(loadtest.LatencyTestError, match="eval split, which is empty"):
        loadtest.eval_examples(os.path.join(artifacts["examples"], "Split-train", "*"), LABEL, limit=10)


def test_replay_scores_every_candidate_in_calls_of_the_batch_size(artifacts):
    score = loadtest.load_serving_fn(artifacts["model_dir"])
    calls = []

    def counting(batch):
        calls.append(int(batch.shape[0]))
        return score(batch)

    examples = loadtest.eval_examples(artifacts["eval_pattern"], LABEL, limit=200)
    requests = [loadtest.chunk_request(r, 30) for r in loadtest.build_requests(examples, candidates=100, count=4)]
    r = loadtest.replay(counting, requests, candidates=100, batch_size=30, concurrency=2, seconds=0.3)
    assert r.errors == 0 and r.requests >= 2 and r.calls_per_request == 4
    # Warm-up (one request) plus every replayed request, each in calls of 30, 30, 30 and 10.
    assert len(calls) == 4 * (r.requests + 1) and sorted(set(calls)) == [10, 30]
    assert sum(calls) == 100 * (r.requests + 1)
    assert 0 < r.p50_ms <= r.p95_ms <= r.p99_ms <= r.max_ms
    assert r.requests_per_second == pytest.approx(r.requests / r.wall_seconds)
    assert r.candidates_per_second == pytest.approx(100 * r.requests_per_second)
    assert r.wall_seconds >= 0.3


def test_profile_of_the_default_model_has_every_batch_size_and_the_stage_shares(artifacts):
    config = LatencyConfig(candidates_per_request=100, batch_sizes=(25, 100), seconds_per_batch_size=0.3,
                           distinct_requests=4, stage_repeats=5)
    p, verdict = loadtest.validate_model(artifacts["model_dir"], artifacts["eval_pattern"], config, LABEL,
                                         transform_graph_dir=artifacts["transform_graph"])
    assert [r.batch_size for r in p.by_batch_size] == [25, 100]
    assert [r.calls_per_request for r in p.by_batch_size] == [4, 1]
    assert p.eval_examples == 400 and p.best in p.by_batch_size
    st = p.stages
    assert st.repeats == 5 and 0 < st.parse_ms and 0 < st.serving_ms
    assert all(0.0 <= share <= 1.0 for share in (st.parse_share, st.transform_share, st.model_share))
    if st.parse_ms <= st.parse_transform_ms <= st.serving_ms:  # timing noise on a busy machine can reorder them
        assert st.parse_share + st.transform_share + st.model_share == pytest.approx(1.0)
    assert verdict.blessed, verdict.reason  # a few ms, far within the default SLO of 100 ms
    data = json.loads(loadtest.profile_json(p, verdict))
    assert data["blessed"] and data["profile"]["best_batch_size"] == verdict.result.batch_size
    assert set(data["profile"]["stages"]) >= {"parse_share", "transform_share", "model_share"}


def test_the_slow_model_costs_far_more_and_almost_all_of_it_in_the_model(artifacts):
    config = LatencyConfig(batch_sizes=(1000,), seconds_per_batch_size=0.5, distinct_requests=2, stage_repeats=3)
    p, verdict = loadtest.validate_model(artifacts["slow_dir"], artifacts["eval_pattern"], config, LABEL,
                                         transform_graph_dir=artifacts["transform_graph"])
    assert not verdict.blessed and verdict.reason.startswith("not blessed: p99")
    assert verdict.result.p99_ms > config.slo_p99_ms
    assert p.stages.model_share > 0.9  # the extra layer, not the transform, is what is slow


def test_a_model_without_the_serving_contract_is_refused_not_crashed(tmp_path, artifacts):
    import tensorflow as tf

    class FloatIn(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"probability": x}

    m = FloatIn()
    tf.saved_model.save(m, str(tmp_path / "float_in"), signatures={"serving_default": m.serve})
    config = LatencyConfig(candidates_per_request=10, batch_sizes=(10,), seconds_per_batch_size=0.1)
    p, verdict = loadtest.validate_model(str(tmp_path / "float_in"), artifacts["eval_pattern"], config, LABEL)
    assert p is None and not verdict.blessed
    assert "cannot serve" in verdict.reason and "needs exactly one string input" in verdict.reason

    class NeedsMissingFeature(tf.Module):  # takes examples, but requires a feature they lack
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            f = tf.io.parse_example(examples, {"no_such_feature": tf.io.FixedLenFeature([1], tf.float32)})
            return {"probability": f["no_such_feature"]}

    m = NeedsMissingFeature()
    tf.saved_model.save(m, str(tmp_path / "missing"), signatures={"serving_default": m.serve})
    p, verdict = loadtest.validate_model(str(tmp_path / "missing"), artifacts["eval_pattern"], config, LABEL)
    assert not verdict.blessed and p.by_batch_size[0].errors >= 1
    assert "failed on replayed eval requests" in verdict.reason and "no_such_feature" in verdict.reason


# -- the component in a real LocalDagRunner pipeline ------------------------------------------

PIPELINE = "latency-test"


def run_pipeline(home, artifacts, model_key, blessing_props, config, connection=None):
    """Importers for the span's Examples, the TransformGraph, a Model and its ModelBlessing;
    then the LatencyValidator and the BlessingPusher with both blessings. `connection`: ML Metadata's
    (default: SQLite in the home)."""
    from tfx.dsl.components.common.importer import Importer
    from tfx.orchestration import metadata, pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.types import standard_artifacts

    from components.blessing_pusher import BlessingPusher
    from components.latency_validator import LatencyValidator

    examples = Importer(source_uri=artifacts["examples"], artifact_type=standard_artifacts.Examples,
                        properties={"span": 3, "version": 0, "split_names": json.dumps(["train", "eval"])},
                        reimport=False).with_id("examples_importer")
    transform_graph = Importer(source_uri=artifacts["transform_graph"],
                               artifact_type=standard_artifacts.TransformGraph).with_id("transform_graph_importer")
    model = Importer(source_uri=artifacts[model_key], artifact_type=standard_artifacts.Model,
                     reimport=True).with_id("model_importer")
    blessing_uri = os.path.join(home, "blessings", model_key)
    os.makedirs(blessing_uri, exist_ok=True)
    blessing = Importer(source_uri=blessing_uri, artifact_type=standard_artifacts.ModelBlessing, reimport=True,
                        custom_properties=blessing_props).with_id("blessing_importer")
    latency = LatencyValidator(model=model.outputs["result"], examples=examples.outputs["result"],
                               transform_graph=transform_graph.outputs["result"],
                               model_blessing=blessing.outputs["result"], config=config,
                               label_key=LABEL).with_id("LatencyValidator")
    pusher = BlessingPusher(model=model.outputs["result"], model_blessing=blessing.outputs["result"],
                            infra_blessing=latency.outputs["blessing"],
                            serving_dir=os.path.join(home, "serving")).with_id("BlessingPusher")
    LocalDagRunner().run(pipeline.Pipeline(
        pipeline_name=PIPELINE, pipeline_root=os.path.join(home, "root"),
        components=[examples, transform_graph, model, blessing, latency, pusher],
        metadata_connection_config=connection or metadata.sqlite_metadata_connection_config(
            os.path.join(home, "metadata.sqlite"))))


def newest(store, type_name):
    return max(store.get_artifacts_by_type(type_name), key=lambda a: a.id)


@pytest.mark.e2e
def test_slow_model_is_refused_and_not_pushed_while_the_default_model_passes(artifacts, tmp_path):
    from components.blessing_pusher import serving
    from pipelines.metadata import open_store, prop

    home = str(tmp_path / "home")
    # The default SLO (100 ms) at the default request size (1000 candidates), briefly.
    config = LatencyConfig(seconds_per_batch_size=0.5, distinct_requests=2, stage_repeats=5)
    evaluator_says = {"blessed": 1, "reason": "blessed: AUC 0.70"}
    store_path = os.path.join(home, "metadata.sqlite")

    run_pipeline(home, artifacts, "model", evaluator_says, config)
    store = open_store(store_path)
    normal, pushed = newest(store, "InfraBlessing"), newest(store, "PushedModel")
    model_id = newest(store, "Model").id
    assert prop(normal, "blessed") == 1 and prop(normal, "model_id") == model_id, prop(normal, "reason")
    assert os.path.exists(os.path.join(normal.uri, "INFRA_BLESSED"))
    assert prop(normal, "load_tested") == 1 and prop(normal, "candidates_per_request") == 1000
    assert 0 < prop(normal, "p50_ms") <= prop(normal, "p95_ms") <= prop(normal, "p99_ms") <= 100.0
    assert prop(normal, "candidates_per_second") == pytest.approx(1000 * prop(normal, "requests_per_second"))
    assert prop(normal, "batch_size") in (100, 1000)
    for key in ("parse_share", "transform_share", "model_share"):
        assert 0.0 <= prop(normal, key) <= 1.0
    on_disk = json.load(open(os.path.join(normal.uri, loadtest.PROFILE_FILE)))
    assert on_disk == json.loads(prop(normal, "profile_json")) and on_disk["blessed"] is True
    assert [r["batch_size"] for r in on_disk["profile"]["by_batch_size"]] == [100, 1000]
    assert prop(pushed, "pushed") == 1 and serving.versions(os.path.join(home, "serving")) == [1]

    run_pipeline(home, artifacts, "slow", evaluator_says, config)
    store = open_store(store_path)
    slow, pushed = newest(store, "InfraBlessing"), newest(store, "PushedModel")
    assert prop(slow, "blessed") == 0 and prop(slow, "model_id") == newest(store, "Model").id
    assert os.path.exists(os.path.join(slow.uri, "INFRA_NOT_BLESSED"))
    assert prop(slow, "p99_ms") > 100.0 and prop(slow, "p99_ms") > 10 * prop(normal, "p99_ms")
    assert prop(slow, "reason").startswith("not blessed: p99") and "above the SLO of 100 ms" in prop(slow, "reason")
    # The pusher honours it: nothing pushed, serving untouched, the reason on the PushedModel.
    assert prop(pushed, "pushed") == 0 and serving.versions(os.path.join(home, "serving")) == [1]
    assert "infra_blessing" in prop(pushed, "reason") and "above the SLO of 100 ms" in prop(pushed, "reason")

    # A candidate the evaluator refused is not load-tested, and says why.
    run_pipeline(home, artifacts, "model", {"blessed": 0, "reason": "not blessed: AUC 0.51"}, config)
    store = open_store(store_path)
    skipped = newest(store, "InfraBlessing")
    assert prop(skipped, "blessed") == 0 and prop(skipped, "load_tested") == 0
    assert prop(skipped, "reason") == "not load-tested: the evaluator did not bless it (not blessed: AUC 0.51)"
    assert prop(skipped, "p99_ms") is None


# -- lineage and status show the latency next to the accuracy -----------------------------------


def test_lineage_reads_the_latency_validators_infra_blessings(tmp_path):
    from ml_metadata.proto import metadata_store_pb2 as pb

    from pipelines import lineage
    from pipelines.metadata import open_store

    path = str(tmp_path / "metadata.sqlite")
    store = open_store(path)
    types = {name: store.put_artifact_type(pb.ArtifactType(name=name)) for name in ("Model", "InfraBlessing")}
    [ctx] = store.put_contexts([pb.Context(type_id=store.put_context_type(pb.ContextType(name="pipeline")),
                                           name="p")])

    def put(type_name, **props):
        a = pb.Artifact(type_id=types[type_name], uri=f"/{type_name}", state=pb.Artifact.LIVE)
        for key, value in props.items():
            field = {str: "string_value", float: "double_value", int: "int_value"}[type(value)]
            setattr(a.custom_properties[key], field, value)
        [aid] = store.put_artifacts([a])
        store.put_attributions_and_associations([pb.Attribution(artifact_id=aid, context_id=ctx)], [])
        return aid

    fast = put("Model", start="cold", base_model_id=-1)
    refused = put("Model", start="warm", base_model_id=fast)
    skipped = put("Model", start="warm", base_model_id=fast)
    put("InfraBlessing", blessed=1)  # a stock InfraValidator's: no model_id, not ours
    put("InfraBlessing", blessed=1, model_id=fast, load_tested=1, reason="blessed: p99 6.0 ms within ...",
        slo_p99_ms=100.0, candidates_per_request=1000, batch_size=1000, p50_ms=2.1, p95_ms=4.0, p99_ms=6.0,
        requests_per_second=800.0, candidates_per_second=800000.0, parse_share=0.7, transform_share=0.1,
        model_share=0.2)
    put("InfraBlessing", blessed=0, model_id=refused, load_tested=1, reason="not blessed: p99 950.0 ms above ...",
        slo_p99_ms=100.0, candidates_per_request=1000, batch_size=1000, p50_ms=700.0, p95_ms=900.0, p99_ms=950.0,
        requests_per_second=2.5, candidates_per_second=2500.0)
    put("InfraBlessing", blessed=0, model_id=skipped, load_tested=0,
        reason="not load-tested: the evaluator did not bless it (not blessed: AUC 0.4)", slo_p99_ms=100.0,
        candidates_per_request=1000)

    by_id = {m.model_id: m for m in lineage.models(path, "p")}
    assert by_id[fast].latency == lineage.LatencyRecord(
        blessed=True, reason="blessed: p99 6.0 ms within ...", load_tested=True, slo_p99_ms=100.0,
        candidates_per_request=1000, batch_size=1000, p50_ms=2.1, p95_ms=4.0, p99_ms=6.0, requests_per_second=800.0,
        candidates_per_second=800000.0, parse_share=0.7, transform_share=0.1, model_share=0.2)
    assert by_id[skipped].latency.p99_ms is None and not by_id[skipped].latency.load_tested
    assert by_id[fast].latency.describe() == ("p50 2.1 / p99 6.0 ms for 1000 candidates, 800 requests/s (SLO 100 ms); "
                                              "parsing 70%, transform 10%, model 20%")

    text = lineage.format_lineage([by_id[skipped], by_id[refused], by_id[fast]])
    rows = {int(line.split()[0]): line for line in text.splitlines() if line.split() and line.split()[0].isdigit()}
    assert "2.1/6.0" in rows[fast] and "800,000" in rows[fast] and " ok " in rows[fast]
    assert "700.0/950.0" in rows[refused] and "SLOW" in rows[refused]
    assert "skipped" in rows[skipped]
    assert "  latency: not load-tested: the evaluator did not bless it (not blessed: AUC 0.4)" in text
    data = json.loads(lineage.to_json(lineage.lineage_to_dict([by_id[fast]])))
    assert data["chain"][0]["latency"]["p99_ms"] == 6.0 and data["chain"][0]["latency"]["candidates_per_second"] == 8e5


@pytest.mark.e2e
def test_every_cycle_of_the_continuous_run_is_load_tested_and_shown(continuous_run, capsys):
    """The five cycles of tests/conftest.py ran the LatencyValidator with the default LatencyConfig."""
    from pipelines import lineage
    from pipelines.cli import main

    config, reports = continuous_run["config"], continuous_run["reports"]
    by_id = {m.model_id: m for m in lineage.models(config.metadata_path, config.pipeline_name)}
    for r in reports:
        lat = by_id[r.model_id].latency
        assert lat is not None and lat.blessed == r.latency_blessed and lat.reason == r.latency_reason
        if r.blessed:
            # The default model, 1000 candidates, default SLO: it passes, with every figure recorded.
            assert lat.blessed and lat.load_tested, lat.reason
            assert 0 < lat.p50_ms <= lat.p95_ms <= lat.p99_ms <= LatencyConfig().slo_p99_ms
            assert lat.p99_ms == pytest.approx(r.latency_p99_ms)
            assert lat.candidates_per_request == 1000 and lat.candidates_per_second > 0
            assert lat.parse_share is not None and lat.transform_share is not None
        else:  # the poisoned span's candidate: the evaluator refused it, so it was not load-tested
            assert not lat.blessed and not lat.load_tested and lat.p99_ms is None
            assert lat.reason.startswith("not load-tested: the evaluator did not bless it (not blessed")
    assert reports[2].blessed is False and reports[2].latency_blessed is False

    assert main(["lineage", "--home", config.home, "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)["chain"]
    assert chain and all(m["latency"]["p99_ms"] > 0 and m["latency"]["blessed"] for m in chain)
    assert main(["lineage", "--home", config.home]) == 0
    out = capsys.readouterr().out
    assert "p50/p99 ms" in out and "cand/s" in out and "  latency: blessed: p99 " in out
    assert main(["status", "--home", config.home]) == 0
    assert "  latency:     p50 " in capsys.readouterr().out
