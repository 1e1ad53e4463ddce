"""The join of two streams: impressions (what was served) and outcomes (what happened later), keyed by impression id.

A plain dataclass like the rest of StreamingExampleGen's settings (config.py); `validate()` refuses a
misconfiguration with a message that names the fix. The rules it configures live in join.py.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from components.config_base import ConfigError
from components.event_schema import EventSchema

LABEL_RULES = ("any", "value")


@dataclasses.dataclass(frozen=True)
class JoinStreamConfig:
    """One of the two streams: an event log folder and the schema of its events."""

    log_dir: str
    schema: EventSchema


@dataclasses.dataclass(frozen=True)
class JoinConfig:
    """Impressions joined to the outcomes that arrive within the attribution window.

    An impression's id is `impressions.schema.id_field`; an outcome names its impression in `key`.
    The example of an impression is the impression as served, with `impressions.schema.label_field`
    set by `label_rule` from its counted outcomes within the window.
    """

    impressions: JoinStreamConfig
    outcomes: JoinStreamConfig
    # The outcome field that holds the impression id.
    key: str = "impression_id"
    # An outcome counts if its event time t satisfies impression_time <= t <= impression_time + window.
    attribution_window_seconds: int = 600
    # "any": 1 if at least one counted outcome fell in the window, else 0; "value": the sum of the
    # counted outcomes' `value_field` (0.0 without one).
    label_rule: str = "any"
    outcome_type_field: str = "outcome_type"
    counted_types: Tuple[str, ...] = ("click",)
    value_field: Optional[str] = None
    # An outcome whose impression has not appeared by the time the impression stream's watermark passes the
    # outcome's event time plus this bound is dead-lettered as an orphan.
    orphan_bound_seconds: int = 3600
    # Impression fields not carried into the examples (what a server adds to its log: request id, model
    # version, score), so the examples' schema, and the model's inputs, stay the stream's own.
    drop_fields: Tuple[str, ...] = ()
    # A ranking server logs every candidate it scored, shown or not: with `max_position` set, an impression
    # whose int `position_field` is >= it was not shown, and is no example (skipped, not dead-lettered).
    max_position: Optional[int] = None
    position_field: str = "position"

    @property
    def examples_schema(self) -> EventSchema:
        """The schema of the joined examples: the impressions' with the label required, since the join always
        sets it. In a pipeline (DriftlineConfig.join) it is `source.schema`, what Transform, the trainer, the
        gate and serving read."""
        imp = self.impressions.schema
        fields = tuple(dataclasses.replace(f, required=True) if f.name == imp.label_field else f
                       for f in imp.fields if f.name not in self.drop_fields)
        return dataclasses.replace(imp, fields=fields)

    @property
    def attribution_window_ms(self) -> int:
        return self.attribution_window_seconds * 1000

    @property
    def orphan_bound_ms(self) -> int:
        return self.orphan_bound_seconds * 1000

    def validate(self) -> None:
        for name, stream in (("impressions", self.impressions), ("outcomes", self.outcomes)):
            if not isinstance(stream, JoinStreamConfig):
                raise ConfigError(f"join.{name} must be a JoinStreamConfig(log_dir=..., schema=EventSchema(...))")
            if not stream.log_dir:
                raise ConfigError(f"join.{name}.log_dir is empty: set it to the event log folder of the {name}")
            stream.schema.validate()
        if self.impressions.log_dir == self.outcomes.log_dir:
            raise ConfigError("join.impressions.log_dir and join.outcomes.log_dir are the same folder: each stream "
                              "needs its own event log")
        imp, out = self.impressions.schema, self.outcomes.schema
        imp_fields, out_fields = imp.field_map, out.field_map
        if imp_fields[imp.label_field].required:
            raise ConfigError(f"join.impressions.schema's label field {imp.label_field!r} is required, but the join "
                              "sets it: declare it FieldSpec(..., required=False), impressions carry no label")
        if self.key not in out_fields:
            raise ConfigError(f"join.key={self.key!r} is not a field of the outcomes schema {sorted(out_fields)}: "
                              "set it to the outcome field holding the impression id")
        if out_fields[self.key].type != imp_fields[imp.id_field].type or not out_fields[self.key].required:
            raise ConfigError(f"join.key {self.key!r} must be a required field of the impressions' id type "
                              f"{imp_fields[imp.id_field].type!r} (the impression id {imp.id_field!r}), got "
                              f"{out_fields[self.key].type!r}")
        if self.attribution_window_seconds < 1:
            raise ConfigError(f"join.attribution_window_seconds must be >= 1, got {self.attribution_window_seconds}")
        if self.orphan_bound_seconds < 0:
            raise ConfigError(f"join.orphan_bound_seconds must be >= 0, got {self.orphan_bound_seconds}")
        if self.label_rule not in LABEL_RULES:
            raise ConfigError(f"join.label_rule must be one of {LABEL_RULES}, got {self.label_rule!r}")
        field = out_fields.get(self.outcome_type_field)
        if field is None or field.type != "string" or not field.required:
            raise ConfigError(f"join.outcome_type_field={self.outcome_type_field!r} must name a required string "
                              f"field of the outcomes schema {sorted(out_fields)}")
        if not self.counted_types or not all(isinstance(t, str) and t for t in self.counted_types):
            raise ConfigError(f"join.counted_types must list at least one outcome type, e.g. ('click',), got "
                              f"{self.counted_types!r}")
        if self.label_rule == "value":
            value = out_fields.get(self.value_field or "")
            if value is None or value.type not in ("int", "float"):
                raise ConfigError(f"join.label_rule='value' needs join.value_field naming a numeric field of the "
                                  f"outcomes schema {sorted(out_fields)}, got {self.value_field!r}")
            if imp_fields[imp.label_field].type != "float":
                raise ConfigError(f"join.label_rule='value' sums outcome values: declare the impressions' label "
                                  f"field {imp.label_field!r} type='float'")
        elif self.value_field is not None:
            raise ConfigError("join.value_field is read only by label_rule='value': drop it, or set label_rule='value'")
        keep = (imp.id_field, imp.event_time_field, imp.label_field)
        bad = [f for f in self.drop_fields if f not in imp_fields or f in keep]
        if bad:
            raise ConfigError(f"join.drop_fields {bad} must name impression fields other than the id, event time "
                              f"and label {list(keep)}; the impressions' fields are {sorted(imp_fields)}")
        if self.max_position is not None:
            field = imp_fields.get(self.position_field)
            if field is None or field.type != "int" or not field.required:
                raise ConfigError(f"join.max_position needs join.position_field ({self.position_field!r}) to name "
                                  f"a required int field of the impressions {sorted(imp_fields)}")
            if self.max_position < 1:
                raise ConfigError(f"join.max_position must be >= 1 (the top k shown), got {self.max_position}")
