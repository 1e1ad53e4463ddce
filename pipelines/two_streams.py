"""The simulator's stream as two streams, the way real ad data comes: impressions, then delayed clicks.

The mode without a server (issue #21): a simulated ad-click log (pipelines/simulator.py) becomes an
impressions log (each event as served, its label dropped, its event id the impression id) and an outcomes
log (one click per clicked event, `delay` after its impression). Delays are exponential with mean
`click_delay_mean_seconds`; a share `after_window_fraction` of the clicks come after the attribution window
instead, so the join has outcomes to dead-letter. What it wrote is returned as the truth a test or a
benchmark compares the join with. Deterministic for a given seed.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict

import numpy as np

from components import event_log
from components.event_schema import EventSchema, FieldSpec, ad_click_schema
from components.streaming_example_gen.join_config import JoinConfig, JoinStreamConfig

CLICK = "click"


def impressions_schema() -> EventSchema:
    """The ad-click schema with the label optional: an impression has none until the join sets it."""
    schema = ad_click_schema()
    fields = tuple(dataclasses.replace(f, required=False) if f.name == schema.label_field else f
                   for f in schema.fields)
    return dataclasses.replace(schema, name="ad_impressions", fields=fields)


def outcomes_schema() -> EventSchema:
    return EventSchema(name="ad_outcomes", id_field="outcome_id", event_time_field="event_time", label_field="value",
                       fields=(FieldSpec("outcome_id", "string"), FieldSpec("impression_id", "string"),
                               FieldSpec("event_time", "int"), FieldSpec("outcome_type", "string"),
                               FieldSpec("value", "float", required=False)))


def join_config(impressions_dir: str, outcomes_dir: str, attribution_window_seconds: int = 600,
                orphan_bound_seconds: int = 3600) -> JoinConfig:
    """The join of the two logs `split_log` writes: a click within the window labels its impression 1."""
    return JoinConfig(impressions=JoinStreamConfig(impressions_dir, impressions_schema()),
                      outcomes=JoinStreamConfig(outcomes_dir, outcomes_schema()), key="impression_id",
                      attribution_window_seconds=attribution_window_seconds, label_rule="any",
                      outcome_type_field="outcome_type", counted_types=(CLICK,),
                      orphan_bound_seconds=orphan_bound_seconds)


@dataclasses.dataclass(frozen=True)
class TwoStreamConfig:
    attribution_window_seconds: int = 600
    click_delay_mean_seconds: float = 60.0
    after_window_fraction: float = 0.05
    seed: int = 0

    def validate(self) -> None:
        if self.attribution_window_seconds < 1:
            raise ValueError(f"attribution_window_seconds must be >= 1, got {self.attribution_window_seconds}")
        if not self.click_delay_mean_seconds > 0:
            raise ValueError(f"click_delay_mean_seconds must be > 0, got {self.click_delay_mean_seconds}")
        if not 0.0 <= self.after_window_fraction <= 1.0:
            raise ValueError(f"after_window_fraction must be in [0, 1], got {self.after_window_fraction}")


@dataclasses.dataclass
class TwoStreamTruth:
    """What was written: each impression's label under the window, and each click's delay."""

    labels: Dict[str, int]  # impression id -> 1 if a click came within the window
    click_delay_ms: Dict[str, int]  # impression id -> its click's delay
    impressions: int = 0
    clicks: int = 0
    after_window: int = 0
    skipped_lines: int = 0  # lines of the source log that are not valid events (its malformed ones)


def split_log(events_dir: str, impressions_dir: str, outcomes_dir: str,
              config: TwoStreamConfig = TwoStreamConfig()) -> TwoStreamTruth:
    """Writes the impressions and outcomes logs of the simulated log at `events_dir`."""
    config.validate()
    schema = ad_click_schema()
    rng = np.random.default_rng(config.seed)
    window_ms = config.attribution_window_seconds * 1000
    truth = TwoStreamTruth(labels={}, click_delay_ms={})
    outcomes = []
    plan = event_log.plan_read(events_dir, None)
    with event_log.EventLogWriter(impressions_dir) as impressions:
        for chunk in plan.chunks:
            batch = []
            for _, line in event_log.read_chunk(events_dir, chunk):
                try:
                    event = schema.parse(line)
                except Exception:  # noqa: BLE001 - the simulator's malformed lines have no impression to split
                    truth.skipped_lines += 1
                    continue
                clicked = event.pop(schema.label_field)
                iid = event[schema.id_field]
                batch.append(event)
                truth.impressions += 1
                truth.labels[iid] = 0
                if clicked:
                    if rng.random() < config.after_window_fraction:
                        delay = window_ms + 1 + int(rng.integers(0, window_ms))
                        truth.after_window += 1
                    else:
                        delay = int(rng.exponential(config.click_delay_mean_seconds * 1000))
                    truth.labels[iid] = int(delay <= window_ms)
                    truth.click_delay_ms[iid] = delay
                    truth.clicks += 1
                    outcomes.append({"outcome_id": f"click-{iid}", "impression_id": iid,
                                     "event_time": event[schema.event_time_field] + delay, "outcome_type": CLICK})
            impressions.write_events(batch)
    # Clicks arrive in the order they happen.
    outcomes.sort(key=lambda o: (o["event_time"], o["outcome_id"]))
    with event_log.EventLogWriter(outcomes_dir) as writer:
        for start in range(0, len(outcomes), 10_000):
            writer.write_events(outcomes[start:start + 10_000])
    return truth


def truth_json(truth: TwoStreamTruth) -> str:
    return json.dumps(dataclasses.asdict(truth), sort_keys=True)
