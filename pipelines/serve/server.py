"""`driftline serve`: the app of pipelines/serve/app.py under uvicorn, for one home.

The home's persisted config (HOME/driftline.yaml, as every command reads it)
gives the serving folder, the event schema and the model name (the pipeline
name). Uvicorn bounds what a client can hold: an idle keep-alive connection
is closed after `timeout_keep_alive_s`, the app gives a body `body_timeout_s`
to arrive (408 after), and `limit_concurrency` answers 503 beyond that many
connections and tasks at once.
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
    # None: no impressions log.
    impressions_dir: Optional[str]
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_items: int = DEFAULT_MAX_ITEMS
    poll_seconds: float = 1.0
    body_timeout_s: float = 10.0
    timeout_keep_alive_s: int = 5
    limit_concurrency: int = 1000


def build_state(options: ServeOptions):
    """The app's state: a model store on the serving folder, the metrics, the impressions log."""
    from pipelines.serve.app import ServeState
    from pipelines.serve.impressions import ImpressionLog
    from pipelines.serve.metrics import ServeMetrics
    from pipelines.serve.model_store import ModelStore

    holder = {}
    metrics = ServeMetrics(lambda: holder["store"].current)
    store = ModelStore(options.serving_dir, options.schema, poll_seconds=options.poll_seconds,
                       on_load_error=lambda version, why: metrics.load_errors.inc(),
                       on_swap=lambda model: metrics.model_swaps.inc())
    holder["store"] = store
    impressions = None
    if options.impressions_dir is not None:
        impressions = ImpressionLog(options.impressions_dir, on_logged=metrics.impressions_logged.inc,
                                    on_dropped=lambda n, reason: metrics.impressions_not_logged.labels(reason).inc(n))
    return ServeState(model_name=options.model_name, schema=options.schema, store=store, metrics=metrics,
                      impressions=impressions, max_body_bytes=options.max_body_bytes, max_items=options.max_items,
                      body_timeout_s=options.body_timeout_s)


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
             options.host, options.port, options.impressions_dir or "off")
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", access_log=False,
                            timeout_keep_alive=options.timeout_keep_alive_s,
                            limit_concurrency=options.limit_concurrency, lifespan="on")
    uvicorn.Server(config).run()


def options_from_config(config, host: str, port: int, impressions_dir: Optional[str], no_impressions: bool,
                        **overrides) -> ServeOptions:
    """ServeOptions of a DriftlineConfig: its serving folder, schema and pipeline name."""
    if no_impressions:
        impressions = None
    else:
        # Join mode: the log the join reads is the one to write (its schema drops what the server adds).
        default = config.join.impressions.log_dir if config.join is not None else os.path.join(config.home,
                                                                                                "impressions")
        impressions = impressions_dir or default
    return ServeOptions(serving_dir=config.serving_dir, schema=config.source.schema, model_name=config.pipeline_name,
                        impressions_dir=impressions, host=host, port=port, **overrides)
