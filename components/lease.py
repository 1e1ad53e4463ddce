"""One controller per pipeline across machines: a lease row, with a fencing token, in the ML Metadata database.

With ML Metadata on MySQL, controllers on different machines share one database, and a local `flock`
cannot see the other machine. The lease is a row per pipeline in the same database
(`driftline_controller_lease`: holder, token, expires_at):

* acquire: in one transaction, the row is locked (SELECT ... FOR UPDATE) and taken when it is free or
  expired; every acquisition increments `token`, so a token names one holding, never reused;
* renew: `UPDATE ... WHERE holder = me AND token = mine AND expires_at > NOW()` pushes the expiry one
  `lease_seconds` further; zero rows means the lease was lost (it expired, or another holder took it);
* fence (`fence(what)`, called by the executors right before they publish: a span, a model, a
  blessing, a push into serving): the same conditional renewal. It succeeds only while this holding is
  still the current one, and then leaves a whole `lease_seconds` before anyone else may take over, far
  more than the milliseconds between the check and ML Metadata's write. A cycle started under a lease
  that has since expired, or been taken, fails there and publishes nothing.

Every time is the database server's clock (NOW(6)), never a machine's own: clocks of two machines
may disagree, the one server's clock is the one both compare against.

Why a row with an expiry and not MySQL's GET_LOCK: GET_LOCK belongs to a connection, and the server
frees it when it notices the connection is gone. Under SIGKILL on the same host that is at once, but a
machine that dies, or a network that partitions, leaves the lock held until the server's wait_timeout
(8 hours by default); worse, a holder paused or cut off whose connection the server dropped is never
told: it still believes it holds the lock while a second process takes it, so GET_LOCK alone gives no
fencing. The row's expiry bounds how long a SIGKILLed holder blocks the pipeline (`lease_seconds`, with
no cooperation from the dead process), and the conditional renewal at each publish is the fence.

On SQLite there is no lease: one machine, and the home's `flock` (pipelines/controller.py) holds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import uuid
from typing import Iterator, Optional

from components.metadata_config import MetadataConfig, MetadataConfigError

LEASE_TABLE = "driftline_controller_lease"

_CREATE = f"""CREATE TABLE IF NOT EXISTS `{LEASE_TABLE}` (
  pipeline VARCHAR(255) NOT NULL PRIMARY KEY,
  holder VARCHAR(255) NOT NULL,
  token BIGINT NOT NULL,
  acquired_at DATETIME(6) NULL,
  expires_at DATETIME(6) NOT NULL
) ENGINE=InnoDB"""


class LeaseHeld(RuntimeError):
    """Another holder has the pipeline's lease (a controller on this or another machine)."""

    def __init__(self, message: str, holder: str = "", token: int = 0, seconds_left: float = 0.0):
        super().__init__(message)
        self.holder, self.token, self.seconds_left = holder, token, seconds_left


class LeaseLost(RuntimeError):
    """This process's lease expired or was taken over: it must not publish (the fence refused)."""


@dataclasses.dataclass(frozen=True)
class LeaseState:
    holder: str
    token: int
    seconds_left: float  # <= 0: expired


def holder_name() -> str:
    """Who holds the lease: host, pid and a random part (a pid is reused, and is the same in two containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_UNKNOWN_DATABASE = 1049  # MySQL's ER_BAD_DB_ERROR


def _connect(md: MetadataConfig, create_database: bool = False):
    """A connection to the metadata database. `create_database`: a database that does not exist yet is
    created first, as ML Metadata's own first open creates it (a new pipeline's first controller takes the
    lease before anything opened ML Metadata); read-only paths never create it."""
    import pymysql
    from pymysql.constants import CLIENT

    def connect(database):
        # FOUND_ROWS: an UPDATE reports the rows it matched, so a renewal that changes nothing still counts.
        return pymysql.connect(host=md.host, port=md.port, user=md.user, password=md.password(), database=database,
                               connect_timeout=10, read_timeout=30, write_timeout=30, autocommit=False,
                               client_flag=CLIENT.FOUND_ROWS)

    try:
        return connect(md.database)
    except pymysql.err.OperationalError as e:
        if not create_database or e.args[0] != _UNKNOWN_DATABASE:
            raise
    server = connect(None)
    try:
        with server.cursor() as cursor:
            cursor.execute("CREATE DATABASE IF NOT EXISTS `%s`" % md.database.replace("`", "``"))
    finally:
        server.close()
    return connect(md.database)


def check_config(md: MetadataConfig, lease_seconds: float) -> None:
    """A lease needs ML Metadata on MySQL and a positive duration; anything else is named with its fix."""
    md.validate()
    if md.kind != "mysql":
        raise MetadataConfigError(
            f"a lease across machines needs ML Metadata on MySQL (metadata.kind: mysql), this pipeline's is "
            f"{md.describe()}: on SQLite one machine runs the controller and the home's lock file is the guard")
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) or not lease_seconds > 0:
        raise MetadataConfigError(f"controller.lease_seconds must be > 0 seconds, got {lease_seconds!r}")


def read(md: MetadataConfig, pipeline: str) -> Optional[LeaseState]:
    """The pipeline's lease row as the database sees it now; None when no controller ever held one."""
    connection = _connect(md)
    try:
        with connection.cursor() as cursor:
            cursor.execute(_CREATE)
            cursor.execute(f"SELECT holder, token, TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at) FROM `{LEASE_TABLE}` "
                           "WHERE pipeline = %s", (pipeline,))
            row = cursor.fetchone()
        connection.commit()
    finally:
        connection.close()
    return None if row is None else LeaseState(row[0], int(row[1]), int(row[2]) / 1e6)


class Lease:
    """One holding of a pipeline's lease: `token` is its fencing token, larger than every earlier one."""

    def __init__(self, md: MetadataConfig, pipeline: str, lease_seconds: float, holder: str, token: int):
        self.md, self.pipeline, self.lease_seconds, self.holder, self.token = md, pipeline, lease_seconds, holder, token
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost_reason = ""

    def describe(self) -> str:
        return f"lease on pipeline {self.pipeline!r} ({self.md.describe()}), token {self.token}, holder {self.holder}"

    def renew(self) -> bool:
        """Pushes the expiry `lease_seconds` past now if this holding is still current; False when it is not."""
        if self.lost.is_set():
            return False
        connection = _connect(self.md)
        try:
            with connection.cursor() as cursor:
                matched = cursor.execute(
                    f"UPDATE `{LEASE_TABLE}` SET expires_at = NOW(6) + INTERVAL %s MICROSECOND "
                    "WHERE pipeline = %s AND holder = %s AND token = %s AND expires_at > NOW(6)",
                    (int(self.lease_seconds * 1e6), self.pipeline, self.holder, self.token))
            connection.commit()
        finally:
            connection.close()
        if matched != 1:
            state = read(self.md, self.pipeline)
            self.lost_reason = ("the lease row is gone" if state is None else
                                f"now held by {state.holder} with token {state.token}" if state.token != self.token
                                else "it expired")
            self.lost.set()
            return False
        return True

    def fence(self, what: str) -> None:
        """Raises LeaseLost unless this holding is still the current one (and extends it): call right before
        publishing `what`. A database that cannot be reached refuses too: unable to prove the lease, do not
        publish."""
        try:
            held = self.renew()
        except Exception as e:  # noqa: BLE001: any failure to prove the lease is a refusal
            raise LeaseLost(f"{what} not published: the {self.describe()} could not be confirmed "
                            f"({type(e).__name__}: {e})") from e
        if not held:
            raise LeaseLost(f"{what} not published: the {self.describe()} was lost ({self.lost_reason}); another "
                            "controller may have taken over, and only the current holder publishes")

    def start_heartbeat(self) -> None:
        """Renews every third of `lease_seconds` in a thread, so a long cycle keeps its lease; a renewal that
        finds the lease lost stops it (the next fence refuses; the controller waits to acquire anew)."""
        def beat() -> None:
            while not self._stop.wait(self.lease_seconds / 3):
                try:
                    if not self.renew():
                        return
                except Exception:  # noqa: BLE001: a blip; the next beat retries, and expiry decides if it lasts
                    continue

        self._thread = threading.Thread(target=beat, name="driftline-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stops renewing and, if still held, expires the lease now, so a standby controller takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.lease_seconds)
        if self.lost.is_set():
            return
        connection = _connect(self.md)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"UPDATE `{LEASE_TABLE}` SET expires_at = NOW(6) WHERE pipeline = %s AND holder = %s "
                               "AND token = %s", (self.pipeline, self.holder, self.token))
            connection.commit()
        finally:
            connection.close()
        self.lost.set()
        self.lost_reason = "released"


def try_acquire(md: MetadataConfig, pipeline: str, lease_seconds: float, holder: Optional[str] = None) -> Lease:
    """Takes the pipeline's lease if it is free or expired, with the next fencing token; raises LeaseHeld if
    another holder's lease has not expired."""
    check_config(md, lease_seconds)
    holder = holder or holder_name()
    connection = _connect(md, create_database=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(_CREATE)
            connection.commit()
            # The row exists before it is locked, so two first acquisitions serialise on it.
            cursor.execute(f"INSERT IGNORE INTO `{LEASE_TABLE}` (pipeline, holder, token, expires_at) "
                           "VALUES (%s, '', 0, NOW(6))", (pipeline,))
            connection.commit()
            cursor.execute(f"SELECT holder, token, TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at) FROM `{LEASE_TABLE}` "
                           "WHERE pipeline = %s FOR UPDATE", (pipeline,))
            current, token, left_us = cursor.fetchone()
            if left_us > 0:
                connection.rollback()
                raise LeaseHeld(f"pipeline {pipeline!r} is held by {current} (token {token}) for {left_us / 1e6:.1f} s "
                                f"more, on {md.describe()}", current, int(token), left_us / 1e6)
            cursor.execute(f"UPDATE `{LEASE_TABLE}` SET holder = %s, token = token + 1, acquired_at = NOW(6), "
                           "expires_at = NOW(6) + INTERVAL %s MICROSECOND WHERE pipeline = %s",
                           (holder, int(lease_seconds * 1e6), pipeline))
            cursor.execute(f"SELECT token FROM `{LEASE_TABLE}` WHERE pipeline = %s", (pipeline,))
            (new_token,) = cursor.fetchone()
        connection.commit()
    finally:
        connection.close()
    return Lease(md, pipeline, lease_seconds, holder, int(new_token))


# The lease this process's controller holds, if any: the executors (run in this process by
# LocalDagRunner) fence their publishes with it. None: no lease (SQLite, or no controller), no fence.
_current: Optional[Lease] = None


@contextlib.contextmanager
def held(lease: Lease) -> Iterator[Lease]:
    """Makes `lease` the one `fence` checks for the duration of the block."""
    global _current
    previous, _current = _current, lease
    try:
        yield lease
    finally:
        _current = previous


def current() -> Optional[Lease]:
    return _current


def fence(what: str) -> None:
    """Right before publishing `what`: refuses (LeaseLost) when this process works under a lease it no
    longer holds. Without a lease (SQLite, a component run on its own) there is nothing to check."""
    lease = _current
    if lease is not None:
        lease.fence(what)
