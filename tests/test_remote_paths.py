"""Every path that may be remote (`gs://...`) goes through `tf.io.gfile`, and works on a real non-local file system.

TensorFlow's `ram://` file system is a file system of its own, not the local
disk: `os.path` and `open()` cannot see it, and it has no folder rename (a
renamed folder leaves its files behind, much as GCS renames object by
object). Ingestion, the schema, training records, warm-start weights and the
serving folder are run on it here. A static check keeps new local-only file
calls out of the code that handles artifact paths.
"""
import ast
import json
import os
import uuid

import pytest

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The local-only file calls, each where and why. Everything else that touches a path in components/,
# pipelines/ and transforms/ uses tf.io.gfile (or TensorFlow/Beam APIs that take any file system).
LOCAL_ONLY = {
    # The simulator's writer appends to a local log with O_APPEND (whole lines for a concurrent reader);
    # the reader (plan_read, read_chunk) uses tf.io.gfile, so a log may be uploaded to gs://.
    # Writers share a folder under an flock on a lock file in it (local by nature).
    ("components/event_log.py", "EventLogWriter.__init__"): {"os.makedirs", "os.open"},
    ("components/event_log.py", "EventLogWriter._newest_index"): {"os.listdir", "os.path.exists"},
    ("components/event_log.py", "EventLogWriter._attach"): {"os.fstat"},
    ("components/event_log.py", "EventLogWriter._open"): {"os.open", "os.fstat"},
    ("components/event_log.py", "EventLogWriter._rotate"): {"os.fsync"},
    ("pipelines/simulator.py", "_segment_sizes"): {"os.path.isdir", "os.path.getsize", "os.listdir"},
    ("pipelines/simulator.py", "_log_tail_state"): {"open"},
    # The serving folder's local branch (is_local(path)): atomic os.rename and fsync need a POSIX file
    # system; remote paths take the tf.io.gfile branch beside each of these.
    ("components/blessing_pusher/serving.py", "_children"): {"os.listdir"},
    ("components/blessing_pusher/serving.py", "_isdir"): {"os.path.isdir"},
    ("components/blessing_pusher/serving.py", "has_saved_model"): {"os.path.isfile"},
    ("components/blessing_pusher/serving.py", "_fsync_tree"): {"os.walk", "os.open", "os.fsync"},
    ("components/blessing_pusher/serving.py", "_fsync_dir"): {"os.open", "os.fsync"},
    ("components/blessing_pusher/serving.py", "_remove_tree"): {"shutil.rmtree"},
    ("components/blessing_pusher/serving.py", "_publish"): {"os.makedirs"},
    ("components/blessing_pusher/serving.py", "_exists"): {"os.path.exists"},
    ("components/blessing_pusher/serving.py", "_rename_no_replace"): {"os.path.exists", "os.rename"},
    ("components/blessing_pusher/serving.py", "_is_stale"): {"os.stat"},
    ("components/blessing_pusher/serving.py", "apply_retention"): {"os.rename"},
    # driftline serve: a local version folder's mtime is when it was published (the model's age in /metrics);
    # an object store has no folder mtime, so the remote branch beside it takes the load time.
    ("pipelines/serve/model_store.py", "load_saved_model"): {"os.stat"},
    # A running server's record (<home>/servers/<pid>.json) names a local process and port: it lives on the
    # machine that runs the server and is read by a status on that machine, so it is a local file by nature.
    ("pipelines/serve/registry.py", "write_record"): {"os.makedirs", "open", "os.replace"},
    ("pipelines/serve/registry.py", "remove_record"): {"os.remove"},
    ("pipelines/serve/registry.py", "server_states"): {"os.listdir"},
    ("pipelines/serve/registry.py", "probe"): {"open"},
    # The closed-loop demo runs a server process on this machine and tails its log file to say why it failed.
    ("pipelines/closed_loop.py", "start_server"): {"open"},
    ("pipelines/closed_loop.py", "_tail"): {"open"},
    # driftline's own setup.py, read from the checkout the code runs from (version, Beam packaging).
    ("pipelines/version.py", "driftline_version"): {"open"},
    # SQLite ML Metadata and the controller's flock live on a local disk by nature (on Vertex AI
    # Pipelines, Vertex ML Metadata takes their place and none of this runs).
    ("components/mlmd_store.py", "open_store"): {"os.makedirs"},
    ("components/mlmd_store.py", "store_exists"): {"os.path.isfile"},
    ("pipelines/local_runner.py", "run"): {"os.makedirs"},
    ("pipelines/controller.py", "single_instance"): {"os.makedirs", "os.open", "os.fsync"},
    ("pipelines/controller_lock.py", "controller_state"): {"open"},
    # The local controller's crash recovery and retention: remote artifact URIs take the tf.io.gfile
    # branch beside each os call (`_is_local`).
    ("pipelines/recovery.py", "_publish_push"): {"os.makedirs"},
    ("pipelines/retention.py", "_tree_bytes"): {"os.walk"},
    ("pipelines/retention.py", "_delete_payload"): {"shutil.rmtree", "os.listdir", "os.path.isdir", "os.path.islink",
                                                    "os.remove"},
    ("pipelines/retention.py", "_exists"): {"os.path.isdir"},
    ("pipelines/retention.py", "remove_unused_folders"): {"os.path.isdir", "os.listdir"},
    ("pipelines/retention.py", "remove_unused_folders.drop"): {"shutil.rmtree"},
    # A Kafka secret file is mounted into the process that connects (a Kubernetes or Docker secret volume).
    ("components/kafka_log.py", "resolve_secrets"): {"open"},
    # The continuous-vs-batch comparison (the notebook) runs the local pipeline in a fresh local home.
    ("pipelines/regimes.py", "_compare"): {"os.path.exists", "os.listdir"},
    # The demo's own local home; this checkout's setup.py for Beam packaging.
    ("pipelines/demo.py", "is_demo_home"): {"open"},
    ("pipelines/demo.py", "prepare_home"): {"os.path.lexists", "os.path.isdir", "os.path.islink", "os.listdir",
                                            "shutil.rmtree", "os.remove", "os.makedirs", "open"},
    ("pipelines/config.py", "driftline_setup_file"): {"open"},
    # The config file and its schema_file are read by the command on the user's machine (`--config FILE`);
    # the home's own copy is written by the local runner and `init` into the local home (SQLite ML Metadata's
    # folder), and looked for there. A gs:// home (compile) has none: its commands take --config.
    ("pipelines/config_file.py", "load_config"): {"open"},
    ("pipelines/config_file.py", "_schema"): {"open"},
    ("pipelines/config_file.py", "persist_config"): {"os.path.exists", "os.makedirs", "os.replace", "os.unlink"},
    ("pipelines/cli.py", "_base_config"): {"os.path.isfile"},
    ("pipelines/cli.py", "run_init"): {"os.path.exists", "os.makedirs", "open"},
    # The shipped example files are package data beside the code.
    ("pipelines/examples/__init__.py", "example_text"): {"open"},
}

_OS = {"makedirs", "mkdir", "listdir", "rename", "replace", "remove", "unlink", "rmdir", "stat", "walk", "scandir",
       "open", "fsync", "fstat", "chmod", "utime", "truncate"}
_OS_PATH = {"exists", "isdir", "isfile", "getsize", "getmtime", "lexists", "islink"}


def local_file_calls(path):
    """{(function, call)} for builtin open(), os.*, os.path.* file calls, shutil.* and glob.* in one module."""
    found = set()

    class Visitor(ast.NodeVisitor):
        def __init__(self):
            self.scope = []

        def _scoped(self, node):
            self.scope.append(node.name)
            self.generic_visit(node)
            self.scope.pop()

        visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

        def visit_Call(self, node):
            f, name = node.func, None
            if isinstance(f, ast.Name) and f.id == "open":
                name = "open"
            elif isinstance(f, ast.Attribute):
                owner = f.value
                if isinstance(owner, ast.Name) and owner.id == "os" and f.attr in _OS:
                    name = f"os.{f.attr}"
                elif (isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name)
                      and owner.value.id == "os" and owner.attr == "path" and f.attr in _OS_PATH):
                    name = f"os.path.{f.attr}"
                elif isinstance(owner, ast.Name) and owner.id in ("shutil", "glob", "pathlib"):
                    name = f"{owner.id}.{f.attr}"
            if name:
                found.add((".".join(self.scope) or "<module>", name))
            self.generic_visit(node)

    with open(path) as f:
        Visitor().visit(ast.parse(f.read()))
    return found


def test_local_only_file_calls_are_the_documented_ones():
    calls = {}
    for top in ("components", "pipelines", "transforms"):
        for root, _, files in os.walk(os.path.join(REPO_ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, name), REPO_ROOT)
                    for function, call in local_file_calls(os.path.join(root, name)):
                        calls.setdefault((rel, function), set()).add(call)
    undocumented = {k: v - LOCAL_ONLY.get(k, set()) for k, v in calls.items() if v - LOCAL_ONLY.get(k, set())}
    assert not undocumented, (
        f"local-only file calls on paths that may be gs://: {undocumented}. Use tf.io.gfile, or add the place "
        "to LOCAL_ONLY with the reason it is local by nature")
    stale = {k: v for k, v in LOCAL_ONLY.items() if not v <= calls.get(k, set())}
    assert not stale, f"LOCAL_ONLY names calls that are gone: {stale}"


# -- the same code on a non-local file system -----------------------------------------------------------------


@pytest.fixture
def remote():
    """A fresh folder on TensorFlow's in-memory file system (shared by the whole process)."""
    import tensorflow as tf

    root = f"ram://driftline-{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(root)
    yield root
    try:
        tf.io.gfile.rmtree(root)
    except tf.errors.NotFoundError:
        pass  # ram:// keeps no marker for a folder that only ever held subfolders' files


def upload(local_dir, remote_dir):
    """Replaces each remote segment with the local one, as an object store upload does."""
    import tensorflow as tf

    tf.io.gfile.makedirs(remote_dir)
    for name in sorted(os.listdir(local_dir)):
        target = f"{remote_dir}/{name}"
        if tf.io.gfile.exists(target):
            # ram:// appends when a file is opened for writing again; GCS objects are replaced whole.
            tf.io.gfile.remove(target)
        tf.io.gfile.copy(os.path.join(local_dir, name), target)


def direct_pipeline():
    import apache_beam as beam

    from pipelines.config import driftline_setup_file

    # in_memory: one process, so the workers see the same ram:// file system.
    return beam.Pipeline(argv=["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory",
                               f"--setup_file={driftline_setup_file()}"])


def examples_in(pattern):
    import tensorflow as tf

    from ingest_helpers import read_tfrecord_examples

    files = sorted(tf.io.gfile.glob(pattern))
    assert files and all(f.startswith("ram://") for f in files)
    return read_tfrecord_examples(files)


@pytest.mark.parametrize("flat", [False, True], ids=["span-folders", "one-span-per-run"])
def test_ingestion_reads_and_writes_a_remote_log_exactly_once(remote, tmp_path, flat):
    import tensorflow as tf

    from components.event_log import plan_read
    from components.event_schema import ad_click_schema
    from components.streaming_example_gen import ingest, windowing
    from components.streaming_example_gen.sources import EventLogSource
    from ingest_helpers import BASE_MS, SyntheticLog

    local_log = str(tmp_path / "events")
    log = SyntheticLog(local_log, seed=3, max_segment_bytes=40_000)
    log.append(BASE_MS, minutes=25, per_minute=40, malformed=4)
    upload(local_log, f"{remote}/events")
    window = windowing.Window(span_ms=600_000, allowed_lateness_ms=60_000, eval_fraction=0.2)
    state, seen, runs = windowing.CommittedState(), [], 0
    for appended in (False, True, True):
        if appended:
            log.append(BASE_MS + (15 + 10 * runs) * 60_000, minutes=10, per_minute=40)
            upload(local_log, f"{remote}/events")
        out = f"{remote}/run{runs}/examples"
        run = ingest.run_ingest(direct_pipeline, source=EventLogSource(f"{remote}/events", chunk_bytes=16_384),
                                schema=ad_click_schema(), window=window, state=state, output_root=out,
                                work_dir=f"{remote}/run{runs}/work", max_spans=1 if flat else None, flat=flat)
        runs += 1
        assert run.result is not None and run.result.decision.emits
        for span in sorted(run.result.decision.emitted_spans):
            span_uri = ingest.span_dir(out, span, flat)
            ingest.ensure_every_split_has_a_file(span_uri, tmp_root=f"{out}/_tmp")
            seen += [e for e, _ in examples_in(f"{span_uri}/Split-*/*.tfrecord.gz")]
            assert tf.io.gfile.glob(f"{span_uri}/Split-eval/*")
        state = run.committed
    # Dead letters went into the first emitted span of the first run, on the remote file system.
    dead = tf.io.gfile.glob(f"{remote}/run0/examples/{'' if flat else '*/'}dead_letter/*.jsonl")
    rows = [json.loads(line) for path in dead for line in tf.io.gfile.GFile(path).read().splitlines()]
    assert len(rows) == 4
    closed = state.last_span
    expected = sorted(e for e, t in log.valid.items() if t // 600_000 <= closed)
    assert sorted(seen) == expected and len(seen) == len(set(seen))
    # The plan of the next run starts where this one committed, read from the remote log.
    assert plan_read(f"{remote}/events", state.resume).start == state.resume


def test_schema_files_on_a_remote_file_system(remote):
    import tensorflow as tf
    from tfx.types import standard_artifacts
    from tfx.utils import io_utils

    from components.event_schema import ad_click_schema
    from components.event_schema_gen.executor import Executor
    from transforms.schema import tfmd_schema, write_tfmd_schema

    path = write_tfmd_schema(ad_click_schema(), f"{remote}/home/schema/schema.pbtxt")
    assert io_utils.SchemaReader().read(path) == tfmd_schema(ad_click_schema())
    artifact = standard_artifacts.Schema()
    artifact.uri = f"{remote}/pipeline_root/EventSchemaGen/schema/1"
    Executor().Do({}, {"schema": [artifact]}, {"event_schema": ad_click_schema().to_json()})
    assert tf.io.gfile.listdir(artifact.uri) == ["schema.pbtxt"]
    assert io_utils.SchemaReader().read(f"{artifact.uri}/schema.pbtxt") == tfmd_schema(ad_click_schema())


def test_training_reads_examples_and_writes_records_and_weights_remotely(remote, tmp_path):
    import tensorflow as tf
    import tf_keras as keras
    from tensorflow_transform.tf_metadata import schema_utils

    from components.event_schema import ad_click_schema
    from components.streaming_example_gen import ingest, windowing
    from components.streaming_example_gen.sources import EventLogSource
    from components.warm_start_trainer import cycle, data, warm_start
    from components.warm_start_trainer.fn_args import TrainingInput
    from components.warm_start_trainer.training_inputs import split_pattern
    from ingest_helpers import BASE_MS, SyntheticLog
    from transforms.schema import tfmd_schema

    SyntheticLog(str(tmp_path / "events"), seed=4).append(BASE_MS, minutes=15, per_minute=30)
    upload(str(tmp_path / "events"), f"{remote}/events")
    run = ingest.run_ingest(direct_pipeline, source=EventLogSource(f"{remote}/events", chunk_bytes=1 << 20),
                            schema=ad_click_schema(), window=windowing.Window(600_000, 60_000, 0.2),
                            state=windowing.CommittedState(), output_root=f"{remote}/examples",
                            work_dir=f"{remote}/work")
    [span] = run.result.decision.emitted_spans
    uri = ingest.span_dir(f"{remote}/examples", span)
    spec = schema_utils.schema_as_feature_spec(tfmd_schema(ad_click_schema())).feature_spec
    ds, files = data.raw_dataset([TrainingInput(split_pattern(uri, "train"), span, "train"),
                                  TrainingInput(split_pattern(uri, "eval"), span, "eval", role="eval")],
                                 spec, "event_id", salt="s", batch_size=64)
    rows = sum(int(tf.shape(batch["event_id"])[0]) for batch, _ in ds)
    assert rows == run.result.spans[span].events and files == {"new": 1, "eval": 1}

    cycle._write_run_record(f"{remote}/model_run", {"spans": "1", "loss": 0.5})  # pylint: disable=protected-access
    with tf.io.gfile.GFile(f"{remote}/model_run/train_record.json") as f:
        assert json.load(f) == {"spans": "1", "loss": 0.5}

    def model():
        m = keras.Sequential([keras.layers.Dense(3, input_shape=(2,), name="hidden"), keras.layers.Dense(1, name="out")])
        m.build((None, 2))
        return m

    trained = model()
    warm_start.save_warm_start_state(trained, f"{remote}/model", architecture="a")
    fresh = model()
    report = warm_start.load_base_weights(fresh, f"{remote}/model")
    assert report.loaded, report.reason
    for a, b in zip(trained.get_weights(), fresh.get_weights()):
        assert (a == b).all()


def test_serving_push_rollback_and_retention_on_a_remote_file_system(remote, tmp_path):
    """No folder rename remotely: saved_model.pb, written last, makes a folder a version."""
    import tensorflow as tf

    from components.blessing_pusher import serving
    from test_serving import save_model, served_scale

    models = {s: save_model(str(tmp_path / f"m{s}"), float(s)) for s in (1, 2)}
    sd = f"{remote}/serving"
    assert serving.versions(sd) == [] and serving.serving_version(sd) is None
    first = serving.push(models[1], sd)
    second = serving.push(models[2], sd)
    assert (first.version, second.version) == (1, 2) and first.destination == f"{sd}/1"
    assert serving.versions(sd) == [1, 2] and served_scale(f"{sd}/2") == 2.0
    assert not serving.temp_dirs(sd)  # nothing staged for a rename
    # A copy that died before its marker: not a version, never reused, cleaned up behind a newer one.
    tf.io.gfile.makedirs(f"{sd}/3/variables")
    tf.io.gfile.copy(f"{sd}/2/variables/variables.index", f"{sd}/3/variables/variables.index")
    assert serving.versions(sd) == [1, 2] and serving.serving_version(sd) == 2
    rolled = serving.rollback(sd)
    assert (rolled.from_version, rolled.to_version, rolled.new_version) == (2, 1, 4)
    assert serving.serving_version(sd) == 4 and served_scale(f"{sd}/4") == 1.0
    retention = serving.apply_retention(sd, keep=2)
    assert retention.kept == [2, 4] and retention.deleted == [1] and retention.removed_tmp == ["3"]
    assert sorted(n.rstrip("/") for n in tf.io.gfile.listdir(sd)) == ["2", "4"]
    with pytest.raises(serving.PushError, match="version 4 already exists"):
        serving.push(models[2], sd, version=4)


def test_pusher_executor_pushes_to_a_remote_serving_folder(remote, tmp_path):
    import tensorflow as tf
    from tfx.types import standard_artifacts

    from components.blessing_pusher.executor import Executor
    from test_serving import save_model

    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    model.id = 7
    save_model(os.path.join(model.uri, "Format-Serving"), 3.0)
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = f"{remote}/blessing"
    blessing.set_float_custom_property("blessed", 1.0)  # as Vertex hands it over
    blessing.set_string_custom_property("reason", "auc 0.7")
    pushed = standard_artifacts.PushedModel()
    pushed.uri = f"{remote}/pushed"
    Executor().Do({"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
                  {"serving_dir": f"{remote}/serving", "keep_versions": 5})
    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_destination") == f"{remote}/serving/1"
    assert tf.io.gfile.exists(f"{remote}/serving/1/saved_model.pb")
