"""New chains on a schedule (SNAPSHOT_INTERVAL_HOURS) or on request (SIGUSR1, `redis-backup snapshot-now`),
without a gap: a snapshot on a second connection while the stream goes on (chain/successor.py).

The `rechain` task takes the snapshot and prepares the successor; the capture's tick does the handover
itself (Shard._hand_over), so the stream never has two writers. A failure (the primary refuses a second
replica, the snapshot breaks, the chain changed under it) is one warning line: the open chain goes on,
and the next attempt follows after a delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from redis_backup.chain.successor import Successor, SuccessorError
from redis_backup.chain.writer import ChainWriter, Limits, SnapshotWriter
from redis_backup.errors import BackupError, FatalReplicationError, RetryableError
from redis_backup.interrupts import raise_if_cancelled
from redis_backup.service.metrics import ShardMetrics
from redis_backup.service.receive import receive_snapshot
from redis_backup.service.settings import ServiceSettings
from redis_backup.wire.client import ReplicaClient
from redis_backup.wire.protocol import FullResync

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_SECONDS = 0.05  # how often the task looks at the stream's progress while it waits for it
RETRY_SECONDS = 60.0  # after a failed attempt
# How long the stream may take to reach the snapshot's offset, and then to seal it (a safe boundary).
CATCH_UP_SECONDS = 600.0
# How long the handover waits for the open chain to vouch for the seconds before the new one's first (a
# service that cannot confirm, without +info, never will: the switch goes ahead, those seconds unoffered).
VOUCH_SECONDS = 30.0
CHECK_SECONDS = 5.0  # the longest wait between looks at the schedule (a chain replaced meanwhile moves it)


class Host(Protocol):
    """What rechain needs of the shard it serves (service/shard.py), so that neither imports the other."""

    settings: ServiceSettings
    root: Path
    primary: str
    limits: Limits
    synced: bool
    chain: ChainWriter | None
    handover: tuple[Successor, asyncio.Future[None]] | None
    metrics: ShardMetrics

    async def spool(self, fn: Callable[..., T], *args: Any) -> T: ...


class Rechain:
    """Starts successor chains for one shard."""

    def __init__(self, shard: Host) -> None:
        self.shard = shard
        self._asked = asyncio.Event()
        self.begun = 0  # successors begun by this process
        self.last_error: str | None = None

    def request(self) -> None:
        """A new chain now (SIGUSR1); safe to call from a signal handler on the loop."""
        log.info("a new chain was asked for")
        self._asked.set()

    def _due_in(self, chain: ChainWriter | None, now: float) -> float | None:
        """Seconds until the open chain is due for a successor (<= 0: due; None: never, or no chain)."""
        every = self.shard.settings.snapshot_interval_hours * 3600
        if chain is None or chain.meta.closed or every <= 0:
            return None
        started = chain.meta.snapshot_done_at or chain.meta.snapshot_at
        return started + every - now

    async def run(self) -> None:
        """The task: wait for the schedule or a request, begin a successor, again."""
        while True:
            shard = self.shard
            due_in = self._due_in(shard.chain, time.time())
            wait = CHECK_SECONDS if due_in is None else min(max(due_in, POLL_SECONDS), CHECK_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._asked.wait(), wait)
            raise_if_cancelled()  # a request as the service stops: wait_for may swallow the cancel (3.11)
            asked = self._asked.is_set()
            due_in = self._due_in(shard.chain, time.time())
            if not (asked or (due_in is not None and due_in <= 0)):
                continue
            if shard.chain is None or shard.chain.meta.closed or not shard.synced:
                continue  # no stream to follow yet: the request stays until there is one
            self._asked.clear()
            try:
                await self.begin()
                self.last_error = None
            except FatalReplicationError:
                raise
            except BackupError as e:
                self.last_error = str(e)
                log.warning("cannot begin a new chain; the current one goes on", extra={"error": str(e),
                            "retry_in_seconds": RETRY_SECONDS})  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._asked.wait(), RETRY_SECONDS)
                raise_if_cancelled()

    async def begin(self) -> None:
        """One successor: snapshot on a second connection, wait for the stream, prepare, hand over."""
        shard = self.shard
        old = shard.chain
        assert old is not None
        requested_at = time.time()
        pool = ThreadPoolExecutor(1, thread_name_prefix="rechain")  # the snapshot's writes, in order, off the spool

        async def run(fn: Callable[..., T], *args: Any) -> T:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

        try:
            async with ReplicaClient(shard.settings.connection, rdb_only=True) as rc:
                sync = rc.sync
                assert isinstance(sync, FullResync)
                if sync.replid != old.replid:
                    raise RetryableError(
                        f"the primary's replication id is {sync.replid}, the open chain follows {old.replid}"
                    )
                log.info("new chain: snapshot on a second connection", extra={"offset": sync.offset,
                         "chain": old.chain})  # fmt: skip
                open_writer = functools.partial(
                    SnapshotWriter, shard.root, primary=shard.primary, replid=sync.replid, offset=sync.offset,
                    now=requested_at, limits=shard.limits, min_free_bytes=shard.settings.min_free_bytes,
                )  # fmt: skip
                snap = await receive_snapshot(rc, open_writer, run, shard.metrics.snapshot_received)
            try:
                base = await run(snap.seal_base)
            except BaseException:
                await run(snap.abort)
                raise
            succ = Successor(snap, base, old)
            try:
                await self._follow(succ)
            finally:
                await run(succ.abandon)
        finally:
            pool.shutdown(wait=False)
        self.begun += 1

    async def _follow(self, succ: Successor) -> None:
        shard = self.shard
        old = succ.old
        x = succ.offset
        if old.meta.start_offset > x:
            raise SuccessorError(f"the snapshot's offset {x} is before the open chain's start {old.meta.start_offset}")
        await self._until(lambda: old.offset >= x, old, f"the stream to reach offset {x}")
        await shard.spool(old.ask_rotation)
        await self._until(lambda: old.current.start_offset >= x, old, f"the file holding offset {x} to be sealed")
        await asyncio.to_thread(succ.prepare)
        # the seconds before the successor's first are the old chain's to restore: it vouches for them once a
        # moment after them is confirmed (verified_until), which lags a little (more on a loaded machine);
        # hand over before that and they would be restorable from neither chain (never wrongly: refused)
        first = succ.first_second
        assert first is not None
        vouched = await self._until(lambda: (old.meta.verified_until or 0.0) >= first, old,
                                    f"the open chain to vouch for the seconds before {first}", required=False,
                                    timeout=VOUCH_SECONDS)  # fmt: skip
        if not vouched:
            log.warning("handing over before the open chain vouched for the seconds before the new one's first: "
                        "those seconds will not be restorable", extra={"first_second": first})  # fmt: skip
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shard.handover = (succ, done)
        deadline = time.monotonic() + CATCH_UP_SECONDS
        try:
            while True:  # the stream resolves it at a safe boundary; a capture that dropped the chain never will
                try:
                    await asyncio.wait_for(asyncio.shield(done), 1.0)
                    break
                except TimeoutError:
                    raise_if_cancelled()
                    if shard.chain is not old:
                        raise SuccessorError("the chain changed before the new one could take over") from None
                    if time.monotonic() > deadline:
                        raise SuccessorError(f"no safe boundary to hand over at in {CATCH_UP_SECONDS:g} s (the "
                                             "stream was always inside MULTI/EXEC or a command)") from None
        finally:
            if shard.handover is not None and shard.handover[0] is succ:
                shard.handover = None

    async def _until(self, condition: Callable[[], bool], old: ChainWriter, what: str, *, required: bool = True,
                     timeout: float = CATCH_UP_SECONDS) -> bool:  # fmt: skip
        """Poll until condition(), asked on the spool thread, holds while old is still the open chain. After
        the timeout: give up (required), or return False."""
        deadline = time.monotonic() + timeout
        while not await self.shard.spool(condition):  # on the spool thread: the writer's state is its own
            if self.shard.chain is not old or old.meta.closed:
                raise SuccessorError(f"the chain changed while waiting for {what}")
            if time.monotonic() > deadline:
                if not required:
                    return False
                raise SuccessorError(f"gave up waiting {math.ceil(timeout)} s for {what}")
            await asyncio.sleep(POLL_SECONDS)
        return True
