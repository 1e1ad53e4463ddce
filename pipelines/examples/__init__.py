"""Config files shipped with driftline: worked examples a user runs with the CLI alone.

``music.yaml``: the music-stream example (pipelines/music_simulator.py, pipelines/music_model.py).
``driftline init --example NAME`` writes one, with the home and event log filled in.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
# name -> the event log folder under the home that the example's file names by default.
EXAMPLES: Dict[str, str] = {"music": "plays"}


def example_path(name: str) -> str:
    if name not in EXAMPLES:
        raise KeyError(f"no example {name!r}; the examples are {', '.join(sorted(EXAMPLES))}")
    return os.path.join(_HERE, f"{name}.yaml")


def example_text(name: str, home: str, log_dir: Optional[str] = None) -> str:
    """The shipped file with `home:` and `source.log_dir:` set, its comments kept (so not a YAML round trip)."""
    with open(example_path(name), encoding="utf-8") as f:
        text = f.read()
    log_dir = log_dir or os.path.join(home, EXAMPLES[name])
    # json.dumps quotes a path as YAML reads it back (YAML's flow scalars are a superset of JSON strings).
    import json

    text, homes = re.subn(r"^home: .*$", lambda _: f"home: {json.dumps(home)}", text, count=1, flags=re.M)
    text, logs = re.subn(r"^  log_dir: .*$", lambda _: f"  log_dir: {json.dumps(log_dir)}", text, count=1,
                         flags=re.M)
    if (homes, logs) != (1, 1):  # the shipped file lost a line this relies on: a packaging bug, say so
        raise ValueError(f"{example_path(name)} must have a top-level 'home:' and a 'source.log_dir:' line")
    return text
