"""driftline's version: setup.py is the one place it is written.

Installed (a wheel, `pip install .`), it is read from the distribution's
metadata; run from a checkout, from that checkout's setup.py, which is the
version of the code actually running even when an older driftline is also
installed in the environment (an editable install gives the same answer both ways).
"""
from __future__ import annotations

import importlib.metadata
import re

from pipelines.config import driftline_setup_file


def driftline_version() -> str:
    setup_file = driftline_setup_file()
    if setup_file:
        with open(setup_file, encoding="utf-8") as f:
            match = re.search(r"""\bversion\s*=\s*["']([^"']+)["']""", f.read())
        if match:
            return match.group(1)
    try:
        return importlib.metadata.version("driftline")
    except importlib.metadata.PackageNotFoundError:
        # Neither a checkout nor installed: the package was copied by hand.
        return "unknown (driftline is neither installed nor run from a checkout)"
