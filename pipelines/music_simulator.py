"""A second example stream: song plays, and whether the listener heard the track to the end.

It differs from the ad-click stream in everything a user's stream may differ in:

* **Field names and types.** ``play_id``, ``played_at``, ``listener``,
  ``track``, ``genre``, ``device``, ``duration_s`` and the label ``completed``.
* **Event time as ISO-8601**, written in the listener's own UTC offset
  (``2026-01-01T01:00:00.250+01:00``): :func:`music_schema` declares
  ``event_time_format="iso8601"``.
* **A high positive rate**: about 55 % of plays are completed (the ad stream
  clicks 2-10 %), so the gate needs bounds of its own (:func:`music_gate`).

What makes a play complete is learnable and drifts: a listener's taste for
each genre, a track's own appeal, a track popularity that rises and falls
over hours, the device (a car plays to the end, a phone skips), and the
track's length. The same config gives the same log: the world is drawn from
``seed``, and each minute's plays from (``seed``, minute), so a log extended
minute by minute equals one written at once.

This module imports only numpy.
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import List, Optional

import numpy as np

from components.event_log import EventLogWriter
from components.event_schema import EventSchema, FieldSpec

MINUTE_MS = 60_000
# 2026-01-01T00:00:00Z.
DEFAULT_START_MS = 1_767_225_600_000
GENRES = ("pop", "rock", "jazz", "classical", "hiphop", "electronic", "folk", "metal")
DEVICES = ("phone", "desktop", "speaker", "car")
_DEVICE_MIX = (0.5, 0.2, 0.15, 0.15)
_DEVICE_EFFECT = np.array([-0.35, 0.0, 0.25, 0.45])
# Listeners' UTC offsets in minutes, written into played_at as each listener's clock shows it.
_OFFSETS_MIN = (0, 60, -300, 330, 540, -180)
_WORLD_KEY, _MINUTE_KEY = 0, 1


@dataclasses.dataclass(frozen=True)
class MusicConfig:
    seed: int = 0
    start_ms: int = DEFAULT_START_MS
    minutes: int = 60
    plays_per_minute: int = 400
    n_listeners: int = 600
    n_tracks: int = 300
    # The share of plays completed, over the whole world (the intercept is calibrated to it).
    completion_rate: float = 0.55
    # Standard deviation, in logits, of the drifting part of track popularity, and its period.
    drift_strength: float = 1.0
    drift_period_minutes: float = 120.0

    def validate(self) -> None:
        for name in ("minutes", "plays_per_minute", "n_listeners", "n_tracks"):
            if getattr(self, name) < 1:
                raise ValueError(f"music simulator: {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.completion_rate < 1.0:
            raise ValueError(f"music simulator: completion_rate must be in (0, 1), got {self.completion_rate}")


def music_schema() -> EventSchema:
    """The schema of the music stream: ISO-8601 event time, `completed` as the label."""
    return EventSchema(
        name="music_plays",
        id_field="play_id",
        event_time_field="played_at",
        label_field="completed",
        event_time_format="iso8601",
        fields=(
            FieldSpec("play_id", "string"),
            FieldSpec("played_at", "string"),
            FieldSpec("listener", "string", feature="categorical", hash_buckets=16384),
            FieldSpec("track", "string", feature="categorical", hash_buckets=16384),
            FieldSpec("genre", "string", feature="categorical", hash_buckets=16),
            FieldSpec("device", "string", feature="categorical", hash_buckets=8),
            FieldSpec("duration_s", "float", feature="numeric"),
            FieldSpec("completed", "int"),
        ),
    )


class _World:
    """Listeners, tracks and the completion model, all drawn from the seed."""

    def __init__(self, config: MusicConfig):
        rng = np.random.default_rng([config.seed, _WORLD_KEY])
        self.config = config
        self.taste = rng.normal(0.0, 1.0, (config.n_listeners, len(GENRES)))
        self.offset = rng.choice(_OFFSETS_MIN, config.n_listeners)
        self.usual_device = rng.choice(len(DEVICES), config.n_listeners, p=_DEVICE_MIX)
        self.activity = rng.pareto(1.5, config.n_listeners) + 1.0
        self.activity /= self.activity.sum()
        self.genre = rng.integers(0, len(GENRES), config.n_tracks)
        self.appeal = rng.normal(0.0, 1.0, config.n_tracks)
        self.duration = np.clip(rng.lognormal(np.log(220.0), 0.35, config.n_tracks), 60.0, 900.0)
        self.phase = rng.uniform(0.0, 2 * np.pi, config.n_tracks)
        self.popularity = rng.pareto(1.2, config.n_tracks) + 1.0
        self.popularity /= self.popularity.sum()
        # The intercept that makes the mean completion of plays `completion_rate`: calibrated on plays drawn
        # as minute() draws them (active listeners and popular tracks weigh more), over one drift period.
        n = 20_000
        listeners = rng.choice(config.n_listeners, n, p=self.activity)
        tracks = rng.choice(config.n_tracks, n, p=self.popularity)
        devices = self._devices(rng, listeners)
        logits = self.logit(listeners, tracks, devices, rng.uniform(0, config.drift_period_minutes, n))
        lo, hi = -10.0, 10.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if (1 / (1 + np.exp(-(logits + mid)))).mean() < config.completion_rate:
                lo = mid
            else:
                hi = mid
        self.intercept = (lo + hi) / 2

    def _devices(self, rng, listeners) -> np.ndarray:
        """Mostly each listener's usual device."""
        n = len(listeners)
        return np.where(rng.random(n) < 0.8, self.usual_device[listeners], rng.choice(len(DEVICES), n, p=_DEVICE_MIX))

    def logit(self, listeners, tracks, devices, minutes) -> np.ndarray:
        drift = self.config.drift_strength * np.sin(
            2 * np.pi * minutes / self.config.drift_period_minutes + self.phase[tracks])
        return (1.5 * self.taste[listeners, self.genre[tracks]] + self.appeal[tracks] + drift
                + _DEVICE_EFFECT[devices] - 0.8 * np.log(self.duration[tracks] / 220.0))

    def minute(self, index: int) -> List[dict]:
        """The plays of minute `index` after the start, in event-time order."""
        config = self.config
        rng = np.random.default_rng([config.seed, _MINUTE_KEY, index])
        n = config.plays_per_minute
        listeners = rng.choice(config.n_listeners, n, p=self.activity)
        tracks = rng.choice(config.n_tracks, n, p=self.popularity)
        devices = self._devices(rng, listeners)
        at_ms = np.sort(config.start_ms + index * MINUTE_MS + rng.integers(0, MINUTE_MS, n))
        minutes = (at_ms - config.start_ms) / MINUTE_MS
        p = 1 / (1 + np.exp(-(self.logit(listeners, tracks, devices, minutes) + self.intercept)))
        completed = rng.random(n) < p
        return [{
            "play_id": f"{config.seed}-{index}-{i}",
            "played_at": iso8601(int(at_ms[i]), int(self.offset[listeners[i]])),
            "listener": f"l{listeners[i]}",
            "track": f"t{tracks[i]}",
            "genre": GENRES[self.genre[tracks[i]]],
            "device": DEVICES[devices[i]],
            "duration_s": round(float(self.duration[tracks[i]]), 1),
            "completed": int(completed[i]),
        } for i in range(n)]


def iso8601(ms: int, offset_minutes: int) -> str:
    """`ms` as the wall clock of a UTC offset shows it, with milliseconds and the offset."""
    tz = datetime.timezone(datetime.timedelta(minutes=offset_minutes))
    text = datetime.datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def simulate_music(log_dir: str, config: MusicConfig, first_minute: int = 0,
                   max_segment_bytes: Optional[int] = None) -> int:
    """Appends minutes `first_minute` .. `first_minute + minutes - 1` of plays to the log; returns the count."""
    config.validate()
    world = _World(config)
    written = 0
    kwargs = {} if max_segment_bytes is None else {"max_segment_bytes": max_segment_bytes}
    with EventLogWriter(log_dir, **kwargs) as writer:
        for index in range(first_minute, first_minute + config.minutes):
            plays = world.minute(index)
            writer.write_events(plays)
            written += len(plays)
    return written
