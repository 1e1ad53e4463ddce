"""Which configuration each cycle ran with, recorded in ML Metadata.

The home's driftline.yaml is the user's file, and it may be edited at any time;
what actually ran is recorded here, in ML Metadata:

* every pipeline run's context (``pipeline_run``) gets a ``config_hash``
  custom property: the sha256 of the run's effective configuration;
* each distinct configuration is one ``DriftlineConfig`` artifact, created by
  the first run that used it and attributed to the pipeline's context and to
  that run's context. It holds the canonical YAML of the whole
  ``DriftlineConfig`` (``config_yaml``), its hash, the first run's id and the
  spans that run published (``first_spans``; empty for a run that published
  none).

The record is written after the run ends (ok or failed, see `recorded`), so it
only ever states what happened: "run R, which published spans S, ran with this
config". A run killed mid-way records nothing; the next run with the same
config is then recorded as its first user.

The canonical text is `config_file.config_dict` minus `home`, `metadata` and
`controller.lease_seconds` (they say where this ML Metadata lives and how
controllers share it, not what the pipeline does, and `--home ./h`
and `--home h` are the same pipeline) and `serve` (how `driftline serve` runs,
read by the server, not by a pipeline run), with
local paths made absolute, dumped with sorted keys. Kafka secrets are never in
a config (only the names of their environment variables or files are), so none
are recorded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import logging
import os
from typing import Any, Dict, Iterator, List, Optional

from ml_metadata import errors as mlmd_errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.mlmd_store import pipeline_artifacts, pipeline_context
from pipelines.metadata import (PIPELINE_RUN_CONTEXT_TYPE, RESUME_RESOLVER_ID, STREAMING_EXAMPLE_GEN_ID,
                                open_store, prop, run_outputs, store_exists)

log = logging.getLogger("driftline.config_history")

CONFIG_ARTIFACT_TYPE = "DriftlineConfig"
CONFIG_HASH_PROPERTY = "config_hash"


# -- the canonical text ---------------------------------------------------------------------------

def _yaml_safe(obj: Any) -> Any:
    """Plain data YAML can hold; an object (a Keras thing in trainer.model, say) by its type, not its
    repr, whose memory address would make every process's hash differ."""
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _yaml_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_yaml_safe(v) for v in obj]
    return f"<{type(obj).__module__}.{type(obj).__qualname__}>"


def _absolute(path: str) -> str:
    return path if not path or "://" in path else os.path.abspath(path)


def canonical_dict(config: Any) -> Dict[str, Any]:
    from pipelines.config_file import config_dict

    d = _yaml_safe(config_dict(config))
    d.pop("home", None)
    d.pop("metadata", None)
    d.pop("serve", None)
    # Like metadata: how controllers share the pipeline, not what it does (and existing hashes stay).
    (d.get("controller") or {}).pop("lease_seconds", None)
    d["source"]["log_dir"] = _absolute(d["source"].get("log_dir") or "")
    d["pusher"]["serving_dir"] = _absolute(d["pusher"].get("serving_dir") or "")
    if d.get("join") is None:
        # A single-stream pipeline: its hash stays what it was before join mode existed.
        d.pop("join", None)
    else:
        for stream in ("impressions", "outcomes"):
            d["join"][stream]["log_dir"] = _absolute(d["join"][stream].get("log_dir") or "")
    return d


def canonical_text(config: Any) -> str:
    import yaml

    return yaml.safe_dump(canonical_dict(config), sort_keys=True, default_flow_style=False, allow_unicode=True)


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- recording --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConfigVersion:
    """One distinct configuration a pipeline ran with, as ML Metadata holds it."""

    number: int  # 1 for the first configuration recorded, in order of first use
    artifact_id: int
    hash: str
    text: str
    first_run: str
    first_spans: List[int]
    first_used_ms: int

    @property
    def short_hash(self) -> str:
        return self.hash[:12]

    def to_dict(self) -> Dict[str, Any]:
        return {"version": self.number, "artifact_id": self.artifact_id, "config_hash": self.hash,
                "first_run": self.first_run, "first_spans": self.first_spans, "first_used_ms": self.first_used_ms}


def _type_id(store: metadata_store.MetadataStore, get, put, proto) -> int:
    try:
        return get(proto.name).id
    except mlmd_errors.NotFoundError:
        return put(proto)


def _config_artifacts(store: metadata_store.MetadataStore, pipeline_name: str) -> List[metadata_store_pb2.Artifact]:
    return pipeline_artifacts(store, pipeline_name, CONFIG_ARTIFACT_TYPE)


def record_run_config(store: metadata_store.MetadataStore, pipeline_name: str, config: Any,
                      run_context: metadata_store_pb2.Context, spans: List[int]) -> Optional[ConfigVersion]:
    """Records that `run_context`'s run used `config`; the new ConfigVersion when it is the first such run.

    The run's context gets the config's hash; a `DriftlineConfig` artifact is created only for a hash this
    pipeline has not run with before, attributed to the pipeline's and this run's contexts.
    """
    text = canonical_text(config)
    digest = config_hash(text)
    context = store.get_contexts_by_id([run_context.id])[0]
    context.custom_properties[CONFIG_HASH_PROPERTY].string_value = digest
    store.put_contexts([context])
    if any(prop(a, CONFIG_HASH_PROPERTY) == digest for a in _config_artifacts(store, pipeline_name)):
        return None
    type_id = _type_id(store, store.get_artifact_type, store.put_artifact_type,
                       metadata_store_pb2.ArtifactType(name=CONFIG_ARTIFACT_TYPE))
    artifact = metadata_store_pb2.Artifact(type_id=type_id, state=metadata_store_pb2.Artifact.LIVE)
    artifact.custom_properties[CONFIG_HASH_PROPERTY].string_value = digest
    artifact.custom_properties["config_yaml"].string_value = text
    artifact.custom_properties["first_run"].string_value = context.name
    artifact.custom_properties["first_spans"].string_value = json.dumps(sorted(spans))
    [artifact_id] = store.put_artifacts([artifact])
    pipeline = pipeline_context(store, pipeline_name)
    store.put_attributions_and_associations(
        [metadata_store_pb2.Attribution(artifact_id=artifact_id, context_id=c.id) for c in (pipeline, context)], [])
    return next(v for v in versions(store, pipeline_name) if v.artifact_id == artifact_id)


def _run_ids(store: metadata_store.MetadataStore) -> List[int]:
    try:
        return [c.id for c in store.get_contexts_by_type(PIPELINE_RUN_CONTEXT_TYPE)]
    except mlmd_errors.NotFoundError:
        return []


def _published_spans(store: metadata_store.MetadataStore, pipeline_name: str,
                     run_context: metadata_store_pb2.Context) -> List[int]:
    outputs = run_outputs(store, pipeline_name, run_context)
    spans = set()
    for node in (STREAMING_EXAMPLE_GEN_ID, RESUME_RESOLVER_ID):
        for a in outputs.get(node, {}).get("outputs", {}).get("examples", []):
            if a.state == metadata_store_pb2.Artifact.LIVE:
                spans.add(prop(a, "span"))
    return sorted(spans)


@contextlib.contextmanager
def recorded(config: Any) -> Iterator[None]:
    """Around one pipeline run: afterwards, the run it made is recorded with `config` (record_run_config).

    Recorded after the run, ok or failed, so the record states only what happened. The home lock keeps one
    run at a time on a home, so the run context newer than those before is this run's. A failure to record
    is logged, never raised: the cycle itself ran, and its outcome (or its own error) is what matters.
    """
    store = open_store(config.metadata_connection)
    before = max(_run_ids(store), default=0)
    try:
        yield
    finally:
        try:
            store = open_store(config.metadata_connection)
            newer = [i for i in _run_ids(store) if i > before]
            if newer:
                run_context = store.get_contexts_by_id([max(newer)])[0]
                new = record_run_config(store, config.pipeline_name, config, run_context,
                                        _published_spans(store, config.pipeline_name, run_context))
                if new is not None:
                    log.info("config version %d (sha256 %s) first used by run %s%s", new.number, new.short_hash,
                             new.first_run, f", spans {new.first_spans}" if new.first_spans else "")
        except Exception as e:  # noqa: BLE001 - see the docstring
            log.warning("could not record the run's config in ML Metadata: %s", e)


# -- reading ----------------------------------------------------------------------------------------

def versions(store: metadata_store.MetadataStore, pipeline_name: str) -> List[ConfigVersion]:
    """Every configuration the pipeline ran with, in order of first use."""
    out = []
    for number, a in enumerate(_config_artifacts(store, pipeline_name), 1):
        out.append(ConfigVersion(number=number, artifact_id=a.id, hash=prop(a, CONFIG_HASH_PROPERTY),
                                 text=prop(a, "config_yaml", ""), first_run=prop(a, "first_run", ""),
                                 first_spans=json.loads(prop(a, "first_spans", "[]")),
                                 first_used_ms=a.create_time_since_epoch))
    return out


def current_hash(store: metadata_store.MetadataStore, pipeline_name: str) -> Optional[str]:
    """The config hash of this pipeline's newest recorded run (the hash names the pipeline: other
    pipelines' runs in the same store never match)."""
    try:
        runs = store.get_contexts_by_type(PIPELINE_RUN_CONTEXT_TYPE)
    except mlmd_errors.NotFoundError:
        return None
    known = {v.hash for v in versions(store, pipeline_name)}
    for c in sorted(runs, key=lambda c: c.id, reverse=True):
        digest = c.custom_properties[CONFIG_HASH_PROPERTY].string_value \
            if CONFIG_HASH_PROPERTY in c.custom_properties else None
        if digest in known:
            return digest
    return None


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(d, dict) and d:
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def changed_settings(old_text: str, new_text: str) -> List[str]:
    """'gate.max_log_loss: 0.68 -> 0.7' per setting that differs (added and removed ones too)."""
    import yaml

    old, new = _flatten(yaml.safe_load(old_text) or {}), _flatten(yaml.safe_load(new_text) or {})
    lines = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            lines.append(f"{key}: (not set) -> {json.dumps(new[key])}")
        elif key not in new:
            lines.append(f"{key}: {json.dumps(old[key])} -> (not set)")
        elif old[key] != new[key]:
            lines.append(f"{key}: {json.dumps(old[key])} -> {json.dumps(new[key])}")
    return lines


def _utc(ms: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def describe_version(v: ConfigVersion) -> str:
    spans = (f"spans {v.first_spans[0]}" if len(v.first_spans) == 1 else
             f"spans {v.first_spans[0]}..{v.first_spans[-1]}") if v.first_spans else "no span published"
    return f"version {v.number} (sha256 {v.short_hash}): first used {_utc(v.first_used_ms)} by run {v.first_run} ({spans})"


def format_versions(vs: List[ConfigVersion], current: Optional[str]) -> str:
    """The lines `status` and `lineage` print: when the config changed."""
    if not vs:
        return "config: none recorded (runs before driftline recorded configs, or none yet)"
    lines = [f"config: {len(vs)} version{'s' if len(vs) != 1 else ''} recorded"
             + ("; `driftline config-history` shows what changed" if len(vs) > 1 else "")]
    for v in vs:
        lines.append(f"  {describe_version(v)}{'  <- current' if v.hash == current else ''}")
    return "\n".join(lines)


def format_history(vs: List[ConfigVersion], pipeline_name: str) -> str:
    """Every version, and between each one and the next: the settings that changed and a unified diff."""
    if not vs:
        return f"pipeline {pipeline_name}: no config recorded in ML Metadata yet"
    out = [f"pipeline {pipeline_name}: {len(vs)} config version{'s' if len(vs) != 1 else ''}"]
    out += [f"  {describe_version(v)}" for v in vs]
    for old, new in zip(vs, vs[1:]):
        out.append("")
        out.append(f"version {old.number} -> version {new.number}:")
        out += [f"  {line}" for line in changed_settings(old.text, new.text)]
        out += [line.rstrip("\n") for line in difflib.unified_diff(
            old.text.splitlines(True), new.text.splitlines(True),
            fromfile=f"version {old.number} ({old.short_hash})", tofile=f"version {new.number} ({new.short_hash})")]
    return "\n".join(out)


def history_to_dict(vs: List[ConfigVersion], current: Optional[str]) -> Dict[str, Any]:
    return {"versions": [dict(v.to_dict(), changed=changed_settings(vs[i - 1].text, v.text) if i else [])
                         for i, v in enumerate(vs)],
            "current_hash": current}


def read_history(metadata, pipeline_name: str):
    """(versions, current hash) from the ML Metadata at `metadata` (`config.metadata_connection`, or a
    SQLite path); ([], None) when nothing ran there yet."""
    if not store_exists(metadata):
        return [], None
    store = open_store(metadata)
    return versions(store, pipeline_name), current_hash(store, pipeline_name)
