"""Hold SIGTERM and SIGINT for the few instructions between making something and owning it.

The commands turn those signals into an exception that unwinds them, so that every scratch server is
stopped and every temporary file removed (cli.py). An exception raised between `mkdtemp()` returning
and the `try` that removes its result, or inside `Popen()` after the fork, would leak what was made;
holding the signals there delivers them once the cleanup is in place.
"""

from __future__ import annotations

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
