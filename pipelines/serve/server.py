"""`driftline serve`: the app of pipelines/serve/app.py under uvicorn, for one home.

The home's persisted config (HOME/driftline.yaml, as every command reads it)
gives the serving folder, the event schema and the model name (the pipeline
name). Uvicorn bounds what a client can hold: an idle keep-alive connection
is closed after `timeout_keep_alive_s`, the app gives a body `body_timeout_s`
to arrive (408 after), and `limit_concurrency` answers 503 beyond that many
connections and tasks at once. While it listens, the server leaves a record in
`<home>/servers/` (pipelines/serve/registry.py) for `driftline status`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Optional

from components.event_schema import EventSchema
from pipelines.serve.inputs import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ITEMS

log = logging.getLogger(__name__)

DEFAULT_PORT = 8501  # TF Serving's REST port


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    serving_dir: str
    schema: EventSchema
    model_name: str
    # None: no impressions log. A KafkaImpressions: the log is a Kafka topic.
    impressions_dir: Optional[object]
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_items: int = DEFAULT_MAX_ITEMS
    poll_seconds: float = 1.0
    body_timeout_s: float = 10.0
    timeout_keep_alive_s: int = 5
    limit_concurrency: int = 1000
    # The home's ML Metadata (a MetadataConfig): what /metrics says of the served version's lineage.
    # None: no lookups (the gauges are left out).
    metadata: Optional[object] = None
    lineage_retry_s: float = 2.0
    # Shadow scoring (serve.shadow): the newest blessed model that is not serving scores every request too,
    # in the impressions thread; needs `metadata` and the impressions log.
    shadow: bool = False
    shadow_poll_seconds: float = 10.0
    # The ranking policy's epsilon (serve.exploration_rate); 0: rank by score only.
    exploration_rate: float = 0.0
    # Champion/challenger routing (pipelines/serve/routing.py), whenever `metadata` has an open comparison:
    # how often it is read, and each arm's Beta prior (the online section's).
    comparison_poll_seconds: float = 5.0
    prior: Optional[object] = None
    # The impressions queue's bound in bytes of encoded columns (beside its count, 4096 requests).
    impressions_max_pending_bytes: Optional[int] = None
    # The impressions writer process's niceness over the server's (None: impressions.DEFAULT_WRITER_NICE, 0).
    impressions_writer_nice: Optional[int] = None
    # The home whose `servers/` folder gets this process's record (pipelines/serve/registry.py); None: none.
    home: Optional[str] = None


def build_state(options: ServeOptions):
    """The app's state: a model store on the serving folder, the metrics, the impressions log."""
    from pipelines.serve.app import ServeState
    from pipelines.serve.impressions import ImpressionLog
    from pipelines.serve.lineage_watch import LineageWatch
    from pipelines.serve.metrics import ServeMetrics
    from pipelines.serve.model_store import ModelStore
    from pipelines.serve.routing import ComparisonWatch

    if options.shadow and (options.metadata is None or options.impressions_dir is None):
        raise ValueError("shadow scoring needs ML Metadata (to find the candidate) and the impressions log "
                         "(where its scores go)")
    holder = {}
    watch = None
    if options.metadata is not None:
        watch = LineageWatch(options.metadata, options.serving_dir, options.model_name,
                             retry_seconds=options.lineage_retry_s, on_error=lambda why: metrics.lineage_errors.inc(),
                             shadow_schema=options.schema if options.shadow else None,
                             shadow_poll_seconds=options.shadow_poll_seconds,
                             on_shadow_load_error=lambda model_id, why: metrics.shadow_load_errors.inc())
    shadow = (lambda: watch.shadow) if options.shadow else None
    comparison = None
    if options.metadata is not None:
        from components.online_evaluator.decision import Prior

        comparison = ComparisonWatch(options.metadata, options.model_name, options.schema,
                                     prior=options.prior or Prior(), poll_seconds=options.comparison_poll_seconds,
                                     on_error=lambda why: metrics.lineage_errors.inc(),
                                     on_load_error=lambda model_id, why: metrics.challenger_load_errors.inc())
    routing = (lambda: comparison.routing) if comparison is not None else None
    metrics = ServeMetrics(lambda: holder["store"].current, lineage=watch.current if watch is not None else None,
                           shadow=shadow, routing=routing)

    def after_poll(model) -> None:
        # Both read ML Metadata in the store's thread, never on a request; one failing does not skip the other.
        try:
            watch.tick(model)
        finally:
            comparison.tick(model)

    def challenger_failed(failed) -> None:
        metrics.challenger_score_errors.inc()
        comparison.scoring_failed(failed)

    store = ModelStore(options.serving_dir, options.schema, poll_seconds=options.poll_seconds,
                       on_load_error=lambda version, why: metrics.load_errors.inc(),
                       on_swap=lambda model: metrics.model_swaps.inc(),
                       on_poll=after_poll if watch is not None else None)
    holder["store"] = store
    impressions = None
    if options.impressions_dir is not None:
        bound = {k: v for k, v in (("max_pending_bytes", options.impressions_max_pending_bytes),
                                   ("writer_nice", options.impressions_writer_nice)) if v is not None}
        impressions = ImpressionLog(options.impressions_dir, on_logged=metrics.impressions_logged.inc, **bound,
                                    on_dropped=lambda n, reason: metrics.impressions_not_logged.labels(reason).inc(n),
                                    on_shadow=lambda n, error: (metrics.shadow_scored if error is None
                                                                else metrics.shadow_errors).inc(n))
    return ServeState(model_name=options.model_name, schema=options.schema, store=store, metrics=metrics,
                      impressions=impressions, shadow=shadow, routing=routing,
                      challenger_failed=challenger_failed if comparison is not None else None,
                      served_lineage=watch.current if watch is not None else None,
                      exploration_rate=options.exploration_rate, max_body_bytes=options.max_body_bytes,
                      max_items=options.max_items, body_timeout_s=options.body_timeout_s)


def run(options: ServeOptions) -> None:
    """Serves until SIGINT or SIGTERM; on either, finishes the requests in flight and flushes the log."""
    import uvicorn

    import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
    from pipelines.serve.app import create_app

    # The impressions thread serializes in Python while requests wait for the GIL; at the default 5 ms switch
    # interval a request could wait that long behind it (benchmarks/serving.py measured it).
    sys.setswitchinterval(0.0005)
    app = create_app(build_state(options))
    log.info("serving %s from %s on http://%s:%d (impressions: %s)", options.model_name, options.serving_dir,
             options.host, options.port, _describe_impressions(options))
    # uvloop and httptools (setup.py): the event loop and the HTTP parsing in C, not in the Python the
    # requests' own work needs the GIL for.
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", access_log=False,
                            timeout_keep_alive=options.timeout_keep_alive_s,
                            limit_concurrency=options.limit_concurrency, lifespan="on", loop="uvloop",
                            http="httptools")
    _server_class()(config, options).run()


def _server_class():
    import uvicorn

    class RecordedServer(uvicorn.Server):
        """Uvicorn's server, which also leaves a record in <home>/servers while it listens (for `status`)."""

        def __init__(self, config, options: ServeOptions):
            super().__init__(config)
            self.options = options
            self.recorded = False

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.should_exit or self.options.home is None or not self.servers:
                return
            # The port actually bound (--port 0 asks the system for a free one).
            port = self.servers[0].sockets[0].getsockname()[1]
            try:
                from pipelines.serve import registry

                registry.write_record(self.options.home, self.options.host, port, self.options.model_name)
                self.recorded = True
            except OSError as e:  # a read-only home: serving matters more than being listed
                log.warning("could not record this server under %s: %s", self.options.home, e)

        async def shutdown(self, sockets=None) -> None:
            if self.recorded:
                from pipelines.serve import registry

                registry.remove_record(self.options.home)
                self.recorded = False
            await super().shutdown(sockets=sockets)

    return RecordedServer



def _describe_impressions(options: ServeOptions) -> str:
    target = options.impressions_dir
    if target is None:
        return "off"
    return target.describe() if hasattr(target, "describe") else str(target)


def options_from_config(config, host: str, port: int, impressions_dir: Optional[str], no_impressions: bool,
                        impressions_kafka: Optional[object] = None, **overrides) -> ServeOptions:
    """ServeOptions of a DriftlineConfig: its serving folder, schema and pipeline name.

    `impressions_kafka` (a KafkaImpressions): the impressions log is that topic instead of a folder.
    """
    if no_impressions:
        impressions = None
    elif impressions_kafka is not None:
        impressions = impressions_kafka
    elif not impressions_dir and config.join is not None and config.join.impressions.is_kafka:
        # Join mode over a topic: the topic the join reads is the one to write.
        kafka = config.join.impressions.kafka
        from pipelines.serve.impressions import KafkaImpressions

        impressions = KafkaImpressions(kafka.bootstrap_servers, kafka.topic, dict(kafka.client_config),
                                       dict(kafka.secret_env), dict(kafka.secret_files))
    else:
        # Join mode: the log the join reads is the one to write (its schema drops what the server adds).
        default = config.join.impressions.log_dir if config.join is not None else os.path.join(config.home,
                                                                                                "impressions")
        impressions = impressions_dir or default
    return ServeOptions(serving_dir=config.serving_dir, schema=config.source.schema, model_name=config.pipeline_name,
                        impressions_dir=impressions, host=host, port=port, metadata=config.metadata_connection,
                        home=config.home, shadow_poll_seconds=config.serve.shadow_poll_seconds,
                        **{"exploration_rate": config.serve.exploration_rate,
                           "comparison_poll_seconds": config.serve.comparison_poll_seconds,
                           "prior": config.online.rule().prior, **overrides})
