"""A backup chain on local disk: one snapshot plus the command stream that follows it.

SnapshotWriter streams the RDB into a hidden directory and only names it a chain once the RDB is
complete and its CRC64 checks out. ChainWriter appends the stream, inserts `#TS:` annotations, rotates
incr files at safe points, and can be rebuilt from disk after a crash (recover).

Per file, a rotation costs the same at the 10th file as at the 10,000th: the sealed file's record is
appended to the journal once, the head (a few hundred bytes) is replaced, and the manifest gets one line.
The writer holds the head and the open file, never a list of the files.
"""

from __future__ import annotations

import collections
import copy
import errno
import hashlib
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from redis_backup.chain import metadata as md
from redis_backup.chain import naming
from redis_backup.chain.events import ChainBegun, ChainClosed, Events, FileSealed
from redis_backup.chain.metadata import ChainHead, ChainMeta, FileMeta, Gap, ReplidSpan
from redis_backup.chain.rdb import RdbDigest, RdbError
from redis_backup.chain.rdbscan import RdbScan
from redis_backup.chain.tsindex import index_incr_file
from redis_backup.errors import ProtocolError, StorageError
from redis_backup.store.diskspace import SpaceGuard
from redis_backup.store.fsutil import (
    FILE_MODE,
    atomic_write,
    create_dir,
    create_file,
    fsync_dir,
    open_append,
    open_read,
    open_update,
    write_all,
)
from redis_backup.wire.protocol import StreamData
from redis_backup.wire.resp import encode_command

log = logging.getLogger(__name__)
READ_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class Limits:
    segment_max_bytes: int = 64 << 20
    segment_max_seconds: float = 60.0


def latest_id(root: Path) -> str | None:
    """The newest chain id under root (by name, as chain_dirs sorts), or None."""
    ids = [p.name for p in root.iterdir() if naming.is_chain_id(p.name)] if root.is_dir() else []
    return max(ids, default=None)


def disk_full_hint(e: OSError) -> str:
    return " (the disk is full: free space or grow the volume)" if e.errno == errno.ENOSPC else ""


def _storage_error(what: str, e: OSError) -> StorageError:
    return StorageError(f"cannot {what}: {e.strerror or e}{disk_full_hint(e)}")


class SnapshotWriter:
    """Streams one snapshot to disk; finish() turns it into a new open chain.

    size is the size the primary announced ($<len>; None for a diskless $EOF: snapshot): one that does
    not fit in the free space of root, less the reserve min_free_bytes (None: auto, see diskspace), is
    refused before anything is created; writing stops with a StorageError before the free space would
    drop below the reserve (the caller then aborts, which removes the partial directory)."""

    def __init__(
        self,
        root: Path,
        *,
        primary: str,
        replid: str,
        offset: int,
        now: float,
        limits: Limits,
        size: int | None = None,
        min_free_bytes: int | None = None,
        events: Events | None = None,
    ) -> None:
        self.events = events
        self.space = SpaceGuard(root, min_free_bytes)
        if size is not None:
            self.space.check_size(size)
        self.root = root
        self.primary = primary
        self.replid = replid
        self.offset = offset
        self.started_at = now
        self.limits = limits
        # the id sorts after every chain already in root: one of the same second (the offset part sorts as
        # text) would be taken for the older, and the newest chain is the one continued and restored
        self.chain = naming.chain_id(naming.name_after(latest_id(root), now), replid, offset)
        self.dir = root / naming.partial_chain_dir(self.chain)
        self.digest = RdbDigest()
        self.scan = RdbScan()  # which databases it uses, and the server's version
        self.rdb_version: int | None = None
        try:
            create_dir(self.dir)
            self._tmp = self.dir / naming.tmp_name(naming.base_file())
            self._fd: int | None = create_file(self._tmp)
        except OSError as e:
            raise _storage_error(f"create {self.dir}", e) from e

    def write(self, data: bytes | memoryview) -> None:
        """Write, checksum and walk one chunk; a memoryview (the driver's buffer) is read, not copied."""
        assert self._fd is not None
        self.space.allow(len(data), self.digest.size)
        try:
            write_all(self._fd, data)
        except OSError as e:
            raise _storage_error(f"write the snapshot to {self.dir}", e) from e
        self.digest.update(data)
        self.scan.feed(data)

    def sync_point(self) -> int:
        """A dup of the file descriptor, to fsync off the event loop while writing goes on."""
        assert self._fd is not None
        return os.dup(self._fd)

    def seal_base(self) -> FileMeta:
        """Check the RDB's CRC64, fsync it and give it its name in the (still hidden) directory."""
        assert self._fd is not None
        try:
            self.rdb_version = self.digest.verify()
        except RdbError as e:
            raise ProtocolError(f"the snapshot received is damaged: {e}") from e
        scan = self.scan
        scan.finish()
        if not scan.complete:
            log.warning(
                "cannot tell which databases the snapshot uses; restores will find out while copying it",
                extra={"chain": self.chain, "reason": scan.error},
            )
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            os.replace(self._tmp, self.dir / naming.base_file())
        except OSError as e:
            raise _storage_error(f"store the snapshot in {self.dir}", e) from e
        return FileMeta(
            name=naming.base_file(),
            type="base",
            seq=1,
            start_offset=self.offset,
            end_offset=self.offset,
            first_ts=int(self.started_at),
            last_ts=int(self.started_at),
            size=self.digest.size,
            sha256=self.digest.sha256.hexdigest(),
        )

    @property
    def base_max_db(self) -> int | None:
        return (self.scan.max_db or 0) if self.scan.complete else None

    def finish(self, now: float) -> ChainWriter:
        """Verify, fsync and name the base, create the first incr file, then the manifest and metadata."""
        base = self.seal_base()  # a damaged snapshot: the caller aborts
        try:
            incr = naming.incr_file(1)
            fd = create_file(self.dir / incr, append=True)  # like every incr file: writes go to the end
            os.fsync(fd)
            meta = ChainMeta(
                chain=self.chain,
                primary=self.primary,
                replid=self.replid,
                start_offset=self.offset,
                end_offset=self.offset,
                db=0,
                snapshot_at=self.started_at,
                snapshot_done_at=now,
                rdb_version=self.rdb_version,
                server_version=self.scan.redis_ver,
                server_name=self.scan.server_name,
                base_max_db=self.base_max_db,
                stream_max_db=0,
                replids=[ReplidSpan(self.replid, self.offset)],
                # what the primary executes while the snapshot is transferred arrives after it: until
                # the service has caught up, which second each command belongs to is not known
                gaps=[Gap(math.floor(self.started_at), None, self.offset, "snapshot")],
                files=[base, FileMeta(name=incr, type="incr", seq=1, start_offset=self.offset)],
            )
            # the directory is not a chain until renamed: its files need no rename of their own
            md.save_manifest(self.dir, meta, fresh=True)
            head = md.save(self.dir, meta, fresh=True)
            fsync_dir(self.dir)
            final = self.root / self.chain
            os.replace(self.dir, final)
            fsync_dir(self.root)
        except OSError as e:
            self.abort()
            raise _storage_error(f"store the snapshot in {self.dir}", e) from e
        log.info(
            "snapshot stored",
            extra={"chain": self.chain, "bytes": self.digest.size, "seconds": round(now - self.started_at, 3)},
        )
        writer = ChainWriter(
            final, head, fd, file_size=0, sha=hashlib.sha256(), limits=self.limits, now=now, events=self.events
        )
        if self.events is not None:
            base = meta.base
            assert base.size is not None and base.sha256 is not None
            self.events.emit(ChainBegun(self.chain, base.name, base.size, base.sha256, self.offset))
        return writer

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class ShipPoint:
    """The open chain as a copy elsewhere may hold it: bytes [0, pos) of the open file `name` (whose
    last byte is stream offset `offset`), and the head as of that offset."""

    chain: str
    seq: int
    name: str
    pos: int
    offset: int
    head: ChainHead


class ChainWriter:
    """Appends the replication stream to the newest incr file of an open chain.

    meta is the head: the chain's fields and the open file (files == [current]); the sealed files are on
    disk only, in the journal, of which the head counts the records and bytes. last_sealed_ts is the last
    second of the sealed incr files (for the gap that closing records). fd None: a closed chain."""

    def __init__(
        self,
        dir: Path,
        meta: ChainHead,
        fd: int | None,
        *,
        file_size: int,
        sha: hashlib._Hash,
        limits: Limits,
        now: float,
        in_multi: bool = False,
        file_has_writes: bool = False,
        last_sealed_ts: int | None = None,
        events: Events | None = None,
    ) -> None:
        self.dir = dir
        self.meta = meta
        self.limits = limits
        self.events = events
        self._last_sealed_ts = last_sealed_ts
        self._fd: int | None = fd
        self._sha = sha
        self._file_size = file_size
        self._file_opened_at = now
        self._file_has_writes = file_has_writes
        self.offset = meta.end_offset  # stream offset of the last byte written
        self.durable_offset = meta.end_offset
        self.db = meta.db
        self.in_multi = in_multi
        # The last complete command: where a rewind cuts back to.
        self._boundary_offset = self.offset
        self._boundary_pos = file_size
        self._boundary_db = self.db
        self._boundary_multi = in_multi
        self._tail_safe = not in_multi
        # What an uploader may ship of the open file: (seq, bytes, offset, db) at the last command
        # boundary made durable; bytes before it never change (a rewind cuts back to a boundary at most).
        self._sync_boundary = self._durable_boundary = (self.current_seq, file_size, self.offset, self.db)
        # (moment, offset received by then) of each confirmation: a copy that holds less of the stream
        # vouches only for the moments whose offset it holds (ship_point).
        self._confirmations: collections.deque[tuple[float | None, int]] = collections.deque(
            [(meta.verified_until, self.offset)]
        )
        self._shipped_verified: float | None = None
        self._rotate_asked = False  # rotate at the next safe boundary, due or not (a successor chain)
        self._meta_dirty = False
        self._meta_lock = threading.Lock()
        self._meta_version = 0
        self._meta_written = 0

    # -- identity ------------------------------------------------------------------------------

    @property
    def chain(self) -> str:
        return self.meta.chain

    @property
    def replid(self) -> str:
        return self.meta.replid

    @property
    def current(self) -> FileMeta:
        """The open incr file (the head lists no other)."""
        return self.meta.files[-1]

    @property
    def current_seq(self) -> int:
        return self.meta.files[-1].seq if self.meta.files else 0

    # -- appending -----------------------------------------------------------------------------

    def append(self, ev: StreamData, now: float) -> None:
        """Store one received chunk; rotates at a safe boundary when the current file is due."""
        data = ev.data
        n = len(data)
        if ev.start_offset != self.offset:
            raise StorageError(f"stream offset {ev.start_offset} does not follow stored offset {self.offset}")
        ts = int(now)
        try:
            if ev.last_safe >= 0 and self._rotation_due(now, n):
                cut = ev.last_safe
                self._write(data, 0, cut, ev.first_safe if ev.first_safe < cut else -1, ts)
                self.offset = ev.start_offset + cut
                self._rotate(ev.last_safe_db, now)
                self._write(data, cut, n, cut, ts)
            else:
                self._write(data, 0, n, ev.first_safe, ts)
        except OSError as e:
            raise _storage_error(f"append to {self.dir / self.current.name}", e) from e
        self.offset = ev.end_offset
        self.db = ev.db
        self.in_multi = ev.in_multi
        self._tail_safe = ev.last_safe == n
        if ev.last_boundary >= 0:
            self._boundary_offset = ev.start_offset + ev.last_boundary
            self._boundary_pos = self._file_size - (n - ev.last_boundary)
            self._boundary_db = ev.db
            self._boundary_multi = ev.in_multi
        if ev.writes:
            self._file_has_writes = True
            self.meta.last_write_at = now
        if ev.max_db > (self.meta.stream_max_db or 0):
            self.meta.stream_max_db = ev.max_db
            self._meta_dirty = True

    def _write(self, data: bytes | memoryview, lo: int, hi: int, ts_at: int, ts: int) -> None:
        """Write data[lo:hi], with a #TS line at ts_at (a safe boundary) when the second changed.

        A chunk with no safe boundary before its end gets no #TS: the next chunk that starts one does."""
        cur = self.current
        if lo <= ts_at < hi and ts != cur.last_ts:  # a timestamp always has a command after it
            self._put(data[lo:ts_at])
            self._put(b"#TS:%d\r\n" % ts)
            self._put(data[ts_at:hi])  # a slice of a memoryview (or a whole-bytes slice) copies nothing
            cur.last_ts = ts
            if cur.first_ts is None:
                cur.first_ts = ts
            self._meta_dirty = True
        else:
            self._put(data[lo:hi])

    def _put(self, chunk: bytes | memoryview) -> None:
        if chunk:
            assert self._fd is not None
            write_all(self._fd, chunk)
            self._sha.update(chunk)
            self._file_size += len(chunk)

    def _rotation_due(self, now: float, incoming: int = 0) -> bool:
        if self._rotate_asked:
            return True
        if self._file_size + incoming >= self.limits.segment_max_bytes and self._file_size > self.current.header_size:
            return True
        return self._file_has_writes and now - self._file_opened_at >= self.limits.segment_max_seconds

    def maybe_rotate(self, now: float) -> bool:
        """Rotate an idle file that is due (called from the timer); only at a safe boundary."""
        if self._fd is not None and self._tail_safe and self._rotation_due(now):
            try:
                self._rotate(self.db, now)
            except OSError as e:
                raise _storage_error(f"rotate in {self.dir}", e) from e
            return True
        return False

    def _seal_current(self) -> tuple[FileMeta, int]:
        """fsync and close the open file, and append its record to the journal (fsync'd); the head
        that commits the record is the caller's to write. Returns (the file, the record's length)."""
        assert self._fd is not None
        old = self.current
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        old.end_offset = self.offset
        old.size = self._file_size
        old.sha256 = self._sha.hexdigest()
        line = md.journal_line(old)
        append_journal(self.dir, self.meta.journal_bytes, [line])
        if old.last_ts is not None:
            self._last_sealed_ts = max(old.last_ts, self._last_sealed_ts or 0)
        return old, len(line)

    def _committed(self, old: FileMeta, line_bytes: int) -> None:
        self.meta.journal_records += 1
        self.meta.journal_bytes += line_bytes
        self.meta.files.remove(old)

    def _announce(self, f: FileMeta) -> None:
        if self.events is not None:
            assert f.size is not None and f.sha256 is not None and f.end_offset is not None
            at = (f.start_offset, f.end_offset, f.first_ts, f.last_ts, f.header_size, f.start_db)
            self.events.emit(FileSealed(self.chain, f.name, f.seq, f.size, f.sha256, *at))

    def _rotate(self, db: int, now: float) -> None:
        """Close the current incr file and open the next, which starts with SELECT of the current db.

        Order (each step durable before the next): the old file, its journal record, the new file, the
        manifest, the head that commits both. A crash before the head leaves the chain as it was, plus an
        uncommitted record and an unlisted file that recovery removes."""
        old, line_bytes = self._seal_current()
        seq = old.seq + 1
        name = naming.incr_file(seq)
        header = encode_command("SELECT", db)
        tmp = self.dir / naming.tmp_name(name)
        fd = create_file(tmp, append=True)
        write_all(fd, header)
        os.fsync(fd)
        os.replace(tmp, self.dir / name)
        fsync_dir(self.dir)
        new = FileMeta(name=name, type="incr", seq=seq, start_offset=self.offset, header_size=len(header), start_db=db)
        self._committed(old, line_bytes)
        self.meta.files.append(new)
        self._fd = fd
        self._sha = hashlib.sha256(header)
        self._file_size = len(header)
        self._file_opened_at = now
        self._file_has_writes = False
        self._rotate_asked = False
        self._boundary_offset = self.offset
        self._boundary_pos = self._file_size
        self._durable_boundary = (seq, self._file_size, self.offset, db)  # its header was fsync'd
        self.durable_offset = max(self.durable_offset, self.offset)
        self.meta.end_offset = self.durable_offset
        self.meta.db = db
        md.append_manifest(self.dir, new)
        self.write_metadata()
        log.info("segment rotated", extra={"chain": self.chain, "file": name, "offset": self.offset})
        self._announce(old)

    # -- durability ----------------------------------------------------------------------------

    def sync_point(self) -> tuple[int, int]:
        """(fd, offset): fsync'ing fd (a dup, so rotation may close the original) makes offset durable."""
        assert self._fd is not None
        self._sync_boundary = (self.current.seq, self._boundary_pos, self._boundary_offset, self._boundary_db)
        return os.dup(self._fd), self.offset

    def synced(self, offset: int) -> bool:
        """Record that offset is durable; True when the metadata is worth rewriting."""
        if self._sync_boundary[0] == self.current_seq and self._sync_boundary[2] <= offset:
            self._durable_boundary = max(self._durable_boundary, self._sync_boundary)
        if offset > self.durable_offset:
            self.durable_offset = offset
            self._meta_dirty = True
        return self._meta_dirty

    def metadata_snapshot(self) -> bytes:
        """The metadata as of the durable offset, to be written off the event loop."""
        self.meta.end_offset = self.durable_offset
        self.meta.db = self.db if self.durable_offset == self.offset else self.meta.db
        self._meta_dirty = False
        return self.meta.to_json()

    def metadata_version(self) -> tuple[int, bytes]:
        """A numbered copy of the metadata, so a slow writer thread never overwrites a newer one."""
        self._meta_version += 1
        return self._meta_version, self.metadata_snapshot()

    def write_metadata(self, version: tuple[int, bytes] | None = None) -> None:
        """Write the metadata (from any thread); an older version than the one on disk is dropped."""
        seq, raw = version if version is not None else self.metadata_version()
        with self._meta_lock:
            if seq <= self._meta_written:
                return
            try:
                atomic_write(self.dir / naming.METADATA, raw)
            except OSError as e:
                raise _storage_error(f"write metadata in {self.dir}", e) from e
            self._meta_written = seq

    def ship_point(self) -> ShipPoint | None:
        """What a copy elsewhere may hold of the open chain: the open file's bytes up to the last
        durable command boundary, and the head as of that offset (None once the chain is closed).

        The head vouches (verified_until) only for moments whose offset the copy holds: a remote copy
        that lags the local one must not call a second exact whose commands it lacks."""
        if self._fd is None or self.meta.closed:
            return None
        seq, pos, offset, db = self._durable_boundary
        if seq != self.current.seq:
            return None
        while self._confirmations and self._confirmations[0][1] <= offset:
            self._shipped_verified = self._confirmations.popleft()[0]
        head = copy.deepcopy(self.meta)  # the uploader's thread serializes it while this one goes on
        head.end_offset, head.db, head.verified_until = offset, db, self._shipped_verified
        return ShipPoint(self.chain, seq, self.current.name, pos, offset, head)

    # -- gaps in capture -------------------------------------------------------------------------

    @property
    def last_second(self) -> int:
        """The last second something was received in (the snapshot's, before any command)."""
        seconds = [f.last_ts for f in self.meta.files if f.type == "incr" and f.last_ts is not None]
        if self._last_sealed_ts is not None:
            seconds.append(self._last_sealed_ts)
        return max([math.floor(self.meta.snapshot_at), *seconds])

    @property
    def catching_up(self) -> bool:
        return bool(self.meta.gaps) and self.meta.gaps[-1].to_second is None

    def begin_gap(self, reason: str, from_second: int | None = None) -> None:
        """The stream resumes after a time the service was not receiving (+CONTINUE, or the process did
        not run): what arrives first was executed at some unknown second since the last one received
        (or since from_second)."""
        if self.catching_up:
            return  # a gap that was never caught up with (a crash while catching up) goes on
        start = self.last_second if from_second is None else min(from_second, self.last_second)
        self.meta.gaps.append(Gap(start, None, self.offset, reason))
        self._meta_dirty = True

    def confirmed(self, moment: float) -> None:
        """Everything the primary executed before moment has arrived in time (see service.watch)."""
        if self.meta.verified_until is None or moment > self.meta.verified_until:
            self.meta.verified_until = moment
            self._meta_dirty = True
            self._confirmations.append((moment, self.offset))
            if len(self._confirmations) > 100_000:  # nothing ships for a long while: keep the memory bounded
                self._confirmations.popleft()

    def unverified(self) -> None:
        """The service cannot tell whether it keeps up with the primary (INFO refused): no second from
        here on is vouched for."""
        if self.catching_up:
            if self.meta.gaps[-1].reason != "unverified":
                self.meta.gaps[-1].reason = "unverified"
                self._meta_dirty = True
        else:
            self.begin_gap("unverified")

    def end_gap(self, caught_up_at: float) -> None:
        """A moment was confirmed (what the primary had then arrived in time): from its second on, the
        stamps are exact again."""
        gap = self.meta.gaps[-1]
        second = math.floor(caught_up_at)
        if second <= gap.from_second:
            self.meta.gaps.pop()  # caught up within the second the gap began in: nothing is lost
        else:
            gap.to_second = second
            log.info(
                "caught up after a gap in capture",
                extra={"chain": self.chain, "from": gap.from_second, "to": second, "reason": gap.reason},
            )
        self._meta_dirty = True

    # -- reconnects and endings ------------------------------------------------------------------

    def resume_state(self) -> tuple[str, int, int, bool]:
        """(replid, offset, db, in_multi) to PSYNC with: the last complete command stored."""
        return self.meta.replid, self._boundary_offset, self._boundary_db, self._boundary_multi

    def rewind(self) -> None:
        """Cut a partly received command off the end of the file, so the primary can resend it whole."""
        if self._boundary_pos == self._file_size:
            return
        assert self._fd is not None
        dropped = self._file_size - self._boundary_pos
        os.ftruncate(self._fd, self._boundary_pos)
        # ftruncate does not move the write position: without this, a file not opened with O_APPEND
        # (the first incr file of a new chain) would get a hole of zero bytes before the next write.
        os.lseek(self._fd, self._boundary_pos, os.SEEK_SET)
        os.fsync(self._fd)
        self._file_size = self._boundary_pos
        self._durable_boundary = (self.current.seq, self._boundary_pos, self._boundary_offset, self._boundary_db)
        self._sync_boundary = self._durable_boundary
        self._sha = _hash_file(self.dir / self.current.name, self._file_size)
        self.offset = self._boundary_offset
        self.durable_offset = min(self.durable_offset, self.offset)
        self.db = self._boundary_db
        self.in_multi = self._boundary_multi
        self._tail_safe = not self.in_multi
        log.info("partial command dropped", extra={"chain": self.chain, "bytes": dropped, "offset": self.offset})

    def continued(self, replid: str) -> None:
        """+CONTINUE accepted; after a failover the primary has a new replid at the same offsets."""
        if replid != self.meta.replid:
            self.meta.replid = replid
            self.meta.replids.append(ReplidSpan(replid, self.offset))
            self.write_metadata()
            log.info("primary has a new replication id", extra={"chain": self.chain, "replid": replid})

    def ask_rotation(self) -> None:
        """Seal the open file at the next safe boundary, even if it is not due: a successor chain
        takes the sealed files as they are and copies none that is still being written."""
        self._rotate_asked = True

    @property
    def at_safe_boundary(self) -> bool:
        """The file ends after a whole command, outside MULTI/EXEC: where a chain may hand over."""
        return self._fd is not None and self._tail_safe and self._boundary_pos == self._file_size

    def close(self, reason: str, now: float, before_commit: Callable[[FileMeta], None] | None = None) -> None:
        """Close the chain for good (a newer chain supersedes it); it stays restorable.

        before_commit(sealed file) runs once the open file is sealed (fsync'd, its journal record written)
        and before the head records the chain closed: a successor takes the file and becomes visible
        there, so that a crash at any point leaves one of the two chains open."""
        self.rewind()
        sealed: FileMeta | None = None
        if self._fd is not None:
            sealed, line_bytes = self._seal_current()
            if before_commit is not None:
                before_commit(sealed)
            self._committed(sealed, line_bytes)
        self.durable_offset = self.offset
        self.meta.closed = True
        self.meta.closed_at = now
        self.meta.closed_reason = reason
        # the link was lost at some point of the last second received: what the primary did in the
        # rest of it is in the newer chain only, so that second is not this chain's to restore
        last = self.last_second
        if not any(g.covers(last) for g in self.meta.gaps):
            self.meta.gaps.append(Gap(last, last + 1, self.offset, "ended"))
        self.write_metadata()
        log.info("chain closed", extra={"chain": self.chain, "reason": reason, "offset": self.offset})
        if sealed is not None:
            self._announce(sealed)
        if self.events is not None:
            self.events.emit(ChainClosed(self.chain, reason, self.offset))

    def release(self) -> None:
        """Close the file descriptor, leaving the chain open on disk (shutdown)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _hash_file(path: Path, size: int) -> hashlib._Hash:
    h = hashlib.sha256()
    with open_read(path) as f:
        left = size
        while left > 0:
            block = f.read(min(READ_CHUNK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h


@dataclass
class ScanResult:
    """What a scan of an incr file found: the last complete command and the state there."""

    boundary_pos: int
    stream_bytes: int
    db: int
    in_multi: bool
    first_ts: int | None
    last_ts: int | None
    file_size: int
    error: str | None


def scan_incr_file(path: Path, header_size: int, start_db: int) -> ScanResult:
    """Where the newest incr file's last complete command ends, and the state there (tsindex's walker)."""
    ix = index_incr_file(path, header_size=header_size, start_db=start_db, start_offset=0, keep_marks=False)
    error = ix.error
    if error is None and ix.incomplete_tail:
        error = f"incomplete command at byte {ix.end_pos}"
    return ScanResult(
        boundary_pos=ix.end_pos,
        stream_bytes=ix.end_offset,
        db=ix.end_db,
        in_multi=ix.end_in_multi,
        first_ts=ix.marks[0].ts if ix.marks else None,
        last_ts=ix.marks[-1].ts if ix.marks else None,
        file_size=path.stat().st_size,
        error=error,
    )


def append_journal(dir: Path, committed: int, lines: list[bytes]) -> None:
    """Append records to the journal after its committed bytes (cutting any uncommitted tail a crash
    left), and fsync it; the journal is created if it is not there yet."""
    path = dir / naming.JOURNAL
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, FILE_MODE)
    try:
        if os.fstat(fd).st_size != committed:
            os.ftruncate(fd, committed)
        os.lseek(fd, committed, os.SEEK_SET)
        write_all(fd, b"".join(lines))
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(dir)


def recover(dir: Path, *, limits: Limits, now: float | None = None, events: Events | None = None) -> ChainWriter:
    """Reopen a chain after a crash: trust the metadata, cut the tail to the last whole command.

    The journal is cut back to the bytes the head commits (a rotation the crash interrupted before its
    head), files the metadata does not list are removed, the manifest is written from the metadata, and a
    chain in format 1 or 2 gets its journal and a format 3 head. A closed chain is only read (never
    written again): the writer returned has meta.closed set and no file open. Emits no event: what was
    sealed before the crash is on disk, where a subscriber starting up finds it."""
    now = time.time() if now is None else now
    meta = md.load(dir)
    known = {f.name for f in meta.files}
    for f in meta.files:
        if (dir / f.name).is_symlink():
            raise md.MetadataError(f"{dir.name}/{f.name} is a symbolic link: not followed, the chain is not continued")
    if meta.closed:
        head = meta.split()[1]
        return ChainWriter(dir, head, None, file_size=0, sha=hashlib.sha256(), limits=limits, now=now, events=events)
    for p in dir.iterdir():
        if p.name not in known and p.name not in naming.METADATA_FILES:
            if p.is_symlink() or not p.is_file():
                log.warning("not a file of ours: left as it is", extra={"chain": meta.chain, "entry": p.name})
                continue
            log.info("removing unlisted file", extra={"chain": meta.chain, "file": p.name})
            p.unlink()
    md.save_manifest(dir, meta)
    cur = meta.files[-1]
    path = dir / cur.name
    if cur.type != "incr" or not path.exists():
        raise StorageError(f"{dir}: the newest file {cur.name} is missing or not an incr file")
    if (dir / naming.JOURNAL).is_symlink():
        raise md.MetadataError(f"{dir.name}/{naming.JOURNAL} is a symbolic link: not followed")
    # The journal gets every sealed file, the head only the open one.
    sealed = meta.files[:-1]
    committed = meta.journal_records if meta.format >= 3 else 0
    tail = [md.journal_line(f) for f in sealed[committed:]]
    if meta.format >= 3:
        append_journal(dir, meta.journal_bytes, tail)
    else:
        atomic_write(dir / naming.JOURNAL, b"".join(tail))  # format 1 and 2 readers ignore the journal
    scan = scan_incr_file(path, cur.header_size, cur.start_db)
    if scan.boundary_pos < scan.file_size:
        log.warning(
            "cutting an incomplete tail",
            extra={"chain": meta.chain, "file": cur.name, "bytes": scan.file_size - scan.boundary_pos,
                   "reason": scan.error or "incomplete command"},
        )
        with open_update(path) as tail_file:
            tail_file.truncate(scan.boundary_pos)
            os.fsync(tail_file.fileno())
    # Metadata's view of a file is only as fresh as its last write: the file itself is the truth.
    cur.first_ts = scan.first_ts if scan.first_ts is not None else cur.first_ts
    cur.last_ts = scan.last_ts if scan.last_ts is not None else cur.last_ts
    head = ChainHead(**{k: v for k, v in vars(meta).items() if k != "files"}, files=[cur])
    head.journal_records = len(sealed)
    head.journal_bytes = (meta.journal_bytes if meta.format >= 3 else 0) + sum(len(line) for line in tail)
    head.end_offset = cur.start_offset + scan.stream_bytes
    head.db = scan.db
    last_sealed = [f.last_ts for f in sealed if f.type == "incr" and f.last_ts is not None]
    del meta, sealed, tail  # the writer keeps no list of files
    fd = open_append(path)
    writer = ChainWriter(
        dir,
        head,
        fd,
        file_size=scan.boundary_pos,
        sha=_hash_file(path, scan.boundary_pos),
        limits=limits,
        now=now,
        in_multi=scan.in_multi,
        file_has_writes=scan.stream_bytes > 0,
        last_sealed_ts=max(last_sealed, default=None),
        events=events,
    )
    try:
        writer.write_metadata()
    except BaseException:
        writer.release()  # a full disk: the caller retries later, without leaking the descriptor
        raise
    return writer
