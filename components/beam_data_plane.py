"""A fix for Beam 2.59's runner-side data plane, which drops elements when a periodic flush races a write.

Beam's FnApiRunner (DirectRunner ``multi_processing`` and ``multi_threading``, and the embedded job
server behind ``PortableRunner``) sends each bundle's input to an SDK worker over gRPC through a
``data_plane.TimeBasedBufferingClosableOutputStream`` (``worker_handlers.DATA_BUFFER_TIME_LIMIT_MS``
= 1000). That stream starts a thread that flushes it every second::

    flush():  with self._flush_lock: self._flush_callback(self.get()); self._clear()

while the bundle's thread (``BundleManager._send_input_to_worker``) calls ``write()`` on it with no
lock at all. A ``write()`` that lands after ``get()`` and before ``_clear()`` (the flush callback
builds an ``Elements.Data`` proto of the buffered bytes and queues it, so the GIL changes hands in
between) is erased by ``_clear()`` and never sent: the worker never sees those elements and nothing
reports an error. It only happens when a send loop outlasts the first flush (one second), which is
why it showed on big Write-stage inputs (1M events, 2 workers, other work on the cores) and never
under ``in_memory`` (an in-memory channel, no flush thread). ``make_runner_data_plane_lossless``
makes ``write()`` take the flush lock, so a flush sends either before or after a write, never across it.
"""
from __future__ import annotations

import threading

_PATCHED_MARK = "_driftline_write_holds_flush_lock"
_patch_lock = threading.Lock()


def make_runner_data_plane_lossless() -> None:
    """Makes `TimeBasedBufferingClosableOutputStream.write` atomic with its periodic flush (idempotent).

    Process-wide, and harmless where no time-based stream is used (in_memory). It changes nothing
    else: the same bytes are sent, in the same order, in at most the same number of messages.
    """
    from apache_beam.runners.worker import data_plane

    cls = data_plane.TimeBasedBufferingClosableOutputStream
    with _patch_lock:
        if getattr(cls, _PATCHED_MARK, False):
            return
        # The Cython OutputStream.write, called unbound so that it does not dispatch back here.
        unlocked_write = data_plane.SizeBasedBufferingClosableOutputStream.write

        def write(self, b, nested=False):
            with self._flush_lock:
                unlocked_write(self, b, nested)

        cls.write = write
        setattr(cls, _PATCHED_MARK, True)
