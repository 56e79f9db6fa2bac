"""One shard's capture: keep the chain of one primary up to date for as long as the service runs.

Per connection, three tasks: one reads the socket and appends to the chain; a ticker fsyncs about once
a second (at once on REPLCONF GETACK) and only then acknowledges the offset, so `WAIT 1` means "stored
on this disk"; a watcher asks the primary its offset to know which seconds are exact.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import math
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from redis_backup.chain import metadata as md
from redis_backup.chain import naming
from redis_backup.chain.catalog import chain_dirs, foreign_entries
from redis_backup.chain.events import Event, Events
from redis_backup.chain.metadata import MetadataError
from redis_backup.chain.prune import finish_local
from redis_backup.chain.successor import Successor, SuccessorError
from redis_backup.chain.writer import ChainWriter, ShipPoint, SnapshotWriter, disk_full_hint, recover
from redis_backup.errors import (
    BackupError,
    ConfigError,
    FatalReplicationError,
    ProtocolError,
    RetryableError,
    StorageError,
)
from redis_backup.interrupts import raise_if_cancelled
from redis_backup.restore.tempserver import RedisServerMissing, ServerCannotRead, find_redis_server
from redis_backup.restore.verify import verify_chain_deep
from redis_backup.service.dirlock import check_writable, lock_backup_dir
from redis_backup.service.lease import LEASE_SECONDS, Lease, LeaseLost
from redis_backup.service.metrics import Metrics, ShardMetrics
from redis_backup.service.pruner import Pruner
from redis_backup.service.receive import TICK_SECONDS, fsync_and_close, receive_snapshot
from redis_backup.service.rechain import Rechain
from redis_backup.service.settings import ServiceSettings
from redis_backup.service.supervisor import backoff_delay, first_failure
from redis_backup.service.uploader import Shipper, Uploader
from redis_backup.store.base import StoreError
from redis_backup.store.fsutil import make_dir
from redis_backup.store.local import LocalStore
from redis_backup.wire.client import ReplicaClient
from redis_backup.wire.offsetprobe import OffsetProbe
from redis_backup.wire.protocol import FullResync, StreamData

if TYPE_CHECKING:
    from redis_backup.store.s3 import S3Store

log = logging.getLogger(__name__)
# How often the service asks the primary its offset (INFO replication: microseconds of its time).
SAMPLE_SECONDS = 0.1
T = TypeVar("T")


def _log_event(event: Event) -> None:
    fields = {("file" if k == "name" else k): v for k, v in dataclasses.asdict(event).items()}  # name: the logger's
    log.debug(type(event).__name__, extra=fields)


def latest_chain(root: Path) -> Path | None:
    chains = chain_dirs(root)
    return chains[-1] if chains else None


def newest_closed_chain(root: Path) -> Path | None:
    for p in reversed(chain_dirs(root)):
        try:
            if md.load(p).closed:
                return p
        except MetadataError:
            return p  # a chain whose metadata is damaged is exactly what the check is for
    return None


def remove_partials(root: Path) -> None:
    """A snapshot that never finished is not a backup: remove what it left (only directories of ours:
    a link is reported and left, never followed)."""
    for entry in foreign_entries(root):
        log.warning("not a directory of ours: ignored", extra={"entry": entry.chain, "what": entry.error})
    for p in root.iterdir():
        if p.name.startswith(naming.PARTIAL_PREFIX) and not p.is_symlink() and p.is_dir():
            log.info("removing incomplete snapshot", extra={"dir": p.name})
            shutil.rmtree(p, ignore_errors=True)


# the start's first question to the bucket: connect and read timeout, one attempt (see _claim_bucket)
START_TIMEOUT = 10.0


class Shard:
    """Everything that belongs to the backup of one primary: its directory, chain writer, offsets and
    counters. Several can run side by side; signals and the process's lifetime are not its business
    (service/process.py).

    Every call into the chain writer runs on one thread of its own (the spool): a rotation fsyncs
    several times and recovery hashes whole files, and on the event loop either would stall the
    acknowledgements and the reading of the socket. One thread keeps the writer's calls in order."""

    def __init__(self, settings: ServiceSettings, metrics: ShardMetrics | None = None) -> None:
        self.settings = settings
        self.root = Path(settings.backup_dir)
        self.limits = settings.limits
        self.primary = settings.connection.address
        self.metrics = metrics if metrics is not None else Metrics().shard(self.primary)
        self.chain: ChainWriter | None = None
        self.acked_offset = -1
        self.synced = False  # the current attempt got as far as a usable stream
        self.last_verify: tuple[str, bool] | None = None  # (chain, passed) of the last deep verify
        # Reopen the latest chain from disk before the next attempt: at start, and after a storage
        # error, which may leave a partial write or a half-done rotation that only a scan of the files
        # (the crash recovery) gets right.
        self.reopen = True
        self._locks: tuple[int, ...] = ()  # held until the process exits
        self.probe = OffsetProbe(settings.connection)  # the primary's offset, where INFO is allowed
        self._spool = ThreadPoolExecutor(1, thread_name_prefix="spool")
        # What the chain writer finishes (chains begun and closed, files sealed), announced once durable;
        # emitted on the spool thread: a subscriber hands real work on (loop.call_soon_threadsafe).
        self.events = Events()
        self.events.subscribe(_log_event)
        self.events.subscribe(self.metrics.event)
        self._wake: asyncio.Event | None = None  # the current session's tick: ACK now
        self.uploader: Uploader | None = None
        self.lease: Lease | None = None
        self.bucket: S3Store | None = None
        self.lease_ready = asyncio.Event()  # set once this service holds the bucket's lease
        # A successor chain ready to take over, and the future its builder waits on (service/rechain.py);
        # the capture's tick hands over at the next safe boundary.
        self.handover: tuple[Successor, asyncio.Future[None]] | None = None
        self.rechain = Rechain(self)
        if settings.remote is not None:
            from redis_backup.store.s3 import S3Store

            self.bucket = S3Store(settings.remote.s3)
            self.bucket.on_request = self.metrics.s3_request
            shipper = Shipper(self.root, self.bucket, settings.remote.codec)
            self.uploader = Uploader(shipper, sync_seconds=settings.remote.sync_seconds, ship_point=self._ship_point,
                                     on_shipped=self._shipped, ready=self.lease_ready.wait)  # fmt: skip
            self.events.subscribe(self.uploader.notify)
            self.metrics.watch("upload_backlog_objects", lambda: float(self.upload_backlog()[0]))
            self.metrics.watch("upload_backlog_bytes", lambda: float(self.upload_backlog()[1]))
            self.metrics.watch("upload_lag_seconds", lambda: self.upload_backlog()[2])
            self.lease = Lease(self.bucket, Lease.owner_for(settings.backup_dir))
        # retention: after each new chain and on a timer; with a bucket, under the uploader's lock
        self.pruner = Pruner(self.root, settings.retention, bucket=self.bucket, uploader=self.uploader,
                             key=settings.remote.codec.key if settings.remote else None, live=self._live,
                             ready=self.lease_ready.is_set if self.bucket is not None else None,
                             on_deleted=self.metrics.deleted)  # fmt: skip
        self.events.subscribe(self.pruner.notify)

    def upload_backlog(self) -> tuple[int, int, float]:
        """(objects, bytes, lag seconds) not yet in the bucket (on the HTTP thread: plain reads only)."""
        assert self.uploader is not None
        chain = self.chain
        return self.uploader.backlog(chain.chain if chain is not None else None,
                                     chain.durable_offset if chain is not None else 0)  # fmt: skip

    def _live(self) -> list[str]:
        return [self.chain.chain] if self.chain is not None else []

    async def _ship_point(self) -> ShipPoint | None:
        chain = self.chain
        return None if chain is None else await self._io(chain.ship_point)

    def _shipped(self) -> None:
        if self._wake is not None and self.settings.remote is not None and self.settings.remote.ack_after_s3:
            self._wake.set()

    def ack_offset(self, chain: ChainWriter) -> int:
        """What REPLCONF ACK reports: durable on disk, and with ACK_AFTER=s3 also in the bucket."""
        remote = self.settings.remote
        if self.uploader is None or remote is None or not remote.ack_after_s3:
            return chain.durable_offset
        shipped = self.uploader.remote_offset(chain.chain)
        return min(chain.durable_offset, chain.meta.start_offset if shipped is None else shipped)

    async def keep_lease(self) -> None:
        """Renew the bucket's lease; losing it to another service ends this one (never two writers)."""
        assert self.lease is not None
        while self.lease.etag is None:  # the bucket did not answer at start
            try:
                await asyncio.to_thread(self.lease.acquire)
            except StoreError as e:
                log.warning("cannot take the bucket's lease yet; retrying", extra={"error": str(e)})
                await asyncio.sleep(5.0)
                continue
            await asyncio.to_thread(self._lease_taken)
        while True:
            await asyncio.sleep(LEASE_SECONDS / 4)
            try:
                await asyncio.to_thread(self.lease.renew)
            except LeaseLost:
                raise
            except StoreError as e:
                log.warning("cannot renew the bucket's lease; retrying", extra={"error": str(e)})

    async def spool(self, fn: Callable[..., T], *args: Any) -> T:
        """fn on the spool thread, in order with every writer call (for rechain.py)."""
        return await self._io(fn, *args)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the spool thread (in order with every other writer call) and wait for it."""
        return await asyncio.get_running_loop().run_in_executor(self._spool, fn, *args)

    async def close(self, deadline: float | None = None) -> str | None:
        """At the end of the service (capture already stopped): store what was received and let go of the
        chain; with a bucket, ship what it lacks until deadline (time.monotonic()), then release the lease.
        Returns what was left unshipped (it stays in the local backlog), else None.

        The open file is not sealed: it ends after its last whole command, fsync'd, with the metadata as
        of there, and the next start continues it with PSYNC (sealing needs a safe boundary, which an open
        MULTI at the stop would not give; what a restart needs is the same as after a crash)."""
        await self.probe.close()
        chain = self.chain
        if chain is not None:
            await self._io(self._finish, chain)
        left: str | None = None
        if self.uploader is not None and deadline is not None and self.lease_ready.is_set():
            left = await self.uploader.drain(deadline - min(1.0, self.settings.shutdown_timeout_seconds / 4))
        if self.lease is not None and self.lease.etag is not None:
            budget = 5.0 if deadline is None else max(0.1, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):  # it expires anyway; a restart here takes it over at once
                await asyncio.wait_for(asyncio.to_thread(self.lease.release), budget)
        self._spool.shutdown(wait=True)
        return left

    def _finish(self, chain: ChainWriter) -> None:
        """On the spool thread: a partial command cut off, everything else fsync'd, acknowledged as
        durable and in the metadata, the descriptor closed (the chain stays open on disk)."""
        if chain.meta.closed:
            return
        try:
            chain.rewind()
            fd, offset = chain.sync_point()
            fsync_and_close(fd)
            chain.synced(offset)
            self.acked_offset = chain.durable_offset
            chain.write_metadata()
            log.info("capture stopped: everything received is stored",
                     extra={"chain": chain.chain, "offset": chain.durable_offset})  # fmt: skip
        except (OSError, BackupError) as e:  # the next start recovers the chain from its files
            log.error("cannot store the end of the stream; the next start recovers it", extra={"error": str(e)})
        finally:
            with contextlib.suppress(OSError):
                chain.release()

    def claim_dir(self) -> None:
        """Everything that can be wrong with BACKUP_DIR is found before the primary forks for us."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"BACKUP_DIR {self.root} is not a directory")
        try:
            make_dir(self.root)
        except OSError as e:
            raise ConfigError(f"cannot create BACKUP_DIR {self.root}: {e.strerror}") from e
        self._locks = lock_backup_dir(self.root)
        check_writable(self.root)
        self._refuse_other_primary()
        try:
            remove_partials(self.root)
            finish_local(self.root)  # chains a stopped prune had begun to delete
        except OSError as e:
            raise ConfigError(f"cannot use BACKUP_DIR {self.root}: {e.strerror}") from e
        if self.bucket is not None:
            self._claim_bucket()

    def _claim_bucket(self) -> None:
        """A bucket that does not exist, refuses the credentials or is leased to another service stops the
        start (exit 2); one that does not answer does not: capture starts, uploads once it answers."""
        assert self.bucket is not None and self.lease is not None and self.settings.remote is not None
        from redis_backup.store.s3 import S3Store

        # one attempt with short timeouts: a bucket that hangs (dropped packets, a stuck gateway) would
        # otherwise hold the start for attempts x READ timeout, the capture not begun and /healthz saying
        # "starting" until the liveness probe restarts the pod; keep_lease takes the lease later
        s3 = self.settings.remote.s3
        quick = S3Store(dataclasses.replace(s3, max_attempts=1, connect_timeout=min(s3.connect_timeout, START_TIMEOUT),
                                            read_timeout=min(s3.read_timeout, START_TIMEOUT)))  # fmt: skip
        quick.on_request = self.metrics.s3_request
        try:
            quick.check_access()
            self.lease.acquire()
        except StoreError as e:
            if not e.retryable:
                raise ConfigError(str(e)) from e
            log.warning("the bucket does not answer: capture starts, uploads follow once it does",
                        extra={"error": str(e)})  # fmt: skip
            return
        self._lease_taken()

    def _lease_taken(self) -> None:
        assert self.bucket is not None
        # what a crash mid-upload left: every upload under the prefix, however recent, since holding the
        # lease means no other service writes there (a takeover of our own lease: the flock proved its
        # holder dead, typically seconds ago; an age threshold would leave those uploads billed)
        with contextlib.suppress(StoreError):
            self.bucket.abort_stale_uploads()
        self.lease_ready.set()

    def _refuse_other_primary(self) -> None:
        """Chains of another primary are not continued, and not superseded, unless told to."""
        path = latest_chain(self.root)
        if path is None or self.settings.allow_other_primary:
            return
        try:
            meta = md.load(path)
        except MetadataError:
            return  # unreadable: a new chain begins, and the damaged one is left as it is
        if meta.primary != self.primary:
            raise ConfigError(
                f"BACKUP_DIR {self.root} holds the backup of primary {meta.primary} (chain {meta.chain}), not "
                f"of {self.primary}: give each primary its own BACKUP_DIR, or set ALLOW_OTHER_PRIMARY=true "
                "if this is the same primary at a new address"
            )

    async def capture(self) -> int:
        """Connect, back up, reconnect with backoff, until told to stop or out of retries (raised)."""
        failures = 0
        last_error: BackupError | None = None
        while True:
            self.synced = False
            try:
                if self.reopen:
                    await self._io(self._reopen_latest)
                await self._session()
            except FatalReplicationError:
                raise
            except StorageError as e:
                # Counts as a failure even after a sync, so that a full disk backs off and MAX_RETRIES
                # applies; the chain is reopened from disk (as after a crash) before the next attempt.
                last_error = e
                failures += 1
                log.error("cannot store the backup", extra={"error": e, "attempt": failures})
                self.metrics.error(f"cannot store the backup: {e}")
                await self._io(self._drop_chain)
            except RetryableError as e:
                last_error = e
                # A primary that keeps sending bytes we cannot use is a failure too, even after a sync.
                failures = 0 if self.synced and not isinstance(e, ProtocolError) else failures + 1
                log.warning("replication interrupted", extra={"error": e, "attempt": failures})
                self.metrics.error(f"replication interrupted: {e}")
            if self.chain is not None:
                try:
                    await self._io(self.chain.rewind)
                except OSError as e:
                    raise StorageError(f"cannot rewind {self.chain.dir}: {e.strerror}") from e
                # what the session confirmed (gaps, verified_until) is kept, not only once a later one ticks
                with contextlib.suppress(BackupError):
                    await self._io(self.chain.write_metadata)
            s = self.settings
            if s.max_retries and failures >= s.max_retries:
                raise BackupError(
                    f"giving up after {failures} failed attempts: {last_error}",
                    settings=(*(last_error.settings if last_error else ()), "max_retries"),
                )
            delay = backoff_delay(max(failures, 1), s.retry_delay_seconds, s.max_retry_delay_seconds)
            log.info("reconnecting", extra={"in_seconds": round(delay, 2)})
            await asyncio.sleep(delay)
            self.metrics.reconnects.inc()

    def _continued(self, chain: ChainWriter, replid: str) -> None:
        chain.continued(replid)
        if chain.meta.primary != self.primary:  # allowed (ALLOW_OTHER_PRIMARY): it is this one now
            log.info("the chain continues from another address", extra={"chain": chain.chain,
                     "was": chain.meta.primary, "now": self.primary})  # fmt: skip
            chain.meta.primary = self.primary
        chain.begin_gap("reconnected")
        chain.write_metadata()

    def _drop_chain(self) -> None:
        """Forget the in-memory chain writer; the next attempt reopens the chain from disk."""
        if self.chain is not None:
            with contextlib.suppress(Exception):
                self.chain.release()
            self.chain = None
        self.reopen = True

    def _close_superseded(self) -> None:
        """An older chain still open: a crash came between its successor's naming and its closing (or a
        full sync's new chain and the old one's): it is closed now, as it would have been."""
        chains = chain_dirs(self.root)
        for path in chains[:-1]:
            try:
                if md.load(path).closed:
                    continue
                writer = recover(path, limits=self.limits, events=self.events)
            except MetadataError:
                continue  # a damaged chain is verify's to report, not this start's to repair
            writer.close(f"superseded by chain {chains[-1].name}", time.time())
            log.info("closed a chain a newer one supersedes", extra={"chain": path.name, "newer": chains[-1].name})

    def _reopen_latest(self) -> None:
        try:
            self._close_superseded()
            self.chain = self._open_latest()
        except OSError as e:
            raise StorageError(
                f"cannot reopen the latest chain in {self.root}: {e.strerror or e}" + disk_full_hint(e)
            ) from e
        self.reopen = False

    async def verify_periodically(self) -> None:
        """Restores are only trusted if tried: load the newest closed chain in a scratch redis-server.
        An unexpected error is the supervisor's to log and restart after; a missing redis-server ends
        the task with one error line (nothing to retry until it is installed)."""
        every = self.settings.verify_interval_hours * 3600
        while True:
            await asyncio.sleep(every)
            chain = await asyncio.to_thread(newest_closed_chain, self.root)
            if chain is None:
                log.info("deep verify skipped: no closed chain yet")
                continue
            try:
                server = await asyncio.to_thread(find_redis_server, self.settings.redis_server_bin)
                problems = await asyncio.to_thread(verify_chain_deep, LocalStore(self.root), chain.name, server=server)
            except RedisServerMissing as e:
                log.error("deep verify cannot run", extra={"error": e})
                return
            except ServerCannotRead as e:  # the chain checked out; only loading it is left undone
                log.warning(
                    "deep verify not checked: needs a newer redis-server", extra={"chain": chain.name, "error": e}
                )
                continue
            self.last_verify = (chain.name, not problems)
            self.metrics.verified(chain.name, not problems)
            if problems:
                for p in problems:
                    log.error("deep verify failed", extra={"chain": chain.name, "problem": str(p)})
            else:
                log.info("deep verify passed", extra={"chain": chain.name})

    def _open_latest(self) -> ChainWriter | None:
        path = latest_chain(self.root)
        if path is None:
            return None
        try:
            writer = recover(path, limits=self.limits, events=self.events)
        except MetadataError as e:
            log.error("cannot continue the latest chain; a new one will begin", extra={"error": e})
            return None
        if writer.meta.closed:
            writer.release()
            return None
        log.info("continuing chain", extra={"chain": writer.chain, "offset": writer.offset})
        return writer

    async def _session(self) -> None:
        """One connection: handshake, snapshot if needed, then the stream until something breaks."""
        await self.probe.close()  # asked afresh with each session: the address may lead elsewhere now
        chain = self.chain
        if chain is not None and chain.meta.closed:
            chain = None
        psync, db, in_multi = None, 0, False
        if chain is not None:
            replid, offset, db, in_multi = chain.resume_state()
            psync = (replid, offset)
        async with ReplicaClient(self.settings.connection, psync=psync, db=db, in_multi=in_multi) as rc:
            assert rc.sync is not None
            if isinstance(rc.sync, FullResync):
                log.info("full resync", extra={"replid": rc.sync.replid, "offset": rc.sync.offset})
                self.metrics.full_resyncs.inc()
                await self._snapshot(rc, rc.sync)
            else:
                assert chain is not None
                log.info("partial resync accepted", extra={"chain": chain.chain, "offset": rc.sync.offset})
                await self._io(self._continued, chain, rc.sync.replid)
            self.synced = True
            assert self.chain is not None
            rc.ack(self.ack_offset(self.chain))
            self.metrics.set_attached(True)
            try:
                await self._stream(rc, self.chain)
            finally:
                self.metrics.set_attached(False)

    async def _snapshot(self, rc: ReplicaClient, sync: FullResync) -> None:
        now = time.time()  # the chain's time: what the primary executes from now on is in the stream
        open_writer = functools.partial(
            SnapshotWriter, self.root, primary=self.primary, replid=sync.replid, offset=sync.offset, now=now,
            limits=self.limits, min_free_bytes=self.settings.min_free_bytes, events=self.events,
        )  # fmt: skip
        snap = await receive_snapshot(rc, open_writer, self._io, self.metrics.snapshot_received)
        try:
            chain = await self._io(snap.finish, time.time())
        except BaseException:
            await self._io(snap.abort)
            raise
        old, self.chain = self.chain, chain
        if old is not None:
            await self._io(old.close, f"superseded by chain {chain.chain}", time.time())

    async def _on_chain(self, method: Callable[..., None], *args: Any) -> None:
        """method(current chain, *args) on the spool thread: the chain at that moment, which may be the
        successor of the one the caller looked at."""

        def call() -> None:
            if self.chain is not None:
                method(self.chain, *args)

        await self._io(call)

    def _sync_point(self) -> tuple[int, int, ChainWriter]:
        """The current chain's sync point, and that chain (the read task may hand over at any chunk)."""
        assert self.chain is not None
        fd, offset = self.chain.sync_point()
        return fd, offset, self.chain

    def _append(self, ev: StreamData, now: float) -> None:
        assert self.chain is not None
        self.chain.append(ev, now)

    def _try_hand_over(self, chain: ChainWriter, succ: Successor) -> ChainWriter | str | None:
        """On the spool thread, at a safe boundary: the successor takes the open file and its place; the
        old chain is closed (see chain/successor.py for the order). None: not at a safe boundary yet; a
        string: why the successor is refused, the old chain untouched."""
        if not chain.at_safe_boundary:
            return None
        if (self.root / succ.snap.chain).exists():
            return f"{self.root / succ.snap.chain} exists already"
        chain.close(f"superseded by chain {succ.snap.chain}", time.time(), before_commit=succ.complete)
        assert succ.writer is not None
        self.chain = succ.writer
        succ.announce()
        return succ.writer

    async def _hand_over(self, chain: ChainWriter) -> ChainWriter:
        """The stream's part of a new chain (rechain.py), from the read task after a chunk that ends at a
        safe boundary or from the tick: done by the capture itself, so that a failure is the stream's to
        handle like any storage error (the chain is reopened from disk)."""
        handover, self.handover = self.handover, None
        if handover is None:
            return chain
        succ, done = handover
        if succ.old is not chain or chain.meta.closed:
            done.set_exception(SuccessorError("the chain changed while its successor was being prepared"))
            return chain
        try:
            new = await self._io(self._try_hand_over, chain, succ)
        except BaseException as e:
            done.set_exception(SuccessorError(f"cannot begin the new chain: {e}"))
            raise
        if new is None:
            self.handover = handover  # not at a safe boundary: the next tick tries again
            return chain
        if isinstance(new, str):
            done.set_exception(SuccessorError(new))
            return chain
        done.set_result(None)
        return new

    async def _stream(self, rc: ReplicaClient, chain: ChainWriter) -> None:
        """The stream goes to self.chain, whichever it is: a new chain may take over between two chunks."""
        wake = self._wake = asyncio.Event()
        asked = False  # the primary asked for an ACK (WAIT): the bucket is asked to catch up too

        async def read() -> None:
            nonlocal asked
            m = self.metrics
            async for ev in rc.stream():
                now = time.time()
                await self._io(self._append, ev, now)
                m.chunk(ev.end_offset, len(ev.data), ev.commands, ev.writes, now)
                if self.handover is not None and ev.last_safe == len(ev.data) and self.chain is not None:
                    await self._hand_over(self.chain)  # a chunk that ends at a safe boundary: hand over there
                if ev.getack:
                    asked = True
                    wake.set()

        async def tick() -> None:
            nonlocal asked
            last_meta = 0.0
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), TICK_SECONDS)
                raise_if_cancelled()
                wake.clear()
                fd, offset, chain = await self._io(self._sync_point)
                await asyncio.to_thread(fsync_and_close, fd)  # beside the spool: appends go on meanwhile
                dirty = await self._io(chain.synced, offset)
                self.acked_offset = self.ack_offset(chain)
                rc.ack(self.acked_offset)
                self.metrics.acked(self.acked_offset)
                if asked and self.uploader is not None:
                    asked = False
                    self.uploader.kick()
                now = time.time()
                await self._io(chain.maybe_rotate, now)
                if self.handover is not None:
                    chain = await self._hand_over(chain)
                if dirty and now - last_meta >= TICK_SECONDS:
                    # the copy is taken in order with the appends; written beside them
                    version = await self._io(chain.metadata_version)
                    await asyncio.to_thread(chain.write_metadata, version)
                    last_meta = now

        async def watch() -> None:
            """Are the stamps exact? Every SAMPLE_SECONDS the primary is asked its offset; once what it
            had at a moment has arrived within LAG_TOLERANCE_SECONDS, everything executed before that
            moment is stamped by then: the moment is confirmed. A gap in capture (the session began with
            one) ends when a moment after it began is confirmed, in the second of the confirmation; one
            begins when a moment's offset arrived late, or none was confirmed for longer than the
            tolerance (the service fell behind, did not run, the link stalled, the primary did not answer)."""
            tolerance = self.settings.lag_tolerance_seconds
            samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=1000)
            verified: float | None = None  # the last moment confirmed in this session
            since = time.time()  # the open gap (if any) can only end at a moment after this
            while True:
                raise_if_cancelled()  # once per turn: the probe's timeouts can swallow a cancel (3.11)
                assert self.chain is not None
                chain = self.chain  # the offsets go on from one chain to its successor
                asked_at = time.time()
                target = await self.probe.sample(chain.replid)
                if not self.probe.available:
                    await self._on_chain(ChainWriter.unverified)  # no way to know: every second from here is refused
                    return
                if target is not None:
                    samples.append((asked_at, target))
                    self.metrics.primary_seen(target)
                now = time.time()
                late = False
                while samples and chain.offset >= samples[0][1]:
                    moment, _ = samples.popleft()
                    if now - moment <= tolerance:
                        verified = moment if verified is None else max(verified, moment)
                        await self._on_chain(ChainWriter.confirmed, verified)
                    else:
                        late = True  # it arrived, but later than the tolerance allows
                stale = samples and now - samples[0][0] > tolerance  # still not arrived, and late already
                unconfirmed = verified is None or now - verified > tolerance + 2 * SAMPLE_SECONDS
                catching_up = (self.chain or chain).catching_up
                self.metrics.gap_open.set(1 if catching_up else 0)
                if catching_up:
                    if verified is not None and verified >= since and not late and not stale:
                        await self._on_chain(ChainWriter.end_gap, now)
                elif late or stale or unconfirmed:
                    behind = samples[-1][1] - chain.offset if samples else None
                    log.warning("the service cannot confirm it keeps up with the primary: a gap in capture begins",
                                extra={"behind_bytes": behind})  # fmt: skip
                    second = math.floor(verified if verified is not None else now)
                    await self._on_chain(ChainWriter.begin_gap, "behind", second)
                    since = now
                await asyncio.sleep(SAMPLE_SECONDS)

        tasks = [asyncio.create_task(read(), name="read"), asyncio.create_task(tick(), name="tick"),
                 asyncio.create_task(watch(), name="watch")]  # fmt: skip
        first = await first_failure(tasks)
        if first is None:
            raise RetryableError("the stream ended")
        if isinstance(first, OSError):
            where = self.chain.dir if self.chain is not None else chain.dir
            raise StorageError(f"cannot write to {where}: {first.strerror or first}") from first
        raise first
