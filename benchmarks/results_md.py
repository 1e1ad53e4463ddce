"""One writer for benchmarks/RESULTS.md: each benchmark owns a marked section and replaces only that."""
from __future__ import annotations

import os

TITLE = "# driftline benchmark results"


def marks(name: str) -> tuple:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(path: str, name: str, section: str) -> None:
    """Puts `section` (which must start and end with the section's marks) in place of the old one.

    The file is re-read right before writing and replaced atomically, so
    benchmarks that finish one after another keep each other's sections.
    """
    start, end = marks(name)
    if not (section.startswith(start) and section.rstrip().endswith(end)):
        raise ValueError(f"a {name!r} section must be wrapped in {start} ... {end}")
    text = open(path).read() if os.path.exists(path) else TITLE + "\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section.rstrip() + tail
    else:
        if not text.lstrip().startswith(TITLE):
            text = TITLE + "\n\n" + text
        text = text.rstrip("\n") + "\n\n" + section.rstrip() + "\n"
    tmp = f"{path}.tmp-{name}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
