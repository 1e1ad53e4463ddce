"""The built-in event source: a deterministic, drifting ad-click stream.

The stream is made to exercise continuous training:

* **Affinity.** A click depends mostly on who sees which ad: latent user and
  ad vectors, a per-user taste for each ad category, user and ad biases. A
  small embedding model can learn it (the true click probability ranks clicks
  with an AUC of about 0.8).
* **Drift.** Each ad's popularity drifts smoothly over hours, so a model that
  stops learning slowly goes stale and the best ads of the first hour are not
  the best ads of the third.
* **A hot ad.** At ``hot_ad_minute`` a brand-new ad (an id never seen before,
  :func:`hot_ad_id`) appears with a high click rate and a share of the
  impressions; a fresh model surfaces it, a stale one cannot.
* **Late and bad data.** ``late_fraction`` of the events arrive seconds to
  minutes after their event time, and the log is written in arrival order,
  so they sit after newer events. ``bad_fraction`` of the lines are malformed
  on purpose (not JSON, a missing field, a wrong type, a NaN price, an
  over-long string) to feed the dead-letter path.

Batch mode simulates ``minutes`` of event time starting at ``start_ms`` as
fast as it can; the same config gives a byte-identical log. Live mode writes
at ``events_per_minute`` in real time, with wall-clock event times, until it
is stopped. Both generate block by block and keep only the late events still
in flight, so memory stays bounded however long the stream runs.

This module imports only numpy: the CLI and the notebooks load it quickly.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import re
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from components.event_log import SEGMENT_SUFFIX, EventLogWriter

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
# 2026-01-01T00:00:00Z: a fixed origin so batch logs do not depend on the clock.
DEFAULT_START_MS = 1_767_225_600_000
DEVICES = ("mobile", "desktop", "tablet")
BAD_LINE_KINDS = ("not_json", "missing_field", "wrong_type", "nan_price", "long_string")

_DEVICE_MIX = (0.55, 0.35, 0.10)
_DEVICE_EFFECT = np.array([0.15, 0.0, -0.2])
# How often a user is on a device other than their usual one.
_OTHER_DEVICE_RATE = 0.2
_USER_BIAS_STD = 0.5
_USER_CATEGORY_STD = 0.6
_DEVICE_CATEGORY_STD = 0.3
_TASTE_CLUSTERS = 8
_SHARED_TASTE = 0.7  # share of the variance of a user's (an ad's) taste shared with its cluster (category)
_AD_BIAS_STD = 0.5
_AD_PRICE_LOG_STD = 0.6
_PRICE_JITTER_LOG_STD = 0.05
_PRICE_EFFECT = -0.25  # per unit of log(price): dearer ads are clicked a little less
_HOUR_EFFECT = 0.25  # amplitude of the daily cycle, peaking in the evening (UTC)
_DRIFT_WAVES = 4
_LONG_STRING_LENGTH = 1500  # past EventSchema.max_string_length (1024)

# World streams: one SeedSequence key per purpose, so adding draws to one
# purpose never shifts the numbers of another.
_WORLD_KEY, _MINUTE_KEY, _LIVE_KEY, _CALIBRATION_KEY = 0, 1, 2, 3


class SimulatorError(RuntimeError):
    """The simulation cannot run against this log as asked; the message says what to do."""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """Every knob of the simulated stream. Invalid values raise ValueError naming the setting."""

    seed: int = 0
    # Event time of the first event in batch mode (epoch ms). Live mode uses the clock.
    start_ms: int = DEFAULT_START_MS
    # Event-time length of a batch run; in live mode the wall-clock length (None: until stopped).
    minutes: Optional[float] = 120.0
    events_per_minute: int = 1000
    n_users: int = 2000
    n_ads: int = 300
    n_categories: int = 12
    # Mean click rate of the regular ads; the intercept is calibrated to it.
    base_ctr: float = 0.10
    latent_dim: int = 4
    # Standard deviation, in logits, of the user-ad latent affinity.
    affinity_strength: float = 1.2
    # Standard deviation, in logits, of the drifting part of ad popularity.
    drift_strength: float = 1.0
    # Typical period of the popularity waves: the best ads change on this scale.
    drift_period_minutes: float = 240.0
    late_fraction: float = 0.05
    late_delay_min_ms: int = 2_000
    late_delay_max_ms: int = 180_000
    # Minutes after the start when the hot ad appears; None: no hot ad.
    hot_ad_minute: Optional[float] = 60.0
    # The hot ad's typical click rate, and its share of impressions once live.
    hot_ad_ctr: float = 0.35
    hot_ad_share: float = 0.05
    bad_fraction: float = 0.0
    max_segment_bytes: int = 16 << 20
    # Live mode: how often a batch of events is appended.
    live_flush_seconds: float = 1.0
    # A poisoned stretch of stream, [from, to) in minutes since the world's
    # start: every label inverted there (a broken producer), for showing that
    # the gate keeps such a model out of serving.
    flip_labels_minutes: Optional[Tuple[float, float]] = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.flip_labels_minutes is not None and not (
                len(self.flip_labels_minutes) == 2 and self.flip_labels_minutes[0] < self.flip_labels_minutes[1]):
            raise ValueError(f"flip_labels_minutes must be (from, to) with from < to, got {self.flip_labels_minutes}")
        def fail(name: str, rule: str) -> None:
            raise ValueError(f"simulator setting {name} {rule}, got {getattr(self, name)!r}")

        for name, low in (("seed", 0), ("start_ms", 0), ("events_per_minute", 1), ("n_users", 1),
                          ("n_ads", 1), ("n_categories", 1), ("latent_dim", 1), ("late_delay_min_ms", 1),
                          ("max_segment_bytes", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                fail(name, f"must be an integer >= {low}")
        if self.late_delay_max_ms is None or not _is_int(self.late_delay_max_ms) \
                or self.late_delay_max_ms < self.late_delay_min_ms:
            fail("late_delay_max_ms", f"must be an integer >= late_delay_min_ms ({self.late_delay_min_ms})")
        for name in ("late_fraction", "bad_fraction"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                fail(name, "must be a fraction between 0 and 1")
        if not _is_number(self.hot_ad_share) or not 0.0 <= self.hot_ad_share < 1.0:
            fail("hot_ad_share", "must be >= 0 and < 1")
        for name in ("base_ctr", "hot_ad_ctr"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 < value < 1.0:
                fail(name, "must be a click rate strictly between 0 and 1")
        for name in ("affinity_strength", "drift_strength"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                fail(name, "must be a number >= 0 (in logits)")
        for name in ("drift_period_minutes", "live_flush_seconds"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                fail(name, "must be a number > 0")
        if self.minutes is not None and (not _is_number(self.minutes) or self.minutes <= 0):
            fail("minutes", "must be a number > 0 (or None, in live mode, to run until stopped)")
        if self.hot_ad_minute is not None and (not _is_number(self.hot_ad_minute) or self.hot_ad_minute < 0):
            fail("hot_ad_minute", "must be a number >= 0 (or None for no hot ad)")


@dataclasses.dataclass(frozen=True)
class SimulationSummary:
    """What one simulate() call wrote (so far, when handed to a progress callback)."""

    log_dir: str
    events_written: int  # valid events
    bad_lines: int  # deliberately malformed lines
    late_events: int  # valid events written after newer ones
    clicks: int
    first_event_ms: Optional[int]  # event-time range of the valid events
    last_event_ms: Optional[int]
    segments: Tuple[str, ...]  # segment files this call appended to, oldest first
    hot_ad_id: Optional[str]
    hot_ad_start_ms: Optional[int]
    live: bool = False
    wall_seconds: float = 0.0

    @property
    def lines_written(self) -> int:
        return self.events_written + self.bad_lines


# -- ground truth -----------------------------------------------------------------

def hot_ad_id(config: SimulatorConfig) -> str:
    """The id of the hot ad: the next ad id after the regular ones, never used before it appears."""
    return f"a{config.n_ads}"


def hot_ad_start_ms(config: SimulatorConfig, origin_ms: Optional[int] = None) -> Optional[int]:
    """Event time at which the hot ad appears (None without one).

    ``origin_ms`` is the start of the world: ``config.start_ms`` in batch
    mode (the default), the wall-clock start in live mode.
    """
    if config.hot_ad_minute is None:
        return None
    origin = config.start_ms if origin_ms is None else origin_ms
    return origin + int(round(config.hot_ad_minute * MINUTE_MS))


class _World:
    """The fixed part of the stream: users, ads, and how they click. Built from the seed alone."""

    def __init__(self, config: SimulatorConfig):
        self.config = config
        c = config
        rng = np.random.default_rng([c.seed, _WORLD_KEY])
        n_all = c.n_ads + 1  # the last ad is the hot one
        # Heavy-tailed activity: a few users and ads account for many impressions.
        self.user_cdf = _cdf(rng.lognormal(0.0, 1.0, c.n_users))
        # Tastes are shared: each user belongs to a taste cluster and each ad's
        # latent vector leans towards its category's. That shared structure is
        # what lets a small embedding model learn a user from a few dozen events.
        cluster = rng.integers(0, _TASTE_CLUSTERS, c.n_users)
        cluster_vec = rng.normal(0.0, 1.0, (_TASTE_CLUSTERS, c.latent_dim))
        self.user_vec = (math.sqrt(_SHARED_TASTE) * cluster_vec[cluster]
                         + math.sqrt(1 - _SHARED_TASTE) * rng.normal(0.0, 1.0, (c.n_users, c.latent_dim)))
        self.user_bias = rng.normal(0.0, _USER_BIAS_STD, c.n_users)
        cluster_category = rng.normal(0.0, _USER_CATEGORY_STD, (_TASTE_CLUSTERS, c.n_categories))
        self.user_category = (math.sqrt(_SHARED_TASTE) * cluster_category[cluster] + math.sqrt(1 - _SHARED_TASTE)
                              * rng.normal(0.0, _USER_CATEGORY_STD, (c.n_users, c.n_categories)))
        self.user_device = rng.choice(len(DEVICES), size=c.n_users, p=_DEVICE_MIX)
        self.device_category = rng.normal(0.0, _DEVICE_CATEGORY_STD, (len(DEVICES), c.n_categories))
        self.ad_cdf = _cdf(rng.lognormal(0.0, 0.5, c.n_ads))
        self.ad_category = rng.integers(0, c.n_categories, n_all)
        category_vec = rng.normal(0.0, 1.0, (c.n_categories, c.latent_dim))
        self.ad_vec = (math.sqrt(_SHARED_TASTE) * category_vec[self.ad_category]
                       + math.sqrt(1 - _SHARED_TASTE) * rng.normal(0.0, 1.0, (n_all, c.latent_dim)))
        self.ad_bias = rng.normal(0.0, _AD_BIAS_STD, n_all)
        self.ad_price = np.maximum(np.round(rng.lognormal(0.0, _AD_PRICE_LOG_STD, n_all), 2), 0.05)
        # Popularity drift is a sum of slow waves with random periods and
        # phases: a pure function of time, so any minute can be generated
        # without replaying the ones before it (appending, live mode).
        self.wave_period_ms = c.drift_period_minutes * MINUTE_MS * np.exp(
            rng.uniform(-0.5, 0.5, (n_all, _DRIFT_WAVES)))
        self.wave_phase = rng.uniform(0.0, 2 * math.pi, (n_all, _DRIFT_WAVES))
        # Amplitude sqrt(2/K) per wave makes the drift's standard deviation 1.
        self.wave_amplitude = c.drift_strength * math.sqrt(2.0 / _DRIFT_WAVES)
        self.hot_index = c.n_ads
        self.intercept = 0.0
        self.intercept = self._calibrate_intercept()

    def drift(self, ads: np.ndarray, offset_ms: np.ndarray) -> np.ndarray:
        """Drifting popularity (logits) of each ad at each time offset since the origin."""
        angle = 2 * math.pi * offset_ms[:, None] / self.wave_period_ms[ads] + self.wave_phase[ads]
        return self.wave_amplitude * np.sin(angle).sum(axis=1)

    def logit(self, users: np.ndarray, ads: np.ndarray, devices: np.ndarray, event_ms: np.ndarray,
              prices: np.ndarray, origin_ms: int) -> np.ndarray:
        c = self.config
        affinity = c.affinity_strength * np.einsum(
            "ij,ij->i", self.user_vec[users], self.ad_vec[ads]) / math.sqrt(c.latent_dim)
        hour = (event_ms // HOUR_MS) % 24
        context = (_DEVICE_EFFECT[devices] + self.device_category[devices, self.ad_category[ads]] + _HOUR_EFFECT * np.sin(2 * math.pi * (hour - 14) / 24)
                   + _PRICE_EFFECT * np.log(prices))
        regular = (self.intercept + self.user_bias[users] + self.ad_bias[ads]
                   + self.user_category[users, self.ad_category[ads]]
                   + self.drift(ads, (event_ms - origin_ms).astype(np.float64)))
        # The hot ad is clicked at about hot_ad_ctr whatever the drift, but
        # still more by users it suits: a model can learn who it is for.
        hot = _logit(c.hot_ad_ctr) + 0.5 * self.user_bias[users]
        return np.where(ads == self.hot_index, hot, regular) + affinity + context

    def _calibrate_intercept(self) -> float:
        """Bisects the intercept so that regular ads are clicked at base_ctr on average."""
        c = self.config
        rng = np.random.default_rng([c.seed, _CALIBRATION_KEY])
        n = 20_000
        users = np.searchsorted(self.user_cdf, rng.random(n), side="right")
        ads = np.searchsorted(self.ad_cdf, rng.random(n), side="right")
        # Spread over a day of times so the hour and drift effects average out.
        times = c.start_ms + rng.integers(0, 24 * HOUR_MS, n)
        logits = self.logit(users, ads, self.user_device[users], times, self.ad_price[ads], c.start_ms)
        low, high = -20.0, 20.0
        for _ in range(60):
            mid = (low + high) / 2
            if _sigmoid(logits + mid).mean() < c.base_ctr:
                low = mid
            else:
                high = mid
        return (low + high) / 2


@functools.lru_cache(maxsize=8)
def _world(config: SimulatorConfig) -> _World:
    return _World(config)


def click_probability(config: SimulatorConfig, events: Iterable[Mapping[str, Any]],
                      origin_ms: Optional[int] = None) -> np.ndarray:
    """The true click probability of each event (parsed dicts of the ad-click schema).

    This is the best any model can do; use it to put a ceiling on AUC or
    log loss. ``origin_ms`` as in :func:`hot_ad_start_ms`.
    """
    world = _world(config)
    users, ads, devices, times, prices = [], [], [], [], []
    device_index = {d: i for i, d in enumerate(DEVICES)}
    for e in events:
        users.append(int(e["user_id"][1:]))
        ads.append(int(e["ad_id"][1:]))
        devices.append(device_index[e["device"]])
        times.append(int(e["event_time"]))
        prices.append(float(e["price"]))
    origin = config.start_ms if origin_ms is None else origin_ms
    return _sigmoid(world.logit(np.array(users, dtype=np.int64), np.array(ads, dtype=np.int64),
                                np.array(devices, dtype=np.int64), np.array(times, dtype=np.int64),
                                np.array(prices, dtype=np.float64), origin))


def ad_popularity(config: SimulatorConfig, t_ms: int, origin_ms: Optional[int] = None) -> Dict[str, float]:
    """Popularity (bias plus drift, in logits) of every regular ad at event time ``t_ms``."""
    world = _world(config)
    origin = config.start_ms if origin_ms is None else origin_ms
    ads = np.arange(config.n_ads)
    values = world.ad_bias[ads] + world.drift(ads, np.full(config.n_ads, float(t_ms - origin)))
    return {f"a{a}": float(v) for a, v in zip(ads, values)}


# -- generation ---------------------------------------------------------------------

@dataclasses.dataclass
class _Block:
    """Parallel arrays of generated lines, not yet written."""

    arrival: np.ndarray  # int64 ms
    seq: np.ndarray  # int64, generation order: breaks arrival ties
    event_ms: np.ndarray  # int64
    good: np.ndarray  # bool
    late: np.ndarray  # bool
    clicked: np.ndarray  # bool
    lines: np.ndarray  # object (bytes)

    @classmethod
    def empty(cls) -> "_Block":
        i = np.empty(0, np.int64)
        b = np.empty(0, bool)
        return cls(i, i, i, b, b, b, np.empty(0, object))

    def take(self, index: np.ndarray) -> "_Block":
        return _Block(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    @staticmethod
    def concat(a: "_Block", b: "_Block") -> "_Block":
        return _Block(*(np.concatenate([getattr(a, f.name), getattr(b, f.name)]) for f in dataclasses.fields(a)))


class _Stream:
    """Generates blocks of events and releases them in arrival order."""

    def __init__(self, config: SimulatorConfig, origin_ms: int, first_seq: int):
        self.config = config
        self.world = _world(config)
        self.origin_ms = origin_ms
        self.hot_start_ms = hot_ad_start_ms(config, origin_ms)
        self.next_seq = first_seq
        # Only events whose arrival lies beyond the last block wait here: the
        # late ones still in flight, a few minutes' worth at most.
        self.pending = _Block.empty()

    def add_block(self, t0_ms: int, t1_ms: int, n: int, rng: np.random.Generator) -> None:
        """Generates n events with event times in [t0_ms, t1_ms)."""
        c, w = self.config, self.world
        # Every draw is made whatever the knobs say, so e.g. bad_fraction
        # corrupts lines of the same stream instead of producing another one.
        event_ms = t0_ms + np.sort(np.floor(rng.random(n) * (t1_ms - t0_ms)).astype(np.int64))
        users = np.searchsorted(w.user_cdf, rng.random(n), side="right")
        ads = np.searchsorted(w.ad_cdf, rng.random(n), side="right")
        hot_draw = rng.random(n)
        if self.hot_start_ms is not None:
            ads = np.where((event_ms >= self.hot_start_ms) & (hot_draw < c.hot_ad_share), w.hot_index, ads)
        devices = np.where(rng.random(n) < _OTHER_DEVICE_RATE,
                           rng.integers(0, len(DEVICES), n), w.user_device[users])
        prices = np.maximum(np.round(w.ad_price[ads] * np.exp(rng.normal(0.0, _PRICE_JITTER_LOG_STD, n)), 2),
                            0.01)
        clicked = rng.random(n) < _sigmoid(w.logit(users, ads, devices, event_ms, prices, self.origin_ms))
        if c.flip_labels_minutes is not None:
            minute = (event_ms - self.origin_ms) / 60_000.0
            a, b = c.flip_labels_minutes
            clicked = np.where((minute >= a) & (minute < b), ~clicked, clicked)
        late = rng.random(n) < c.late_fraction
        delay = rng.integers(c.late_delay_min_ms, c.late_delay_max_ms + 1, n)
        bad = rng.random(n) < c.bad_fraction
        bad_kind = rng.integers(0, len(BAD_LINE_KINDS), n)
        seq = self.next_seq + np.arange(n, dtype=np.int64)
        self.next_seq += n

        hours = (event_ms // HOUR_MS) % 24
        seed = c.seed
        lines = np.empty(n, object)
        # Formatted by hand: fast, and byte-identical for the same draws.
        for i, (s, t, u, a, cat, d, h, p, k) in enumerate(zip(
                seq.tolist(), event_ms.tolist(), users.tolist(), ads.tolist(), w.ad_category[ads].tolist(),
                devices.tolist(), hours.tolist(), prices.tolist(), clicked.tolist())):
            lines[i] = (f'{{"event_id":"e{seed}-{s:010d}","event_time":{t},"user_id":"u{u}","ad_id":"a{a}",'
                        f'"ad_category":"c{cat}","device":"{DEVICES[d]}","hour_of_day":{h},"price":{p:.2f},'
                        f'"clicked":{int(k)}}}').encode()
        for i in np.flatnonzero(bad).tolist():
            lines[i] = _corrupt(lines[i], BAD_LINE_KINDS[bad_kind[i]], int(seq[i]))
        self.pending = _Block.concat(self.pending, _Block(
            arrival=event_ms + np.where(late, delay, 0), seq=seq, event_ms=event_ms, good=~bad,
            late=late & ~bad, clicked=clicked & ~bad, lines=lines))

    def release(self, horizon_ms: Optional[int]) -> _Block:
        """Takes every pending line that arrives before horizon_ms (all with None), in arrival order."""
        p = self.pending
        order = np.lexsort((p.seq, p.arrival))
        if horizon_ms is None:
            cut = len(order)
        else:
            cut = int(np.searchsorted(p.arrival[order], horizon_ms, side="left"))
        out, self.pending = p.take(order[:cut]), p.take(order[cut:])
        return out


def _corrupt(line: bytes, kind: str, seq: int) -> bytes:
    """A malformed version of a good line, of the given kind."""
    if kind == "not_json":
        return line[: len(line) // 2]  # a torn write
    event = json.loads(line)
    if kind == "missing_field":
        del event[list(event)[seq % len(event)]]
    elif kind == "wrong_type":
        name, value = (("event_time", "2026-01-01T00:00:00Z"), ("clicked", "yes"),
                       ("price", str(event["price"])), ("hour_of_day", [event["hour_of_day"]]))[seq % 4]
        event[name] = value
    elif kind == "nan_price":
        event["price"] = float("nan")  # json.dumps writes the bare token NaN
    elif kind == "long_string":
        event["user_id"] = event["user_id"] + "x" * _LONG_STRING_LENGTH
    else:
        raise AssertionError(kind)
    return json.dumps(event, separators=(",", ":")).encode()


# -- writing -------------------------------------------------------------------------

class _Tally:
    """Counts what has been written and which segments grew."""

    def __init__(self, log_dir: str, config: SimulatorConfig, origin_ms: int, live: bool):
        self.log_dir = log_dir
        self.config = config
        self.origin_ms = origin_ms
        self.live = live
        self.sizes_before = _segment_sizes(log_dir)
        self.events = self.bad = self.late = self.clicks = 0
        self.first: Optional[int] = None
        self.last: Optional[int] = None
        self.started = time.monotonic()

    def add(self, block: _Block) -> None:
        good = block.good
        self.events += int(good.sum())
        self.bad += int((~good).sum())
        self.late += int(block.late.sum())
        self.clicks += int(block.clicked.sum())
        if good.any():
            times = block.event_ms[good]
            lo, hi = int(times.min()), int(times.max())
            self.first = lo if self.first is None else min(self.first, lo)
            self.last = hi if self.last is None else max(self.last, hi)

    def summary(self) -> SimulationSummary:
        after = _segment_sizes(self.log_dir)
        segments = tuple(n for n in sorted(after) if after[n] != self.sizes_before.get(n))
        has_hot = self.config.hot_ad_minute is not None
        return SimulationSummary(
            log_dir=self.log_dir, events_written=self.events, bad_lines=self.bad, late_events=self.late,
            clicks=self.clicks, first_event_ms=self.first, last_event_ms=self.last, segments=segments,
            hot_ad_id=hot_ad_id(self.config) if has_hot else None,
            hot_ad_start_ms=hot_ad_start_ms(self.config, self.origin_ms), live=self.live,
            wall_seconds=time.monotonic() - self.started)


def _segment_sizes(log_dir: str) -> Dict[str, int]:
    if not os.path.isdir(log_dir):
        return {}
    return {n: os.path.getsize(os.path.join(log_dir, n)) for n in os.listdir(log_dir) if n.endswith(SEGMENT_SUFFIX)}


# How much of the log's tail is scanned to find where an appended run goes on.
# Our own writer puts the newest event within the last few minutes of lines.
_TAIL_SCAN_BYTES = 4 << 20


def _log_tail_state(log_dir: str, seed: int) -> Tuple[Optional[int], int]:
    """(newest event time, next free sequence number for this seed) from the tail of the log."""
    sizes = _segment_sizes(log_dir)
    id_pattern = re.compile(rb'"event_id":"e%d-(\d+)"' % seed)
    time_pattern = re.compile(rb'"event_time":(\d+)[,}]')
    newest, next_seq, scanned = None, 0, 0
    for name in sorted(sizes, reverse=True):
        if scanned >= _TAIL_SCAN_BYTES:
            break
        size = sizes[name]
        with open(os.path.join(log_dir, name), "rb") as f:
            f.seek(max(0, size - (_TAIL_SCAN_BYTES - scanned)))
            data = f.read()
        scanned += len(data)
        for m in time_pattern.finditer(data):
            newest = max(newest or 0, int(m.group(1)))
        for m in id_pattern.finditer(data):
            next_seq = max(next_seq, int(m.group(1)) + 1)
    return newest, next_seq


class _StopFlag:
    """Set by SIGINT/SIGTERM (main thread only) or by a caller's threading.Event."""

    def __init__(self, event: Optional[threading.Event]):
        self.event = event
        self.signalled = False
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        # Only a flag: the loop finishes the write in progress, so the log ends on a whole line.
        self.signalled = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def stopped(self) -> bool:
        return self.signalled or (self.event is not None and self.event.is_set())


ProgressCallback = Callable[[SimulationSummary], None]


def simulate(log_dir: str, config: SimulatorConfig = SimulatorConfig(), live: bool = False,
             progress: Optional[ProgressCallback] = None, append: bool = False,
             stop: Optional[threading.Event] = None) -> SimulationSummary:
    """Writes the simulated stream into the event log folder ``log_dir``.

    Batch mode (``live=False``) writes ``config.minutes`` of event time. Into
    a folder that already holds events it refuses to write unless
    ``append=True``; then it continues the same world (same users, ads and
    drift) from the first whole minute after the log's newest event time, with
    event ids that go on from the log's last one. Two appended runs of whole
    minutes hold the same events as one run of the combined length.

    Live mode (``live=True``) always appends: every ``live_flush_seconds`` it
    writes the events of the past interval, at ``events_per_minute``, with the
    wall clock as event time (late events held back by their delay) and ids
    that go on from the log's last one. The hot ad appears ``hot_ad_minute``
    after the live start (so a second live run into the same log brings back
    the same hot ad id, no longer new). It runs for
    ``config.minutes`` of wall time, or with ``minutes=None`` until SIGINT or
    SIGTERM (when called from the main thread) or until ``stop`` is set; then
    it writes the late events still held back and returns normally.

    ``progress`` is called with the running summary after each written batch.
    """
    if not live and config.minutes is None:
        raise ValueError("simulator setting minutes must be set for a batch run (None runs until stopped, "
                         "which only live mode can do)")
    existing = {n: s for n, s in _segment_sizes(log_dir).items() if s > 0}
    newest_ms, next_seq = _log_tail_state(log_dir, config.seed) if existing else (None, 0)
    if existing and not live and not append:
        raise SimulatorError(
            f"event log folder {log_dir!r} already holds events ({len(existing)} non-empty segment(s)). "
            "Pass append=True (driftline simulate --append) to continue the stream after its newest event, "
            "or write to an empty folder.")
    with EventLogWriter(log_dir, max_segment_bytes=config.max_segment_bytes) as writer:
        if live:
            return _simulate_live(writer, config, next_seq, progress, stop)
        start_minute = 0
        if newest_ms is not None and newest_ms >= config.start_ms:
            start_minute = (newest_ms - config.start_ms) // MINUTE_MS + 1
        return _simulate_batch(writer, config, start_minute, next_seq, progress)


def _write(writer: EventLogWriter, tally: _Tally, block: _Block) -> None:
    if len(block.lines):
        writer.write_lines(block.lines.tolist())
        tally.add(block)


def _simulate_batch(writer: EventLogWriter, config: SimulatorConfig, start_minute: int, first_seq: int,
                    progress: Optional[ProgressCallback]) -> SimulationSummary:
    assert config.minutes is not None
    stream = _Stream(config, config.start_ms, first_seq)
    tally = _Tally(writer.log_dir, config, config.start_ms, live=False)
    whole, part = divmod(config.minutes, 1.0)
    n_blocks = int(whole) + (1 if part > 0 else 0)
    for minute in range(start_minute, start_minute + n_blocks):
        fraction = part if (minute == start_minute + n_blocks - 1 and part > 0) else 1.0
        t0 = config.start_ms + minute * MINUTE_MS
        t1 = t0 + int(round(fraction * MINUTE_MS))
        # One generator per minute of the world: a minute's events do not depend
        # on where the run started, which is what makes appending continue the stream.
        rng = np.random.default_rng([config.seed, _MINUTE_KEY, minute])
        stream.add_block(t0, t1, int(round(config.events_per_minute * fraction)), rng)
        # Later blocks start at t1, so nothing still to come can arrive before it.
        _write(writer, tally, stream.release(t1))
        if progress is not None:
            progress(tally.summary())
    _write(writer, tally, stream.release(None))
    return tally.summary()


def _simulate_live(writer: EventLogWriter, config: SimulatorConfig, first_seq: int,
                   progress: Optional[ProgressCallback], stop: Optional[threading.Event]) -> SimulationSummary:
    origin = _now_ms()
    stream = _Stream(config, origin, first_seq)
    tally = _Tally(writer.log_dir, config, origin, live=True)
    rng = np.random.default_rng([config.seed, _LIVE_KEY])
    deadline = None if config.minutes is None else origin + int(round(config.minutes * MINUTE_MS))
    interval_ms = max(1, int(round(config.live_flush_seconds * 1000)))
    owed = 0.0  # fractional events carried over, so the long-run rate is exact
    last = origin
    with _StopFlag(stop) as flag:
        while True:
            wake = last + interval_ms if deadline is None else min(last + interval_ms, deadline)
            # Short sleeps: a signal only sets a flag, so the loop must look at it often.
            while not flag.stopped and _now_ms() < wake:
                time.sleep(min(0.05, max(0.0, (wake - _now_ms()) / 1000)))
            now = _now_ms() if deadline is None else min(_now_ms(), deadline)
            owed += config.events_per_minute * (now - last) / MINUTE_MS
            n = int(owed)
            owed -= n
            if now > last:
                stream.add_block(last, now, n, rng)
            last = now
            _write(writer, tally, stream.release(now + 1))
            if progress is not None:
                progress(tally.summary())
            if flag.stopped or (deadline is not None and now >= deadline):
                break
        # Late events still in flight are written now rather than lost.
        _write(writer, tally, stream.release(None))
    return tally.summary()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- helpers -------------------------------------------------------------------------

def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0  # searchsorted(side="right") of a draw in [0, 1) then never runs past the end
    return cdf


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def format_ms(ms: Optional[int]) -> str:
    """An epoch-ms time as ISO 8601 UTC, for summaries."""
    if ms is None:
        return "-"
    t = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


__all__: Sequence[str] = (
    "DEFAULT_START_MS", "DEVICES", "BAD_LINE_KINDS", "SimulatorConfig", "SimulationSummary", "SimulatorError",
    "simulate", "hot_ad_id", "hot_ad_start_ms", "click_probability", "ad_popularity", "format_ms",
)
