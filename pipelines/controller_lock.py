"""The controller's lock file in the home, and whether a controller holds it.

`pipelines.controller.single_instance` takes the lock; `driftline status` reads it through
`controller_state`. Part of pipelines.lineage, which re-exports these names.
"""
from __future__ import annotations

import json
import os

from pipelines.lineage_records import ControllerState


# The file a running controller holds: JSON {"pid": int, "started_at": ...}.
CONTROLLER_LOCK_FILE = "controller.lock"


def controller_lock_path(home: str) -> str:
    return os.path.join(home, CONTROLLER_LOCK_FILE)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (os.kill(pid, 0); another user's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def controller_state(home: str) -> ControllerState:
    """Reads `<home>/controller.lock` ({"pid", "started_at"}) and checks that its pid is alive."""
    path = controller_lock_path(home)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return ControllerState(state="not running", lock_path=path)
    except OSError as e:
        return ControllerState(state="unknown", lock_path=path, detail=str(e))
    if not text.strip():  # a controller that stopped cleanly leaves the lock file empty
        return ControllerState(state="not running", lock_path=path)
    try:
        lock = json.loads(text)
        pid = lock["pid"]
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"pid {pid!r} is not a positive integer")
    except (ValueError, KeyError, TypeError) as e:
        return ControllerState(state="unknown", lock_path=path, detail=f"{type(e).__name__}: {e}")
    started_at = lock.get("started_at")
    state = "running" if pid_alive(pid) else "stale"
    return ControllerState(state=state, lock_path=path, pid=pid, started_at=started_at)
