"""Google Cloud: the compiled Vertex AI PipelineJob spec, the Dataflow arguments, and `driftline submit`.

The spec is compiled for real with TFX's KubeflowV2DagRunner and read back as
the JSON Vertex would receive. What runs on Vertex is exercised through TFX's
own container entrypoint (`kubeflow_v2_run_executor`), in-process, with the
executor input Vertex would hand a task: our executors with the artifact
metadata Vertex carries (numbers as doubles, ids as resource names). No
Vertex job, no Dataflow job and no image build happen here.
"""
import argparse
import dataclasses
import json
import os

import pytest

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from kafka_broker import tansu  # noqa: F401  (the session fixture)
from pipelines.config import IMAGE_SETUP_FILE, CloudConfig, ConfigError, GateConfig, default_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "gs://driftline-test-bucket"
IMAGE = "europe-docker.pkg.dev/driftline-test/ct/driftline:0.1.0"
RUN_EXECUTOR = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
EXECUTORS = {
    "StreamingExampleGen": "components.streaming_example_gen.executor.Executor",
    "EventSchemaGen": "components.event_schema_gen.executor.Executor",
    "Transform": "tfx.components.transform.executor.Executor",
    "WarmStartTrainer": "components.warm_start_trainer.executor.Executor",
    "Evaluator": "components.evaluator.executor.Executor",
    "LatencyValidator": "components.latency_validator.executor.Executor",
    "BlessingPusher": "components.blessing_pusher.executor.Executor",
}
BEAM_COMPONENTS = ("StreamingExampleGen", "Transform", "Evaluator")
BLESSING_RESOLVER = "latest_blessed_model_resolver-model-blessing-resolver"
MODEL_RESOLVER = "latest_blessed_model_resolver-model-resolver"


def cloud_config(**cloud):
    settings = dict(project="driftline-test", region="europe-west4", image=IMAGE)
    settings.update(cloud)
    return default_config(f"{BUCKET}/home", log_dir=f"{BUCKET}/events").replace(cloud=CloudConfig(**settings))


def compile_to(config, path):
    from pipelines.vertex import compile_spec

    returned = compile_spec(config, str(path))
    with open(path) as f:
        written = json.load(f)
    assert written == returned
    return written


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return compile_to(cloud_config(), tmp_path_factory.mktemp("spec") / "pipeline.json")


def tasks(spec):
    return spec["pipelineSpec"]["root"]["dag"]["tasks"]


def executor_of(spec, task):
    component = spec["pipelineSpec"]["components"][tasks(spec)[task]["componentRef"]["name"]]
    return spec["pipelineSpec"]["deploymentSpec"]["executors"][component["executorLabel"]]


def param(spec, task, name):
    value = tasks(spec)[task]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]
    kind, raw = next(iter(value.items()))
    return int(raw) if kind == "intValue" else raw


def producer(spec, task, key):
    source = tasks(spec)[task]["inputs"]["artifacts"][key]["taskOutputArtifact"]
    return source["producerTask"], source["outputArtifactKey"]


# -- the compiled spec -------------------------------------------------------------------------------------------


def test_every_component_is_a_container_task_running_its_executor_in_the_image(spec):
    from tfx.utils import import_utils

    assert set(EXECUTORS) <= set(tasks(spec))
    for task, executor_path in EXECUTORS.items():
        container = executor_of(spec, task)["container"]
        assert container["image"] == IMAGE
        assert container["command"] == RUN_EXECUTOR
        args = container["args"]
        assert args[args.index("--executor_class_path") + 1] == executor_path
        # The container imports it by this dotted path.
        assert import_utils.import_class_by_path(executor_path).__name__ == "Executor"


def test_beam_components_run_on_dataflow_in_the_same_image(spec):
    for task in BEAM_COMPONENTS:
        args = executor_of(spec, task)["container"]["args"]
        assert "--runner=DataflowRunner" in args
        assert "--project=driftline-test" in args and "--region=europe-west4" in args
        assert f"--temp_location={BUCKET}/home/tmp" in args
        assert f"--sdk_container_image={IMAGE}" in args
        assert not any(a.startswith(("--setup_file", "--direct_")) for a in args)


def test_setup_file_packaging_names_the_images_copy_of_setup_py(tmp_path):
    spec = compile_to(cloud_config(dataflow_packaging="setup_file", machine_type="n2-standard-4",
                                   max_num_workers=8), tmp_path / "p.json")
    for task in BEAM_COMPONENTS:
        args = executor_of(spec, task)["container"]["args"]
        assert f"--setup_file={IMAGE_SETUP_FILE}" in args
        assert "--machine_type=n2-standard-4" in args and "--max_num_workers=8" in args
        assert not any(a.startswith("--sdk_container_image") for a in args)


def test_resolvers_wire_the_latest_blessed_model_into_base_model_and_baseline(spec):
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    blessing_query = executor_of(spec, BLESSING_RESOLVER)["resolver"]["outputArtifactQueries"]["model_blessing"]
    assert blessing_query["filter"] == ('schema_title="tfx.ModelBlessing" AND state=LIVE AND '
                                        'metadata.blessed.number_value=1')
    model_query = executor_of(spec, MODEL_RESOLVER)["resolver"]["outputArtifactQueries"]["model"]
    assert "schema_title=\"tfx.Model\"" in model_query["filter"]
    assert "metadata['current_model_id']" in model_query["filter"]
    assert producer(spec, MODEL_RESOLVER, "input") == (BLESSING_RESOLVER, "model_blessing")
    assert producer(spec, "WarmStartTrainer", "base_model") == (MODEL_RESOLVER, "model")
    assert producer(spec, "Evaluator", "baseline_model") == (MODEL_RESOLVER, "model")
    assert producer(spec, "Evaluator", "model") == ("WarmStartTrainer", "model")
    assert producer(spec, "BlessingPusher", "model_blessing") == ("Evaluator", "blessing")
    assert len([e for e in executors.values() if "resolver" in e]) == 3


def test_the_latency_validator_sits_between_the_evaluator_and_the_pusher(spec):
    assert producer(spec, "LatencyValidator", "model") == ("WarmStartTrainer", "model")
    assert producer(spec, "LatencyValidator", "examples") == ("StreamingExampleGen", "examples")
    assert producer(spec, "LatencyValidator", "transform_graph") == ("Transform", "transform_graph")
    assert producer(spec, "LatencyValidator", "model_blessing") == ("Evaluator", "blessing")
    assert producer(spec, "BlessingPusher", "infra_blessing") == ("LatencyValidator", "blessing")
    component = spec["pipelineSpec"]["components"][tasks(spec)["LatencyValidator"]["componentRef"]["name"]]
    # An InfraBlessing: the latest-blessed-model resolver's query takes only ModelBlessings.
    assert component["outputDefinitions"]["artifacts"]["blessing"]["artifactType"]["instanceSchema"].startswith(
        "title: tfx.InfraBlessing\n")
    assert json.loads(param(spec, "LatencyValidator", "latency_config")) == cloud_config().latency.to_dict()
    assert param(spec, "LatencyValidator", "label_key") == "clicked"


def test_without_the_latency_validator_the_pusher_takes_the_evaluators_blessing_alone(tmp_path):
    config = cloud_config()
    spec = compile_to(config.replace(latency=dataclasses.replace(config.latency, enabled=False)),
                      tmp_path / "p.json")
    assert "LatencyValidator" not in tasks(spec)
    assert "infra_blessing" not in tasks(spec)["BlessingPusher"]["inputs"]["artifacts"]
    assert producer(spec, "BlessingPusher", "model_blessing") == ("Evaluator", "blessing")


def test_the_newest_examples_carry_the_position_and_the_replay_window(spec):
    query = executor_of(spec, "latest_examples_resolver")["resolver"]["outputArtifactQueries"]["examples"]
    assert query["filter"] == 'schema_title="tfx.Examples" AND state=LIVE'
    assert producer(spec, "StreamingExampleGen", "previous_examples") == ("latest_examples_resolver", "examples")
    assert producer(spec, "WarmStartTrainer", "replay_examples") == ("latest_examples_resolver", "examples")
    assert param(spec, "StreamingExampleGen", "driverless") == 1
    assert param(spec, "WarmStartTrainer", "replay_judged_only") == 1
    # The stock resolvers only: the local replay resolver's custom strategy does not compile for Vertex.
    assert "replay_resolver" not in tasks(spec)
    assert "carried_eval_resolver" not in tasks(spec)  # so no carried eval splits there (README)
    assert producer(spec, "Transform", "schema") == ("EventSchemaGen", "schema")


def test_parameters_come_from_the_configuration(spec):
    config = cloud_config()
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == config.pipeline_root == f"{BUCKET}/home/pipeline_root"
    assert spec["displayName"] == "driftline"
    assert param(spec, "StreamingExampleGen", "log_dir") == f"{BUCKET}/events"
    assert param(spec, "StreamingExampleGen", "span_seconds") == 600
    assert param(spec, "StreamingExampleGen", "allowed_lateness_seconds") == config.window.allowed_lateness_seconds
    assert json.loads(param(spec, "StreamingExampleGen", "event_schema"))["name"] == "ad_clicks"
    assert json.loads(param(spec, "EventSchemaGen", "event_schema")) == json.loads(
        config.source.schema.to_json())
    assert json.loads(param(spec, "Evaluator", "gate_config")) == config.gate.to_dict()
    assert param(spec, "Evaluator", "label_key") == "clicked"
    assert json.loads(param(spec, "WarmStartTrainer", "trainer_config")) == config.trainer.to_dict()
    assert param(spec, "BlessingPusher", "serving_dir") == f"{BUCKET}/home/serving"
    assert param(spec, "BlessingPusher", "keep_versions") == 5
    assert param(spec, "Transform", "preprocessing_fn") == "transforms.stream.preprocessing_fn"
    # Ingestion validated every event against the event schema: no TFDV statistics per span.
    assert param(spec, "Transform", "disable_statistics") == 1
    # An unbounded log: a run must never be answered from a cache.
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks(spec).values())


def test_a_change_of_configuration_shows_up_in_the_spec(spec, tmp_path):
    base = cloud_config()
    changed = base.replace(window=dataclasses.replace(base.window, span_seconds=300),
                           gate=GateConfig(min_auc=0.7),
                           cloud=dataclasses.replace(base.cloud, image="europe-docker.pkg.dev/p/r/driftline:0.2.0"))
    other = compile_to(changed, tmp_path / "changed.json")
    assert param(other, "StreamingExampleGen", "span_seconds") == 300
    assert json.loads(param(other, "Evaluator", "gate_config"))["min_auc"] == 0.7
    assert json.loads(param(spec, "Evaluator", "gate_config"))["min_auc"] == 0.6
    for task in EXECUTORS:
        assert executor_of(other, task)["container"]["image"] == "europe-docker.pkg.dev/p/r/driftline:0.2.0"
    for task in BEAM_COMPONENTS:
        assert "--sdk_container_image=europe-docker.pkg.dev/p/r/driftline:0.2.0" in \
            executor_of(other, task)["container"]["args"]
    # Nothing else moved: same tasks, same wiring.
    assert set(tasks(other)) == set(tasks(spec))
    for task in tasks(spec):
        assert tasks(other)[task].get("dependentTasks") == tasks(spec)[task].get("dependentTasks")


def test_the_local_pipeline_does_not_compile_for_vertex(tmp_path):
    """Why there is a Vertex target: the local resolvers' custom strategies (the pin-aware base model, the replay
    window, the carried eval splits) have no Vertex form."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as kv2

    from pipelines.pipeline import create_pipeline

    config = default_config(str(tmp_path / "home"))
    runner = kv2.KubeflowV2DagRunner(kv2.KubeflowV2DagRunnerConfig(default_image=IMAGE), output_dir=str(tmp_path))
    with pytest.raises(TypeError, match="PinnedOrLatestBlessedModelStrategy|LatestSpansStrategy|CarriedEvalSpansStrategy"):
        runner.run(create_pipeline(config), write_out=False)


def test_compiling_for_vertex_names_every_missing_setting():
    config = default_config("/tmp/local-home")
    with pytest.raises(ConfigError) as info:
        config.validate_for_vertex()
    message = str(info.value)
    for fix in ("cloud.image (--image) is empty", "cloud.project (--project) is empty",
                "cloud.region (--region) is empty", "home (--home) is '/tmp/local-home'",
                "source.log_dir (--log)", "pusher.serving_dir", "gs://"):
        assert fix in message
    with pytest.raises(ConfigError, match="cloud.beam_runner must be one of"):
        cloud_config(beam_runner="SparkRunner").validate_for_vertex()


def test_beam_steps_can_run_inside_the_vertex_task(tmp_path):
    spec = compile_to(cloud_config(beam_runner="DirectRunner"), tmp_path / "direct.json")
    args = executor_of(spec, "Transform")["container"]["args"]
    assert "--runner=DirectRunner" in args and f"--setup_file={IMAGE_SETUP_FILE}" in args
    assert not any(a.startswith("--project") for a in args)


# -- Dataflow arguments ------------------------------------------------------------------------------------------


def test_dataflow_args_from_the_same_configuration():
    from pipelines.config import BeamConfig, driftline_setup_file

    config = cloud_config(service_account="runner@driftline-test.iam.gserviceaccount.com", disk_size_gb=50,
                          subnetwork="regions/europe-west4/subnetworks/default")
    assert config.dataflow_args() == [
        "--runner=DataflowRunner", "--project=driftline-test", "--region=europe-west4",
        f"--temp_location={BUCKET}/home/tmp", f"--sdk_container_image={IMAGE}",
        "--service_account_email=runner@driftline-test.iam.gserviceaccount.com", "--disk_size_gb=50",
        "--subnetwork=regions/europe-west4/subnetworks/default"]
    # From this checkout (a local orchestrator with Dataflow steps): this repository's setup.py.
    local = cloud_config(dataflow_packaging="setup_file", temp_location=f"{BUCKET}/scratch")
    assert local.dataflow_args()[3:] == [f"--temp_location={BUCKET}/scratch",
                                         f"--setup_file={driftline_setup_file()}"]
    assert driftline_setup_file() == os.path.join(REPO_ROOT, "setup.py")
    # beam.runner=DataflowRunner makes the local pipeline's Beam steps Dataflow's; extra args come last.
    on_dataflow = config.replace(beam=BeamConfig(runner="DataflowRunner", extra_args=("--num_workers=2",)))
    assert on_dataflow.beam_args() == config.dataflow_args() + ["--num_workers=2"]
    assert default_config("/tmp/h").beam_args() == BeamConfig().args()


def test_dataflow_args_say_what_is_missing():
    with pytest.raises(ConfigError) as info:
        default_config("/tmp/h").dataflow_args()
    for fix in ("cloud.project (--project) is empty", "cloud.region (--region) is empty",
                "cloud.image (--image) is empty"):
        assert fix in str(info.value)
    local_home = default_config("/tmp/h").replace(cloud=CloudConfig(project="p", region="r", image="i"))
    with pytest.raises(ConfigError, match="temp_location '/tmp/h/tmp' is not a gs:// path"):
        local_home.dataflow_args()
    with pytest.raises(ConfigError, match="cloud.dataflow_packaging must be one of"):
        cloud_config(dataflow_packaging="wheel").dataflow_args()


# -- driftline compile / submit -----------------------------------------------------------------------------------


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """An environment with no Application Default Credentials, project or region (as on this machine)."""
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT",
                 "GOOGLE_CLOUD_REGION", "CLOUDSDK_COMPUTE_REGION", "GCLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    # gcloud's own credential file would count as credentials: point gcloud at an empty config.
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    import google.auth.compute_engine._metadata as gce

    monkeypatch.setattr(gce, "_NO_GCE_CHECK", True)
    return tmp_path


def run_cli(capsys, *argv):
    from pipelines.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compile_command_writes_the_spec(tmp_path, capsys):
    out = tmp_path / "pipeline.json"
    code, stdout, _ = run_cli(capsys, "compile", "--target", "vertex", "--out", str(out), "--home",
                              f"{BUCKET}/home", "--log", f"{BUCKET}/events", "--project", "driftline-test",
                              "--region", "europe-west4", "--image", IMAGE, "--span-seconds", "300")
    assert code == 0
    spec = json.loads(out.read_text())
    assert param(spec, "StreamingExampleGen", "span_seconds") == 300
    assert f"driftline submit --spec {out} --project driftline-test --region europe-west4" in stdout
    code, _, err = run_cli(capsys, "compile", "--target", "vertex", "--out", str(out), "--home", str(tmp_path))
    assert code == 2 and "cloud.image (--image) is empty" in err and "gs://" in err


def test_submit_without_credentials_says_exactly_what_is_missing(no_credentials, tmp_path, capsys, spec):
    spec_path = tmp_path / "pipeline.json"
    spec_path.write_text(json.dumps(spec))
    code, _, err = run_cli(capsys, "submit", "--spec", str(spec_path))
    assert code == 1
    assert "gcloud auth application-default login" in err and "GOOGLE_APPLICATION_CREDENTIALS" in err
    assert "no project: pass --project" in err and "no region: pass --region" in err
    assert "spec file" not in err  # the spec is fine
    code, _, err = run_cli(capsys, "submit", "--spec", str(tmp_path / "missing.json"), "--project", "p",
                           "--region", "europe-west4")
    assert code == 1 and "missing.json' does not exist" in err and "driftline compile --target vertex" in err
    assert "no project" not in err and "no region" not in err


def test_submit_names_a_credentials_file_that_cannot_be_used(no_credentials, monkeypatch, tmp_path, spec):
    from pipelines.vertex import missing_for_submit

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    spec_path = tmp_path / "pipeline.json"
    spec_path.write_text(json.dumps(spec))
    plan, missing = missing_for_submit(str(spec_path), project="p", region="europe-west4")
    assert plan is None and len(missing) == 1
    assert missing[0].startswith(f"GOOGLE_APPLICATION_CREDENTIALS={tmp_path / 'key.json'} cannot be used")


def test_with_credentials_project_and_region_nothing_is_missing(no_credentials, monkeypatch, tmp_path, spec):
    """User credentials load without a network call; the plan is what PipelineJob would get."""
    from pipelines.vertex import missing_for_submit

    key = tmp_path / "adc.json"
    key.write_text(json.dumps({"type": "authorized_user", "client_id": "id", "client_secret": "secret",
                               "refresh_token": "token"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.setenv("GOOGLE_CLOUD_REGION", "europe-west4")
    spec_path = tmp_path / "pipeline.json"
    spec_path.write_text(json.dumps(spec))
    plan, missing = missing_for_submit(str(spec_path), project="driftline-test")
    assert missing == []
    assert (plan.project, plan.region, plan.pipeline_root, plan.display_name) == (
        "driftline-test", "europe-west4", f"{BUCKET}/home/pipeline_root", "driftline")


# -- the Dockerfile ------------------------------------------------------------------------------------------------


def dockerfile_instructions():
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    with open(os.path.join(REPO_ROOT, "Dockerfile")) as f:
        text = "".join(line for line in f if not line.lstrip().startswith("#"))
    return [" ".join(i.split()) for i in text.replace("\\\n", " ").splitlines() if i.strip()]


def test_dockerfile_installs_the_pinned_stack_where_the_spec_expects_it():
    """The image cannot be built here; this checks it against what the spec and the pins expect."""
    import apache_beam

    from pipelines.config import IMAGE_SOURCE_DIR

    instructions = dockerfile_instructions()
    bases = [i.split()[1] for i in instructions if i.startswith("FROM ")]
    # Build and final stage on one base (the venv moves between them), the Python the pins were verified on.
    assert len(bases) == 2 and bases[0] == bases[1] and bases[0].startswith("python:3.10.13-")
    text = "\n".join(instructions)
    # Dataflow runs the same image: Beam's worker boot loader, of the installed Beam version.
    assert f"COPY --from=apache/beam_python3.10_sdk:{apache_beam.__version__} /opt/apache/beam /opt/apache/beam" \
        in text
    assert instructions[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'
    install = next(i for i in instructions if "pip install" in i and "constraints.txt" in i)
    assert "-c constraints.txt ." in install and " -e " not in install
    final = instructions[len(instructions) - instructions[::-1].index(next(
        i for i in instructions[::-1] if i.startswith("FROM "))):]
    assert f"WORKDIR {IMAGE_SOURCE_DIR}" in final and "COPY setup.py constraints.txt ./" in final
    for package in ("components", "pipelines", "transforms"):
        assert f"COPY {package}/ {package}/" in final


# -- Vertex's side: TFX's container entrypoint runs our executors --------------------------------------------------


def _runtime_artifact(spec, task, key, output, **fields):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    component = spec["pipelineSpec"]["components"][tasks(spec)[task]["componentRef"]["name"]]
    definitions = component["outputDefinitions" if output else "inputDefinitions"]["artifacts"][key]
    artifact = pipeline_spec_pb2.RuntimeArtifact()
    json_format.ParseDict({"type": definitions["artifactType"], **fields}, artifact)
    return artifact


def run_task(spec, task, tmp_path, *, inputs=None, outputs, parameters=None):
    """Runs one task's executor the way a Vertex container does; returns its ExecutorOutput as a dict."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor

    from pipelines.config import driftline_setup_file

    executor_input = pipeline_spec_pb2.ExecutorInput()
    for name, value in tasks(spec)[task]["inputs"].get("parameters", {}).items():
        json_format.ParseDict(value["runtimeValue"]["constantValue"], executor_input.inputs.parameters[name])
    for name, value in (parameters or {}).items():
        json_format.ParseDict(value, executor_input.inputs.parameters[name])
    for key, artifacts in (inputs or {}).items():
        executor_input.inputs.artifacts[key].artifacts.extend(artifacts)
    for key, artifact in outputs.items():
        executor_input.outputs.artifacts[key].artifacts.append(artifact)
    executor_input.outputs.output_file = str(tmp_path / "executor_output.json")
    args = argparse.Namespace(
        executor_class_path=executor_of(spec, task)["container"]["args"][1],
        json_serialized_invocation_args=json_format.MessageToJson(executor_input),
        json_serialized_inputs_spec_args=None)
    beam_args = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory",
                 f"--setup_file={driftline_setup_file()}"]
    kubeflow_v2_run_executor._run_executor(args, beam_args)  # pylint: disable=protected-access
    with open(executor_input.outputs.output_file) as f:
        return json.load(f)


def _run_example_gen_driverless(spec, tmp_path, n, overrides, previous):
    """Run n of StreamingExampleGen through TFX's Vertex entrypoint, given the previous run's output as Vertex does."""
    uri = str(tmp_path / f"run{n}" / "examples")
    out = _runtime_artifact(spec, "StreamingExampleGen", "examples", True, uri=uri,
                            name=f"projects/1/locations/europe-west4/metadataStores/default/artifacts/{n}")
    work = tmp_path / f"run{n}"
    work.mkdir(exist_ok=True)
    result = run_task(spec, "StreamingExampleGen", work, outputs={"examples": out}, parameters=overrides,
                      inputs={"previous_examples": previous} if previous else None)
    [artifact] = result["artifacts"]["examples"]["artifacts"]
    # The URI and the name Vertex gave the output come back unchanged: the span was written there.
    assert artifact["uri"] == uri and artifact["name"] == out.name
    return artifact


def test_streaming_example_gen_runs_driverless_through_the_vertex_entrypoint(spec, tmp_path):
    """Run after run, the position travels on the previous output's metadata, as Vertex carries it."""
    from components.streaming_example_gen.executor import NoClosedSpanError
    from components.streaming_example_gen.windowing import CommittedState
    from ingest_helpers import BASE_MS, SyntheticLog, read_tfrecord_examples

    log_dir = str(tmp_path / "events")
    log = SyntheticLog(log_dir, seed=5)
    log.append(BASE_MS, minutes=25, per_minute=40, malformed=3)  # spans 0 and 1 closed, 2 open
    overrides = {"log_dir": {"stringValue": log_dir}}
    first = BASE_MS // 600_000  # span numbers count from the epoch
    previous, emitted, seen_ids = [], [], []

    def run(n):
        return _run_example_gen_driverless(spec, tmp_path, n, overrides, previous)

    for n in (1, 2):
        artifact = run(n)
        metadata = artifact["metadata"]
        assert metadata["span"] == first + n - 1  # one span per run, the oldest closed one first
        assert CommittedState.from_json(metadata["committed_state"]).last_span == first + n - 1
        ids = [e for e, _ in read_tfrecord_examples(sorted(
            os.path.join(root, f) for root, _, files in os.walk(artifact["uri"]) for f in files
            if f.endswith(".tfrecord.gz")))]
        assert not os.path.exists(os.path.join(artifact["uri"], "_tmp"))
        seen_ids += ids
        emitted.append(artifact)
        # Vertex hands the next run this output, metadata and all (LatestArtifactStrategy).
        previous = [_runtime_artifact(spec, "StreamingExampleGen", "previous_examples", False,
                                      uri=artifact["uri"], name=artifact["name"], metadata=artifact["metadata"])]
    assert emitted[0]["metadata"]["dead_letter_count"] == 3.0  # Vertex metadata numbers are doubles
    # Span 2 has not closed: the run fails and publishes nothing.
    with pytest.raises(NoClosedSpanError, match="no span of .* has closed"):
        run(3)
    assert not os.path.exists(tmp_path / "run3" / "executor_output.json")
    assert not os.path.exists(tmp_path / "run3" / "examples")
    log.append(BASE_MS + 25 * 60_000, minutes=10, per_minute=40)
    artifact = run(4)
    assert artifact["metadata"]["span"] == first + 2
    seen_ids += [e for e, _ in read_tfrecord_examples(sorted(
        os.path.join(root, f) for root, _, files in os.walk(artifact["uri"]) for f in files
        if f.endswith(".tfrecord.gz")))]
    # Exactly once: every valid event of spans 0-2, once.
    expected = sorted(e for e, t in log.valid.items() if (t - BASE_MS) // 600_000 <= 2)
    assert sorted(seen_ids) == expected


def kafka_cloud_config(**kafka):
    from pipelines.config import KafkaConfig

    config = cloud_config()
    settings = dict(bootstrap_servers="kafka-1.internal:9092,kafka-2.internal:9092", topic="clicks")
    settings.update(kafka)
    return config.replace(source=dataclasses.replace(config.source, log_dir="", kind="kafka",
                                                     kafka=KafkaConfig(**settings)))


def test_a_kafka_source_compiles_for_vertex(spec, tmp_path, monkeypatch):
    from pipelines.config import KafkaConfig

    # Secrets are named, never carried: the spec holds the variable's name and the file's path, not the values.
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret-from-env-9931")
    secret_file = tmp_path / "key-password"
    secret_file.write_text("s3cret-from-file-5120\n")
    config = kafka_cloud_config(client_config={"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                                               "sasl.username": "driftline"},
                                secret_env={"sasl.password": "KAFKA_SASL_PASSWORD"},
                                secret_files={"ssl.key.password": str(secret_file)})
    kafka_spec = compile_to(config, tmp_path / "kafka.json")
    text = (tmp_path / "kafka.json").read_text()
    assert "s3cret-from-env-9931" not in text and "s3cret-from-file-5120" not in text
    assert "KAFKA_SASL_PASSWORD" in text
    assert KafkaConfig.from_json(param(kafka_spec, "StreamingExampleGen", "kafka_source")) == config.source.kafka
    assert param(kafka_spec, "StreamingExampleGen", "driverless") == 1
    assert producer(kafka_spec, "StreamingExampleGen", "previous_examples") == \
        ("latest_examples_resolver", "examples")
    # The same graph as over the event log.
    assert set(tasks(kafka_spec)) == set(tasks(spec))
    # A topic needs no gs:// log folder, but a broker on loopback is the task's own machine.
    with pytest.raises(ConfigError, match="names localhost:9092: a loopback address") as info:
        kafka_cloud_config(bootstrap_servers="localhost:9092,kafka-1.internal:9092").validate_for_vertex()
    assert "source.log_dir" not in str(info.value)


def _examples_in(uri):
    from ingest_helpers import read_tfrecord_examples

    return [e for e, _ in read_tfrecord_examples(sorted(
        os.path.join(root, f) for root, _, files in os.walk(uri) for f in files if f.endswith(".tfrecord.gz")))]


def test_streaming_example_gen_runs_driverless_over_kafka_through_the_vertex_entrypoint(tansu, tmp_path):
    """The driverless path reads a topic through the same source interface; offsets travel on the metadata."""
    import random

    from components.kafka_log import KafkaOffsets
    from components.streaming_example_gen.executor import NoClosedSpanError
    from components.streaming_example_gen.windowing import CommittedState
    from ingest_helpers import BASE_MS, ad_click_event, dead_letter_bytes, malformed_line, read_dead_letters
    from pipelines.config import KafkaConfig

    topic = f"vertex-{random.randrange(1 << 30)}"
    tansu.create_topic(topic, 3)
    kafka_spec = compile_to(kafka_cloud_config(topic=topic), tmp_path / "kafka.json")
    rng = random.Random(11)
    valid, bad = {}, []

    def produce(start_ms, minutes, per_minute=40, malformed=0):
        records = []
        for i in range(minutes * per_minute):
            t = start_ms + i * 60_000 // per_minute
            event = ad_click_event(f"ev-{t}-{i}", t, rng)
            records.append((i % 3, json.dumps(event).encode(), None))
            valid[event["event_id"]] = t
            if i < malformed:
                line = malformed_line(i, rng)
                records.append((i % 3, line, None))
                bad.append(line)
        tansu.produce(topic, records)

    produce(BASE_MS, 25, malformed=3)  # spans 0 and 1 closed, 2 open
    # Compiled with the cluster's brokers; this run's broker is the test's (as a log_dir is overridden above).
    overrides = {"kafka_source": {"stringValue": KafkaConfig(tansu.bootstrap, topic, poll_timeout_s=1.0).to_json()}}
    first = BASE_MS // 600_000
    previous, seen_ids = [], []

    def run(n):
        return _run_example_gen_driverless(kafka_spec, tmp_path, n, overrides, previous)

    for n in (1, 2):
        artifact = run(n)
        metadata = artifact["metadata"]
        assert metadata["span"] == first + n - 1
        state = CommittedState.from_json(metadata["committed_state"])
        assert state.last_span == first + n - 1
        assert isinstance(state.end, KafkaOffsets) and state.end.topic == topic
        assert not os.path.exists(os.path.join(artifact["uri"], "_tmp"))
        seen_ids += _examples_in(artifact["uri"])
        if n == 1:
            assert metadata["dead_letter_count"] == 3.0
            rows = read_dead_letters(artifact["uri"])
            assert sorted(dead_letter_bytes(r) for r in rows) == sorted(bad)
            assert all(r["topic"] == topic and "partition" in r and "offset" in r for r in rows)
        previous = [_runtime_artifact(kafka_spec, "StreamingExampleGen", "previous_examples", False,
                                      uri=artifact["uri"], name=artifact["name"], metadata=artifact["metadata"])]
    with pytest.raises(NoClosedSpanError, match="no span of Kafka topic .* has closed"):
        run(3)
    assert not os.path.exists(tmp_path / "run3" / "executor_output.json")
    produce(BASE_MS + 25 * 60_000, 10)
    artifact = run(4)
    assert artifact["metadata"]["span"] == first + 2
    seen_ids += _examples_in(artifact["uri"])
    # Exactly once: every valid event of spans 0-2, once.
    assert sorted(seen_ids) == sorted(e for e, t in valid.items() if (t - BASE_MS) // 600_000 <= 2)


MODEL_NAME = "projects/1/locations/europe-west4/metadataStores/default/artifacts/42"


@pytest.fixture(scope="module")
def latency_artifacts(tmp_path_factory):
    """A real span's eval split, transform graph and exported default model (tests/latency_helpers.py)."""
    import latency_helpers

    root = tmp_path_factory.mktemp("latency")
    examples = str(root / "examples")
    latency_helpers.write_eval_examples(examples, minutes=1, events_per_minute=300)
    transform_graph = latency_helpers.write_transform_graph(str(root / "transform_graph"))
    model = latency_helpers.write_model(str(root / "model"), transform_graph)
    return {"examples": examples, "transform_graph": transform_graph, "model": model}


def test_the_latency_validator_runs_through_the_vertex_entrypoint(spec, latency_artifacts, tmp_path):
    """The evaluator's blessing names the model by resource name there; the InfraBlessing reads as the pusher's."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entry

    from components.blessing_pusher.executor import check_blessings
    from pipelines.config import LatencyConfig

    quick = LatencyConfig(candidates_per_request=100, batch_sizes=(50, 100), concurrency=1,
                          seconds_per_batch_size=0.2, distinct_requests=2, stage_repeats=2, slo_p99_ms=60_000.0)
    prefix = "projects/1/locations/europe-west4/metadataStores/default/artifacts"

    def run(n, blessing_metadata):
        def given(key, uri, number, metadata=None):
            return [_runtime_artifact(spec, "LatencyValidator", key, False, uri=uri, name=f"{prefix}/{number}",
                                      **({"metadata": metadata} if metadata else {}))]

        blessing_uri = tmp_path / f"model_blessing{n}"
        blessing_uri.mkdir()
        inputs = {"model": given("model", latency_artifacts["model"], 42),
                  "examples": given("examples", latency_artifacts["examples"], 40,
                                    {"span": 3.0, "split_names": '["train", "eval"]'}),
                  "transform_graph": given("transform_graph", latency_artifacts["transform_graph"], 41),
                  "model_blessing": given("model_blessing", str(blessing_uri), 43, blessing_metadata)}
        out = _runtime_artifact(spec, "LatencyValidator", "blessing", True, uri=str(tmp_path / f"run{n}" / "blessing"),
                                name=f"{prefix}/{50 + n}")
        work = tmp_path / f"run{n}"
        work.mkdir(exist_ok=True)
        result = run_task(spec, "LatencyValidator", work, inputs=inputs, outputs={"blessing": out},
                          parameters={"latency_config": {"stringValue": json.dumps(quick.to_dict())}})
        [artifact] = result["artifacts"]["blessing"]["artifacts"]
        # What the pusher's task receives from Vertex.
        runtime = _runtime_artifact(spec, "BlessingPusher", "infra_blessing", False, uri=artifact["uri"],
                                    name=artifact["name"])
        json_format.ParseDict(artifact["metadata"], runtime.metadata)
        parsed = entry.parse_raw_artifact_dict({"infra_blessing": pipeline_spec_pb2.ArtifactList(artifacts=[runtime])})
        return artifact, parsed["infra_blessing"]

    artifact, infra = run(1, {"blessed": 1.0, "reason": "auc 0.7", "current_model_id": MODEL_NAME})
    metadata = artifact["metadata"]
    assert metadata["blessed"] == 1.0 and metadata["load_tested"] == 1.0, metadata["reason"]
    assert metadata["model_id"] == MODEL_NAME  # as the evaluator's blessing names it on Vertex
    assert metadata["p99_ms"] > 0 and metadata["eval_span"] == 3.0
    assert os.path.exists(os.path.join(artifact["uri"], "INFRA_BLESSED"))
    blessing = entry.parse_raw_artifact_dict({"model_blessing": pipeline_spec_pb2.ArtifactList(artifacts=[
        _runtime_artifact(spec, "BlessingPusher", "model_blessing", False, uri="gs://b/x", name=f"{prefix}/43",
                          metadata={"blessed": 1.0, "reason": "auc 0.7"})])})["model_blessing"]
    blessed, why = check_blessings({"model_blessing": blessing, "infra_blessing": infra})
    assert blessed and "infra_blessing: " in why

    artifact, infra = run(2, {"blessed": 0.0, "reason": "auc 0.5", "current_model_id": MODEL_NAME})
    assert artifact["metadata"]["blessed"] == 0.0 and artifact["metadata"]["load_tested"] == 0.0
    assert artifact["metadata"]["reason"].startswith("not load-tested: the evaluator did not bless it (auc 0.5)")
    assert check_blessings({"model_blessing": blessing, "infra_blessing": infra})[0] is False

    with pytest.raises(ValueError, match="is about model .*artifacts/99, not the candidate"):
        run(3, {"blessed": 1.0, "reason": "auc 0.7", "current_model_id": f"{prefix}/99"})


def test_vertex_metadata_reads_as_ours(spec):
    """Numbers arrive as doubles; the trainer, the pusher and the example gen still read them right."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entry

    from components.blessing_pusher.executor import check_blessings
    from components.warm_start_trainer.training_inputs import judged_only

    def parsed(task, key, metadata):
        artifact = _runtime_artifact(spec, task, key, False, uri="gs://b/x", name="projects/1/artifacts/7")
        json_format.ParseDict(metadata, artifact.metadata)
        return entry.parse_raw_artifact_dict({key: pipeline_spec_pb2.ArtifactList(artifacts=[artifact])})[key][0]

    blessing = parsed("BlessingPusher", "model_blessing", {"blessed": 1.0, "reason": "auc 0.7"})
    assert check_blessings({"model_blessing": [blessing]}) == (True, "blessed (model_blessing: auc 0.7)")
    refused = parsed("BlessingPusher", "model_blessing", {"blessed": 0.0, "reason": "auc 0.5"})
    assert check_blessings({"model_blessing": [refused]})[0] is False
    base = parsed("WarmStartTrainer", "base_model", {"newest_span": 4.0, "architecture_fingerprint": "abc"})
    assert base.get_int_custom_property("newest_span") == 4
    assert base.get_string_custom_property("architecture_fingerprint") == "abc"
    assert judged_only([(3, "a"), (4, "b"), (5, "c")], 4) == [(3, "a"), (4, "b")]
    assert judged_only([(3, "a")], None) == []


def test_the_evaluator_blessing_names_models_as_vertex_resolves_them():
    """The entrypoint rewrites current_model_id to the model's resource name for Evaluator executors only."""
    from tfx.components.evaluator import executor as stock
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entry
    from tfx.types import standard_artifacts

    from components.evaluator import executor as ours

    from components.evaluator.gate import Verdict

    assert issubclass(ours.Executor, stock.Executor)
    name_from_id = {}
    artifacts = {}
    for key, n in (("candidate", 42), ("baseline", 41), ("examples", 40)):
        artifact = (standard_artifacts.Examples if key == "examples" else standard_artifacts.Model)()
        artifact.id = entry._get_hashed_id(  # pylint: disable=protected-access
            f"projects/1/locations/l/metadataStores/default/artifacts/{n}", name_from_id)
        artifacts[key] = artifact
    artifacts["examples"].span = 7
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = "ram://blessing"
    verdict = Verdict(blessed=True, reason="blessed: auc 0.7", checks=[], candidate_metrics={"overall": {}},
                      baseline_metrics=None, thresholds={})
    ours.record_blessing(blessing, verdict, artifacts["candidate"], artifacts["baseline"], artifacts["examples"])
    entry.refactor_model_blessing(blessing, name_from_id)
    assert blessing.get_string_custom_property("current_model_id") == \
        "projects/1/locations/l/metadataStores/default/artifacts/42"
    assert blessing.get_string_custom_property("baseline_model_id") == \
        "projects/1/locations/l/metadataStores/default/artifacts/41"
