"""The YAML config file: `DriftlineConfig` written down, read back and checked.

The file is the dataclasses of `pipelines/config.py` as YAML, section by
section (`pipeline_name`, `home`, `source`, `window`, `transform`, `trainer`,
`gate`, `pusher`, `latency`, `retention`, `controller`, `beam`, `cloud`, `metadata`, `serve`, `online`,
`join`). Every
key is optional: what a file leaves out keeps the dataclass's default, so the
defaults keep their one home in `pipelines/config.py`. The event schema goes
inline under `source.schema` or by path as `source.schema_file` (JSON or YAML,
relative to the config file); so do `join.impressions.schema` and `join.outcomes.schema`. With a `join`
section, `source` defaults to the impressions log and the joined examples' schema.

Types and unknown keys are checked by pydantic models derived from the
dataclasses' own fields (so a new setting needs no second declaration here);
the values then go through `DriftlineConfig.validate()`, whose messages name
the setting and the fix. Every error is a `ConfigError` that names the file
and the setting's path, e.g. ``driftline.yaml: window.span_seconds: ...``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import typing
from typing import Any, Dict, Optional, Tuple

import pydantic
import yaml

from components.event_schema import EventSchema, SchemaError
from pipelines.config import (
    BeamConfig, CloudConfig, ConfigError, ControllerConfig, DriftlineConfig, GateConfig, JoinConfig,
    JoinStreamConfig, KafkaConfig,
    LatencyConfig, MetadataConfig, NumericTransform, PusherConfig, RetentionConfig, SourceConfig, TrainerConfig,
    TransformConfig, WindowConfig, default_config,
)
from pipelines.serve.config import ServeConfig
from pipelines.config import OnlineEvalConfig

# The name a home's own config file has: the first run writes it, and every command that is given only
# --home reads it, so status, lineage, gc, rollback and the controller see the pipeline that ran there.
HOME_CONFIG_NAME = "driftline.yaml"

# Fields of DriftlineConfig, in the order the file lists them.
SECTIONS: Dict[str, type] = {
    "source": SourceConfig, "window": WindowConfig, "transform": TransformConfig, "trainer": TrainerConfig,
    "gate": GateConfig, "pusher": PusherConfig, "latency": LatencyConfig, "retention": RetentionConfig,
    "controller": ControllerConfig, "beam": BeamConfig, "cloud": CloudConfig, "metadata": MetadataConfig,
    "serve": ServeConfig,
    "online": OnlineEvalConfig,
    "join": JoinConfig,
}
# Sections that may be absent (None in DriftlineConfig): `join: null` is the single-stream pipeline.
OPTIONAL_SECTIONS = ("join",)
# Dataclasses whose `schema` is an EventSchema, given inline (schema:) or by file (schema_file:).
_SCHEMA_HOLDERS = (SourceConfig, JoinStreamConfig)


def home_config_path(home: str) -> str:
    return os.path.join(home, HOME_CONFIG_NAME)


# -- the pydantic models, derived from the dataclasses ------------------------------------------

_STRICT = pydantic.ConfigDict(extra="forbid")


def _file_type(tp: Any) -> Any:
    """The type a dataclass field has in the file: nested dataclasses become their models."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _model(tp)
    if tp is tuple:  # BeamConfig.extra_args: Beam command-line arguments
        return Tuple[str, ...]
    if tp is object:
        return Any
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return typing.Union[tuple(_file_type(a) for a in args)]
    if origin is tuple:
        return Tuple[tuple(a if a is Ellipsis else _file_type(a) for a in args)]
    if origin in (dict, typing.Dict):
        return Dict[tuple(_file_type(a) for a in args)]
    if origin in (list, typing.List):
        return typing.List[tuple(_file_type(a) for a in args)]
    return tp


@functools.lru_cache(maxsize=None)
def _model(cls: type) -> type:
    hints = typing.get_type_hints(cls)
    fields: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if cls in _SCHEMA_HOLDERS and f.name == "schema":
            # Inline, or by file (schema_file): read by EventSchema.from_dict, whose messages we keep.
            # (`schema_` in Python: `schema` is a BaseModel attribute.)
            fields["schema_"] = (Optional[Dict[str, Any]], pydantic.Field(None, alias="schema"))
            fields["schema_file"] = (Optional[str], None)
            continue
        # The default here is never used: only the keys a file sets reach the dataclass (see _build).
        fields[f.name] = (_file_type(hints[f.name]), None)
    return pydantic.create_model(f"{cls.__name__}File", __config__=_STRICT, **fields)


def _build(cls: type, model: pydantic.BaseModel, where: str, base_dir: str, path: str) -> Any:
    """The dataclass from the keys the file set; the others keep the dataclass's defaults."""
    values: Dict[str, Any] = {}
    for name in model.model_fields_set:
        value = getattr(model, name)
        if cls in _SCHEMA_HOLDERS and name in ("schema_", "schema_file"):
            continue
        values[name] = _plain_value(value, where + name, base_dir, path)
    if cls in _SCHEMA_HOLDERS:
        schema = _schema(model, where, base_dir, path)
        if schema is not None:
            values["schema"] = schema
    if cls in (JoinConfig, JoinStreamConfig):
        # Settings without a default: name the one missing rather than a constructor's TypeError.
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if cls is JoinStreamConfig and "schema" not in values:
            missing.append("schema")  # None by default only so that a Kafka stream may leave log_dir out
        if missing:
            raise ConfigError(f"{path}: {where}{missing[0]} is missing: the join needs "
                              + ("impressions: and outcomes:, each with log_dir: (or kind: kafka and kafka:) and "
                                 "schema: (or schema_file:)"
                                 if cls is JoinConfig else "schema: (or schema_file:), and log_dir: (the stream's "
                                 "event log) or kind: kafka and kafka: (bootstrap_servers, topic, ...)"))
    return cls(**values)


def _plain_value(value: Any, where: str, base_dir: str, path: str) -> Any:
    if isinstance(value, pydantic.BaseModel):
        cls = _DATACLASS_OF[type(value)]
        return _build(cls, value, where + ".", base_dir, path)
    if isinstance(value, dict):
        return {k: _plain_value(v, f"{where}[{k!r}]", base_dir, path) for k, v in value.items()}
    return value


def _schema(model: pydantic.BaseModel, where: str, base_dir: str, path: str) -> Optional[EventSchema]:
    inline, file = model.schema_, model.schema_file
    if inline is not None and file is not None:
        raise ConfigError(f"{path}: {where}schema and {where}schema_file are both set: give the event schema "
                          "inline or by file, not both")
    if file is not None:
        file_path = file if os.path.isabs(file) else os.path.join(base_dir, file)
        try:
            with open(file_path, encoding="utf-8") as f:
                inline = yaml.safe_load(f)  # YAML is a superset of JSON: EventSchema.save's files read too
        except OSError as e:
            raise ConfigError(f"{path}: {where}schema_file: cannot read the event schema file {file_path!r} "
                              f"({e.strerror}); fix the path (a relative one is relative to the config file)") \
                from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: {where}schema_file: {file_path!r} is not valid JSON or YAML: {e}") from None
        if not isinstance(inline, dict):
            raise ConfigError(f"{path}: {where}schema_file: {file_path!r} must hold a mapping with the keys "
                              "name, fields, id_field, event_time_field and label_field")
    if inline is None:
        return None
    try:
        return EventSchema.from_dict(inline)
    except SchemaError as e:
        raise ConfigError(f"{path}: {where}schema{'_file ' + repr(file) if file else ''}: {e}") from None


def _root_model() -> type:
    fields: Dict[str, Any] = {"pipeline_name": (str, None), "home": (str, None)}
    fields.update({name: (Optional[_model(cls)] if name in OPTIONAL_SECTIONS else _model(cls), None)
                   for name, cls in SECTIONS.items()})
    return pydantic.create_model("DriftlineConfigFile", __config__=_STRICT, **fields)


_ROOT = _root_model()
_DATACLASS_OF = {_model(cls): cls for cls in (*SECTIONS.values(), KafkaConfig, NumericTransform, JoinStreamConfig)}
_DATACLASS_OF[_ROOT] = DriftlineConfig


def _setting(loc: Tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _explain(error: pydantic.ValidationError, path: str) -> ConfigError:
    lines = []
    for e in error.errors(include_url=False):
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            parent_loc, key = loc[:-1], loc[-1]
            known = _known_keys(parent_loc)
            lines.append(f"{_setting(loc)}: unknown setting {key!r}; "
                         + (f"the settings here are {', '.join(known)}" if known else "remove it"))
        else:
            lines.append(f"{_setting(loc)}: {e['msg']}, got {e.get('input')!r}")
    return ConfigError(f"{path}: " + "; ".join(lines))


def _known_keys(loc: Tuple[Any, ...]) -> list:
    model = _ROOT
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        if field is None:
            return []
        inner = [a for a in (field.annotation, *typing.get_args(field.annotation))
                 if isinstance(a, type) and issubclass(a, pydantic.BaseModel)]
        if not inner:
            return []
        model = inner[0]
    return [field.alias or name for name, field in model.model_fields.items()]


# -- reading -----------------------------------------------------------------------------------

def loads_config(text: str, path: str = "<config>", base_dir: Optional[str] = None) -> DriftlineConfig:
    """A validated DriftlineConfig from YAML text; `path` names it in errors, `base_dir` anchors schema_file."""
    base_dir = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must be a mapping of settings (pipeline_name:, home:, source:, ...), "
                          f"got a {type(data).__name__}")
    try:
        model = _ROOT.model_validate(data)
    except pydantic.ValidationError as e:
        raise _explain(e, path) from None
    try:
        config = _build(DriftlineConfig, model, "", base_dir, path)
    except (SchemaError, ConfigError) as e:
        # A dataclass's own __post_init__ checks (the event schema's) and the schema file's messages.
        text = str(e)
        raise ConfigError(text if text.startswith(f"{path}:") else f"{path}: {text}") from None
    if config.join is not None:
        # Join mode: what the file leaves out of `source` is the impressions log and the joined examples'
        # schema (DriftlineConfig.with_join); what it sets must agree, which validate() checks.
        given = model.source.model_fields_set if model.source is not None else set()
        joined = config.with_join(config.join).source
        config = config.replace(source=dataclasses.replace(
            config.source, kind=config.source.kind if "kind" in given else joined.kind,
            kafka=config.source.kafka if "kafka" in given else joined.kafka,
            log_dir=config.source.log_dir if "log_dir" in given else joined.log_dir,
            schema=config.source.schema if given & {"schema_", "schema_file"} else joined.schema))
    elif config.source.kind == "event_log" and (model.source is None or "log_dir" not in model.source.model_fields_set):
        # As default_config and the CLI do: the event log of a home is <home>/events unless the file says.
        config = config.replace(source=dataclasses.replace(config.source, log_dir=os.path.join(config.home, "events")))
    try:
        return config.validate()
    except (ConfigError, SchemaError) as e:
        raise ConfigError(f"{path}: {e}") from None


def load_config(path: str) -> DriftlineConfig:
    """The DriftlineConfig a YAML file describes, validated; a ConfigError names the file and the setting."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the config file {path!r} ({e.strerror}); `driftline init --home DIR` "
                          "writes a starter file") from None
    return loads_config(text, path)


# -- writing -----------------------------------------------------------------------------------

def _plain(obj: Any) -> Any:
    """YAML-safe plain data: dataclasses as mappings, tuples as lists, the event schema as its dict."""
    if isinstance(obj, EventSchema):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def config_dict(config: DriftlineConfig) -> Dict[str, Any]:
    return _plain(config)


def dump_config(config: DriftlineConfig) -> str:
    """The whole config as YAML (every setting, the schema inline); `loads_config` reads it back equal."""
    return yaml.safe_dump(config_dict(config), sort_keys=False, default_flow_style=False, allow_unicode=True)


def persist_config(config: DriftlineConfig) -> Optional[str]:
    """Writes the config into its home as driftline.yaml unless one is there; the path written, or None.

    Called at every pipeline run (local_runner.run), so a home's first run leaves the file that lets
    `status`, `lineage`, `gc`, `rollback` and the controller, given only --home, see that pipeline. It is
    written once: a later run with other settings does not rewrite it.
    """
    import tempfile

    path = home_config_path(config.home)
    if os.path.exists(path):
        return None
    os.makedirs(config.home, exist_ok=True)
    text = ("# The configuration of the first run in this home, written by driftline. Commands given only\n"
            "# --home read it; edit it to change the pipeline (flags given explicitly still override it).\n"
            + dump_config(config))
    # Atomic: a reader never sees half a file, and two first runs cannot leave a torn one.
    fd, tmp = tempfile.mkstemp(dir=config.home, prefix=f".{HOME_CONFIG_NAME}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _section_yaml(name: str, value: Any) -> str:
    return yaml.safe_dump({name: value}, sort_keys=False, default_flow_style=False, allow_unicode=True)


_SECTION_NOTES = {
    "source": ["kind: event_log reads log_dir; kind: kafka reads source.kafka (bootstrap_servers, topic, ...),",
               "and then log_dir must be empty.",
               "The event schema is inline (schema:) or in a JSON/YAML file (schema_file: path, relative",
               "to this file). event_time_format: epoch_ms, epoch_s or iso8601."],
    "trainer": ["run_fn: the dotted path of your module's run_fn (importable on the Beam workers);",
                "model: passed to it as fn_args.custom_config['model']."],
    "gate": ["Against the baseline a candidate is refused only when worse with confidence (DeLong's",
             "test on AUC, a paired t-test on log loss, one-sided at `confidence`). max_log_loss: null",
             "bounds log loss by max_log_loss_factor x the no-skill log loss of the eval split's label",
             "rate, so it fits any positive rate; a number is an absolute bound instead.",
             "min_eval_examples is deprecated: evidence is max_auc_interval_width."],
    "pusher": ["serving_dir: '' means <home>/serving."],
    "beam": ["runner: DirectRunner, PortableRunner (the Fn API, as on Dataflow: an embedded job server,",
             "LOOPBACK workers) or DataflowRunner (with the cloud section).",
             "extra_args: Beam arguments added to every Beam step, e.g. ['--direct_num_workers=2']."],
    "metadata": ["kind: sqlite (path: '' means <home>/metadata.sqlite) or mysql (host, port, database, user;",
                 "the password is read from the environment variable named by password_env)."],
    "cloud": ["Only for `driftline compile --target vertex` and DataflowRunner."],
    "online": ["enabled: true needs the join section: a blessed candidate is deployed as the challenger beside",
               "the serving champion instead of pushed over it, and each cycle's joined outcomes judge it",
               "(README, \"Online evaluation\")."],
    "join": ["null: one stream whose events carry their label (source). Set: impressions (log_dir, schema",
             "or schema_file; the label field optional) joined to outcomes (log_dir, schema) by `key`; source",
             "then defaults to the impressions stream. Either stream may be a Kafka topic instead of a log:",
             "kind: kafka and kafka: (as source.kafka, secrets by secret_env / secret_files names only).",
             "See README, \"Joining outcomes to impressions\"."],
}


def init_text(home: str, log_dir: Optional[str] = None) -> str:
    """A commented starter file: the defaults of `default_config(home, log_dir)`, section by section."""
    config = default_config(home, log_dir)
    plain = config_dict(config)
    out = ["# driftline config file (pipelines/config_file.py). Every key is optional: a key left out keeps",
           "# its default from pipelines/config.py, and an unknown key is refused. Command-line flags given",
           "# explicitly (--log, --span-seconds, ...) override the file.",
           "# Use it with `driftline run --config FILE`; kept in the home as driftline.yaml, it is found",
           "# by every command given only --home.",
           "",
           _section_yaml("pipeline_name", plain["pipeline_name"]).rstrip("\n"),
           "# Folder for ML Metadata (metadata.sqlite), artifacts (pipeline_root/) and serving/.",
           _section_yaml("home", plain["home"]).rstrip("\n")]
    for name, cls in SECTIONS.items():
        out.append("")
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out.append(f"# {name}: {doc}")
        out += [f"# {line}" for line in _SECTION_NOTES.get(name, [])]
        out.append(_section_yaml(name, plain[name]).rstrip("\n"))
    return "\n".join(out) + "\n"
