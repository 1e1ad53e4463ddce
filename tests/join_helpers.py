"""Schemas and config of a small two-stream join, shared by the join tests."""
from __future__ import annotations

from components.event_schema import EventSchema, FieldSpec
from components.streaming_example_gen.join_config import JoinConfig, JoinStreamConfig


def impression_schema(label_type: str = "int") -> EventSchema:
    return EventSchema(name="impressions", id_field="impression_id", event_time_field="ts", label_field="label",
                       min_event_time_ms=0, fields=(
                           FieldSpec("impression_id", "string"), FieldSpec("ts", "int"),
                           FieldSpec("ad_id", "string", feature="categorical", hash_buckets=16),
                           FieldSpec("label", label_type, required=False)))


def outcome_schema() -> EventSchema:
    return EventSchema(name="outcomes", id_field="outcome_id", event_time_field="ts", label_field="value",
                       min_event_time_ms=0, fields=(
                           FieldSpec("outcome_id", "string"), FieldSpec("impression_id", "string"),
                           FieldSpec("ts", "int"), FieldSpec("outcome_type", "string"),
                           FieldSpec("value", "float", required=False)))


def join_config(imp_dir: str = "imp", out_dir: str = "out", **kw) -> JoinConfig:
    label_type = "float" if kw.get("label_rule") == "value" else "int"
    kw.setdefault("attribution_window_seconds", 10)
    kw.setdefault("orphan_bound_seconds", 60)
    return JoinConfig(impressions=JoinStreamConfig(imp_dir, impression_schema(label_type)),
                      outcomes=JoinStreamConfig(out_dir, outcome_schema()), **kw)
