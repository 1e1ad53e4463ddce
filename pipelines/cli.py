"""The ``driftline`` console script.

Each command is two functions: ``add_<name>_command(subparsers)`` declares its
arguments and sets ``handler``, and the handler ``run_<name>(args) -> int``
does the work. Heavy packages (tensorflow, tfx, beam) are imported inside the
handlers only, so ``driftline --help`` and ``driftline simulate`` start fast.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence

log = logging.getLogger("driftline.cli")


class CommandError(Exception):
    """A command cannot do what was asked; main() prints the message and returns exit_code."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# -- argument types: argparse turns their ArgumentTypeError into a usage error (exit 2) --

def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {text}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


# -- simulate -------------------------------------------------------------------------

def add_simulate_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate", help="write the built-in drifting ad-click stream (or --stream music) into an event log",
        description="Writes the built-in ad-click stream (drifting ad popularity, a hot ad that appears "
                    "mid-stream, late and optionally malformed events) into an event log folder. Batch mode "
                    "writes --minutes of event time at once and is deterministic for a seed; --live appends "
                    "in real time until stopped (Ctrl-C / SIGTERM) or until --minutes have passed.")
    p.add_argument("--log", required=True, metavar="DIR", help="event log folder (created if missing)")
    p.add_argument("--stream", choices=("ads", "music"), default="ads",
                   help="ads: the built-in ad clicks (default); music: the music-stream example's song plays "
                        "(pipelines/examples/music.yaml), batch mode, with --seed, --minutes, --events-per-minute "
                        "(plays per minute, default 400), --first-minute and --max-segment-bytes")
    p.add_argument("--first-minute", type=_int_at_least(0), metavar="M",
                   help="--stream music: start at minute M of the stream (default 0); with the same seed, a log "
                        "extended this way holds exactly what one written at once would")
    p.add_argument("--seed", type=_int_at_least(0), metavar="S", help="random seed (default 0)")
    p.add_argument("--minutes", type=_positive_float, metavar="M",
                   help="event-time minutes to write (default 120); with --live, wall-clock minutes to run "
                        "(default: until stopped)")
    p.add_argument("--events-per-minute", type=_int_at_least(1), metavar="R", help="event rate (default 1000)")
    p.add_argument("--live", action="store_true", help="append in real time with wall-clock event times")
    p.add_argument("--append", action="store_true",
                   help="batch mode: continue a log that already holds events, after its newest event")
    p.add_argument("--bad-fraction", type=_fraction, metavar="F",
                   help="share of deliberately malformed lines, for the dead-letter path (default 0)")
    p.add_argument("--late-fraction", type=_fraction, metavar="F",
                   help="share of events that arrive seconds to minutes late (default 0.05)")
    hot = p.add_mutually_exclusive_group()
    hot.add_argument("--hot-ad-minute", type=_non_negative_float, metavar="M",
                     help="minutes after the start when the new hot ad appears (default 60)")
    hot.add_argument("--no-hot-ad", action="store_true", help="no hot ad")
    p.add_argument("--max-segment-bytes", type=_int_at_least(1), metavar="B",
                   help="rotate to a new segment file past this size (default 16 MiB)")
    p.add_argument("--flip-labels-minutes", type=_non_negative_float, nargs=2, metavar=("FROM", "TO"),
                   help="invert every label of events in [FROM, TO) minutes after the stream's start: a "
                        "poisoned stretch of stream, which the gate must refuse")
    p.set_defaults(handler=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    import dataclasses

    if args.stream == "music":
        return _simulate_music(args)
    if args.first_minute is not None:
        raise CommandError("--first-minute is for --stream music (the ad stream continues with --append)",
                           exit_code=2)
    from pipelines import simulator

    # Only the flags given override SimulatorConfig: its defaults are the one home of every default.
    overrides: Dict[str, Any] = {}
    for flag, field in (("seed", "seed"), ("minutes", "minutes"), ("events_per_minute", "events_per_minute"),
                        ("bad_fraction", "bad_fraction"), ("late_fraction", "late_fraction"),
                        ("hot_ad_minute", "hot_ad_minute"), ("max_segment_bytes", "max_segment_bytes")):
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = value
    if args.no_hot_ad:
        overrides["hot_ad_minute"] = None
    if args.flip_labels_minutes:
        overrides["flip_labels_minutes"] = tuple(args.flip_labels_minutes)
    if args.live and args.minutes is None:
        overrides["minutes"] = None
    if args.live and args.append:
        raise CommandError("--append is for batch mode; --live always appends", exit_code=2)
    try:
        config = dataclasses.replace(simulator.SimulatorConfig(), **overrides)
    except ValueError as e:
        raise CommandError(str(e), exit_code=2) from None

    progress = _LiveProgress() if args.live else _BatchProgress()
    if args.live:
        until = "until stopped (Ctrl-C)" if config.minutes is None else f"for {config.minutes:g} min"
        print(f"simulating live into {args.log} at {config.events_per_minute} events/min {until}",
              file=sys.stderr, flush=True)
    try:
        summary = simulator.simulate(args.log, config, live=args.live, progress=progress, append=args.append)
    except simulator.SimulatorError as e:
        raise CommandError(str(e)) from None
    except OSError as e:
        raise CommandError(f"cannot write the event log {args.log!r}: {e}") from None
    print(format_summary(summary))
    return 0


def _simulate_music(args: argparse.Namespace) -> int:
    import dataclasses

    from pipelines.music_simulator import MusicConfig, simulate_music

    ads_only = [flag for flag, given in (
        ("--live", args.live), ("--append", args.append), ("--bad-fraction", args.bad_fraction is not None),
        ("--late-fraction", args.late_fraction is not None), ("--hot-ad-minute", args.hot_ad_minute is not None),
        ("--no-hot-ad", args.no_hot_ad), ("--flip-labels-minutes", bool(args.flip_labels_minutes))) if given]
    if ads_only:
        raise CommandError(f"{', '.join(ads_only)}: only for the ad stream; --stream music takes --seed, --minutes, "
                           "--events-per-minute, --first-minute and --max-segment-bytes", exit_code=2)
    overrides: Dict[str, Any] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.minutes is not None:
        if args.minutes != int(args.minutes):
            raise CommandError(f"--stream music writes whole minutes, got --minutes {args.minutes:g}", exit_code=2)
        overrides["minutes"] = int(args.minutes)
    if args.events_per_minute is not None:
        overrides["plays_per_minute"] = args.events_per_minute
    config = dataclasses.replace(MusicConfig(), **overrides)
    first = args.first_minute or 0
    try:
        written = simulate_music(args.log, config, first_minute=first, max_segment_bytes=args.max_segment_bytes)
    except ValueError as e:
        raise CommandError(str(e), exit_code=2) from None
    except OSError as e:
        raise CommandError(f"cannot write the event log {args.log!r}: {e}") from None
    print(f"wrote {written:,} plays to {args.log} (minutes {first} .. {first + config.minutes - 1} of the music "
          f"stream, seed {config.seed})")
    return 0


class _BatchProgress:
    """A line to stderr every few seconds, so a long batch run shows it is alive; short runs print none."""

    every_s = 5.0

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self, summary: Any) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            print(_progress_line(summary), file=sys.stderr, flush=True)


class _LiveProgress(_BatchProgress):
    """Like the batch one, but also the first batch: the user sees at once that events flow."""

    def __init__(self) -> None:
        super().__init__()
        self.last = float("-inf")


def _progress_line(summary: Any) -> str:
    from pipelines.simulator import format_ms

    return (f"  {summary.events_written:,} events ({summary.bad_lines:,} malformed, {summary.late_events:,} late)"
            f", event time up to {format_ms(summary.last_event_ms)}")


def format_summary(summary: Any) -> str:
    """A short human summary of a SimulationSummary."""
    from pipelines.simulator import format_ms

    lines = [f"wrote {summary.events_written:,} events to {summary.log_dir} "
             f"({summary.clicks:,} clicks, {summary.late_events:,} late, {summary.bad_lines:,} malformed lines)"]
    if summary.first_event_ms is not None:
        span_s = (summary.last_event_ms - summary.first_event_ms) / 1000
        length = f"{span_s:.1f} s" if span_s < 120 else f"{span_s / 60:.1f} min"
        lines.append(f"event time {format_ms(summary.first_event_ms)} .. {format_ms(summary.last_event_ms)} "
                     f"({length})")
    segs = summary.segments
    if segs:
        named = segs[0] if len(segs) == 1 else f"{segs[0]} .. {segs[-1]}"
        lines.append(f"segments: {named} ({len(segs)} written)")
    if summary.hot_ad_id is not None:
        lines.append(f"hot ad {summary.hot_ad_id} from {format_ms(summary.hot_ad_start_ms)}")
    return "\n".join(lines)


# -- init ---------------------------------------------------------------------------------------

def add_init_command(subparsers: Any) -> None:
    from pipelines.config_file import HOME_CONFIG_NAME

    p = subparsers.add_parser(
        "init", help=f"write a commented starter config file, HOME/{HOME_CONFIG_NAME}",
        description=f"Writes HOME/{HOME_CONFIG_NAME}: every setting of the pipeline with its default (the built-in "
                    "ad-click stream), commented section by section. Edit it (pipeline name, event schema, "
                    "trainer run_fn, gate bounds, ...); every command given --home HOME then uses it, and "
                    "--config FILE names a file kept elsewhere. Refuses to overwrite an existing file unless "
                    "--force.")
    p.add_argument("--home", required=True, metavar="DIR", help="the pipeline's home folder (created if missing)")
    p.add_argument("--log", metavar="DIR", help="event log folder (default: HOME/events)")
    p.add_argument("--force", action="store_true", help="overwrite an existing config file")
    from pipelines.examples import EXAMPLES

    p.add_argument("--example", choices=sorted(EXAMPLES),
                   help="write a shipped worked example's config instead of the defaults (music: the music "
                        "stream, `driftline simulate --stream music` writes its events; log default HOME/plays)")
    p.add_argument("--out", metavar="FILE", help=f"write the file here instead of HOME/{HOME_CONFIG_NAME} (then "
                                                 "`driftline run --config FILE`; the first run keeps a copy in the home)")
    p.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    import os

    from pipelines.config_file import home_config_path, init_text

    # Absolute paths: the file keeps meaning the same folders when used from another directory.
    home = os.path.abspath(args.home)
    path = os.path.abspath(args.out) if args.out else home_config_path(home)
    if os.path.exists(path) and not args.force:
        raise CommandError(f"{path} already exists; edit it, or pass --force to replace it with the defaults")
    log_dir = os.path.abspath(args.log) if args.log else None
    if args.example:
        from pipelines.examples import example_text

        text = example_text(args.example, home, log_dir)
    else:
        text = init_text(home, log_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    run_with = f"--config {path}" if args.out else f"--home {args.home}   (or --config {path})"
    print(f"wrote {path}\nedit it, then: driftline run {run_with}")
    return 0


# -- ingest -------------------------------------------------------------------------------

def add_ingest_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ingest", help="run StreamingExampleGen once: emit every closed span since the committed position",
        description="Runs the streaming ExampleGen once through TFX's LocalDagRunner with SQLite ML Metadata "
                    "under --home. It reads what arrived since the position committed in MLMD and publishes "
                    "one Examples artifact per closed event-time span.")
    _add_pipeline_arguments(p)
    p.add_argument("--with-statistics", action="store_true",
                   help="also run stock StatisticsGen and SchemaGen on the newest span")
    _add_log_level_argument(p)
    p.set_defaults(handler=run_ingest)


def _add_log_level_argument(p: argparse.ArgumentParser) -> None:
    from pipelines.report import LOG_LEVELS

    p.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="driftline's lines on stderr, timestamped, at this level and above (default info); "
                        "TensorFlow, absl and Beam stay at error")


def _add_home_arguments(p: argparse.ArgumentParser,
                        home_help: str = "the pipeline's home folder (default: the config file's home)") -> None:
    """--home and --config: where a command finds the pipeline's configuration (see _base_config)."""
    from pipelines.config_file import HOME_CONFIG_NAME

    p.add_argument("--home", metavar="DIR", help=home_help)
    p.add_argument("--config", metavar="FILE",
                   help=f"the pipeline's YAML config file (`driftline init` writes one); flags given explicitly "
                        f"override it. Default: HOME/{HOME_CONFIG_NAME} when it exists (the first run writes it), "
                        "else the built-in stream's defaults")


def _add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """The settings shared by commands that run the pipeline; the rest come from DriftlineConfig."""
    _add_home_arguments(p, "folder for ML Metadata, artifacts and serving/ (default: the config file's home)")
    p.add_argument("--log", metavar="DIR", help="event log folder (default: HOME/events)")
    p.add_argument("--kafka-bootstrap", metavar="HOST:PORT[,...]",
                   help="read a Kafka topic instead of an event log: the brokers (needs --kafka-topic); offsets "
                        "are committed in ML Metadata, never to Kafka")
    p.add_argument("--kafka-topic", metavar="TOPIC", help="the Kafka topic to read (needs --kafka-bootstrap)")
    p.add_argument("--kafka-event-time", choices=("payload", "record_timestamp"),
                   help="event time from the payload's event-time field (default) or the record's timestamp")
    from pipelines.config import WindowConfig

    window = WindowConfig()
    p.add_argument("--span-seconds", type=_int_at_least(1), help=f"span length (default {window.span_seconds})")
    p.add_argument("--allowed-lateness-seconds", type=_int_at_least(0),
                   help=f"watermark delay (default {window.allowed_lateness_seconds})")


def _base_config(args: argparse.Namespace):
    """The configuration a command starts from, before its other flags.

    --config FILE if given; else HOME/driftline.yaml if the home has one (the
    first run persisted it, so every command given only --home sees the
    pipeline that ran there); else today's `default_config(home)`. --home and
    --log, when given, override the file's.
    """
    import dataclasses
    import os

    from pipelines.config import ConfigError, default_config
    from pipelines.config_file import home_config_path, load_config

    home, path, log_dir = getattr(args, "home", None), getattr(args, "config", None), getattr(args, "log", None)
    if path is None and home and os.path.isfile(home_config_path(home)):
        path = home_config_path(home)
    if path is None:
        if not home:
            raise CommandError("give --home DIR (or --config FILE, whose home is used)", exit_code=2)
        return default_config(home, log_dir)
    try:
        config = load_config(path)
    except ConfigError as e:
        raise CommandError(str(e), exit_code=2) from None
    if home:
        config = config.replace(home=home)
    if log_dir:
        config = config.replace(source=dataclasses.replace(config.source, log_dir=log_dir, kind="event_log",
                                                           kafka=None))
    return config


def _require_metadata(config) -> None:
    """CommandError unless this pipeline's ML Metadata can hold a run (SQLite: its file exists)."""
    from components.mlmd_store import describe, store_exists

    if not store_exists(config.metadata_connection):
        raise CommandError(f"no ML Metadata at {describe(config.metadata_connection)}: nothing has run in this "
                           "home yet")


def _home_config(args: argparse.Namespace):
    """_base_config, validated: for the commands that only read or repair a home (status, gc, ...)."""
    from pipelines.config import ConfigError

    try:
        return _base_config(args).validate()
    except ConfigError as e:
        raise CommandError(str(e), exit_code=2) from None


def _config_from_args(args: argparse.Namespace):
    import dataclasses

    from pipelines.config import ConfigError

    config = _base_config(args)
    config = _with_kafka_source(config, args)
    window = {k: v for k, v in (("span_seconds", getattr(args, "span_seconds", None)),
                                ("allowed_lateness_seconds", getattr(args, "allowed_lateness_seconds", None)))
              if v is not None}
    if window:
        config = config.replace(window=dataclasses.replace(config.window, **window))
    try:
        return config.validate()
    except ConfigError as e:
        raise CommandError(str(e), exit_code=2) from None


def _with_kafka_source(config, args: argparse.Namespace):
    """The config with a Kafka source when the --kafka-* flags ask for one."""
    import dataclasses

    from pipelines.config import KafkaConfig

    bootstrap, topic = getattr(args, "kafka_bootstrap", None), getattr(args, "kafka_topic", None)
    event_time = getattr(args, "kafka_event_time", None)
    if bootstrap is None and topic is None:
        if event_time is not None:
            raise CommandError("--kafka-event-time needs --kafka-bootstrap and --kafka-topic", exit_code=2)
        return config
    if bootstrap is None or topic is None:
        raise CommandError("a Kafka source needs both --kafka-bootstrap and --kafka-topic", exit_code=2)
    if getattr(args, "log", None):
        raise CommandError("--log and --kafka-* name two sources; a pipeline reads one", exit_code=2)
    if config.source.kind == "kafka" and config.source.kafka is not None:
        # A Kafka source from the config file: the flags override only what they name.
        kafka = dataclasses.replace(config.source.kafka, bootstrap_servers=bootstrap or config.source.kafka.bootstrap_servers,
                                    topic=topic or config.source.kafka.topic,
                                    **({"event_time": event_time} if event_time else {}))
        return config.replace(source=dataclasses.replace(config.source, log_dir="", kind="kafka", kafka=kafka))
    kafka = KafkaConfig(bootstrap_servers=bootstrap, topic=topic, **({"event_time": event_time} if event_time else {}))
    return config.replace(source=dataclasses.replace(config.source, log_dir="", kind="kafka", kafka=kafka))


def run_ingest(args: argparse.Namespace) -> int:
    from pipelines.report import quiet_tensorflow

    quiet_tensorflow()
    from components.event_log import EventLogError
    from pipelines import demo, local_runner
    from pipelines.metadata import ingested_spans, open_store

    from pipelines.controller import closed_spans

    config = _config_from_args(args)
    try:
        with _home_lock(config):
            # The controller's question first: with no closed span, TFX is not launched and nothing is recorded.
            local_runner.preflight(config)
            check = closed_spans(config)
            if not check.run:
                log.info("nothing to do: %s", check.why)
                return 0
            before = max([r.artifact_id for r in ingested_spans(open_store(config.metadata_connection),
                                                                config.pipeline_name)], default=0)
            local_runner.run_ingest(config, with_statistics=args.with_statistics)
    except EventLogError as e:
        raise CommandError(str(e)) from None
    except RuntimeError as e:
        # The launcher wraps the executor's error; the cause says what to fix.
        cause = e.__cause__ or e.__context__
        if isinstance(cause, EventLogError):
            raise CommandError(str(cause)) from None
        raise
    print(demo.span_table(config, since_artifact_id=before))
    return 0


@contextlib.contextmanager
def _home_lock(config):
    """The home's controller lock (and, with ML Metadata on MySQL, the pipeline's lease): pipeline runs, gc and
    the controller never overlap on one home, nor on one pipeline across machines."""
    from pipelines.controller import ControllerRunning, pipeline_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(pipeline_lock(config))
        except ControllerRunning as e:
            raise CommandError(str(e)) from None
        yield


# -- run ------------------------------------------------------------------------------------

def add_run_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run", help="run continuous-training cycles on the event log",
        description="Runs the continuous-training pipeline (StreamingExampleGen, Transform, WarmStartTrainer, "
                    "TFMA gate, BlessingPusher) through TFX's LocalDagRunner with SQLite ML Metadata under "
                    "--home. Each cycle processes whatever spans have closed since the last one.")
    _add_pipeline_arguments(p)
    p.add_argument("--cycles", type=_int_at_least(1), default=1, help="how many cycles to run (default 1)")
    p.add_argument("--continuous", action="store_true",
                   help="keep running: a cycle whenever a span has closed, until SIGTERM or Ctrl-C "
                        "(one controller per home; one JSON line per cycle on stdout)")
    p.add_argument("--poll-seconds", type=_positive_float, default=5.0,
                   help="with --continuous: how often to look for a closed span (default 5)")
    p.add_argument("--min-new-events", type=_int_at_least(1),
                   help="with --continuous: also run a cycle once this many new events wait")
    p.add_argument("--max-cycles", type=_int_at_least(1),
                   help="with --continuous: stop after this many cycles")
    p.add_argument("--until-idle", action="store_true",
                   help="with --continuous: stop as soon as no cycle is due (after resuming what a crash left)")
    _add_retention_arguments(p, "with --continuous: ")
    _add_controller_arguments(p)
    p.add_argument("--metrics-port", type=_int_at_least(0), default=0, metavar="P",
                   help="with --continuous: serve Prometheus metrics on this port at /metrics (default 0: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDR",
                   help="with --metrics-port: the address to listen on (default 127.0.0.1; 0.0.0.0 for every "
                        "interface)")
    _add_log_level_argument(p)
    p.set_defaults(handler=run_run)


def _add_controller_arguments(p: argparse.ArgumentParser) -> None:
    from pipelines.config import ControllerConfig

    c = ControllerConfig()
    p.add_argument("--retry-initial-seconds", type=_positive_float, metavar="S",
                   help=f"with --continuous: wait this long before retrying a failed cycle, doubling per failure "
                        f"in a row, plus jitter (default {c.retry_initial_seconds:g})")
    p.add_argument("--retry-max-seconds", type=_positive_float, metavar="S",
                   help=f"with --continuous: the longest wait between retries (default {c.retry_max_seconds:g})")
    p.add_argument("--quarantine-after", type=_int_at_least(1), metavar="N",
                   help=f"quarantine a span after N failed cycles in a row on it, so later spans get their cycles "
                        f"(default {c.quarantine_after_failures}; `driftline replay` trains it later)")
    p.add_argument("--lease-seconds", type=_positive_float, metavar="S",
                   help=f"with ML Metadata on MySQL: the pipeline's lease lasts this long past its last renewal, so a "
                        f"killed controller's successor takes over within it (default {c.lease_seconds:g})")


def _with_controller(config, args: argparse.Namespace):
    import dataclasses

    from pipelines.config import ConfigError

    changes = {field: getattr(args, arg) for field, arg in (
        ("retry_initial_seconds", "retry_initial_seconds"), ("retry_max_seconds", "retry_max_seconds"),
        ("quarantine_after_failures", "quarantine_after"), ("lease_seconds", "lease_seconds"))
        if getattr(args, arg, None) is not None}
    if not changes:
        return config
    config = config.replace(controller=dataclasses.replace(config.controller, **changes))
    try:
        return config.validate()
    except ConfigError as e:
        raise CommandError(str(e), exit_code=2) from None


def _add_retention_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument("--keep-cycles", type=_int_at_least(1), metavar="K",
                   help=f"{prefix}keep the payload of everything the newest K cycles made (default 3); older "
                        "payloads go unless the next cycle or serving needs them; records stay in ML Metadata")
    p.add_argument("--no-retention", action="store_true",
                   help=f"{prefix}delete nothing (disk then grows with every cycle)")


def _with_retention(config, args: argparse.Namespace):
    import dataclasses

    changes = {}
    if getattr(args, "keep_cycles", None) is not None:
        changes["keep_cycles"] = args.keep_cycles
    if getattr(args, "no_retention", False):
        changes["enabled"] = False
    return config.replace(retention=dataclasses.replace(config.retention, **changes)) if changes else config


def run_run(args: argparse.Namespace) -> int:
    from pipelines.report import quiet_tensorflow

    quiet_tensorflow()
    from pipelines.demo import DemoRow, cycle_table

    config = _with_controller(_config_from_args(args), args)
    from components.event_log import EventLogError
    from components.event_schema import SchemaError
    from pipelines.config import ConfigError

    if config.join is not None and args.min_new_events is not None:
        raise CommandError("--min-new-events does not apply to a join: a joined span exists only once its "
                           "impressions' attribution windows have closed; drop --min-new-events", exit_code=2)
    if args.continuous:
        from pipelines.controller import ControllerRunning, run_continuous
        from pipelines.local_runner import preflight
        from pipelines.metrics import MetricsError

        try:
            preflight(config)
            run_continuous(_with_retention(config, args), poll_seconds=args.poll_seconds,
                           min_new_events=args.min_new_events, max_cycles=args.max_cycles,
                           until_idle=args.until_idle, metrics_port=args.metrics_port,
                           metrics_host=args.metrics_host)
        except (ControllerRunning, EventLogError, MetricsError) as e:
            raise CommandError(str(e)) from None
        except (ConfigError, SchemaError) as e:  # not retryable: the controller stopped on it
            raise CommandError(str(e), exit_code=2) from None
        return 0
    for flag in ("max_cycles", "keep_cycles"):
        if getattr(args, flag) is not None:
            raise CommandError(f"--{flag.replace('_', '-')} is for --continuous", exit_code=2)
    if args.until_idle or args.no_retention:
        raise CommandError("--until-idle and --no-retention are for --continuous", exit_code=2)
    if args.metrics_port:
        raise CommandError("--metrics-port is for --continuous: `run --cycles` exits after its cycles",
                           exit_code=2)
    for flag in ("retry_initial_seconds", "retry_max_seconds"):
        if getattr(args, flag) is not None:
            raise CommandError(f"--{flag.replace('_', '-')} is for --continuous: `run --cycles` does not retry, "
                               "it records the failure and exits 1", exit_code=2)
    from pipelines.controller import CycleFailed, run_cycles

    with _home_lock(config):
        # The controller's crash recovery, then cycles (resumed ones first while spans are untrained).
        try:
            reports = run_cycles(config, args.cycles)
        except (CycleFailed, EventLogError) as e:
            raise CommandError(str(e)) from None
    if not reports:  # nothing was due: run_cycles logged the one line that says why
        return 0
    rows = [DemoRow(n, report, appended_at_ms=None, poisoned=False) for n, report in enumerate(reports, 1)]
    print(cycle_table(rows))
    return 0


# -- replay -----------------------------------------------------------------------------------

def add_replay_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay", help="train a span that was quarantined after failing cycles",
        description="A span on which --quarantine-after cycles in a row failed is quarantined, so that later "
                    "spans get their cycles (`driftline status` lists them, with the error). Once the cause is "
                    "fixed, replay releases the span (recorded in ML Metadata) and runs a resumed cycle that "
                    "trains it, gated and pushed like any other. Refused while a controller runs on the home; "
                    "with --no-run, only the release is recorded and the next `run` trains the span.")
    _add_pipeline_arguments(p)
    p.add_argument("--span", required=True, type=_int_at_least(0), metavar="S", help="the quarantined span")
    p.add_argument("--no-run", action="store_true",
                   help="only release the span; the next `driftline run` (or controller start) trains it")
    p.add_argument("--quarantine-after", type=_int_at_least(1), metavar="N",
                   help="if the replayed cycle fails, quarantine the span again after N failures in a row "
                        "(default 3)")
    _add_log_level_argument(p)
    p.set_defaults(handler=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    import os

    from pipelines.report import quiet_tensorflow

    quiet_tensorflow()
    from pipelines import failures
    from pipelines.demo import DemoRow, cycle_table

    config = _with_controller(_config_from_args(args), args)
    _require_metadata(config)
    with _home_lock(config):
        try:
            released = failures.release(config, args.span)
        except failures.NotQuarantined as e:
            raise CommandError(str(e)) from None
        for q in released:
            log.info("span %s (Examples %s) %s", q.span, q.artifact_id, q.reason)
        if args.no_run:
            print(f"span {args.span} will be trained by the next `driftline run` on {config.home}")
            return 0
        from pipelines.controller import CycleFailed, run_cycles

        try:
            reports = run_cycles(config, 1, check_source=False)
        except CycleFailed as e:
            raise CommandError(f"{e} (span {args.span} stays released: the next run tries it again)") from None
        if not reports:  # cannot happen for a released span, which is untrained; say so rather than crash
            raise CommandError(f"span {args.span} was released but no cycle was due; `driftline status` shows why")
    print(cycle_table([DemoRow(1, reports[0], appended_at_ms=None, poisoned=False)]))
    return 0


# -- gc ---------------------------------------------------------------------------------------

def add_gc_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "gc", help="apply retention now: delete old payloads nothing needs, and what killed runs left",
        description="What the controller does after every cycle, by hand. First it finishes what an interrupted "
                    "cycle left in ML Metadata (an interrupted push is recorded or completed, dead executions are "
                    "marked CANCELED); then it deletes the payload of artifacts older than the newest K cycles "
                    "unless the next cycle or serving needs them, keeping their records (marked DELETED), and "
                    "the output folders of killed runs. Refused while a controller runs on the home.")
    _add_home_arguments(p)
    p.add_argument("--keep-cycles", type=_int_at_least(1), metavar="K",
                   help="keep the payload of everything the newest K cycles made (default 3)")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted; change nothing")
    p.add_argument("--json", action="store_true", help="print JSON instead of the summary")
    p.set_defaults(handler=run_gc)


def run_gc(args: argparse.Namespace) -> int:
    import json
    import os

    from pipelines import recovery, retention

    config = _home_config(args)
    _require_metadata(config)
    with _home_lock(config):
        recovered = None if args.dry_run else recovery.recover_interrupted(config)
        report = retention.apply(config, keep_cycles=args.keep_cycles, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"recovery": recovered.describe() if recovered else None, **report.to_dict()},
                         indent=2, sort_keys=True))
    else:
        if recovered is not None and recovered.anything:
            print(f"recovery: {recovered.describe()}")
        print(report.describe())
    return 0


# -- rollback ----------------------------------------------------------------------------------

def add_rollback_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rollback", help="serve an earlier pushed version again, atomically, and pin its model",
        description="Copies an earlier version in the serving folder into place as a new, highest version "
                    "(TF Serving switches to it atomically) and records the rollback in ML Metadata. Without "
                    "--to it rolls back to the version below the one serving now. The model rolled back to is "
                    "pinned: until `driftline unpin`, every cycle warm-starts from it and is judged against it, "
                    "so a candidate is pushed only if it beats it. Refused while a controller runs on the home.")
    _add_home_arguments(p)
    p.add_argument("--to", type=_int_at_least(1), metavar="VERSION", help="version to serve again")
    p.set_defaults(handler=run_rollback)


def run_rollback(args: argparse.Namespace) -> int:
    from components.blessing_pusher.rollback import format_rollback, rollback_and_record
    from components.blessing_pusher.serving import RollbackError

    config = _home_config(args)
    try:
        # A cycle running meanwhile would resolve its base model before the pin and push over the rollback.
        with _home_lock(config):
            result = rollback_and_record(config.metadata_connection, config.pipeline_name, config.serving_dir, args.to)
    except RollbackError as e:
        raise CommandError(str(e)) from None
    print(format_rollback(result))
    return 0


# -- unpin -----------------------------------------------------------------------------------

def add_unpin_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "unpin", help="end the pin a rollback set: cycles continue from the latest blessed model again",
        description="Ends the pin `driftline rollback` set on the model it rolled back to, recorded in ML Metadata "
                    "(a driftline.Unpin execution). From the next cycle on, the base model and the baseline are "
                    "the latest blessed model again. Serving is not changed. Refused while a controller runs on "
                    "the home.")
    _add_home_arguments(p)
    p.set_defaults(handler=run_unpin)


def run_unpin(args: argparse.Namespace) -> int:
    import os

    from components.blessing_pusher.rollback import PinError, unpin
    from pipelines.metadata import open_store

    config = _home_config(args)
    _require_metadata(config)
    try:
        with _home_lock(config):
            ended = unpin(open_store(config.metadata_connection), config.pipeline_name)
    except PinError as e:
        raise CommandError(str(e)) from None
    print(f"Unpinned model {ended.model_id} (pinned by the rollback to version {ended.to_version}): from the next "
          "cycle on, the base model and the baseline are the latest blessed model again.")
    return 0


# -- promote / retire (online evaluation, by hand) ---------------------------------------------

def add_online_decision_commands(subparsers: Any) -> None:
    for action, text in (
            ("promote", "push the running comparison's challenger now, as the new champion, and record it"),
            ("retire", "end the running comparison: the challenger is dropped, the champion serves on")):
        p = subparsers.add_parser(
            action, help=text,
            description=f"{text[0].upper()}{text[1:]}. Overrides the online evaluation's rule by hand: the "
                        "decision is a driftline.OnlineDecision execution in ML Metadata (rule 'manual') with the "
                        "evidence gathered so far, shown by `driftline status` and `lineage`. Refused while a "
                        "controller runs on the home, or when no comparison is running.")
        _add_home_arguments(p)
        p.add_argument("--note", default="", help="why, in words (recorded with the decision)")
        p.set_defaults(handler=run_online_decision, action=action)


def run_online_decision(args: argparse.Namespace) -> int:
    from components.online_evaluator.record import OnlineEvalError, decide_by_hand
    from pipelines.metadata import open_store

    config = _home_config(args)
    _require_metadata(config)
    try:
        with _home_lock(config):
            d = decide_by_hand(open_store(config.metadata_connection), config.pipeline_name, args.action,
                               config.online.rule(), note=args.note, serving_dir=config.serving_dir)
    except OnlineEvalError as e:
        raise CommandError(str(e)) from None
    pushed = f"; pushed as version {d.pushed_version}" if d.pushed_version is not None else ""
    print(f"Recorded: {d.describe()}{pushed}")
    return 0


def add_challenge_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "challenge", help="deploy a model as the challenger of the serving champion now, and record it",
        description="Deploys Model --model-id (an ML Metadata id: `driftline lineage` lists them; blessed or not, it "
                    "needs its SavedModel) as the challenger beside the serving champion: a driftline.OnlineDecision "
                    "START (or REPLACE of a running challenger) recorded as manual. `driftline serve` routes by it; "
                    "a controller with online.enabled counts each arm's joined outcomes and promotes or retires it. "
                    "Refused while a controller runs on the home, or when nothing serves.")
    _add_home_arguments(p)
    p.add_argument("--model-id", type=int, required=True, help="the Model artifact to deploy as the challenger")
    p.add_argument("--note", default="", help="why, in words (recorded with the decision)")
    p.set_defaults(handler=run_challenge)


def run_challenge(args: argparse.Namespace) -> int:
    from components.online_evaluator.record import OnlineEvalError
    from pipelines.online import challenge

    config = _home_config(args)
    _require_metadata(config)
    try:
        with _home_lock(config):
            d = challenge(config, args.model_id, note=args.note)
    except OnlineEvalError as e:
        raise CommandError(str(e)) from None
    print(f"Recorded: {d.describe()}")
    return 0


def _latest_online_decision(config):
    """The newest online-evaluation decision ML Metadata holds, or None."""
    from components.online_evaluator.record import latest_decision
    from pipelines.metadata import open_store, store_exists

    if not store_exists(config.metadata_connection):
        return None
    return latest_decision(open_store(config.metadata_connection), config.pipeline_name)


def _with_online_decision(config, text: str, as_json: bool) -> str:
    """`status` / `lineage` output with the latest online decision added (a line, or a JSON key)."""
    import json

    d = _latest_online_decision(config)
    if as_json:
        data = json.loads(text)
        data["online_decision"] = d.to_dict() if d is not None else None
        return json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    return text if d is None else f"{text}\nonline evaluation: {d.describe()}"


# -- status ---------------------------------------------------------------------------------

def add_status_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status", help="what serves, how fresh it is, how the last cycle ended, whether a controller runs",
        description="Reads ML Metadata under --home (never writes it): the serving version and its model, "
                    "freshness (now minus the newest event time the serving model learned from), the last "
                    "cycle's outcome and reason, totals of spans, late and dead-lettered events, and whether "
                    "a controller holds HOME/controller.lock, whether a `driftline serve` runs for the home (its "
                    "version and request rate, asked of the server itself); then the config versions the runs "
                    "recorded.")
    _add_home_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of the summary")
    p.set_defaults(handler=run_status)


def run_status(args: argparse.Namespace) -> int:
    import json

    from pipelines import lineage
    from pipelines.serve import registry

    config = _home_config(args)
    try:
        st = lineage.status(config)
    except lineage.LineageError as e:
        raise CommandError(str(e)) from None
    # `driftline serve` processes of this home: their records, checked against the live servers.
    servers = registry.server_states(config.home)
    if args.json:
        text = json.dumps({**json.loads(lineage.to_json(st)), "servers": [s.to_dict() for s in servers]},
                          indent=2, sort_keys=True)
    else:
        text = "\n".join([lineage.format_status(st), *registry.status_lines(servers)])
    _print_with_config_versions(config, _with_online_decision(config, text, args.json), args.json)
    return 0


def _print_with_config_versions(config, text: str, as_json: bool) -> None:
    """`text` (status or lineage), and after the summary the config versions ML Metadata recorded: which
    cycle first used each. The JSON stays as it was; `config-history --json` has the versions."""
    from pipelines import config_history

    if as_json:
        print(text)
        return
    vs, current = config_history.read_history(config.metadata_connection, config.pipeline_name)
    print(text + "\n\n" + config_history.format_versions(vs, current))


# -- lineage --------------------------------------------------------------------------------

def add_lineage_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "lineage", help="a model's chain of base models back to the last cold start, with metrics and verdicts",
        description="Reads ML Metadata under --home: the serving model (or --model) and its base models back "
                    "to the last cold start; per model the spans and example counts it trained on, its eval "
                    "metrics next to the baseline's on the same data, the gate's verdict and why, and the "
                    "pushed version and when.")
    _add_home_arguments(p)
    p.add_argument("--model", type=_int_at_least(1), metavar="ID", help="start from this Model artifact id "
                   "(default: the model serving now)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also write a picture of every model's AUC, verdicts, pushes and rollbacks over time")
    p.set_defaults(handler=run_lineage)


def run_lineage(args: argparse.Namespace) -> int:
    import json

    from pipelines import lineage

    config = _home_config(args)
    try:
        store = lineage.connect(config.metadata_connection)
        records = lineage.models(store, config.pipeline_name)
        serving = lineage.serving(store, config.serving_dir, config.pipeline_name)
        model_id = args.model if args.model is not None else serving.model_id
        if model_id is None:
            model_id = lineage.latest_pushed_model_id(records)
        chain = lineage.chain(store, config.pipeline_name, model_id=model_id, records=records) \
            if model_id is not None else []
        quarantined = lineage.quarantined_spans(store, config.pipeline_name)
        pin = lineage.current_pin(store, config.pipeline_name)
    except lineage.LineageError as e:
        raise CommandError(str(e)) from None
    if args.plot:
        from pipelines.lineage_plot import plot_lineage

        try:
            plot_lineage(records, args.plot, serving_model_id=serving.model_id)
        except OSError as e:
            raise CommandError(f"cannot write the plot {args.plot!r}: {e}") from None
    if args.json:
        print(_with_online_decision(config, json.dumps(
            lineage.lineage_to_dict(chain, serving, config.pipeline_name, quarantined, pin), indent=2,
            sort_keys=True, allow_nan=False), True))
    else:
        _print_with_config_versions(config, _with_online_decision(config, lineage.format_lineage(
            chain, serving, quarantined, home=config.home, pin=pin), False), False)
        if args.plot:
            print(f"\nplot: {args.plot}")
    return 0


# -- config-history -------------------------------------------------------------------------

def add_config_history_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "config-history", help="every config the pipeline ran with, the cycle that first used it, and the diffs",
        description="Reads ML Metadata under --home: each distinct configuration a run of the pipeline used "
                    "(recorded when the run ended), the run and spans that first used it, and between each "
                    "version and the next the settings that changed and a unified diff. The home's driftline.yaml "
                    "is the user's file; this is what actually ran.")
    _add_home_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON (versions, changed settings, the current hash)")
    p.set_defaults(handler=run_config_history)


def run_config_history(args: argparse.Namespace) -> int:
    import json

    from pipelines import config_history

    config = _home_config(args)
    vs, current = config_history.read_history(config.metadata_connection, config.pipeline_name)
    if args.json:
        data = config_history.history_to_dict(vs, current)
        for entry, v in zip(data["versions"], vs):
            entry["config_yaml"] = v.text
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(config_history.format_history(vs, config.pipeline_name))
    return 0


# -- demo ---------------------------------------------------------------------------------

def add_demo_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="the main job on the built-in stream (what `make demo` runs)",
        description="Replays the built-in drifting stream into --home, one cycle per span. It starts from an "
                    "empty home: a previous demo's home is replaced, any other existing folder is refused "
                    "unless --force.")
    p.add_argument("--home", default="demo_home", metavar="DIR", help="folder for the log, MLMD and artifacts")
    p.add_argument("--cycles", type=_int_at_least(1), default=8, help="cycles to run, one new span each")
    p.add_argument("--events-per-minute", type=_int_at_least(1), default=1000)
    p.add_argument("--poison-cycle", type=_int_at_least(0), default=5,
                   help="the cycle whose span has every label flipped (0: none)")
    p.add_argument("--force", action="store_true",
                   help="delete --home even if the demo did not create it (a previous demo's home is always "
                        "replaced)")
    p.add_argument("--closed-loop", action="store_true",
                   help="the closed loop in real time: simulated users rank ads through a `driftline serve` "
                        "process, their clicks are joined to its impressions, each cycle trains, gates, pushes "
                        "and hot-swaps; prints the served CTR per span beside the offline AUC")
    p.add_argument("--span-seconds", type=_int_at_least(5), default=20,
                   help="--closed-loop: span length in seconds (default 20)")
    p.add_argument("--requests-per-second", type=_positive_float, default=20.0,
                   help="--closed-loop: the population's rank requests per second (default 20)")
    _add_log_level_argument(p)
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import os

    from pipelines.demo import DemoHomeError, prepare_home

    try:
        # The demo replays a stream from its start: a previous run's state would skip it.
        prepare_home(args.home, force=args.force)
    except DemoHomeError as e:
        raise CommandError(str(e)) from None
    from pipelines.report import quiet_tensorflow

    quiet_tensorflow()
    if args.closed_loop:
        from pipelines.closed_loop import run_closed_loop, served_table

        result = run_closed_loop(args.home, cycles=args.cycles, span_seconds=args.span_seconds,
                                 requests_per_second=args.requests_per_second,
                                 progress=lambda line: print(line, file=sys.stderr, flush=True))
        print("\n" + served_table(result.rows))
        print(f"\n{result.tally.requests:,} rank requests, {result.tally.failed} failed; versions served in order: "
              f"{result.tally.versions_in_order}; server log: {result.server_log}")
        return 0 if len(result.cycles) == args.cycles and result.cycles[-1].get("outcome") == "ok" else 1
    from pipelines.demo import cycle_table, run_demo as demo

    rows = demo(args.home, cycles=args.cycles, events_per_minute=args.events_per_minute,
                poison_cycle=args.poison_cycle or None)
    print("\n" + cycle_table(rows))
    print(f"\nML Metadata: {os.path.join(args.home, 'metadata.sqlite')}   serving: "
          f"{os.path.join(args.home, 'serving')}")
    return 0


# -- compile / submit (Google Cloud) ----------------------------------------------------------

def add_compile_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compile", help="compile the pipeline for Vertex AI Pipelines (a PipelineJob spec)",
        description="Builds the continuous-training pipeline from the same configuration as `driftline run` "
                    "and compiles it with TFX's KubeflowV2DagRunner into a Vertex AI PipelineJob spec (JSON). "
                    "Every component runs in --image; the Beam steps run on Dataflow. Needs no credentials; "
                    "paths (--home, --log) must be gs:// paths.")
    p.add_argument("--target", required=True, choices=["vertex"], help="what to compile for")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the spec (.json)")
    _add_pipeline_arguments(p)
    p.add_argument("--pipeline-name", help="pipeline name (default driftline)")
    _add_cloud_arguments(p)
    p.set_defaults(handler=run_compile)


def _add_cloud_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", help="Google Cloud project id")
    p.add_argument("--region", help="Vertex AI / Dataflow region, e.g. us-central1")
    p.add_argument("--image", help="the component image built from the Dockerfile")
    p.add_argument("--temp-location", metavar="GS_PATH", help="Dataflow temp folder (default HOME/tmp)")
    p.add_argument("--service-account", help="service account of the Dataflow workers (default: the project's)")
    p.add_argument("--dataflow-packaging", choices=["image", "setup_file"],
                   help="how Dataflow workers get driftline: the image (default) or setup.py")
    p.add_argument("--beam-runner", choices=["DataflowRunner", "DirectRunner"],
                   help="where the Beam steps of a Vertex task run (default DataflowRunner)")
    p.add_argument("--machine-type", help="Dataflow worker machine type")
    p.add_argument("--max-num-workers", type=_int_at_least(1), help="Dataflow autoscaling limit")


def _cloud_config_from_args(args: argparse.Namespace, base=None):
    """`base` (the config file's cloud section; default CloudConfig()) with the cloud flags given."""
    import dataclasses

    from pipelines.config import CloudConfig

    given = {field: getattr(args, arg) for field, arg in (
        ("project", "project"), ("region", "region"), ("image", "image"), ("temp_location", "temp_location"),
        ("service_account", "service_account"), ("dataflow_packaging", "dataflow_packaging"),
        ("beam_runner", "beam_runner"), ("machine_type", "machine_type"), ("max_num_workers", "max_num_workers"))
        if getattr(args, arg, None) is not None}
    return dataclasses.replace(base if base is not None else CloudConfig(), **given)


def run_compile(args: argparse.Namespace) -> int:
    from pipelines.config import ConfigError

    config = _config_from_args(args)
    config = config.replace(cloud=_cloud_config_from_args(args, config.cloud))
    if args.pipeline_name:
        config = config.replace(pipeline_name=args.pipeline_name)
    try:
        config.validate_for_vertex()
    except ConfigError as e:
        raise CommandError(str(e), exit_code=2) from None
    from pipelines.report import quiet_tensorflow

    quiet_tensorflow()
    from pipelines.vertex import compile_spec, submit_command

    spec = compile_spec(config, args.out)
    tasks = sorted(spec["pipelineSpec"]["root"]["dag"]["tasks"])
    print(f"wrote {args.out}: Vertex AI PipelineJob {config.pipeline_name!r}, {len(tasks)} tasks "
          f"({', '.join(tasks)}), image {config.cloud.image}, Beam steps on {config.cloud.beam_runner}, "
          f"pipeline root {config.pipeline_root}")
    print(f"submit with: {submit_command(config, args.out)}")
    return 0


def add_submit_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "submit", help="send a compiled spec to Vertex AI Pipelines",
        description="Submits a spec written by `driftline compile --target vertex` as a Vertex AI PipelineJob "
                    "(google-cloud-aiplatform), with caching off. Uses Application Default Credentials; when "
                    "something is missing (credentials, project, region, the spec) it says exactly what and "
                    "how to provide it, and submits nothing.")
    p.add_argument("--spec", required=True, metavar="FILE", help="the compiled spec (pipeline.json)")
    p.add_argument("--project", help="Google Cloud project (default $GOOGLE_CLOUD_PROJECT, else the credentials')")
    p.add_argument("--region", help="Vertex AI region (default $GOOGLE_CLOUD_REGION)")
    p.add_argument("--service-account", default="", help="service account the pipeline runs as")
    p.add_argument("--wait", action="store_true", help="wait for the run to finish")
    p.set_defaults(handler=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    from pipelines.report import quiet_tensorflow

    quiet_tensorflow()
    from pipelines.vertex import SubmitError, submit

    try:
        name = submit(args.spec, project=args.project, region=args.region,
                      service_account=args.service_account, wait=args.wait)
    except SubmitError as e:
        raise CommandError(str(e)) from None
    print(f"submitted: {name}")
    return 0


# -- the parser --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftline", description="driftline: continuous training on TFX and Apache Beam.")
    from pipelines.version import driftline_version

    parser.add_argument("--version", action="version", version=f"driftline {driftline_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    add_simulate_command(subparsers)
    add_init_command(subparsers)
    add_ingest_command(subparsers)
    add_run_command(subparsers)
    add_replay_command(subparsers)
    add_rollback_command(subparsers)
    add_unpin_command(subparsers)
    add_online_decision_commands(subparsers)
    add_challenge_command(subparsers)
    add_gc_command(subparsers)
    add_status_command(subparsers)
    add_lineage_command(subparsers)
    add_config_history_command(subparsers)
    add_demo_command(subparsers)
    add_compile_command(subparsers)
    add_submit_command(subparsers)
    from pipelines.serve.command import add_serve_command

    add_serve_command(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # argparse exits 2 on a usage error, 0 on --help
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from pipelines.report import configure_logging

    configure_logging(getattr(args, "log_level", "info"))
    try:
        return int(args.handler(args))
    except CommandError as e:
        where = f"{parser.prog} {args.command}"
        print(f"{where}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
