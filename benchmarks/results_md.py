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


def machine_info() -> dict:
    """What every benchmark records about the machine and the stack it ran on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                             cpu_model)
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 2 ** 20, 1)
    except (OSError, ValueError, IndexError):
        pass

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "?"

    return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "mem_gib": mem_gib, "python": platform.python_version(),
            "platform": platform.platform(), "tensorflow": v("tensorflow"), "apache_beam": v("apache-beam"),
            "tfx": v("tfx"), "protobuf": v("protobuf")}
