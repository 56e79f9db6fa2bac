"""A deliberately simple, whole-buffer parser of the replication stream: the oracle for the scanner.

It shares no code with redis_backup.resp. It parses a complete buffer (no resumption), records every
command with its byte range, and from that list :func:`expect_chunk` derives what
``StreamScanner.feed`` must report for any chunk ``[a, b)`` of the buffer, however it was split.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

NOT_WRITES = {b"PING", b"SELECT", b"REPLCONF", b"MULTI", b"EXEC"}


@dataclass(frozen=True)
class Item:
    """A command (args) or an annotation line (args empty, ``annotation`` holds the line)."""

    start: int
    end: int
    args: tuple[bytes, ...]
    db: int  # after this item
    in_multi: bool  # after this item
    annotation: bytes = b""

    @property
    def name(self) -> bytes:
        return self.args[0].upper() if self.args else b""

    @property
    def getack(self) -> bool:
        return self.name == b"REPLCONF" and len(self.args) > 1 and self.args[1].upper() == b"GETACK"

    @property
    def write(self) -> bool:
        return bool(self.args) and self.name not in NOT_WRITES


@dataclass(frozen=True)
class Chunk:
    """What StreamScanner must report after feeding the chunk [a, b)."""

    first_safe: int
    last_safe: int
    last_safe_db: int | None  # None: not determined by this chunk (no safe point in it)
    last_boundary: int
    db: int
    in_multi: bool
    writes: bool
    getack: bool
    commands: int
    annotation_bytes: int
    at_boundary: bool


class Stream:
    """The parsed buffer: items, and the state before the first one."""

    def __init__(
        self, data: bytes, *, db: int = 0, in_multi: bool = False, annotations: bool = False
    ) -> None:
        self.data = data
        self.db0 = db
        self.multi0 = in_multi
        self.items = parse(data, db=db, in_multi=in_multi, annotations=annotations)
        if self.items:
            assert self.items[-1].end == len(data), "the buffer must end at a boundary"
        self.ends = [it.end for it in self.items]
        # Boundaries (offset 0 counts) with the state there.
        self.points = [0, *self.ends]
        self.point_db = [db, *(it.db for it in self.items)]
        self.point_multi = [in_multi, *(it.in_multi for it in self.items)]
        self.safe = [p for p, m in zip(self.points, self.point_multi, strict=True) if not m]
        self.safe_db = [d for d, m in zip(self.point_db, self.point_multi, strict=True) if not m]

    @property
    def boundaries(self) -> set[int]:
        return set(self.ends)

    def state_at(self, b: int) -> tuple[int, bool]:
        """(db, in_multi) once every item ending at or before b was seen."""
        i = bisect.bisect_right(self.points, b) - 1
        return self.point_db[i], self.point_multi[i]

    def expect_chunk(self, a: int, b: int) -> Chunk:
        lo = bisect.bisect_right(self.ends, a)  # items ending in (a, b]
        hi = bisect.bisect_right(self.ends, b)
        inside = self.items[lo:hi]
        s_lo = bisect.bisect_left(self.safe, a)  # safe points in [a, b]
        s_hi = bisect.bisect_right(self.safe, b)
        db, in_multi = self.state_at(b)
        return Chunk(
            first_safe=self.safe[s_lo] - a if s_lo < s_hi else -1,
            last_safe=self.safe[s_hi - 1] - a if s_lo < s_hi else -1,
            last_safe_db=self.safe_db[s_hi - 1] if s_lo < s_hi else None,
            last_boundary=inside[-1].end - a if inside else -1,
            db=db,
            in_multi=in_multi,
            writes=any(it.write for it in inside),
            getack=any(it.getack for it in inside),
            commands=sum(1 for it in inside if it.args),
            annotation_bytes=sum(len(it.annotation) for it in inside),
            at_boundary=b in self.points,
        )


def parse(data: bytes, *, db: int = 0, in_multi: bool = False, annotations: bool = False) -> list[Item]:
    """Every complete item of data; raises ValueError on anything else (a truncated tail included)."""
    items: list[Item] = []
    pos = 0
    while pos < len(data):
        start = pos
        eol = data.index(b"\r\n", pos)
        header = data[pos:eol]
        pos = eol + 2
        if annotations and header.startswith(b"#"):
            items.append(Item(start, pos, (), db, in_multi, annotation=data[start:pos]))
            continue
        if not header.startswith(b"*"):
            raise ValueError(f"not an array at {start}: {header[:20]!r}")
        args = []
        for _ in range(int(header[1:])):
            eol = data.index(b"\r\n", pos)
            if data[pos : pos + 1] != b"$":
                raise ValueError(f"not a bulk at {pos}")
            n = int(data[pos + 1 : eol])
            pos = eol + 2
            if data[pos + n : pos + n + 2] != b"\r\n":
                raise ValueError(f"bulk at {pos} not followed by CRLF")
            args.append(data[pos : pos + n])
            pos += n + 2
        name = args[0].upper()
        if name == b"SELECT":
            db = int(args[1])
        elif name == b"MULTI":
            in_multi = True
        elif name == b"EXEC":
            in_multi = False
        items.append(Item(start, pos, tuple(args), db, in_multi))
    return items


def encode(*args: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)
