"""Plain-text tables and quiet heavy imports for the command line."""
from __future__ import annotations

import logging
import os
import warnings
from typing import List, Sequence


def quiet_tensorflow() -> None:
    """Keeps TF/TFX/Beam start-up chatter off a person's terminal; errors still show."""
    # Level 3: TF prints CUDA-plugin registration noise at error level on a CPU-only machine.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="apache_beam")
    for name in ("apache_beam", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


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
