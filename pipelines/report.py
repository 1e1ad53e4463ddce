"""Plain-text tables and quiet heavy imports for the command line."""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import List, Sequence

# driftline's own loggers are children of this one ("driftline.controller", ...).
LOGGER = "driftline"
LOG_LEVELS = ("debug", "info", "warning", "error")


def quiet_tensorflow() -> None:
    """Keeps TF/TFX/Beam start-up chatter off a person's terminal; errors still show."""
    # Level 3: TF prints CUDA-plugin registration noise at error level on a CPU-only machine.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="apache_beam")
    for name in ("apache_beam", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (pytest's capture, a fork's redirect)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # noqa: D401: logging.StreamHandler reads and writes this attribute
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: str = "info") -> logging.Logger:
    """driftline's human lines on stderr, with a UTC timestamp and a level; idempotent.

    Only the "driftline" logger is configured (its own handler, not propagated), so
    TF/absl/Beam keep the ERROR level `quiet_tensorflow` gives them whatever `level` is.
    """
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
                                  datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper()))
    logger.propagate = False
    return logger


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells: List[List[str]] = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
