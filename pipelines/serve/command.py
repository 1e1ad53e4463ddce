"""`driftline serve`: the CLI command (registered by pipelines/cli.py)."""
from __future__ import annotations

import argparse
from typing import Any


def add_serve_command(subparsers: Any) -> None:
    from pipelines.cli import _add_home_arguments, _int_at_least, _positive_float
    from pipelines.serve.inputs import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ITEMS
    from pipelines.serve.server import DEFAULT_PORT

    p = subparsers.add_parser(
        "serve", help="serve the pushed model over HTTP (TF Serving's REST paths) and log every impression",
        description="Serves the highest version of the home's serving folder over HTTP: POST "
                    "/v1/models/NAME:predict and :rank with raw events, GET /v1/models/NAME, /healthz and "
                    "/metrics. A new version (a push, a rollback) is loaded in the background and swapped in "
                    "atomically. Every scored item is appended to the impressions log (default HOME/impressions), "
                    "an event log StreamingExampleGen can ingest. While ML Metadata has an open champion/challenger "
                    "comparison, each request goes to one of them by Thompson sampling; rank requests are served "
                    "in a random order with probability serve.exploration_rate. NAME is the pipeline name.")
    _add_home_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_int_at_least(0), default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT}, TF Serving's REST port)")
    p.add_argument("--impressions", metavar="DIR", help="the impressions log folder (default HOME/impressions)")
    p.add_argument("--no-impressions", action="store_true", help="log no impressions")
    p.add_argument("--impressions-kafka-bootstrap", metavar="HOST:PORT",
                   help="write the impressions log to a Kafka topic at these brokers instead of a folder "
                        "(with --impressions-kafka-topic)")
    p.add_argument("--impressions-kafka-topic", metavar="TOPIC", help="the impressions log's Kafka topic")
    p.add_argument("--impressions-max-pending-bytes", type=_max_pending_bytes, default=None, metavar="N",
                   help="most bytes of requests' encoded impressions waiting for the log's writer; beyond, their "
                        "lines are dropped and counted in /metrics (default 64 MiB; a request of 1,000 candidates "
                        "is ~150 KB)")
    p.add_argument("--impressions-writer-nice", type=_writer_nice, default=None, metavar="N",
                   help="the impressions writer process's CPU niceness over the server's, 0 to 19 (default 0: the "
                        "server's priority; above, it takes only the CPU serving leaves idle, and on a busy machine "
                        "falls behind and drops lines, counted in /metrics)")
    p.add_argument("--max-body-bytes", type=_int_at_least(64), default=DEFAULT_MAX_BODY_BYTES,
                   help=f"larger request bodies get a 413 (default {DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--max-items", type=_int_at_least(1), default=DEFAULT_MAX_ITEMS,
                   help=f"most instances or candidates in one request (default {DEFAULT_MAX_ITEMS})")
    p.add_argument("--poll-seconds", type=_positive_float, default=1.0,
                   help="how often the serving folder is checked for a new version (default 1)")
    p.add_argument("--shadow", action=argparse.BooleanOptionalAction, default=None,
                   help="shadow scoring: the newest blessed model that is not serving (per ML Metadata) also scores "
                        "every request, off the request's path, its score logged beside the served one in the "
                        "impressions log (default: the config's serve.shadow, off)")
    p.add_argument("--exploration-rate", type=_exploration_rate, default=None, metavar="EPS",
                   help="the probability that a rank request is served in a uniformly random order instead of the "
                        "score order, each impression logging its position's propensity (default: the config's "
                        "serve.exploration_rate, 0.02; 0: never)")
    p.add_argument("--body-timeout-seconds", type=_positive_float, default=10.0,
                   help="a request body that has not arrived after this long gets a 408 (default 10)")
    from pipelines.cli import _add_log_level_argument

    _add_log_level_argument(p)
    p.set_defaults(handler=run_serve)


def _exploration_rate(text: str) -> float:
    from components.config_base import ConfigError
    from pipelines.serve.config import check_exploration_rate

    try:
        return check_exploration_rate(float(text), "--exploration-rate")
    except (ValueError, ConfigError) as e:
        raise argparse.ArgumentTypeError(str(e) if isinstance(e, ConfigError) else
                                         f"--exploration-rate must be a number in [0, 1), got {text!r}") from None


def _writer_nice(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"--impressions-writer-nice must be a whole number from 0 (the server's "
                                         f"priority) to 19 (the lowest), got {text!r}")
    return value


def _max_pending_bytes(text: str) -> int:
    from pipelines.serve.impressions import check_max_pending_bytes

    try:
        value = int(text)
    except ValueError:
        value = text
    try:
        return check_max_pending_bytes(value, "--impressions-max-pending-bytes")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run_serve(args: argparse.Namespace) -> int:
    from pipelines.cli import CommandError, _home_config
    from pipelines.serve import server

    if args.no_impressions and args.impressions:
        raise CommandError("give --impressions DIR or --no-impressions, not both", exit_code=2)
    kafka = None
    if bool(args.impressions_kafka_bootstrap) != bool(args.impressions_kafka_topic):
        raise CommandError("a Kafka impressions log needs both --impressions-kafka-bootstrap HOST:PORT and "
                           "--impressions-kafka-topic TOPIC", exit_code=2)
    if args.impressions_kafka_topic:
        if args.impressions or args.no_impressions:
            raise CommandError("give one impressions log: --impressions DIR, --impressions-kafka-topic TOPIC, or "
                               "--no-impressions", exit_code=2)
        from pipelines.serve.impressions import KafkaImpressions

        kafka = KafkaImpressions(args.impressions_kafka_bootstrap, args.impressions_kafka_topic)
    config = _home_config(args)
    shadow = config.serve.shadow if args.shadow is None else args.shadow
    if shadow and args.no_impressions:
        raise CommandError("shadow scoring logs the candidate's scores in the impressions log: drop --no-impressions, "
                           "or turn shadow scoring off (--no-shadow, or serve.shadow: false in the config)",
                           exit_code=2)
    options = server.options_from_config(config, args.host, args.port, args.impressions, args.no_impressions,
                                         impressions_kafka=kafka, max_body_bytes=args.max_body_bytes,
                                         max_items=args.max_items, poll_seconds=args.poll_seconds,
                                         body_timeout_s=args.body_timeout_seconds, shadow=shadow,
                                         impressions_max_pending_bytes=args.impressions_max_pending_bytes,
                                         impressions_writer_nice=args.impressions_writer_nice,
                                         **({} if args.exploration_rate is None else
                                            {"exploration_rate": args.exploration_rate}))
    try:
        server.run(options)
    except OSError as e:  # the port is taken, the address is not this machine's
        raise CommandError(f"cannot serve on {args.host}:{args.port}: {e}") from None
    return 0
