"""What the chain writer announces once it is durable: a chain begun, a file sealed, a chain closed.

The writer is a local spool; an uploader, retention and metrics subscribe here instead of polling
BACKUP_DIR. Rules (docs/FORMAT.md, "Events"):

- An event is emitted after the metadata that records the fact is on disk (fsync'd and renamed), so a
  subscriber may act on it at once: the file is complete and will never change.
- Emitted at most once, from the thread that calls the writer (the service's spool thread: keep
  callbacks short, hand real work to a queue). A crash between the metadata write and the emit loses
  the event: at start, a subscriber derives its backlog from what is on disk. Recovery emits nothing.
- A callback that raises is logged and skipped; the other subscribers still get the event, and the
  writer, whose state was already committed, goes on: a broken subscriber never stops the backup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChainBegun:
    """A snapshot was stored and named a chain: its base file is sealed, its first incr file opened."""

    chain: str
    base: str
    size: int
    sha256: str
    start_offset: int


@dataclass(frozen=True)
class FileSealed:
    """An incr file was closed: complete, fsync'd, listed in the journal with its size and SHA-256."""

    chain: str
    name: str
    seq: int
    size: int
    sha256: str
    start_offset: int
    end_offset: int
    first_ts: int | None = None
    last_ts: int | None = None
    header_size: int = 0
    start_db: int = 0


@dataclass(frozen=True)
class ChainClosed:
    """A newer chain superseded this one: it is never written again (its last file was sealed first)."""

    chain: str
    reason: str
    end_offset: int


Event = ChainBegun | FileSealed | ChainClosed
Subscriber = Callable[[Event], None]


class Events:
    """A synchronous list of subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call callback with every event from now on; returns the function that unsubscribes it."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, event: Event) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception(
                    "an event subscriber failed; the backup goes on",
                    extra={"event": type(event).__name__, "subscriber": getattr(callback, "__qualname__", "?")},
                )
