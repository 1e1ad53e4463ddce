"""The one configuration object of driftline.

Every default lives in a dataclass that this module composes: each component
owns its section (components/*/config.py, transforms/config.py; re-exported
here), the pipeline-wide ones live here. Components take these dataclasses (or
the plain values in them) so that a setting has exactly one home; the CLI, the YAML
config file (pipelines/config_file.py, which reads into these same classes)
and `create_pipeline(config)` build them, and nothing else invents values.
This module imports nothing heavy, so it is cheap to load anywhere.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import List, Optional

# Each component owns its settings (components/*/config.py, transforms/config.py); this module composes
# them into DriftlineConfig and re-exports them, so `from pipelines.config import GateConfig` keeps working.
from components.blessing_pusher.config import PusherConfig
from components.config_base import ConfigError
from components.evaluator.config import GateConfig
from components.latency_validator.config import LatencyConfig
from components.metadata_config import METADATA_KINDS, MetadataConfig
from components.online_evaluator.config import OnlineEvalConfig
from components.streaming_example_gen.join_config import JoinConfig, JoinStreamConfig
from components.streaming_example_gen.config import (KAFKA_EVENT_TIMES, KAFKA_RESERVED_SETTINGS,
                                                     KAFKA_SECRET_SETTINGS, SOURCE_KINDS, KafkaConfig,
                                                     SourceConfig, WindowConfig, looks_like_secret)
from components.warm_start_trainer.config import TrainerConfig
from pipelines.serve.config import ServeConfig
from transforms.config import NUMERIC_MODES, NumericTransform, TransformConfig

__all__ = ["ConfigError", "METADATA_KINDS", "MetadataConfig", "WindowConfig", "SOURCE_KINDS", "KAFKA_EVENT_TIMES", "KAFKA_RESERVED_SETTINGS",
           "KAFKA_SECRET_SETTINGS", "looks_like_secret", "KafkaConfig", "SourceConfig", "JoinConfig", "JoinStreamConfig", "NUMERIC_MODES",
           "NumericTransform", "TransformConfig", "TrainerConfig", "GateConfig", "PusherConfig",
           "RetentionConfig", "ControllerConfig", "LatencyConfig", "driftline_setup_file",
           "beam_default_sdk_image", "BeamConfig", "IMAGE_SOURCE_DIR", "IMAGE_SETUP_FILE", "DATAFLOW_PACKAGING",
           "CLOUD_BEAM_RUNNERS", "BEAM_RUNNERS", "LOOPBACK_HOSTS", "is_gcs", "CloudConfig", "DriftlineConfig", "default_config",
           "OnlineEvalConfig"]
__all__ += ["ServeConfig"]


@dataclasses.dataclass(frozen=True)
class RetentionConfig:
    """What the controller deletes after each cycle (pipelines/retention.py), so disk stays bounded.

    The payload of an artifact older than the newest `keep_cycles` cycles is
    deleted unless the next cycle needs it (the replay window's spans, the
    base model, untrained spans) or serving does (the models behind the
    versions in the serving folder). Its ML Metadata record stays, marked
    DELETED, so lineage and status still read it. Only payloads under the
    pipeline root are ever deleted, and a span's dead letters are kept
    unless `dead_letter_keep_cycles` says otherwise.
    """

    enabled: bool = True
    keep_cycles: int = 3
    # Also keep every model that was ever pushed, not only those still in the
    # serving folder: disk then grows by one model per push.
    keep_all_pushed_models: bool = False
    # A span's dead letters (its `dead_letter/` folder) outlive its examples:
    # None keeps them for ever (for Kafka they are the only copy of the bad
    # records); K deletes them once the span is older than the newest K cycles.
    dead_letter_keep_cycles: Optional[int] = None

    def validate(self) -> None:
        if self.keep_cycles < 1:
            raise ConfigError(f"retention.keep_cycles must be >= 1 (the cycle just run is always kept), "
                              f"got {self.keep_cycles}")
        if self.dead_letter_keep_cycles is not None and (
                isinstance(self.dead_letter_keep_cycles, bool) or not isinstance(self.dead_letter_keep_cycles, int)
                or self.dead_letter_keep_cycles < 1):
            raise ConfigError(f"retention.dead_letter_keep_cycles must be None (keep dead letters for ever) or an "
                              f"integer >= 1, got {self.dead_letter_keep_cycles!r}")


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """How the controller (pipelines/controller.py) rides out failing cycles.

    A failed cycle is retried after an exponential backoff with jitter,
    `retry_initial_seconds` doubling per failure in a row up to
    `retry_max_seconds`. Spans on which `quarantine_after_failures` cycles in
    a row failed are quarantined (pipelines/failures.py) so the stream moves
    on; `driftline replay --span S` trains one later.
    """

    retry_initial_seconds: float = 5.0
    retry_max_seconds: float = 300.0
    quarantine_after_failures: int = 3
    # With ML Metadata on MySQL: the controller's lease on the pipeline (components/lease.py) lasts this long
    # past its last renewal (renewed every third of it, and before each publish); a SIGKILLed controller's
    # successor takes over at most this long after the kill. Unused on SQLite (the home's lock file guards).
    lease_seconds: float = 30.0

    def validate(self) -> None:
        if isinstance(self.lease_seconds, bool) or not isinstance(self.lease_seconds, (int, float)) \
                or not self.lease_seconds > 0:
            raise ConfigError(f"controller.lease_seconds must be > 0 seconds, got {self.lease_seconds!r}")
        if not self.retry_initial_seconds > 0:
            raise ConfigError(f"controller.retry_initial_seconds (--retry-initial-seconds) must be > 0, "
                              f"got {self.retry_initial_seconds}")
        if not self.retry_max_seconds >= self.retry_initial_seconds:
            raise ConfigError(f"controller.retry_max_seconds (--retry-max-seconds, {self.retry_max_seconds:g}) must "
                              f"be >= controller.retry_initial_seconds ({self.retry_initial_seconds:g})")
        if isinstance(self.quarantine_after_failures, bool) or not isinstance(self.quarantine_after_failures, int) \
                or self.quarantine_after_failures < 1:
            raise ConfigError(f"controller.quarantine_after_failures (--quarantine-after) must be an integer >= 1, "
                              f"got {self.quarantine_after_failures!r}")



_PACKAGING_FLAGS = ("--setup_file", "--extra_package", "--extra_packages", "--requirements_file",
                    "--sdk_container_image", "--worker_harness_container_image")


def driftline_setup_file() -> Optional[str]:
    """This checkout's setup.py, when driftline runs from one (an editable install); None when installed.

    Installed from a wheel, `pipelines/` sits in site-packages, where another
    distribution may have left a stray setup.py: only driftline's own counts.
    """
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
    try:
        with open(path, encoding="utf-8") as f:
            return path if re.search(r"""name\s*=\s*["']driftline["']""", f.read()) else None
    except OSError:
        return None


def beam_default_sdk_image() -> str:
    """The container image Beam itself defaults to for this SDK and Python (DockerEnvironment.default_docker_image).

    Read from the installed distribution's metadata, so building Beam arguments does not import Beam.
    """
    import importlib.metadata
    import sys

    return f"apache/beam_python{sys.version_info[0]}.{sys.version_info[1]}_sdk:{importlib.metadata.version('apache-beam')}"


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    """Arguments for the Beam steps. Locally: DirectRunner with one in-memory worker, or PortableRunner."""

    # One of BEAM_RUNNERS. PortableRunner runs every Beam step through the Fn
    # API (an embedded job server, SDK workers in this process: LOOPBACK),
    # so each DoFn and coder is serialized as on Dataflow; it costs several
    # times DirectRunner's wall time on small spans (README, "Beam runners").
    runner: str = "DirectRunner"
    # More than one worker switches DirectRunner to multi_processing, which
    # was seen to drop elements here (benchmarks/ingest.py); ingestion then
    # reruns the read whole (ingest.LOST_ELEMENTS_RERUNS times) and refuses to
    # commit rather than skip events. One in-memory worker is the default.
    direct_num_workers: int = 1
    extra_args: tuple = ()

    def validate(self) -> None:
        if self.runner not in BEAM_RUNNERS:
            raise ConfigError(f"beam.runner must be one of {BEAM_RUNNERS}, got {self.runner!r}")
        if not isinstance(self.direct_num_workers, int) or self.direct_num_workers < 1:
            raise ConfigError(f"beam.direct_num_workers must be an integer >= 1, got {self.direct_num_workers!r}")

    def args(self) -> List[str]:
        self.validate()
        if self.runner == "DirectRunner":
            # in_memory keeps one process: on 2 cores the multi_processing
            # start-up costs more than the parallelism gives back at span sizes
            # (benchmarks/ingest.py).
            mode = "in_memory" if self.direct_num_workers == 1 else "multi_processing"
            base = ["--runner=DirectRunner", f"--direct_num_workers={self.direct_num_workers}",
                    f"--direct_running_mode={mode}"]
        elif self.runner == "PortableRunner":
            # An embedded job server and LOOPBACK workers: no Docker, no network, and
            # still the whole Fn API path (pickled DoFns, coders, gRPC data planes).
            # extra_args may point --job_endpoint at a Flink or Spark job server instead.
            base = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]
        else:
            base = [f"--runner={self.runner}"]
        packaging = [a for a in self.extra_args if a.split("=")[0] in _PACKAGING_FLAGS]
        if not packaging and self.runner == "PortableRunner" and not any(
                a.split("=")[0] in ("--job_endpoint", "--environment_type") for a in self.extra_args):
            # LOOPBACK workers are this process, which imports driftline already:
            # staging an sdist of setup.py would only cost time. The image is never
            # started under LOOPBACK; TFX only checks that a packaging flag is set.
            return base + [f"--sdk_container_image={beam_default_sdk_image()}"] + list(self.extra_args)
        # Without one of these flags TFX's Beam executors build and stage an
        # sdist of TFX itself (a copy of the whole tfx tree, "tfx_ephemeral")
        # in every Beam component of every cycle, which a local runner never needs.
        setup_file = driftline_setup_file()
        if not packaging and setup_file:
            # From a checkout: names our package for remote workers too.
            base.append(f"--setup_file={setup_file}")
        elif not packaging and self.runner == "DirectRunner":
            # Installed as a library (no setup.py to name): DirectRunner runs every step
            # with this interpreter, which already imports driftline and TFX, so nothing
            # needs staging. Beam's own default image changes no choice Beam makes (the
            # DirectRunner starts no container); TFX only checks that a flag is set.
            base.append(f"--sdk_container_image={beam_default_sdk_image()}")
        return base + list(self.extra_args)


# Where the component image (Dockerfile) keeps driftline's source: Beam steps launched inside a
# Vertex task name this setup.py when Dataflow workers install our code with --setup_file.
IMAGE_SOURCE_DIR = "/driftline"
IMAGE_SETUP_FILE = IMAGE_SOURCE_DIR + "/setup.py"
DATAFLOW_PACKAGING = ("image", "setup_file")
CLOUD_BEAM_RUNNERS = ("DataflowRunner", "DirectRunner")
# The runners `beam.runner` accepts locally (DataflowRunner: `dataflow_args()`).
BEAM_RUNNERS = ("DirectRunner", "PortableRunner", "DataflowRunner")


# Bootstrap hosts that can only mean "this machine".
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "0.0.0.0")


def is_gcs(path: str) -> bool:
    return path.startswith("gs://")


@dataclasses.dataclass(frozen=True)
class CloudConfig:
    """Google Cloud: Vertex AI Pipelines orchestrates, Dataflow runs the Beam steps.

    Paths stay where they are in `DriftlineConfig` (`home`, `source.log_dir`,
    `pusher.serving_dir`); on Google Cloud they must be `gs://` paths, which
    `validate_for_vertex` checks.
    """

    project: str = ""
    region: str = ""
    # The component image built from this repository's Dockerfile, e.g.
    # "us-docker.pkg.dev/my-project/driftline/driftline:0.1.0".
    image: str = ""
    # Dataflow scratch space; default <home>/tmp.
    temp_location: str = ""
    # Runs the Vertex tasks and the Dataflow workers; default: the project's defaults.
    service_account: str = ""
    # How Dataflow workers get driftline: "image" runs them in `image`
    # (--sdk_container_image: no per-job install of the stack), "setup_file"
    # installs the package from its setup.py on every worker.
    dataflow_packaging: str = "image"
    # Beam steps of a Vertex task: on Dataflow, or inside the task's own
    # container (DirectRunner: no Dataflow start-up per step, one machine).
    beam_runner: str = "DataflowRunner"
    # Optional Dataflow worker settings; empty / 0 leaves Dataflow's defaults.
    machine_type: str = ""
    max_num_workers: int = 0
    disk_size_gb: int = 0
    subnetwork: str = ""

    def validate(self) -> None:
        if self.dataflow_packaging not in DATAFLOW_PACKAGING:
            raise ConfigError(f"cloud.dataflow_packaging must be one of {DATAFLOW_PACKAGING}, "
                              f"got {self.dataflow_packaging!r}")
        if self.beam_runner not in CLOUD_BEAM_RUNNERS:
            raise ConfigError(f"cloud.beam_runner must be one of {CLOUD_BEAM_RUNNERS}, got {self.beam_runner!r}")
        if self.temp_location and not is_gcs(self.temp_location):
            raise ConfigError(f"cloud.temp_location must be a gs:// path Dataflow can write to, "
                              f"got {self.temp_location!r}")
        if self.max_num_workers < 0 or self.disk_size_gb < 0:
            raise ConfigError("cloud.max_num_workers and cloud.disk_size_gb must be >= 0 (0: Dataflow's default)")

    def missing_for_dataflow(self, image: bool = True) -> List[str]:
        """The settings Dataflow needs that are empty; `image=False` leaves the image out."""
        missing = []
        if not self.project:
            missing.append("cloud.project (--project) is empty: set the Google Cloud project id")
        if not self.region:
            missing.append("cloud.region (--region) is empty: set a Dataflow / Vertex AI region such as us-central1")
        if image and self.dataflow_packaging == "image" and not self.image:
            missing.append("cloud.image (--image) is empty: set the component image built from the Dockerfile, "
                           "which Dataflow workers run, or set cloud.dataflow_packaging to 'setup_file'")
        return missing


@dataclasses.dataclass(frozen=True)
class DriftlineConfig:
    """Everything a driftline pipeline needs, in one place."""

    pipeline_name: str = "driftline"
    home: str = "driftline_home"
    source: SourceConfig = dataclasses.field(default_factory=SourceConfig)
    window: WindowConfig = dataclasses.field(default_factory=WindowConfig)
    transform: TransformConfig = dataclasses.field(default_factory=TransformConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    gate: GateConfig = dataclasses.field(default_factory=GateConfig)
    pusher: PusherConfig = dataclasses.field(default_factory=PusherConfig)
    latency: LatencyConfig = dataclasses.field(default_factory=LatencyConfig)
    beam: BeamConfig = dataclasses.field(default_factory=BeamConfig)
    retention: RetentionConfig = dataclasses.field(default_factory=RetentionConfig)
    cloud: CloudConfig = dataclasses.field(default_factory=CloudConfig)
    controller: ControllerConfig = dataclasses.field(default_factory=ControllerConfig)
    metadata: MetadataConfig = dataclasses.field(default_factory=MetadataConfig)
    serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)
    # Online evaluation of a challenger beside the champion (components/online_evaluator).
    online: OnlineEvalConfig = dataclasses.field(default_factory=OnlineEvalConfig)
    # Set: the examples are impressions joined to their outcomes (JoinExampleGen under StreamingExampleGen's
    # node id), and `source` is the impressions log with the joined examples' schema (`with_join`).
    join: Optional[JoinConfig] = None

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.home, "pipeline_root")

    @property
    def metadata_path(self) -> str:
        """The SQLite file of ML Metadata (`metadata.kind: sqlite`); see `metadata_connection`."""
        return self.metadata.path or os.path.join(self.home, "metadata.sqlite")

    @property
    def metadata_connection(self) -> MetadataConfig:
        """Where this pipeline's ML Metadata is: what every open of the store is given
        (components.mlmd_store.open_store), the controller, the CLI, recovery and retention alike."""
        if self.metadata.kind == "sqlite":
            return dataclasses.replace(self.metadata, path=self.metadata_path)
        return self.metadata

    @property
    def serving_dir(self) -> str:
        return self.pusher.serving_dir or os.path.join(self.home, "serving")

    def validate(self) -> "DriftlineConfig":
        if not self.pipeline_name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"pipeline_name {self.pipeline_name!r} may hold only letters, digits, '-' and '_'")
        if not self.home:
            raise ConfigError("home is empty: set it to a folder for ML Metadata and artifacts")
        if self.join is not None:
            self._validate_join()
        self.source.validate()
        self.window.validate()
        self.transform.validate(self.source.schema)
        self.trainer.validate()
        self.gate.validate(self.source.schema)
        self.pusher.validate()
        self.retention.validate()
        self.latency.validate()
        self.controller.validate()
        self.beam.validate()
        self.metadata.validate()
        self.serve.validate()
        self.online.validate()
        if self.online.enabled:
            self._validate_online()
        horizon = self.window.dedup_horizon_runs
        if self.retention.enabled and horizon is not None and horizon > self.retention.keep_cycles:
            raise ConfigError(
                f"window.dedup_horizon_runs ({horizon}) is more than retention.keep_cycles "
                f"({self.retention.keep_cycles}): retention would delete the event ids of spans the dedup still "
                "compares against. Raise retention.keep_cycles to at least the horizon, or lower the horizon.")
        return self

    def _validate_join(self) -> None:
        """In join mode `source` must be the impressions: one stream read two ways would disagree."""
        if not isinstance(self.join, JoinConfig):
            raise ConfigError("join must be a JoinConfig(impressions=..., outcomes=..., ...) or None")
        self.join.validate()
        imp = self.join.impressions
        if imp.is_kafka:
            # The impressions are a topic: `source` is that topic (with_join), for whatever reads `source`.
            if self.source.kind != "kafka" or self.source.kafka != imp.kafka or self.source.log_dir:
                raise ConfigError(f"join is set and join.impressions is {imp.describe()}, but source is "
                                  f"{self.source.describe()}: in join mode the pipeline reads the impressions; leave "
                                  "source (and --log, --kafka-*) out, or build the config with "
                                  "DriftlineConfig.with_join(join)")
        elif self.source.kind != "event_log" or self.source.kafka is not None:
            raise ConfigError("join is set and source.kind is 'kafka', but join.impressions is an event log "
                              f"({imp.log_dir!r}): drop source.kafka and the --kafka-* flags, set "
                              "join.impressions.kind: kafka (and join.impressions.kafka) to read the impressions "
                              "from a topic, or drop the join section")
        elif os.path.abspath(self.source.log_dir or "") != os.path.abspath(imp.log_dir):
            raise ConfigError(f"join is set but source.log_dir ({self.source.log_dir!r}) is not the impressions "
                              f"log join.impressions.log_dir ({imp.log_dir!r}): in join mode the pipeline reads "
                              "the impressions; leave source.log_dir (and --log) out, or set it to that folder")
        if self.source.schema != self.join.examples_schema:
            raise ConfigError(f"join is set but source.schema ({self.source.schema.name!r}) is not the joined "
                              f"examples' schema (join.impressions.schema {imp.schema.name!r} with its label "
                              f"{imp.schema.label_field!r} required): leave source.schema out, or build the "
                              "config with DriftlineConfig.with_join(join)")

    def _validate_online(self) -> None:
        """Online evaluation counts each arm's joined outcomes: it needs the join, and the server's arm fields."""
        from components.online_evaluator.arm_counts import ARM_FIELD, CHALLENGER_ID_FIELD

        if self.join is None:
            raise ConfigError("online.enabled needs the join section: the comparison is judged on each arm's joined "
                              "outcomes (clicks per impression); add a join: section (impressions and outcomes "
                              "logs), or set online.enabled: false")
        imp = self.join.impressions.schema.field_map
        for name, kind in ((ARM_FIELD, "string"), (CHALLENGER_ID_FIELD, "int")):
            if name not in imp or imp[name].type != kind:
                raise ConfigError(f"online.enabled: the impressions schema needs the server's field {name!r} "
                                  f"(type {kind!r}, required: false) to count each arm's impressions; add it "
                                  f"(and to join.drop_fields: it is no model input)")
        if self.online.reward_field not in self.join.examples_schema.field_map:
            raise ConfigError(f"online.reward_field {self.online.reward_field!r} is not a field of the joined "
                              f"examples {sorted(self.join.examples_schema.field_map)}: set it to one (by default "
                              "the label the join sets from the clicks)")

    def with_join(self, join: JoinConfig) -> "DriftlineConfig":
        """This config in join mode: `source` becomes the impressions stream (its event log, or its Kafka
        topic) with the joined examples' schema."""
        imp = join.impressions
        return self.replace(join=join, source=dataclasses.replace(
            self.source, kind=imp.kind, kafka=imp.kafka if imp.is_kafka else None,
            log_dir="" if imp.is_kafka else imp.log_dir, schema=join.examples_schema))

    @property
    def temp_location(self) -> str:
        return self.cloud.temp_location or os.path.join(self.home, "tmp")

    def dataflow_args(self, in_image: bool = False) -> List[str]:
        """Beam arguments that run the Beam steps on Dataflow, from this configuration.

        Packaging follows `cloud.dataflow_packaging`: the component image
        (`--sdk_container_image`), or driftline's setup.py (`--setup_file`):
        this checkout's when the Beam step is launched from here, the image's
        copy when it is launched inside a Vertex task (`in_image`).
        `beam.extra_args` come last, so they can add or override anything.
        """
        self.cloud.validate()
        missing = self.cloud.missing_for_dataflow()
        if missing:
            raise ConfigError("Dataflow needs: " + "; ".join(missing))
        if not is_gcs(self.temp_location):
            raise ConfigError(f"Dataflow's temp_location {self.temp_location!r} is not a gs:// path: set "
                              "cloud.temp_location (--temp-location), or a gs:// home")
        args = ["--runner=DataflowRunner", f"--project={self.cloud.project}", f"--region={self.cloud.region}",
                f"--temp_location={self.temp_location}"]
        if self.cloud.dataflow_packaging == "image":
            args.append(f"--sdk_container_image={self.cloud.image}")
        else:
            setup_file = IMAGE_SETUP_FILE if in_image else driftline_setup_file()
            if not setup_file:
                raise ConfigError("cloud.dataflow_packaging is 'setup_file' but driftline does not run from a "
                                  "checkout with a setup.py here; use the 'image' packaging")
            args.append(f"--setup_file={setup_file}")
        if self.cloud.service_account:
            args.append(f"--service_account_email={self.cloud.service_account}")
        if self.cloud.machine_type:
            args.append(f"--machine_type={self.cloud.machine_type}")
        if self.cloud.max_num_workers:
            args.append(f"--max_num_workers={self.cloud.max_num_workers}")
        if self.cloud.disk_size_gb:
            args.append(f"--disk_size_gb={self.cloud.disk_size_gb}")
        if self.cloud.subnetwork:
            args.append(f"--subnetwork={self.cloud.subnetwork}")
        return args + list(self.beam.extra_args)

    def beam_args(self) -> List[str]:
        """The Beam steps' arguments: Dataflow when `beam.runner` is DataflowRunner, else `beam.args()`."""
        if self.beam.runner == "DataflowRunner":
            return self.dataflow_args()
        return self.beam.args()

    def vertex_beam_args(self) -> List[str]:
        """The Beam arguments compiled into the Vertex spec: Dataflow, or DirectRunner inside the task."""
        if self.cloud.beam_runner == "DataflowRunner":
            return self.dataflow_args(in_image=True)
        return ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory",
                f"--setup_file={IMAGE_SETUP_FILE}"] + list(self.beam.extra_args)

    def validate_for_vertex(self) -> "DriftlineConfig":
        """What Vertex AI Pipelines needs on top of `validate()`; ConfigError names every gap at once."""
        self.validate()
        self.cloud.validate()
        problems = []
        if not self.cloud.image:
            problems.append("cloud.image (--image) is empty: Vertex runs every component in the image built "
                            "from the Dockerfile; push it and name it here")
        if self.cloud.beam_runner == "DataflowRunner":
            problems += self.cloud.missing_for_dataflow(image=False)
        paths = [("home (--home)", self.home), ("pusher.serving_dir", self.serving_dir)]
        if self.source.kind == "kafka":
            local = [h.strip() for h in self.source.kafka.bootstrap_servers.split(",")
                     if h.strip().rsplit(":", 1)[0] in LOOPBACK_HOSTS or h.strip() in LOOPBACK_HOSTS]
            if local:
                problems.append(f"source.kafka.bootstrap_servers names {', '.join(local)}: a loopback address is the "
                                "Vertex task's (or Dataflow worker's) own machine, not the broker; name brokers "
                                "reachable from the project's VPC")
        else:
            paths.insert(1, ("source.log_dir (--log)", self.source.log_dir))
        for name, path in paths:
            if not is_gcs(path):
                problems.append(f"{name} is {path!r}: Vertex tasks see only gs:// paths, set a gs://bucket/... path")
        if problems:
            raise ConfigError("cannot compile for Vertex AI Pipelines: " + "; ".join(problems))
        return self

    def replace(self, **changes) -> "DriftlineConfig":
        return dataclasses.replace(self, **changes)


def default_config(home: str, log_dir: Optional[str] = None) -> DriftlineConfig:
    """The configuration `make demo` uses: the built-in stream under `home`."""
    return DriftlineConfig(home=home, source=SourceConfig(log_dir=log_dir or os.path.join(home, "events")))
