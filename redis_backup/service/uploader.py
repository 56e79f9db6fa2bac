"""Ships every chain to the bucket as it is written: sealed files whole, the open file in parts.

Work comes from three places: the backlog (chain.backlog) derived at start and after any failure from
the local metadata and one listing; the writer's events (a snapshot stored, a file sealed, a chain
closed); and the open file's ship point (chain.writer.ShipPoint), taken every S3_SYNC_SECONDS and when
the primary asks for an ACK. Order makes it crash-safe: an object is written whole (a multipart upload
appears only once complete), a head is written after every object it commits, and objects a newer head
no longer needs are deleted after it. In steady state it lists nothing: it knows what it uploaded.

A failure never reaches capture: it is logged in one line, retried with backoff, and the backlog is
derived afresh before the next attempt. The uploads run on worker threads; this module's task on the
event loop only decides. While it works (never while it waits) it holds `Uploader.busy`, under which
retention deletes from the bucket (service/pruner.py): an upload and a prune never run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from redis_backup.chain import metadata as md
from redis_backup.chain import objects
from redis_backup.chain.backlog import LocalChain, Step, backlog, part_reach
from redis_backup.chain.catalog import chain_dirs
from redis_backup.chain.events import ChainBegun, ChainClosed, Event, FileSealed
from redis_backup.chain.metadata import ChainHead, FileMeta, MetadataError
from redis_backup.chain.objects import HeadObject, PartObject, RemoteObject, SealedObject
from redis_backup.chain.remoteview import head_json, physical_objects
from redis_backup.chain.writer import ShipPoint, scan_incr_file
from redis_backup.errors import StorageError
from redis_backup.interrupts import raise_if_cancelled
from redis_backup.service.supervisor import backoff_delay
from redis_backup.store.base import Store, StoreError
from redis_backup.store.codec import Codec
from redis_backup.store.fsutil import open_read

log = logging.getLogger(__name__)
CHUNK = 1 << 20
T = TypeVar("T")


@dataclass
class RemoteChain:
    """What the bucket holds of one chain, as this process last listed or wrote it."""

    sealed: dict[tuple[str, int, str], FileMeta] = field(default_factory=dict)  # (type, seq, sha256)
    parts: list[tuple[PartObject, str]] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)  # object names, oldest first
    head: HeadObject | None = None  # the newest
    head_json: bytes = b""  # its content (without the name's time), to skip an unchanged one
    closed: bool = False

    def reach(self, seq: int) -> int:
        return part_reach([p for p, _ in self.parts], seq)


def _local_chains(root: Path) -> list[LocalChain]:
    out = []
    for d in chain_dirs(root):
        try:
            m = md.load(d)
        except MetadataError as e:
            log.error("a local chain cannot be read: not uploaded", extra={"chain": d.name, "error": str(e)})
            continue
        out.append(LocalChain(m.chain, m.closed, m.end_offset, tuple(m.files)))
    return out


Listing = dict[str, dict[str, tuple[RemoteObject, str]]]  # per chain: its objects by logical name


def _local_and_listed(root: Path, bucket: Store) -> tuple[list[LocalChain], Listing]:
    """The local chains, and one listing of the bucket per chain: what chain.backlog compares."""
    local = _local_chains(root)
    return local, {c.chain: physical_objects(bucket, c.chain) for c in local}


def backlog_of(root: Path, bucket: Store) -> dict[str, int]:
    """What the bucket lacks of BACKUP_DIR, without a running service (`status`): per file to upload or
    ship ("chain/name"), its local bytes that the bucket does not hold."""
    steps = backlog(*_local_and_listed(root, bucket))
    behind: dict[str, int] = {}
    for s in steps:
        if s.file is None or s.action not in ("upload", "ship"):
            continue
        try:
            size = (root / s.chain / s.file.name).stat().st_size
        except OSError:
            size = s.file.size or 0
        if size > s.from_pos:
            behind[f"{s.chain}/{s.file.name}"] = size - s.from_pos
    return behind


def _journal_bytes(files: list[FileMeta]) -> int:
    """What a reader's journal (made from the sealed objects' names) will be long."""
    total = 0
    for f in files:
        parsed = objects.parse(objects.sealed_name(f))
        assert isinstance(parsed, SealedObject)
        total += len(md.journal_line(parsed.file))
    return total


def _read_range(path: Path, start: int, end: int) -> Iterator[bytes]:
    with open_read(path) as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                raise StorageError(f"{path} is shorter than {end} bytes")
            left -= len(block)
            yield block


def _hash_range(path: Path, start: int, end: int) -> str:
    h = hashlib.sha256()
    for block in _read_range(path, start, end):
        h.update(block)
    return h.hexdigest()


class Shipper:
    """The blocking half: uploads and deletes, one call at a time (on a worker thread)."""

    def __init__(self, root: Path, bucket: Store, codec: Codec) -> None:
        self.root = root
        self.bucket = bucket
        self.codec = codec
        self.remote: dict[str, RemoteChain] = {}
        self.local_sealed: dict[str, list[FileMeta]] = {}  # per chain, the sealed files known to be local
        # sealed locally, not yet in the bucket: (chain, file) -> (size, since when), for the backlog metrics
        self.pending: dict[tuple[str, str], tuple[int, float]] = {}
        self.pending_lock = threading.Lock()

    def add_pending(self, chain: str, name: str, size: int) -> None:
        with self.pending_lock:
            self.pending.setdefault((chain, name), (size, time.time()))

    # ---------------------------------------------------------------------------- deriving

    def plan(self) -> list[Step]:
        """List the bucket once and derive what is missing there (chain.backlog)."""
        local, listing = _local_and_listed(self.root, self.bucket)
        self.remote = {}
        for c in local:
            rc = RemoteChain()
            found = listing[c.chain]
            for o, phys in sorted(found.values(), key=lambda x: x[1]):
                if isinstance(o, SealedObject):
                    rc.sealed.setdefault((o.file.type, o.file.seq, o.file.sha256 or ""), o.file)
                elif isinstance(o, PartObject):
                    rc.parts.append((o, phys))
                elif isinstance(o, HeadObject):
                    rc.heads.append(phys)
                    if rc.head is None or (o.end_offset, o.written_ms) >= (rc.head.end_offset, rc.head.written_ms):
                        rc.head = o
            rc.closed = bool(rc.head and rc.head.closed)
            self.remote[c.chain] = rc
            self.local_sealed[c.chain] = list(c.sealed)
        steps = backlog(local, listing)
        for s in steps:
            if s.action == "upload" and s.file is not None:
                self.add_pending(s.chain, s.file.name, s.file.size or 0)
        return steps

    def run_steps(self, steps: list[Step], *, live: frozenset[str] | set[str] = frozenset()) -> None:
        """Carry out a backlog in order; the open chains in live are shipped by the service's ship
        points instead (their file is still being written)."""
        for s in steps:
            if s.action == "upload":
                assert s.file is not None
                self.upload_sealed(s.chain, s.file)
            elif s.action == "head":
                self.upload_final_head(s.chain)
            elif s.action == "ship" and s.chain not in live:
                point = offline_ship_point(self.root / s.chain)
                if point is not None:
                    self.ship(point)
            elif s.action == "delete" and s.chain not in live:
                # a live chain's next head comes from its ship point, which deletes what it replaces itself
                self.delete(s.chain, s.names)

    # ---------------------------------------------------------------------------- writing

    def _put(self, chain: str, logical: str, chunks: Iterator[bytes]) -> str:
        physical = logical + self.codec.suffix
        # authenticated under its chain's name too: an object copied from another chain is refused
        self.bucket.write(f"{chain}/{physical}", self.codec.encode(chunks, f"{chain}/{logical}"))
        return physical

    def upload_sealed(self, chain: str, f: FileMeta) -> None:
        """A sealed file whole, checked against its SHA-256 as it is read (a file changed on disk since
        it was sealed is not uploaded under a name that vouches for it)."""
        rc = self.remote.setdefault(chain, RemoteChain())
        if (f.type, f.seq, f.sha256 or "") in rc.sealed:
            return
        assert f.size is not None and f.sha256 is not None
        path = self.root / chain / f.name

        def checked() -> Iterator[bytes]:
            h = hashlib.sha256()
            for block in _read_range(path, 0, f.size or 0):
                h.update(block)
                yield block
            if h.hexdigest() != f.sha256:
                raise StorageError(f"{path} does not match the SHA-256 recorded when it was sealed: not uploaded")

        started = time.monotonic()
        self._put(chain, objects.sealed_name(f), checked())
        rc.sealed[(f.type, f.seq, f.sha256 or "")] = f
        with self.pending_lock:
            self.pending.pop((chain, f.name), None)
        sealed = self.local_sealed.setdefault(chain, [])
        if all((g.type, g.seq) != (f.type, f.seq) for g in sealed):
            sealed.append(f)
        log.info("uploaded", extra={"chain": chain, "file": f.name, "bytes": f.size,
                                    "seconds": round(time.monotonic() - started, 3)})  # fmt: skip

    def _put_head(self, chain: str, head: ChainHead, shipped: int) -> bool:
        """Upload the head if it says something the bucket's newest does not; True if it did."""
        rc = self.remote.setdefault(chain, RemoteChain())
        sealed = self.local_sealed.get(chain, [])
        missing = [f for f in sealed if (f.type, f.seq, f.sha256 or "") not in rc.sealed]
        for f in missing:  # a head never commits an object the bucket lacks
            self.upload_sealed(chain, f)
        records = len(sealed)
        body = head_json(head, records, _journal_bytes(sealed))
        if body == rc.head_json:
            return False
        ms = int(time.time() * 1000)
        if rc.head is not None:
            ms = max(ms, rc.head.written_ms + 1)  # names of one chain's heads never repeat
        logical = objects.head_name(head.end_offset, records, shipped, ms, head.closed)
        physical = self._put(chain, logical, iter([body]))
        old = rc.heads
        rc.heads = [physical]
        rc.head = HeadObject(head.end_offset, records, shipped, ms, head.closed)
        rc.head_json = body
        rc.closed = head.closed
        self.delete(chain, tuple(old))
        return True

    def upload_final_head(self, chain: str) -> None:
        meta = md.load(self.root / chain)
        self.local_sealed[chain] = [f for f in meta.files if f.closed]
        for f in self.local_sealed[chain]:
            self.upload_sealed(chain, f)
        _, head = meta.split()
        self._put_head(chain, head, 0)
        rc = self.remote[chain]
        self.delete(chain, tuple(phys for _, phys in rc.parts))
        rc.parts = []

    def ship(self, point: ShipPoint) -> bool:
        """The open file's new bytes as one part, then the head that commits them; True if anything
        was uploaded."""
        rc = self.remote.setdefault(point.chain, RemoteChain())
        if rc.closed:
            return False
        path = self.root / point.chain / point.name
        reach = rc.reach(point.seq)
        if reach > point.pos:
            # the bucket holds more of the file than this process has made durable (a part from before a
            # restart, cut back since): the parts from the first that is not local any more go
            self._drop_parts_from(point.chain, point.seq, 0)
            reach = 0
        shipped_any = False
        if reach < point.pos:
            sha = _hash_range(path, reach, point.pos)
            logical = objects.part_name(point.seq, reach, point.pos, sha)
            physical = self._put(point.chain, logical, _read_range(path, reach, point.pos))
            rc.parts.append((PartObject(point.seq, reach, point.pos, sha), physical))
            shipped_any = True
        head = point.head
        if head.journal_records != len(self.local_sealed.get(point.chain, [])):
            # a rotation whose event is not handled yet: the sealed files as the disk has them
            self.local_sealed[point.chain] = [f for f in md.load(self.root / point.chain).files if f.closed]
        if head.journal_records != len(self.local_sealed[point.chain]):
            return shipped_any  # the chain moved on meanwhile: the next ship point agrees with the disk
        if self._put_head(point.chain, head, point.pos):
            shipped_any = True
        stale = [(p, phys) for p, phys in rc.parts if p.seq != point.seq]
        if stale:
            self.delete(point.chain, tuple(phys for _, phys in stale))
            rc.parts = [(p, phys) for p, phys in rc.parts if p.seq == point.seq]
        return shipped_any

    def verify_parts(self, point: ShipPoint) -> None:
        """After a restart: the parts in the bucket must hold the local file's bytes (their names carry
        their SHA-256: hashed here, nothing downloaded); any that do not are dropped and shipped again."""
        rc = self.remote.get(point.chain)
        if rc is None:
            return
        path = self.root / point.chain / point.name
        for p, _ in sorted(rc.parts, key=lambda x: x[0].start):
            if p.seq != point.seq:
                continue
            if p.end > point.pos or _hash_range(path, p.start, p.end) != p.sha256:
                log.warning("a part in the bucket does not match the local file: shipped again",
                            extra={"chain": point.chain, "file": point.name, "from": p.start})  # fmt: skip
                self._drop_parts_from(point.chain, point.seq, p.start)
                return

    def _drop_parts_from(self, chain: str, seq: int, start: int) -> None:
        rc = self.remote[chain]
        gone = [(p, phys) for p, phys in rc.parts if p.seq == seq and p.end > start]
        # the head must not commit bytes that are about to go: only heads written after the new parts do
        self.delete(chain, tuple(phys for _, phys in gone))
        rc.parts = [x for x in rc.parts if x not in gone]
        rc.head_json = b""

    def delete(self, chain: str, names: tuple[str, ...]) -> None:
        for n in names:
            self.bucket.delete(f"{chain}/{n}")


def offline_ship_point(chain_dir: Path) -> ShipPoint | None:
    """The open chain as it is on disk (no service writing it): its newest file to its last complete
    command, and the head as of there."""
    meta = md.load(chain_dir)
    if meta.closed:
        return None
    cur = meta.files[-1]
    scan = scan_incr_file(chain_dir / cur.name, cur.header_size, cur.start_db)
    _, head = meta.split()
    head.end_offset = cur.start_offset + scan.stream_bytes
    head.db = scan.db
    return ShipPoint(meta.chain, cur.seq, cur.name, scan.boundary_pos, head.end_offset, head)


class Uploader:
    """The service's upload task: decides on the event loop, uploads on a worker thread."""

    def __init__(
        self, shipper: Shipper, *, sync_seconds: float,
        ship_point: Callable[[], Awaitable[ShipPoint | None]],
        on_shipped: Callable[[], None] = lambda: None,
        ready: Callable[[], Awaitable[object]] | None = None,
        retry_delay: float = 1.0, max_retry_delay: float = 60.0,
    ) -> None:  # fmt: skip
        self.shipper = shipper
        self.sync_seconds = sync_seconds
        self.ship_point = ship_point
        self.on_shipped = on_shipped
        self.ready = ready  # awaited before the first request (the lease)
        self.retry_delay, self.max_retry_delay = retry_delay, max_retry_delay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Event] | None = None
        self._kick = asyncio.Event()
        self._kicked = False  # a kick arrived: ship now, whatever the schedule
        self.failures = 0
        self._offsets: dict[str, int] = {}
        # for the backlog metrics: where each chain's sealed files end locally, and when the bucket last
        # held everything that was durable (the time of the last ship point shipped whole)
        self._sealed_end: dict[str, int] = {}
        self.caught_up_at = time.time()
        self.last_error: tuple[float, str] | None = None
        # held while the task works (never while it waits): retention deletes from the bucket only
        # under it, so that a prune and an upload never touch the bucket at once
        self.busy = asyncio.Lock()
        self._inflight: asyncio.Future[object] | None = None  # the shipper's call now on a worker thread

    def notify(self, event: Event) -> None:
        """A writer event (on the spool thread): handed to the task."""
        if isinstance(event, ChainBegun):
            self.shipper.add_pending(event.chain, event.base, event.size)
            self._sealed_end[event.chain] = event.start_offset
        elif isinstance(event, FileSealed):
            self.shipper.add_pending(event.chain, event.name, event.size)
            self._sealed_end[event.chain] = event.end_offset
        if self._loop is not None and self._queue is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def kick(self) -> None:
        """Ship now (the primary asked for an ACK, and ACK_AFTER=s3 waits for the bucket)."""
        self._kick.set()

    def remote_offset(self, chain: str) -> int | None:
        return self._offsets.get(chain)

    def backlog(self, open_chain: str | None, durable: int) -> tuple[int, int, float]:
        """(objects, bytes, lag seconds) stored locally and not yet in the bucket: the sealed files not
        uploaded, plus the open file's durable bytes past what the bucket's head commits. The lag is the
        age of the oldest of them (for the open file: since the last ship point shipped whole); 0: none.
        Read on the HTTP thread: plain values only."""
        now = time.time()
        with self.shipper.pending_lock:
            pending = list(self.shipper.pending.values())
        objects_, size = len(pending), sum(p[0] for p in pending)
        oldest = min((p[1] for p in pending), default=None)
        if open_chain is not None:
            shipped = max(self._offsets.get(open_chain, -1), self._sealed_end.get(open_chain, -1))
            if shipped >= 0 and durable > shipped:
                objects_ += 1
                size += durable - shipped
                oldest = self.caught_up_at if oldest is None else min(oldest, self.caught_up_at)
        return objects_, size, 0.0 if oldest is None else max(0.0, now - oldest)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        if self.ready is not None:
            await self.ready()
        stale = True
        next_ship = time.monotonic()
        while True:
            try:
                if stale:
                    async with self.busy:
                        point = await self.ship_point()
                        live = {point.chain} if point is not None else set()
                        steps = await self._blocking(self.shipper.plan)
                        if point is not None:
                            await self._blocking(self.shipper.verify_parts, point)
                        await self._blocking(functools.partial(self.shipper.run_steps, steps, live=live))
                    stale = False
                    self._record()
                    if self.failures:
                        log.info("uploads are going again", extra={"after_failures": self.failures})
                    self.failures = 0
                await self._wait(next_ship - time.monotonic())
                async with self.busy:
                    while not self._queue.empty():
                        event = self._queue.get_nowait()
                        await self._blocking(self._handle, event)
                        if isinstance(event, ChainBegun):
                            self._kicked = True  # a new chain is in the bucket at once, not a period later
                    if time.monotonic() >= next_ship or self._kicked:
                        # a fixed schedule: a slow ship does not stretch the period (nor does a sealed file's event)
                        next_ship = max(next_ship + self.sync_seconds, time.monotonic())
                        self._kicked = False
                        taken = time.time()
                        point = await self.ship_point()
                        if point is not None and await self._blocking(self.shipper.ship, point):
                            self._record()
                        if point is not None and not self.shipper.pending:
                            self.caught_up_at = taken  # what was durable then is in the bucket now
                self.failures = 0
            except (StoreError, StorageError, MetadataError, OSError) as e:
                self.failures += 1
                stale = True
                self.last_error = (time.time(), f"upload failed: {e}")
                delay = backoff_delay(self.failures, self.retry_delay, self.max_retry_delay)
                log.warning("upload failed; local capture goes on, retrying", extra={
                    "error": str(e), "attempt": self.failures, "in_seconds": round(delay, 2)})  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), delay)  # a kick does not skip the backoff's floor
                    await asyncio.sleep(min(delay, self.retry_delay))
                raise_if_cancelled()  # kicked as the service stops: wait_for may swallow the cancel (3.11)

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """fn on a worker thread. A cancelled caller (the service stops) leaves it running to its end,
        which drain() waits for: the shipper is never called from two threads at once."""
        fut: asyncio.Future[T] = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._inflight = fut  # type: ignore[assignment]
        return await asyncio.shield(fut)

    async def drain(self, deadline: float) -> str | None:
        """At a stop, once capture has ended and the open file is released: ship everything the bucket
        lacks (the backlog derived afresh, as at a start, the open chain included) until it is all there
        or time.monotonic() reaches deadline. None when the bucket holds everything; else what is left,
        in words: it stays in the local backlog, which the next start ships."""
        left = "nothing shipped yet"
        failures = 0
        while True:
            try:
                async with asyncio.timeout_at(asyncio.get_running_loop().time() + deadline - time.monotonic()):
                    if self._inflight is not None and not self._inflight.done():
                        with contextlib.suppress(Exception):  # its error is the run's; the backlog is derived anew
                            await asyncio.shield(self._inflight)
                    steps = await self._blocking(self.shipper.plan)
                    for i, step in enumerate(steps):
                        left = f"{len(steps) - i} of {len(steps)} steps (next: {step.action} {step.chain})"
                        await self._blocking(self.shipper.run_steps, [step])
                    self._record()
                    return None
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return left
                failures += 1  # a request's own timeout, not the deadline
            except (StoreError, StorageError, MetadataError, OSError) as e:
                failures += 1
                left = f"{left}; last error: {e}"
            delay = backoff_delay(failures, self.retry_delay, self.max_retry_delay)
            if time.monotonic() + delay >= deadline:
                return left
            log.warning("upload failed while stopping; retrying until the shutdown timeout",
                        extra={"error": left, "attempt": failures, "in_seconds": round(delay, 2)})  # fmt: skip
            await asyncio.sleep(delay)

    async def _wait(self, timeout: float) -> None:
        """Until the next ship is due, an event arrives, or a kick."""
        assert self._queue is not None
        if not self._queue.empty() or self._kick.is_set() or timeout <= 0:
            self._kicked = self._kicked or self._kick.is_set()
            self._kick.clear()
            return
        getter = asyncio.ensure_future(self._queue.get())
        kicked = asyncio.ensure_future(self._kick.wait())
        try:
            done, _ = await asyncio.wait({getter, kicked}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            kicked.cancel()
            if not getter.done():
                getter.cancel()
        if getter in done and not getter.cancelled():
            self._queue.put_nowait(getter.result())  # handled in order with the rest
        self._kicked = self._kicked or self._kick.is_set()
        self._kick.clear()

    def forget(self, chains: Iterable[str]) -> None:
        """Chains retention deleted (under `busy`): nothing of them is kept, shipped or reported."""
        for chain in chains:
            self.shipper.remote.pop(chain, None)
            self.shipper.local_sealed.pop(chain, None)
            self._offsets.pop(chain, None)
            self._sealed_end.pop(chain, None)
            with self.shipper.pending_lock:
                for k in [k for k in self.shipper.pending if k[0] == chain]:
                    del self.shipper.pending[k]

    def _handle(self, event: Event) -> None:
        s = self.shipper
        if not (s.root / event.chain).is_dir():
            log.debug("an event of a chain that is gone (retention): ignored", extra={"chain": event.chain})
            return
        if isinstance(event, ChainBegun):
            meta = md.load(s.root / event.chain)
            s.local_sealed[event.chain] = []
            s.remote.setdefault(event.chain, RemoteChain())
            s.upload_sealed(event.chain, meta.base)
        elif isinstance(event, FileSealed):
            f = FileMeta(name=event.name, type="incr", seq=event.seq, start_offset=event.start_offset,
                         end_offset=event.end_offset, header_size=event.header_size, start_db=event.start_db,
                         first_ts=event.first_ts, last_ts=event.last_ts, size=event.size,
                         sha256=event.sha256)  # fmt: skip
            s.upload_sealed(event.chain, f)
        elif isinstance(event, ChainClosed):
            s.upload_final_head(event.chain)

    def _record(self) -> None:
        for chain, rc in self.shipper.remote.items():
            if rc.head is not None:
                self._offsets[chain] = rc.head.end_offset
        self.on_shipped()
