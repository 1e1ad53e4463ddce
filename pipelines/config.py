"""The one configuration object of driftline.

Every default lives here. Components take these dataclasses (or the plain
values in them) so that a setting has exactly one home; the CLI, the YAML
config file (pipelines/config_file.py, which reads into these same classes)
and `create_pipeline(config)` build them, and nothing else invents values.
This module imports nothing heavy, so it is cheap to load anywhere.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from typing import Dict, List, Optional, Tuple

from components.event_schema import EventSchema, ad_click_schema


class ConfigError(ValueError):
    """A misconfiguration; the message names the setting and the fix."""


@dataclasses.dataclass(frozen=True)
class WindowConfig:
    """How events are cut into event-time spans."""

    span_seconds: int = 600
    # The watermark trails the newest event time by this much, so a span is
    # emitted only once events this late can no longer fall into it. Later
    # ones are not dropped: they go into the next emitted span as late events.
    # Freshness (a span's newest event to its model serving) includes this
    # wait, and driftline's target is a minute: 30 s leaves the cycle the rest.
    allowed_lateness_seconds: int = 30
    # The last part of each span, in event time, becomes the eval split, so
    # evaluation data is always later than the training data of that span.
    eval_fraction: float = 0.2
    # An event this far ahead of the ingest machine's clock is dead-lettered as "from the future" and
    # never moves the watermark: one producer with a wrong clock would otherwise close every span early.
    # None switches the bound off.
    max_future_seconds: Optional[int] = 300
    # A late event older than the watermark by more than this is dead-lettered as "too late". Off by
    # default (None), so that a historical replay, whose events all lie far behind, still works.
    max_lateness_seconds: Optional[int] = None
    # A valid event whose id was already emitted in this ingest run or in the spans the newest N runs
    # published is a duplicate (a producer's retry): counted and kept out of the examples. None: as many
    # runs as the trainer's replay window has spans (trainer.replay_spans, at least 1); 0: only within one run.
    dedup_horizon_runs: Optional[int] = None

    def validate(self) -> None:
        if self.span_seconds < 1:
            raise ConfigError(f"window.span_seconds must be >= 1, got {self.span_seconds}")
        if self.allowed_lateness_seconds < 0:
            raise ConfigError(f"window.allowed_lateness_seconds must be >= 0, got {self.allowed_lateness_seconds}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"window.eval_fraction must be strictly between 0 and 1, got {self.eval_fraction}")
        if self.max_future_seconds is not None and self.max_future_seconds < 0:
            raise ConfigError(f"window.max_future_seconds must be >= 0 or None (no bound), got "
                              f"{self.max_future_seconds}")
        if self.max_lateness_seconds is not None and self.max_lateness_seconds < 0:
            raise ConfigError(f"window.max_lateness_seconds must be >= 0 or None (no bound), got "
                              f"{self.max_lateness_seconds}")
        if self.dedup_horizon_runs is not None and self.dedup_horizon_runs < 0:
            raise ConfigError(f"window.dedup_horizon_runs must be >= 0 or None (the replay window), got "
                              f"{self.dedup_horizon_runs}")

    def runtime(self):
        """The plain windowing rules these settings give (components/streaming_example_gen/windowing.py)."""
        from components.streaming_example_gen.windowing import Window

        seconds = lambda v: None if v is None else v * 1000  # noqa: E731
        return Window(self.span_ms, self.allowed_lateness_ms, self.eval_fraction,
                      max_future_ms=seconds(self.max_future_seconds),
                      max_lateness_ms=seconds(self.max_lateness_seconds))

    @property
    def span_ms(self) -> int:
        return self.span_seconds * 1000

    @property
    def allowed_lateness_ms(self) -> int:
        return self.allowed_lateness_seconds * 1000


SOURCE_KINDS = ("event_log", "kafka")
KAFKA_EVENT_TIMES = ("payload", "record_timestamp")
# librdkafka settings driftline sets itself (components/kafka_log.py): offsets
# live in ML Metadata, so nothing may commit to Kafka or silently reset.
KAFKA_RESERVED_SETTINGS = ("bootstrap.servers", "enable.auto.commit", "enable.auto.offset.store",
                           "auto.offset.reset", "enable.partition.eof")
# librdkafka settings that hold a secret. client_config travels as an execution
# property into ML Metadata and into a compiled Vertex spec, in plain text, so
# these (and any setting whose name says password, secret, token or credential)
# must come through KafkaConfig.secret_env or secret_files instead.
KAFKA_SECRET_SETTINGS = ("sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
                         "sasl.oauthbearer.client.secret")
_SECRET_WORDS = re.compile(r"pass(word|wd)|secret|token|credential", re.IGNORECASE)
# Names that match a secret word but hold none: where to fetch a token, not the token.
_NOT_SECRET_SETTINGS = ("sasl.oauthbearer.token.endpoint.url",)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def looks_like_secret(setting: str) -> bool:
    """Whether a librdkafka setting name is one that holds a secret (see KAFKA_SECRET_SETTINGS)."""
    name = setting.strip().lower()
    return name in KAFKA_SECRET_SETTINGS or (name not in _NOT_SECRET_SETTINGS and bool(_SECRET_WORDS.search(name)))


@dataclasses.dataclass(frozen=True)
class KafkaConfig:
    """A Kafka topic as the source. Offsets are committed in ML Metadata, never to Kafka."""

    bootstrap_servers: str = ""
    topic: str = ""
    # None: every partition of the topic, including ones added later.
    partitions: Optional[Tuple[int, ...]] = None
    # Where an event's time comes from: the payload's event-time field, or
    # the record's timestamp (which then replaces that field).
    event_time: str = "payload"
    # Planning reads until the client reports the end of every partition or
    # nothing arrives for this long; broker-reported end offsets are not used.
    poll_timeout_s: float = 2.0
    # Per cycle, at most this many records past the committed offset are read
    # from one partition; the rest waits for the next cycle.
    max_records_per_partition: int = 1_000_000
    # Offsets per initial split of the splittable read: the unit of parallel reading.
    records_per_split: int = 100_000
    # Read timeout of the range reads: records the plan saw must arrive within it.
    read_timeout_s: float = 30.0
    # Extra librdkafka consumer settings (security.protocol, sasl.mechanism,
    # sasl.username, ssl.ca.location, ...). Recorded in ML Metadata as an
    # execution property and in a compiled Vertex spec: no secrets here
    # (validation refuses a setting named like one, see looks_like_secret).
    client_config: Dict[str, str] = dataclasses.field(default_factory=dict)
    # Secret settings, read only when a consumer connects, never stored:
    # setting -> name of the environment variable that holds its value
    # (e.g. {"sasl.password": "KAFKA_SASL_PASSWORD"}) ...
    secret_env: Dict[str, str] = dataclasses.field(default_factory=dict)
    # ... or setting -> path of a local file that holds it (a mounted secret;
    # one trailing newline is dropped). Only the names and paths are recorded.
    secret_files: Dict[str, str] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        if not self.bootstrap_servers:
            raise ConfigError("source.kafka.bootstrap_servers is empty: set it to the brokers, e.g. 'host1:9092,host2:9092'")
        if not self.topic:
            raise ConfigError("source.kafka.topic is empty: set it to the topic the producers write events to")
        if self.partitions is not None and (not self.partitions or any(
                isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in self.partitions)):
            raise ConfigError(f"source.kafka.partitions must be None (all partitions) or a non-empty tuple of "
                              f"partition numbers >= 0, got {self.partitions!r}")
        if self.event_time not in KAFKA_EVENT_TIMES:
            raise ConfigError(f"source.kafka.event_time must be one of {KAFKA_EVENT_TIMES}, got {self.event_time!r}")
        if not self.poll_timeout_s > 0 or not self.read_timeout_s > 0:
            raise ConfigError("source.kafka.poll_timeout_s and source.kafka.read_timeout_s must be > 0")
        if self.read_timeout_s < self.poll_timeout_s:
            raise ConfigError(f"source.kafka.read_timeout_s ({self.read_timeout_s:g}) must be >= poll_timeout_s "
                              f"({self.poll_timeout_s:g}): a range read waits for records the plan already saw")
        if self.max_records_per_partition < 1 or self.records_per_split < 1:
            raise ConfigError("source.kafka.max_records_per_partition and source.kafka.records_per_split must be >= 1")
        reserved = sorted((set(self.client_config) | set(self.secret_env) | set(self.secret_files))
                          & set(KAFKA_RESERVED_SETTINGS))
        if reserved:
            raise ConfigError(f"source.kafka.client_config sets {reserved}, which driftline owns: offsets are "
                              "committed in ML Metadata, so consumers never commit to Kafka nor reset offsets. "
                              "Remove them (bootstrap.servers goes in source.kafka.bootstrap_servers).")
        secrets = sorted(k for k in self.client_config if looks_like_secret(k))
        if secrets:
            example = secrets[0]
            env = re.sub(r"[^A-Za-z0-9]+", "_", f"kafka_{example}").upper()
            # The value is never echoed: this message may itself end up in a log.
            raise ConfigError(
                f"source.kafka.client_config sets {secrets}, which hold secrets: client_config is stored in plain "
                f"text in ML Metadata and in a compiled Vertex spec. Move them out of client_config into "
                f"source.kafka.secret_env (setting -> environment variable, e.g. "
                f"secret_env={{{example!r}: {env!r}}}) or source.kafka.secret_files (setting -> file path); "
                "their values are read only when a consumer connects.")
        both = sorted((set(self.secret_env) & set(self.secret_files))
                      | ((set(self.secret_env) | set(self.secret_files)) & set(self.client_config)))
        if both:
            raise ConfigError(f"source.kafka settings {both} are given twice (client_config, secret_env, "
                              "secret_files): give each setting in one of them")
        for setting, name in self.secret_env.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                raise ConfigError(f"source.kafka.secret_env[{setting!r}] must be the name of an environment "
                                  "variable (letters, digits, _), not the secret itself")
        for setting, path in self.secret_files.items():
            if not isinstance(path, str) or not path:
                raise ConfigError(f"source.kafka.secret_files[{setting!r}] must be the path of a file that holds "
                                  "the value")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["partitions"] = None if self.partitions is None else list(self.partitions)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "KafkaConfig":
        d = json.loads(text)
        if d.get("partitions") is not None:
            d["partitions"] = tuple(d["partitions"])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Where events come from and what they look like."""

    log_dir: str = ""
    schema: EventSchema = dataclasses.field(default_factory=ad_click_schema)
    # Unit of parallel reading; also bounds the memory one Beam worker needs.
    chunk_bytes: int = 8 << 20
    # "event_log" reads log_dir; "kafka" reads the topic in `kafka`.
    kind: str = "event_log"
    kafka: Optional[KafkaConfig] = None

    def validate(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ConfigError(f"source.kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.kind == "kafka":
            if self.kafka is None:
                raise ConfigError("source.kind is 'kafka' but source.kafka is not set: set "
                                  "source.kafka=KafkaConfig(bootstrap_servers=..., topic=...)")
            if self.log_dir:
                raise ConfigError("source.kind is 'kafka' but source.log_dir is set too: a pipeline reads one "
                                  "source; drop log_dir (or set kind='event_log' and drop kafka)")
            self.kafka.validate()
        else:
            if self.kafka is not None:
                raise ConfigError("source.kafka is set but source.kind is 'event_log': set source.kind='kafka' to "
                                  "read the topic, or drop source.kafka")
            if not self.log_dir:
                raise ConfigError("source.log_dir is empty: set it to the event log folder "
                                  "(for the built-in stream, the folder given to 'driftline simulate --log')")
        if self.chunk_bytes < 4096:
            raise ConfigError(f"source.chunk_bytes must be >= 4096, got {self.chunk_bytes}")
        self.schema.validate()

    def describe(self) -> str:
        if self.kind == "kafka" and self.kafka is not None:
            return f"Kafka topic {self.kafka.topic!r} at {self.kafka.bootstrap_servers}"
        return f"event log {self.log_dir}"


NUMERIC_MODES = ("log_standardize", "standardize", "bucketize", "tft_z_score")


@dataclasses.dataclass(frozen=True)
class NumericTransform:
    """How one numeric feature is scaled; see transforms/stream.py for which modes are warm-start safe.

    `mean`/`std` are a *reference*: fixed numbers (for `log_standardize`, of
    log1p(x)), not statistics recomputed on each span, so a feature keeps its
    scale from one span to the next.
    """

    mode: str = "log_standardize"
    mean: float = 0.0
    std: float = 1.0
    boundaries: Tuple[float, ...] = ()

    def validate(self, name: str) -> None:
        if self.mode not in NUMERIC_MODES:
            raise ConfigError(f"transform.numeric[{name!r}].mode must be one of {NUMERIC_MODES}, got {self.mode!r}")
        if self.std <= 0:
            raise ConfigError(f"transform.numeric[{name!r}].std must be > 0, got {self.std}")
        if self.mode == "bucketize" and (not self.boundaries or list(self.boundaries) != sorted(self.boundaries)):
            raise ConfigError(f"transform.numeric[{name!r}]: bucketize needs sorted, non-empty boundaries")


@dataclasses.dataclass(frozen=True)
class TransformConfig:
    """Feature transforms built from the event schema (used through stock TFX Transform)."""

    # Buckets for a categorical field whose schema entry sets no hash_buckets.
    default_hash_buckets: int = 1000
    # Per numeric field; a numeric field not listed here gets NumericTransform().
    numeric: Dict[str, NumericTransform] = dataclasses.field(default_factory=lambda: {
        # Reference scale of log1p(price) on the built-in stream (log-normal prices around 1).
        "price": NumericTransform(mode="log_standardize", mean=0.74, std=0.32),
    })

    def validate(self, schema: EventSchema) -> None:
        if self.default_hash_buckets < 1:
            raise ConfigError("transform.default_hash_buckets must be >= 1")
        numeric_fields = {f.name for f in schema.feature_fields("numeric")}
        for name, spec in self.numeric.items():
            if name not in numeric_fields:
                raise ConfigError(f"transform.numeric names {name!r}, which is not a numeric feature of event "
                                  f"schema {schema.name!r} (numeric features: {sorted(numeric_fields)})")
            spec.validate(name)

    def for_field(self, name: str) -> NumericTransform:
        return self.numeric.get(name, NumericTransform())

    @property
    def uses_analyzers(self) -> bool:
        return any(spec.mode == "tft_z_score" for spec in self.numeric.values())

    def to_dict(self) -> dict:
        return {"default_hash_buckets": self.default_hash_buckets,
                "numeric": {k: dataclasses.asdict(v) for k, v in sorted(self.numeric.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> "TransformConfig":
        return cls(default_hash_buckets=d["default_hash_buckets"],
                   numeric={k: NumericTransform(**{**v, "boundaries": tuple(v.get("boundaries", ()))})
                            for k, v in d["numeric"].items()})


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """How each cycle trains. Warm cycles continue the base model; cold ones start fresh."""

    # Dotted path of the user module's run_fn (no module file: no wheel is built per cycle).
    run_fn: str = "pipelines.ads_model.run_fn"
    cold_epochs: int = 3
    # Two passes over the new span at 0.005 (benchmarks/cost.py, against a full retrain's next-span
    # AUC): one pass under-trains (-0.004 at 0.005, -0.001 at 0.01), three at 0.003 gave +0.003 and
    # two at 0.005 +0.006, for two thirds of the steps.
    warm_epochs: int = 2
    cold_learning_rate: float = 0.01
    # Lower than cold: a warm start refines weights that are already good.
    warm_learning_rate: float = 0.005
    # "constant" or "cosine" decay over the cycle's steps.
    learning_rate_schedule: str = "constant"
    batch_size: int = 256
    # Replay window, against forgetting: the newest `replay_spans` earlier
    # spans, their train split sampled at `replay_fraction`. The previous
    # span's eval split is always trained in full: it was only evaluated on.
    replay_spans: int = 3
    replay_fraction: float = 0.1
    seed: int = 0
    # Passed to run_fn as fn_args.custom_config["model"]: the model's own knobs.
    model: Dict[str, object] = dataclasses.field(default_factory=lambda: {
        "embedding_dim": 8, "hidden_units": [64, 32]})

    def validate(self) -> None:
        if "." not in self.run_fn:
            raise ConfigError(f"trainer.run_fn must be a dotted path like 'package.module.run_fn', got {self.run_fn!r}")
        for name in ("cold_epochs", "warm_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cold_learning_rate", "warm_learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"trainer.{name} must be > 0, got {getattr(self, name)}")
        if self.learning_rate_schedule not in ("constant", "cosine"):
            raise ConfigError("trainer.learning_rate_schedule must be 'constant' or 'cosine', "
                              f"got {self.learning_rate_schedule!r}")
        if self.replay_spans < 0 or not 0.0 <= self.replay_fraction <= 1.0:
            raise ConfigError("trainer.replay_spans must be >= 0 and trainer.replay_fraction in [0, 1]")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainerConfig":
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """When a candidate is blessed: TFMA metrics on the newest span's eval split."""

    min_auc: float = 0.6
    # Calibration = mean prediction / mean label; 1.0 is perfect.
    min_calibration: float = 0.7
    max_calibration: float = 1.3
    # Log loss bound. None (the default) follows the eval split's label rate:
    # log loss <= max_log_loss_factor x the no-skill log loss (that of always
    # predicting the split's label rate), so it fits any positive rate. A number
    # is an absolute bound instead (and must suit the stream's positive rate).
    max_log_loss: Optional[float] = None
    max_log_loss_factor: float = 1.0
    # Against the baseline (the serving, latest blessed model), scored on the
    # same examples: the candidate is refused only when it is worse WITH
    # CONFIDENCE (one-sided, at `confidence`), by DeLong's test for the AUC
    # difference and a paired t-test for the log loss difference. The margins
    # are tolerated losses (non-inferiority): refused when the AUC is
    # confidently more than max_auc_drop below the baseline's, or the log loss
    # confidently more than max_log_loss_increase above it. Per slice, the same
    # AUC test at a Bonferroni-corrected confidence.
    confidence: float = 0.95
    max_auc_drop: float = 0.0
    max_log_loss_increase: float = 0.0
    # Data sanity: the eval span's label rate may be at most this many times
    # above or below what the baseline predicts on it. Flipped or broken
    # labels fool every relative metric (a candidate trained on them scores
    # well on them), not the serving model's calibration.
    max_label_shift: float = 2.5
    # Per-slice bound: every slice of this feature with enough examples must reach it.
    slice_feature: Optional[str] = "device"
    min_slice_auc: float = 0.55
    min_slice_examples: int = 200
    # Too little evidence: the AUC interval (lower to upper one-sided bound at
    # `confidence`) is wider than this. With a baseline it is the interval of
    # the AUC difference, else of the candidate's AUC. A tiny floor of
    # positives and negatives keeps the AUC and its variance defined.
    max_auc_interval_width: float = 0.1
    min_eval_positives: int = 10
    min_eval_negatives: int = 10
    # Deprecated (a fixed count is not evidence): use max_auc_interval_width.
    # When set it is still enforced as an extra floor, with a warning.
    min_eval_examples: Optional[int] = None
    # Data sanity: at most this share of the lines ingested for the cycle's
    # spans may be malformed (dead-lettered). The schema is declared once, not
    # inferred per span, so a producer that starts writing another shape shows
    # up here, and its span's model is kept out of serving.
    max_dead_letter_fraction: float = 0.05

    def validate(self, schema: EventSchema) -> None:
        if not 0.0 <= self.min_auc <= 1.0 or not 0.0 <= self.min_slice_auc <= 1.0:
            raise ConfigError("gate.min_auc and gate.min_slice_auc must be within [0, 1]")
        if not 0 < self.min_calibration <= 1.0 <= self.max_calibration:
            raise ConfigError("gate.min_calibration must be in (0, 1] and gate.max_calibration >= 1")
        if self.max_label_shift < 1.0:
            raise ConfigError(f"gate.max_label_shift is a fold change and must be >= 1, got {self.max_label_shift}")
        if (self.max_log_loss is not None and self.max_log_loss <= 0) or self.max_log_loss_factor <= 0:
            raise ConfigError("gate.max_log_loss must be > 0 (or None: relative to the label rate) and "
                              "gate.max_log_loss_factor > 0")
        if self.max_auc_drop < 0 or self.max_log_loss_increase < 0:
            raise ConfigError("gate.max_auc_drop and gate.max_log_loss_increase are tolerated losses: must be >= 0")
        if not 0.5 < self.confidence < 1.0:
            raise ConfigError(f"gate.confidence is a one-sided confidence level in (0.5, 1), got {self.confidence}")
        if not self.max_auc_interval_width > 0:
            raise ConfigError(f"gate.max_auc_interval_width must be > 0, got {self.max_auc_interval_width}")
        if not 0.0 <= self.max_dead_letter_fraction <= 1.0:
            raise ConfigError(f"gate.max_dead_letter_fraction must be within [0, 1], got {self.max_dead_letter_fraction}")
        if self.min_eval_positives < 2 or self.min_eval_negatives < 2:
            raise ConfigError("gate.min_eval_positives and gate.min_eval_negatives must be >= 2: the AUC's "
                              "variance needs two of each class")
        if self.min_eval_examples is not None:
            if self.min_eval_examples < 1:
                raise ConfigError("gate.min_eval_examples must be >= 1 or None (deprecated: use "
                                  "gate.max_auc_interval_width)")
            warnings.warn("gate.min_eval_examples is deprecated: evidence is judged by the AUC interval's width "
                          "(gate.max_auc_interval_width); the fixed count is still enforced while it is set",
                          DeprecationWarning, stacklevel=2)
        if self.slice_feature is not None and self.slice_feature not in schema.field_map:
            raise ConfigError(f"gate.slice_feature {self.slice_feature!r} is not a field of event schema "
                              f"{schema.name!r}; use one of {sorted(schema.field_map)} or None")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GateConfig":
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class PusherConfig:
    """Where blessed models are served from (TF Serving's <dir>/<version>/ layout)."""

    serving_dir: str = ""  # default: <home>/serving
    keep_versions: int = 5

    def validate(self) -> None:
        if self.keep_versions < 1:
            raise ConfigError(f"pusher.keep_versions must be >= 1 (serving needs its current version), "
                              f"got {self.keep_versions}")


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

    def validate(self) -> None:
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


@dataclasses.dataclass(frozen=True)
class LatencyConfig:
    """The LatencyValidator's load test: what a request is, how it is replayed, and the SLO.

    A request is `candidates_per_request` candidates (tf.Examples of the
    newest span's eval split), as in a ranking service that scores every
    candidate of one search. Each request is scored in calls of `batch_size`
    candidates, for every size in `batch_sizes`, by `concurrency` client
    threads for `seconds_per_batch_size` each. The verdict is the p99 request
    latency at the best batch size against `slo_p99_ms`.
    """

    enabled: bool = True
    # Etsy's search ranking scores ~1000 candidates a request (Caliper).
    candidates_per_request: int = 1000
    # Caliper's story: the whole search request has 250 ms, and most of it goes
    # to fetching candidates and features before the model is called; the
    # model gets a share of it. 100 ms leaves the default model (a p99 of about
    # 5-10 ms for 1000 candidates on this 2-core machine while other work
    # shared it; benchmarks/RESULTS.md) a wide margin for a busy CPU, and still
    # refuses a model that would take almost half the request's budget.
    slo_p99_ms: float = 100.0
    batch_sizes: Tuple[int, ...] = (100, 1000)
    concurrency: int = 2
    # Short by default: this runs in every cycle. benchmarks/latency.py runs
    # longer for the figures in benchmarks/RESULTS.md.
    seconds_per_batch_size: float = 1.0
    # Distinct requests cut from the eval split (reused round-robin).
    distinct_requests: int = 8
    # Single-threaded repetitions of each stage (parse, transform, whole
    # model) for the transform share.
    stage_repeats: int = 10
    # A candidate the evaluator refused is not pushed anyway; skipping its
    # load test saves the time and records why.
    skip_unblessed: bool = True

    def validate(self) -> None:
        if self.candidates_per_request < 1:
            raise ConfigError(f"latency.candidates_per_request must be >= 1, got {self.candidates_per_request}")
        if not self.slo_p99_ms > 0:
            raise ConfigError(f"latency.slo_p99_ms must be > 0 (milliseconds), got {self.slo_p99_ms}")
        if not self.batch_sizes:
            raise ConfigError("latency.batch_sizes is empty: give at least one, e.g. "
                              f"({self.candidates_per_request},) for one call per request")
        for size in self.batch_sizes:
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= self.candidates_per_request:
                raise ConfigError(f"latency.batch_sizes holds {size!r}: each must be an int from 1 to "
                                  f"latency.candidates_per_request ({self.candidates_per_request}); a batch "
                                  "is a part of one request")
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ConfigError(f"latency.batch_sizes repeats a size: {self.batch_sizes}")
        if self.concurrency < 1:
            raise ConfigError(f"latency.concurrency must be >= 1 client, got {self.concurrency}")
        if not self.seconds_per_batch_size > 0:
            raise ConfigError(f"latency.seconds_per_batch_size must be > 0, got {self.seconds_per_batch_size}")
        if self.distinct_requests < 1 or self.stage_repeats < 1:
            raise ConfigError("latency.distinct_requests and latency.stage_repeats must be >= 1")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "batch_sizes": list(self.batch_sizes)}

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyConfig":
        return cls(**{**d, "batch_sizes": tuple(d.get("batch_sizes", cls.batch_sizes))})


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
    """Arguments for the Beam steps. Locally: DirectRunner on every core."""

    runner: str = "DirectRunner"
    # More than one worker switches DirectRunner to multi_processing, which
    # was seen to drop elements here (benchmarks/ingest.py); ingestion then
    # refuses to commit rather than skip events. One in-memory worker is the default.
    direct_num_workers: int = 1
    extra_args: tuple = ()

    def args(self) -> List[str]:
        if self.runner == "DirectRunner":
            # in_memory keeps one process: on 2 cores the multi_processing
            # start-up costs more than the parallelism gives back at span sizes
            # (benchmarks/ingest.py).
            mode = "in_memory" if self.direct_num_workers == 1 else "multi_processing"
            base = ["--runner=DirectRunner", f"--direct_num_workers={self.direct_num_workers}",
                    f"--direct_running_mode={mode}"]
        else:
            base = [f"--runner={self.runner}"]
        packaging = [a for a in self.extra_args if a.split("=")[0] in _PACKAGING_FLAGS]
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

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.home, "pipeline_root")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.home, "metadata.sqlite")

    @property
    def serving_dir(self) -> str:
        return self.pusher.serving_dir or os.path.join(self.home, "serving")

    def validate(self) -> "DriftlineConfig":
        if not self.pipeline_name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"pipeline_name {self.pipeline_name!r} may hold only letters, digits, '-' and '_'")
        if not self.home:
            raise ConfigError("home is empty: set it to a folder for ML Metadata and artifacts")
        self.source.validate()
        self.window.validate()
        self.transform.validate(self.source.schema)
        self.trainer.validate()
        self.gate.validate(self.source.schema)
        self.pusher.validate()
        self.retention.validate()
        self.latency.validate()
        self.controller.validate()
        horizon = self.window.dedup_horizon_runs
        if self.retention.enabled and horizon is not None and horizon > self.retention.keep_cycles:
            raise ConfigError(
                f"window.dedup_horizon_runs ({horizon}) is more than retention.keep_cycles "
                f"({self.retention.keep_cycles}): retention would delete the event ids of spans the dedup still "
                "compares against. Raise retention.keep_cycles to at least the horizon, or lower the horizon.")
        return self

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
