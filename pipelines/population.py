"""A simulated population of users in front of a real `driftline serve`: the closed loop's traffic (#21).

Each request is one user of the simulator's world (pipelines/simulator.py: the same users, ads, tastes and
drift) asking the server to rank `candidates` ads; the top `shown` of the server's order are "shown". The
server logs every candidate it scored as an impression (with its position); the user clicks each shown ad
with its true click probability (`simulator.click_probability` at the moment of the response) after an
exponential delay, a share `after_window_fraction` of them after the attribution window instead. A click is
appended to the outcomes log only once its event time has come, as a real click stream arrives, so the
outcomes' watermark never runs ahead of the wall clock.

`closed_loop_join` is the JoinConfig that reads the server's impressions log (the server's fields dropped,
the candidates not shown skipped) against these outcomes; `write_history` writes a stretch of past traffic
in the same two formats (the mode without a server) so the first model has something to learn from.
What the population did (per span of the response time: ads shown, clicks within the window, the versions
that served) is its tally: the served click-through rate, an online metric, beside the offline AUC.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
import os
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from components import event_log
from components.event_schema import ad_click_schema
from components.streaming_example_gen.join_config import JoinConfig, JoinStreamConfig
from pipelines import simulator, two_streams
from pipelines.serve.impressions import SERVER_FIELDS

# What the server adds to each impression: not carried into the examples, whose schema is what the model
# takes as input, and so what the server asks a request for (the position still decides what was shown).
# Derived, so a field the server starts logging can never become a model input by accident.
SERVER_ONLY_FIELDS = tuple(f.name for f in SERVER_FIELDS)


@dataclasses.dataclass(frozen=True)
class PopulationConfig:
    world: simulator.SimulatorConfig
    # Start of the world's drift (the simulator's origin): the history's start, so live traffic continues it.
    origin_ms: int
    candidates: int = 10
    shown: int = 2
    requests_per_second: float = 20.0
    attribution_window_seconds: int = 10
    click_delay_mean_seconds: float = 2.0
    after_window_fraction: float = 0.05
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.shown <= self.candidates <= self.world.n_ads:
            raise ValueError(f"need 1 <= shown ({self.shown}) <= candidates ({self.candidates}) <= the world's "
                             f"ads ({self.world.n_ads})")
        if not self.requests_per_second > 0:
            raise ValueError(f"requests_per_second must be > 0, got {self.requests_per_second}")


def closed_loop_join(impressions_dir: str, outcomes_dir: str, config: PopulationConfig,
                     orphan_bound_seconds: int = 600) -> JoinConfig:
    """The join of the server's impressions log (of the ad-click stream) and the population's clicks."""
    from pipelines.serve.impressions import impressions_schema

    return JoinConfig(impressions=JoinStreamConfig(impressions_dir, impressions_schema(ad_click_schema())),
                      outcomes=JoinStreamConfig(outcomes_dir, two_streams.outcomes_schema()), key="impression_id",
                      attribution_window_seconds=config.attribution_window_seconds, label_rule="any",
                      outcome_type_field="outcome_type", counted_types=(two_streams.CLICK,),
                      orphan_bound_seconds=orphan_bound_seconds, drop_fields=SERVER_ONLY_FIELDS,
                      max_position=config.shown)


def write_history(impressions_dir: str, outcomes_dir: str, config: PopulationConfig, minutes: int) -> int:
    """`minutes` of past traffic from `config.origin_ms` on, without a server: impressions in the server's
    format (model version 0, position 0: each was shown) and their delayed clicks. Returns the impressions."""
    sim = dataclasses.replace(config.world, start_ms=config.origin_ms, minutes=minutes, late_fraction=0.0,
                              bad_fraction=0.0)
    with tempfile.TemporaryDirectory(prefix="driftline-history-") as tmp:
        simulator.simulate(os.path.join(tmp, "events"), sim)
        staged_imp, staged_out = os.path.join(tmp, "imp"), os.path.join(tmp, "out")
        truth = two_streams.split_log(os.path.join(tmp, "events"), staged_imp, staged_out, two_streams.TwoStreamConfig(
            attribution_window_seconds=config.attribution_window_seconds,
            click_delay_mean_seconds=config.click_delay_mean_seconds,
            after_window_fraction=config.after_window_fraction, seed=config.seed))
        with event_log.EventLogWriter(impressions_dir) as writer:
            writer.write_events([dict(e, request_id="history", model_version=0, score=0.0, position=0)
                                 for e in read_events(staged_imp)])
        with event_log.EventLogWriter(outcomes_dir) as writer:
            writer.write_events(read_events(staged_out))
    return truth.impressions


def read_events(log_dir: str) -> List[dict]:
    """Every line of an event log folder, parsed, in log order."""
    plan = event_log.plan_read(log_dir, None)
    return [json.loads(line) for chunk in plan.chunks for _, line in event_log.read_chunk(log_dir, chunk)]


def write_inverted_history(impressions_dir: str, outcomes_dir: str, config: PopulationConfig, minutes: int) -> None:
    """`write_history` with every label inverted (a click for each impression not clicked within the window,
    none for the others): the history a model built to be worse learns from."""
    with tempfile.TemporaryDirectory(prefix="driftline-inverted-") as tmp:
        imp, out = os.path.join(tmp, "imp"), os.path.join(tmp, "out")
        write_history(imp, out, config, minutes)
        impressions = read_events(imp)
        window_ms = config.attribution_window_seconds * 1000
        times = {e["event_id"]: e["event_time"] for e in impressions}
        clicked = {o["impression_id"] for o in read_events(out)
                   if o["event_time"] - times.get(o["impression_id"], o["event_time"]) <= window_ms}
        flipped = [{"outcome_id": f"click-{e['event_id']}", "impression_id": e["event_id"],
                    "event_time": e["event_time"] + 1000, "outcome_type": "click"}
                   for e in impressions if e["event_id"] not in clicked]
        with event_log.EventLogWriter(impressions_dir) as w:
            w.write_events(impressions)
        with event_log.EventLogWriter(outcomes_dir) as w:
            w.write_events(sorted(flipped, key=lambda o: o["event_time"]))


@dataclasses.dataclass
class SpanTally:
    shown: int = 0
    clicks_in_window: int = 0
    clicks_after_window: int = 0
    versions: Dict[int, int] = dataclasses.field(default_factory=dict)  # served version -> ads shown
    # The true click probabilities of the ads shown, summed; and of the best `shown` of each request's candidates.
    expected_clicks: float = 0.0
    oracle_expected_clicks: float = 0.0
    random_expected_clicks: float = 0.0  # ... and of `shown` of them drawn at random
    # The hot ad (the world's `hot_ad_minute`): requests it was a candidate in, times shown, clicks in window.
    hot_candidates: int = 0
    hot_shown: int = 0
    hot_clicks_in_window: int = 0

    @property
    def ctr(self) -> Optional[float]:
        return self.clicks_in_window / self.shown if self.shown else None


@dataclasses.dataclass
class Tally:
    """What the population saw, per span of the response time."""

    span_ms: int
    spans: Dict[int, SpanTally] = dataclasses.field(default_factory=dict)
    requests: int = 0
    failed: int = 0
    errors: List[str] = dataclasses.field(default_factory=list)
    versions_in_order: List[int] = dataclasses.field(default_factory=list)  # each version when first seen

    def span(self, t_ms: int) -> SpanTally:
        return self.spans.setdefault(t_ms // self.span_ms, SpanTally())


class Population:
    """Runs the users in a thread until `stop()`: requests to the server, clicks to the outcomes log."""

    def __init__(self, url: str, model_name: str, outcomes_dir: str, config: PopulationConfig, span_ms: int):
        config.validate()
        self.url = f"{url.rstrip('/')}/v1/models/{model_name}:rank"
        self.outcomes_dir = outcomes_dir
        self.config = config
        self.tally = Tally(span_ms=span_ms)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._pending: List[Tuple[int, int, dict]] = []  # (event time, seq, outcome): clicks not yet happened
        self._seq = 0
        self._lock = threading.Lock()

    def start(self) -> "Population":
        self._thread = threading.Thread(target=self._run, name="population", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Tally:
        """Stops the users; the clicks still to come are written (they happen after the stop)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with event_log.EventLogWriter(self.outcomes_dir) as writer:
            self._flush(writer, None)
        return self.tally

    def _flush(self, writer: event_log.EventLogWriter, now_ms: Optional[int]) -> None:
        due = []
        while self._pending and (now_ms is None or self._pending[0][0] <= now_ms):
            due.append(heapq.heappop(self._pending)[2])
        if due:
            writer.write_events(due)

    def _run(self) -> None:
        import httpx

        c = self.config
        world = simulator._world(c.world)
        rng = np.random.default_rng([c.seed, 21])
        window_ms = c.attribution_window_seconds * 1000
        interval = 1.0 / c.requests_per_second
        hot_ms = simulator.hot_ad_start_ms(c.world, c.origin_ms)
        # Once live, the hot ad is among a request's candidates as often as the world shows it among events.
        hot_in_request = min(1.0, c.world.hot_ad_share * c.candidates)
        with httpx.Client(timeout=30.0) as client, event_log.EventLogWriter(self.outcomes_dir) as writer:
            next_at = time.monotonic()
            while not self._stop.is_set():
                self._flush(writer, int(time.time() * 1000))
                user = int(np.searchsorted(world.user_cdf, rng.random(), side="right"))
                ads = _distinct(rng, world.ad_cdf, c.candidates)
                now_ms = int(time.time() * 1000)
                hot = hot_ms is not None and now_ms >= hot_ms and rng.random() < hot_in_request
                if hot:
                    ads[-1] = world.hot_index
                device = simulator.DEVICES[int(world.user_device[user])]
                prices = np.maximum(np.round(world.ad_price[ads] * np.exp(rng.normal(0.0, 0.1, len(ads))), 2), 0.01)
                candidates = [{"ad_id": f"a{a}", "ad_category": f"c{int(world.ad_category[a])}", "price": float(p)}
                              for a, p in zip(ads, prices)]
                context = {"user_id": f"u{user}", "device": device, "hour_of_day": int((now_ms // 3_600_000) % 24)}
                self.tally.requests += 1
                try:
                    response = client.post(self.url, json={"context": context, "candidates": candidates})
                    response.raise_for_status()
                    body = response.json()
                except Exception as e:  # noqa: BLE001 - a failed request is counted and reported, the users go on
                    self.tally.failed += 1
                    if len(self.tally.errors) < 10:
                        self.tally.errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                    self._stop.wait(0.2)
                    continue
                shown_ms = int(time.time() * 1000)  # after the server's arrival time: a click is never before it
                version = int(body["model_version"])
                if version not in self.tally.versions_in_order:
                    self.tally.versions_in_order.append(version)
                top = body["order"][:c.shown]
                events = [dict(context, **candidate, event_time=shown_ms) for candidate in candidates]
                every = simulator.click_probability(c.world, events, origin_ms=c.origin_ms)
                probability = every[top]
                span = self.tally.span(shown_ms)
                span.shown += len(top)
                # Expected clicks (free of the clicks' coin flips), and the best any order could expect.
                span.expected_clicks += float(probability.sum())
                span.oracle_expected_clicks += float(np.sort(every)[::-1][:len(top)].sum())
                span.random_expected_clicks += float(every.mean()) * len(top)
                span.versions[version] = span.versions.get(version, 0) + len(top)
                hot_at = len(ads) - 1 if hot else None
                if hot:
                    span.hot_candidates += 1
                    span.hot_shown += int(hot_at in top)
                for i, p in zip(top, probability):
                    if rng.random() >= p:
                        continue
                    if rng.random() < c.after_window_fraction:
                        delay = window_ms + 1 + int(rng.integers(0, window_ms))
                        span.clicks_after_window += 1
                    else:
                        delay = 1 + int(rng.exponential(c.click_delay_mean_seconds * 1000))
                        if delay <= window_ms:
                            span.clicks_in_window += 1
                            span.hot_clicks_in_window += int(i == hot_at)
                        else:
                            span.clicks_after_window += 1
                    iid = body["impression_ids"][i]
                    self._seq += 1
                    heapq.heappush(self._pending, (shown_ms + delay, self._seq, {
                        "outcome_id": f"click-{iid}", "impression_id": iid, "event_time": shown_ms + delay,
                        "outcome_type": two_streams.CLICK}))
                next_at += interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at, time.monotonic() - 1.0)  # a slow server does not build a burst


def _distinct(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """`n` distinct ads drawn by popularity."""
    chosen: List[int] = []
    while len(chosen) < n:
        a = int(np.searchsorted(cdf, rng.random(), side="right"))
        if a not in chosen and a < len(cdf):
            chosen.append(a)
    return np.asarray(chosen, dtype=np.int64)
