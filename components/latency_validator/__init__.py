"""LatencyValidator: load-tests each candidate model on replayed eval requests before it may ship.

In the spirit of Etsy's Caliper: requests of `candidates_per_request`
candidates, several batch sizes, concurrent clients, p50/p95/p99 and
throughput, the share of time in parsing, the transform graph and the model,
and a blessing (`InfraBlessing`) that the pusher honours.

The component class is loaded lazily so that the plain module beside it
(`loadtest`: the load test and the verdict) imports without TFX.
"""

__all__ = ["LatencyValidator"]


def __getattr__(name):
    if name == "LatencyValidator":
        from components.latency_validator.component import LatencyValidator

        return LatencyValidator
    raise AttributeError(name)
