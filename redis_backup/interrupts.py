"""Interruptions that must not be lost: signals held for the few instructions between making something
and owning it, and asyncio cancellations that Python 3.11 can swallow.

The commands turn those signals into an exception that unwinds them, so that every scratch server is
stopped and every temporary file removed (cli.py). An exception raised between `mkdtemp()` returning
and the `try` that removes its result, or inside `Popen()` after the fork, would leak what was made;
holding the signals there delivers them once the cleanup is in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator

_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@contextlib.contextmanager
def held() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def raise_if_cancelled() -> None:
    """Re-raise a cancellation of the current task that was swallowed.

    In CPython 3.11, `asyncio.wait_for` and `asyncio.timeout` can turn a cancellation that arrives just
    as they finish into a normal return or a TimeoutError (fixed in 3.12): a loop that catches
    TimeoutError and goes round again then never ends, and whoever cancelled it waits forever (seen:
    the offset watcher of a session whose primary had restarted kept the session, and the backup, from
    ever reconnecting). The task still counts the request, so a loop calls this once per turn."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
