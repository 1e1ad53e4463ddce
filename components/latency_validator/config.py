"""LatencyValidator's settings: the load test and its SLO.

Composed into DriftlineConfig by pipelines/config.py, which re-exports this name.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

from components.config_base import ConfigError


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
