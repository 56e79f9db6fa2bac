"""A new chain that starts where the open one still runs: no second between them is lost.

The service takes a fresh snapshot on a second replication connection (`REPLCONF rdb-only 1`) while the
main stream goes on into the open chain. The primary reports the offset X the snapshot holds; every
byte of the stream from X on is already in the open chain, so the successor gets those bytes from there
instead of from the wire, and the main stream never stops:

1. the snapshot is streamed into a hidden directory (`.partial-<chain>`), like any snapshot;
2. the open chain seals its file at the next safe boundary (`ask_rotation`), so that every byte from X
   up to then is in sealed files, which never change;
3. `prepare` (any thread): the sealed file that holds X is copied from X on (after the SELECT of the db
   selected at X), the later sealed files are hard-linked (copied where links are not possible);
4. `complete` (the writer's thread, at a safe boundary, from inside `ChainWriter.close`): the open file
   of the old chain is sealed and linked too, the successor gets an empty open file, its metadata, and
   its name; only then does the old chain's head say closed.

A crash before 4 renamed the directory leaves the old chain open and a `.partial-*` that the next start
removes; after it, the new chain is the newest and continues, and the old one is closed at start.

The successor's restorable window begins at the second in effect at X (the last `#TS` before it), however
long ago: every command before X is in the snapshot and was stamped no later than that second, so the
snapshot plus the commands stamped up to any second from then on is that second's state. (Not the
second of the request: the old chain's window ends at its last command, and an idle primary would leave
the seconds between uncovered.) Gaps in capture and the last
confirmed moment carry over, so the new chain vouches for exactly what the old one did.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

from redis_backup.chain import metadata as md
from redis_backup.chain import naming
from redis_backup.chain.events import ChainBegun, Event, FileSealed
from redis_backup.chain.metadata import ChainHead, ChainMeta, FileMeta, Gap, ReplidSpan
from redis_backup.chain.tsindex import index_incr_file, index_incr_stream
from redis_backup.chain.writer import ChainWriter, SnapshotWriter
from redis_backup.errors import StorageError
from redis_backup.store.fsutil import create_file, fsync_dir, open_read, write_all
from redis_backup.wire.resp import encode_command

log = logging.getLogger(__name__)
COPY_CHUNK = 1 << 20


class SuccessorError(StorageError):
    """The successor cannot be built from what the open chain holds (it is abandoned, the old chain goes on)."""


def link_or_copy(src: Path, dst: Path) -> None:
    """A sealed file in a second chain: a hard link (no bytes copied), or a copy where links fail."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
            raise
        with open_read(src) as f:
            fd = create_file(dst)
            try:
                while block := f.read(COPY_CHUNK):
                    write_all(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)


class _LimitedReader:
    """The first n bytes of a file, as a stream (for the walker)."""

    def __init__(self, f: object, n: int) -> None:
        self._f = f
        self._left = n

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size < 0 else min(size, self._left)
        data: bytes = self._f.read(size)  # type: ignore[attr-defined]
        self._left -= len(data)
        return data


def position_of(path: Path, f: FileMeta, offset: int) -> tuple[int, int, int | None]:
    """(byte position, selected db, second in effect) at stream offset `offset` inside incr file f.

    Positions and offsets differ by the header and the `#TS` lines before the point: the last line at
    or before the offset gives both the position and the second."""
    ix = index_incr_file(path, header_size=f.header_size, start_db=f.start_db, start_offset=f.start_offset)
    if ix.error is not None:
        raise SuccessorError(f"{path}: {ix.error}")
    pos, second = f.header_size + (offset - f.start_offset), None
    for m in ix.marks:
        if m.offset > offset:
            break
        line = len(b"#TS:%d\r\n" % m.ts)
        pos, second = m.pos + line + (offset - m.offset), m.ts
    with open_read(path) as fh:
        upto = index_incr_stream(_LimitedReader(fh, pos), name=path.name, header_size=f.header_size,  # type: ignore[arg-type]
                                 start_db=f.start_db, start_offset=f.start_offset)  # fmt: skip
    if upto.end_pos != pos or upto.end_offset != offset or upto.end_in_multi:
        raise SuccessorError(
            f"{path}: stream offset {offset} is not a command boundary outside MULTI/EXEC (found {upto.end_offset})"
        )
    return pos, upto.end_db, second


class Successor:
    """Builds the chain that supersedes `old` from a sealed snapshot at offset `snap.offset`."""

    def __init__(self, snap: SnapshotWriter, base: FileMeta, old: ChainWriter) -> None:
        self.snap = snap
        self.base = base
        self.old = old
        self.offset = snap.offset
        self.dir = snap.dir
        self.files: list[FileMeta] = []  # the successor's sealed incr files, in order
        self._taken: set[int] = set()  # seqs of the old chain's files already in the successor
        self._sealed: dict[int, FileMeta] = {}  # the old chain's files sealed since subscribing
        self._lock = threading.Lock()
        self.first_second: int | None = None
        self.writer: ChainWriter | None = None
        self._events: list[Event] = []
        self._unsubscribe = old.events.subscribe(self._on_event) if old.events is not None else None

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, FileSealed) and ev.chain == self.old.chain:
            f = FileMeta(name=ev.name, type="incr", seq=ev.seq, start_offset=ev.start_offset, end_offset=ev.end_offset,
                         header_size=ev.header_size, start_db=ev.start_db, first_ts=ev.first_ts, last_ts=ev.last_ts,
                         size=ev.size, sha256=ev.sha256)  # fmt: skip
            with self._lock:
                self._sealed[f.seq] = f

    def _take(self, f: FileMeta) -> None:
        """Hard-link one sealed file of the old chain as the successor's next incr file."""
        seq = len(self.files) + 1
        name = naming.incr_file(seq)
        link_or_copy(self.old.dir / f.name, self.dir / name)
        self.files.append(replace(f, name=name, seq=seq))
        self._taken.add(f.seq)

    def prepare(self) -> None:
        """Copy and link what the old chain has sealed from the snapshot's offset on (any thread: sealed
        files never change). The file holding the offset must be sealed (the caller waited for that)."""
        x = self.offset
        meta = md.load(self.old.dir)  # the journal as committed now
        with self._lock:
            sealed = {f.seq: f for f in meta.incr_files if f.closed}
            sealed.update(self._sealed)
        later = [f for _, f in sorted(sealed.items()) if f.end_offset is not None and f.end_offset > x]
        earlier = [f.last_ts for f in meta.incr_files if f.closed and f.end_offset is not None
                   and f.end_offset <= x and f.last_ts is not None]  # fmt: skip
        second = max(earlier, default=math.floor(meta.snapshot_at))
        for f in later:
            assert f.end_offset is not None
            if f.start_offset < x:
                second = self._copy_from(f, x, second)
            else:
                self._take(f)
        # not the request's second: a primary idle since then leaves the old chain's last second (and those
        # after it) to the successor, which holds their state
        self.first_second = second

    def _copy_from(self, f: FileMeta, x: int, second: int) -> int:
        """The successor's first incr file: the SELECT of the db at x, the second in effect there, then
        f's bytes from x on. Returns that second."""
        src = self.old.dir / f.name
        pos, db, at = position_of(src, f, x)
        second = second if at is None else at
        header = encode_command("SELECT", db)
        stamp = b"#TS:%d\r\n" % second  # like every incr file: a second before its first command
        name = naming.incr_file(1)
        fd = create_file(self.dir / name)
        sha = hashlib.sha256(header + stamp)
        size = len(header) + len(stamp)
        try:
            write_all(fd, header + stamp)
            with open_read(src) as fh:
                fh.seek(pos)
                while block := fh.read(COPY_CHUNK):
                    write_all(fd, block)
                    sha.update(block)
                    size += len(block)
            os.fsync(fd)
        finally:
            os.close(fd)
        ix = index_incr_file(self.dir / name, header_size=len(header), start_db=db, start_offset=x)
        if ix.error is not None or ix.incomplete_tail or ix.end_offset != f.end_offset:
            raise SuccessorError(f"{self.dir / name}: the copy of {f.name} from offset {x} does not check out")
        self.files.append(FileMeta(name=name, type="incr", seq=1, start_offset=x, end_offset=f.end_offset,
                                   header_size=len(header), start_db=db, first_ts=ix.first_ts, last_ts=ix.last_ts,
                                   size=size, sha256=sha.hexdigest()))  # fmt: skip
        self._taken.add(f.seq)
        return second

    def complete(self, sealed: FileMeta) -> None:
        """From ChainWriter.close (the writer's thread): take the files sealed since prepare and the one
        just sealed, open the successor's file, write its metadata and give it its name."""
        old = self.old
        with self._lock:
            pending = dict(self._sealed)
        pending[sealed.seq] = sealed
        for seq, f in sorted(pending.items()):
            if seq not in self._taken and f.end_offset is not None and f.end_offset > self.offset:
                self._take(f)
        if self.files and self.files[0].start_offset != self.offset:
            raise SuccessorError(f"{self.dir}: the successor's commands start at {self.files[0].start_offset}, "
                                 f"not at its snapshot's offset {self.offset}")  # fmt: skip
        end = old.offset
        db = old.db
        header = encode_command("SELECT", db)
        seq = len(self.files) + 1
        name = naming.incr_file(seq)
        fd = create_file(self.dir / name, append=True)
        try:
            write_all(fd, header)
            os.fsync(fd)
            assert self.first_second is not None, "prepare() first"
            first = self.first_second
            gaps = [Gap(max(g.from_second, first), g.to_second, max(g.offset, self.offset), g.reason)
                    for g in old.meta.gaps if g.to_second is None or g.to_second > max(g.from_second, first)]
            spans = [ReplidSpan(self.snap.replid, self.offset)] + [
                ReplidSpan(s.replid, s.from_offset) for s in old.meta.replids if s.from_offset > self.offset
            ]
            now = time.time()
            meta = ChainMeta(
                chain=self.snap.chain,
                primary=old.meta.primary,
                replid=old.meta.replid,
                start_offset=self.offset,
                end_offset=end,
                db=db,
                # its first second, and after the old chain's in the order of chains (restore takes the
                # newest for the latest state): on a primary idle since the old snapshot they share a second
                snapshot_at=max(float(first), math.nextafter(old.meta.snapshot_at, math.inf)),
                snapshot_done_at=now,
                last_write_at=old.meta.last_write_at,
                rdb_version=self.snap.rdb_version,
                server_version=self.snap.scan.redis_ver,
                server_name=self.snap.scan.server_name,
                base_max_db=self.snap.base_max_db,
                stream_max_db=old.meta.stream_max_db,
                verified_until=old.meta.verified_until,
                replids=spans,
                gaps=gaps,
                files=[self.base, *self.files, FileMeta(name=name, type="incr", seq=seq, start_offset=end,
                                                        header_size=len(header), start_db=db)],
            )  # fmt: skip
            meta.check(f"successor {self.snap.chain}")
            md.save_manifest(self.dir, meta, fresh=True)
            head: ChainHead = md.save(self.dir, meta, fresh=True)
            fsync_dir(self.dir)
            final = old.dir.parent / self.snap.chain
            os.replace(self.dir, final)
            fsync_dir(final.parent)
        except BaseException:
            os.close(fd)
            raise
        last_sealed = max((f.last_ts for f in self.files if f.last_ts is not None), default=None)
        self.writer = ChainWriter(final, head, fd, file_size=len(header), sha=hashlib.sha256(header), limits=old.limits,
                                  now=now, last_sealed_ts=last_sealed, events=old.events)  # fmt: skip
        log.info("new chain begun without a gap", extra={"chain": self.snap.chain, "offset": self.offset,
                 "from_second": first, "linked_files": len(self.files), "supersedes": old.chain})  # fmt: skip
        assert self.base.size is not None and self.base.sha256 is not None
        self._events = [ChainBegun(self.snap.chain, self.base.name, self.base.size, self.base.sha256, self.offset)]
        for f in self.files:
            assert f.size is not None and f.sha256 is not None and f.end_offset is not None
            self._events.append(FileSealed(self.snap.chain, f.name, f.seq, f.size, f.sha256, f.start_offset,
                                           f.end_offset, f.first_ts, f.last_ts, f.header_size, f.start_db))  # fmt: skip

    def announce(self) -> None:
        """Emit the successor's events (after the old chain's close emitted its own)."""
        if self.old.events is not None:
            for ev in self._events:
                self.old.events.emit(ev)

    def abandon(self) -> None:
        """Stop following the old chain and remove the hidden directory (unless it became the chain)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.writer is None:
            self.snap.abort()
            shutil.rmtree(self.dir, ignore_errors=True)
