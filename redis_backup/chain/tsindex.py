"""Index of an incr file: where each `#TS:` line begins, where the commands end, whether it is well-formed.

The one walker of the incr format: restore plans, list and verify index files with it, and the crash
recovery (writer.recover) finds with it where to cut the newest file and the state there.

Planning a restore is pure (plan.py); this is the I/O it needs, done once per file in one streaming pass
(constant memory). The file is walked with resp.StreamScanner, fed in pieces split at every `#TS:` byte
sequence: when the scanner is at a command boundary just before one, it is an annotation line, not bytes
inside a value. A `#TS:` line is only ever written at a safe boundary (outside MULTI/EXEC), so cutting the
file where one begins never splits a transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from redis_backup.errors import ProtocolError
from redis_backup.store.fsutil import open_read
from redis_backup.wire.resp import StreamScanner, encode_command

READ_CHUNK = 1 << 20
_TS = b"#TS:"


@dataclass(frozen=True)
class TsMark:
    """A `#TS:<ts>` line: it begins at byte `pos` of the file, at stream offset `offset`."""

    ts: int
    pos: int
    offset: int
    safe: bool = True  # outside MULTI/EXEC (always, for files the backup wrote)


@dataclass(frozen=True)
class FileIndex:
    name: str
    size: int  # bytes read (the whole file as it was when read)
    header_size: int
    start_offset: int
    marks: tuple[TsMark, ...] = ()
    end_pos: int = 0  # after the last complete command or annotation
    end_offset: int = 0  # stream offset at end_pos
    safe_pos: int = 0  # after the last complete command outside MULTI/EXEC: where a file may end
    safe_offset: int = 0
    end_db: int = 0  # the db selected at end_pos
    end_in_multi: bool = False  # whether a MULTI is open at end_pos
    header_ok: bool = True  # the header is the SELECT of the start db
    error: str | None = None  # not RESP (the scan stopped there)
    ts_out_of_order: bool = False
    sha256: str | None = field(default=None, compare=False)

    @property
    def incomplete_tail(self) -> bool:
        """Bytes after the last complete command (a command still being written, or damage)."""
        return self.end_pos < self.size

    @property
    def first_ts(self) -> int | None:
        return self.marks[0].ts if self.marks else None

    @property
    def last_ts(self) -> int | None:
        """The last second with a `#TS:` line inside the complete, safe part of the file."""
        for m in reversed(self.marks):
            if m.pos < self.safe_pos:
                return m.ts
        return None


class _Walk:
    """Feeds the scanner and keeps the absolute positions of what it reports."""

    def __init__(self, header_size: int, start_db: int, start_offset: int, keep_marks: bool = True) -> None:
        self.sc = StreamScanner(db=start_db, annotations=True)
        self.keep_marks = keep_marks
        self.end_db, self.end_in_multi = start_db, False
        self.header_size = header_size
        self.start_offset = start_offset
        self.annotation_bytes = 0
        self.end_pos = self.safe_pos = header_size
        self.end_ann = self.safe_ann = 0
        self.marks: list[TsMark] = []
        self.pending: tuple[int, int, bool] | None = None  # a #TS line not yet complete
        self.error: str | None = None

    def offset_at(self, pos: int, annotation_bytes: int) -> int:
        return self.start_offset + pos - self.header_size - annotation_bytes

    def feed(self, data: bytes, at: int) -> None:
        """Feed data, which begins at absolute position `at`."""
        if not data or self.error is not None:
            return
        sc = self.sc
        try:
            sc.feed(data)
        except ProtocolError as e:
            self.error = f"not a valid command stream after byte {self.end_pos}: {e}"
        # Even after an error, the per-chunk results describe what came before it.
        self.annotation_bytes += sc.annotation_bytes
        if self.pending is not None and sc.annotation_bytes and sc.last_ts is not None:
            pos, offset, safe = self.pending
            if not self.keep_marks and len(self.marks) == 2:
                self.marks.pop()  # the first and the last are all that is asked for
            self.marks.append(TsMark(sc.last_ts, pos, offset, safe))
            self.pending = None
        if sc.last_boundary >= 0:
            # a SELECT, MULTI or EXEC is a whole command: the state after the chunk is the state at its last boundary
            self.end_pos = at + sc.last_boundary
            self.end_ann = self.annotation_bytes
            self.end_db, self.end_in_multi = sc.db, sc.in_multi
        if sc.last_safe >= 0:
            self.safe_pos = at + sc.last_safe
            self.safe_ann = self.annotation_bytes

    def annotation_starts(self, at: int) -> None:
        """The next byte (absolute position `at`) is `#`: note a mark if it begins an annotation line."""
        if self.error is None and self.sc.at_boundary:
            self.pending = (at, self.offset_at(at, self.annotation_bytes), not self.sc.in_multi)


def index_incr_file(
    path: Path,
    *,
    header_size: int,
    start_db: int,
    start_offset: int,
    hash: bool = False,
    chunk: int = READ_CHUNK,
    keep_marks: bool = True,
) -> FileIndex:
    """Walk one incr file (OSError is the caller's to handle). keep_marks False keeps only the first and
    the last mark: constant memory for a file of any length, when only where it ends matters."""
    with open_read(path) as f:
        return index_incr_stream(
            f, name=path.name, header_size=header_size, start_db=start_db, start_offset=start_offset,
            hash=hash, chunk=chunk, keep_marks=keep_marks,
        )  # fmt: skip


def index_incr_stream(
    f: BinaryIO,
    *,
    name: str,
    header_size: int,
    start_db: int,
    start_offset: int,
    hash: bool = False,
    chunk: int = READ_CHUNK,
    keep_marks: bool = True,
    on_read: Callable[[int], None] | None = None,
) -> FileIndex:
    """Walk one incr file read as a stream (a `Store.open`), to its end; the stream's errors are the
    caller's to handle. on_read(n) is told of each block read (a command's progress)."""
    sha = hashlib.sha256() if hash else None
    walk = _Walk(header_size, start_db, start_offset, keep_marks)
    head = f.read(header_size)
    size = len(head)
    if on_read is not None:
        on_read(size)
    if sha is not None:
        sha.update(head)
    header_ok = len(head) == header_size and (header_size == 0 or head == encode_command("SELECT", start_db))
    pos = header_size  # absolute position of buf[0]
    carry = b""
    while True:
        block = f.read(chunk)
        size += len(block)
        if on_read is not None:
            on_read(len(block))
        if sha is not None:
            sha.update(block)
        eof = not block
        buf = carry + block if carry else block
        # Hold back the last 3 bytes: they may begin a "#TS:" that ends in the next block.
        limit = len(buf) if eof else max(len(buf) - (len(_TS) - 1), 0)
        prev = 0
        j = buf.find(_TS)
        while 0 <= j < limit and walk.error is None:
            walk.feed(buf[prev:j], pos + prev)
            prev = j
            walk.annotation_starts(pos + j)
            j = buf.find(_TS, j + 1)
        walk.feed(buf[prev:limit], pos + prev)
        carry = buf[limit:]
        pos += limit
        if eof or (walk.error is not None and sha is None):
            break
    return FileIndex(
        name=name,
        size=size,
        header_size=header_size,
        start_offset=start_offset,
        marks=tuple(walk.marks),
        end_pos=walk.end_pos,
        end_offset=walk.offset_at(walk.end_pos, walk.end_ann),
        safe_pos=walk.safe_pos,
        safe_offset=walk.offset_at(walk.safe_pos, walk.safe_ann),
        end_db=walk.end_db,
        end_in_multi=walk.end_in_multi,
        header_ok=header_ok,
        error=walk.error,
        ts_out_of_order=walk.sc.ts_out_of_order,
        sha256=sha.hexdigest() if sha is not None else None,
    )
