"""Prometheus metrics of `driftline serve`, in a registry of their own (served at GET /metrics).

What this process saw: requests by endpoint and status code, their latency,
items scored, impressions logged and not logged (with why), models loaded and
versions that failed to load. The serving version and the model's age (now
minus when its version folder was published) are read from the model store
when scraped, so they are never stale. What ML Metadata says of the served
version (its model id, push time, and the newest event time of its training
data, so its freshness) comes from `lineage_watch.LineageWatch`, which reads
the store after each swap; the gauges are absent while it knows nothing.
The open champion/challenger comparison (routing.ComparisonWatch) is read the
same way: the challenger's id, P(challenger better) and each arm's propensity
per request, beside the requests each arm scored.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# A 1,000-candidate rank is milliseconds; a cold or overloaded one can take a second.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _ModelCollector(Collector):
    def __init__(self, current: Callable[[], Optional[object]],
                 lineage: Optional[Callable[[int], Optional[object]]] = None,
                 shadow: Optional[Callable[[], Optional[object]]] = None,
                 routing: Optional[Callable[[], Optional[object]]] = None):
        self._current = current
        self._lineage = lineage
        self._shadow = shadow
        self._routing = routing

    def collect(self) -> Iterator[GaugeMetricFamily]:
        model = self._current()
        version = GaugeMetricFamily("driftline_serve_model_version", "The model version being served (0: none yet)")
        version.add_metric([], float(model.version) if model is not None else 0.0)
        yield version
        if self._shadow is not None:
            shadow = self._shadow()
            gauge = GaugeMetricFamily("driftline_serve_shadow_model_id",
                                      "The ML Metadata id of the model shadow-scoring every request (0: none)")
            gauge.add_metric([], float(shadow.model_id) if shadow is not None else 0.0)
            yield gauge
        if self._routing is not None:
            yield from self._routing_gauges(self._routing())
        if model is not None:
            age = GaugeMetricFamily("driftline_serve_model_age_seconds",
                                    "Seconds since the served version was published in the serving folder")
            age.add_metric([], max(0.0, time.time() - model.published_at_s))
            yield age
            loaded = GaugeMetricFamily("driftline_serve_model_loaded_timestamp_seconds",
                                       "When this server loaded the served version (Unix time)")
            loaded.add_metric([], model.loaded_at_s)
            yield loaded
            yield from self._lineage_gauges(model.version)

    @staticmethod
    def _routing_gauges(routing) -> Iterator[GaugeMetricFamily]:
        challenger = GaugeMetricFamily("driftline_serve_challenger_model_id",
                                       "The ML Metadata id of the open comparison's challenger (0: none open)")
        challenger.add_metric([], float(routing.challenger_model_id) if routing is not None else 0.0)
        yield challenger
        loaded = GaugeMetricFamily("driftline_serve_challenger_loaded",
                                   "1 while the challenger is loaded and routed to; 0 when it is not (none open, or "
                                   "it failed to load or to score)")
        loaded.add_metric([], 1.0 if routing is not None and routing.model is not None else 0.0)
        yield loaded
        propensity = GaugeMetricFamily("driftline_serve_arm_propensity",
                                       "The probability that a request goes to each arm now", labels=["arm"])
        champion, challenger_p = routing.propensities() if routing is not None else (1.0, 0.0)
        propensity.add_metric(["champion"], champion)
        propensity.add_metric(["challenger"], challenger_p)
        yield propensity
        if routing is not None:
            better = GaugeMetricFamily("driftline_serve_challenger_p_better",
                                       "P(challenger better) under the comparison's posteriors in ML Metadata")
            better.add_metric([], routing.p_better)
            yield better

    def _lineage_gauges(self, version: int) -> Iterator[GaugeMetricFamily]:
        facts = self._lineage(version) if self._lineage is not None else None
        if facts is None:
            return
        if facts.model_id is not None:
            model_id = GaugeMetricFamily("driftline_serve_model_id",
                                         "The ML Metadata id of the served version's Model artifact")
            model_id.add_metric([], float(facts.model_id))
            yield model_id
        if facts.pushed_at_ms is not None:
            pushed = GaugeMetricFamily("driftline_serve_model_pushed_timestamp_seconds",
                                       "When the served version was pushed (or rolled back to), per ML Metadata "
                                       "(Unix time)")
            pushed.add_metric([], facts.pushed_at_ms / 1000.0)
            yield pushed
        if facts.newest_event_ms is not None:
            newest = GaugeMetricFamily("driftline_serve_model_newest_event_timestamp_seconds",
                                       "The newest event time of the data the served model was trained on, per "
                                       "ML Metadata lineage (Unix time)")
            newest.add_metric([], facts.newest_event_ms / 1000.0)
            yield newest
            fresh = GaugeMetricFamily("driftline_serve_model_freshness_seconds",
                                      "Now minus the newest event time the served model learned from")
            fresh.add_metric([], time.time() - facts.newest_event_ms / 1000.0)
            yield fresh


class ServeMetrics:
    def __init__(self, current_model: Callable[[], Optional[object]],
                 lineage: Optional[Callable[[int], Optional[object]]] = None,
                 shadow: Optional[Callable[[], Optional[object]]] = None,
                 routing: Optional[Callable[[], Optional[object]]] = None):
        self.registry = CollectorRegistry()
        self.requests = Counter("driftline_serve_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "code"], registry=self.registry)
        self.errors = Counter("driftline_serve_errors", "Requests answered with a 5xx (the server's fault)",
                              ["endpoint"], registry=self.registry)
        self.latency = Histogram("driftline_serve_request_latency_seconds",
                                 "Time from the request's arrival to its response, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.items = Counter("driftline_serve_items_scored", "Items (instances, candidates) scored",
                             registry=self.registry)
        self.impressions_logged = Counter("driftline_serve_impressions_logged",
                                          "Impressions appended to the impressions log", registry=self.registry)
        self.impressions_not_logged = Counter(
            "driftline_serve_impressions_not_logged",
            "Impressions scored but not logged: queue_full (the log is slower than the traffic) or write_error",
            ["reason"], registry=self.registry)
        self.model_swaps = Counter("driftline_serve_model_loads", "Versions loaded and swapped in",
                                   registry=self.registry)
        self.load_errors = Counter("driftline_serve_model_load_errors", "Versions that failed to load",
                                   registry=self.registry)
        self.lineage_errors = Counter("driftline_serve_lineage_errors",
                                      "Failed reads of ML Metadata for the served version (retried)",
                                      registry=self.registry)
        self.shadow_scored = Counter("driftline_serve_shadow_scored", "Items the shadow candidate scored",
                                     registry=self.registry)
        self.shadow_errors = Counter("driftline_serve_shadow_errors",
                                     "Items the shadow candidate failed to score (logged without a shadow score)",
                                     registry=self.registry)
        self.shadow_load_errors = Counter("driftline_serve_shadow_load_errors", "Shadow candidates that did not load",
                                          registry=self.registry)
        self.arm_requests = Counter("driftline_serve_arm_requests", "Scored requests by the arm that scored them "
                                    "(champion: the served version)", ["arm"], registry=self.registry)
        self.challenger_load_errors = Counter("driftline_serve_challenger_load_errors",
                                              "Challengers that did not load (the champion serves everything)",
                                              registry=self.registry)
        self.challenger_score_errors = Counter("driftline_serve_challenger_score_errors",
                                               "Requests the challenger failed to score (the champion scored them, "
                                               "and the challenger is routed to no more)", registry=self.registry)
        self.explored = Counter("driftline_serve_explored_requests",
                                "Rank requests served in a random order (serve.exploration_rate)",
                                registry=self.registry)
        self.registry.register(_ModelCollector(current_model, lineage, shadow, routing))
        for arm in ("champion", "challenger"):
            self.arm_requests.labels(arm)
        for reason in ("queue_full", "write_error"):
            self.impressions_not_logged.labels(reason)  # present at 0, so alerts see the series
