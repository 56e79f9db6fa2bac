"""The service's retention task: prune (chain.prune) after each new chain and every PRUNE_INTERVAL_SECONDS.

The writer's events (a chain begun, a chain closed) arrive on the spool thread and only wake the task;
the prune itself runs on a worker thread, never on the event loop. With a bucket it runs under the
uploader's lock (`Uploader.busy`): a prune and an upload never touch the bucket at once, and what the
prune deleted is forgotten by the uploader before it works again, so nothing deleted is uploaded
again. Until the service holds the bucket's lease (a bucket that did not answer at start), BACKUP_DIR
alone is pruned, by the rules that hold without a bucket. A failing prune is one warning line and
another attempt later; capture never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from redis_backup.chain import prune
from redis_backup.chain.events import ChainBegun, ChainClosed, Event
from redis_backup.chain.retention import Policy
from redis_backup.errors import BackupError
from redis_backup.interrupts import raise_if_cancelled
from redis_backup.service.supervisor import backoff_delay
from redis_backup.service.uploader import Uploader
from redis_backup.store.base import Store
from redis_backup.store.codec import Key

log = logging.getLogger(__name__)
PRUNE_INTERVAL_SECONDS = 600.0  # besides after each new chain: what ages out between new chains
RETRY_SECONDS = 30.0  # the first retry after a failed prune (doubling up to the interval)


class Pruner:
    def __init__(
        self, root: Path, policy: Policy, *, bucket: Store | None = None, key: Key | None = None,
        uploader: Uploader | None = None, live: Callable[[], Iterable[str]] = lambda: (),
        ready: Callable[[], bool] | None = None, interval: float = PRUNE_INTERVAL_SECONDS,
        on_deleted: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self.root = root
        self.policy = policy
        self.bucket = bucket
        self.key = key
        self.uploader = uploader
        self.live = live  # the chains the service writes: never deleted
        # whether the bucket may be touched (this service holds its lease); until then BACKUP_DIR alone is
        # pruned, as if there were no bucket (nothing that only an upload would allow)
        self.ready = ready
        self.interval = interval
        self.on_deleted = on_deleted  # a chain deleted, with where (metrics)
        self.failures = 0
        self.runs = 0  # prunes completed (for tests and metrics)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: asyncio.Event | None = None

    def notify(self, event: Event) -> None:
        """A writer event (on the spool thread): a new chain, or one closed, makes a prune due."""
        if isinstance(event, ChainBegun | ChainClosed) and self._loop is not None and self._due is not None:
            self._loop.call_soon_threadsafe(self._due.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._due = asyncio.Event()
        while True:
            self._due.clear()
            try:
                await self.prune_now()
                self.failures = 0
                delay = self.interval
            except (BackupError, OSError) as e:
                self.failures += 1
                delay = backoff_delay(self.failures, min(RETRY_SECONDS, self.interval), self.interval)
                log.warning("prune failed; capture goes on, retrying later", extra={
                    "error": str(e), "attempt": self.failures, "in_seconds": round(delay, 2)})  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), delay)
            raise_if_cancelled()  # woken as the service stops: wait_for may swallow the cancel (3.11)

    async def prune_now(self) -> prune.PruneResult:
        live = list(self.live())
        if self.bucket is not None and self.ready is not None and not self.ready():
            return await asyncio.to_thread(self._prune, live, False)  # the lease not taken yet: local only
        if self.uploader is None:
            return await asyncio.to_thread(self._prune, live)
        async with self.uploader.busy:
            try:
                return await asyncio.to_thread(self._prune, live)
            finally:  # also after a failure midway: what went is forgotten either way
                self.uploader.forget(c for c in self._gone())

    def _prune(self, live: list[str], bucket: bool = True) -> prune.PruneResult:
        result = prune.prune(self.root, self.policy, bucket=self.bucket if bucket else None, key=self.key, live=live)
        self.runs += 1
        if self.on_deleted is not None:
            for d in result.deleted:
                self.on_deleted(d.where)
        return result

    def _gone(self) -> list[str]:
        """The chains the uploader knows of that are no longer local (deleted, or being deleted)."""
        assert self.uploader is not None
        return [c for c in self.uploader.shipper.remote if not (self.root / c).is_dir()]
