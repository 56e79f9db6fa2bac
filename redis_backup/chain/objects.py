"""The names of a backup's objects in a bucket: every one is made and parsed here (docs/FORMAT.md,
"In S3").

A bucket cannot append, so the layout is a log of immutable objects whose names say what they hold:
a listing alone tells a reader every sealed file with its offsets, seconds, size and SHA-256, every
piece of the open file, and which head is newest, before a byte is downloaded. Names sort by stream
position within a chain (`f-` sealed files by seq, `h-` heads by end offset, `p-` parts by seq and
byte position). The codec's suffix (`.zst`, `.enc`) follows the name; it is not part of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from redis_backup.chain import naming
from redis_backup.chain.metadata import FileMeta

T = TypeVar("T")
LEASE = "lease.json"  # at the top of the prefix: which service writes it (conditional writes)
# In a chain's prefix: retention is deleting the chain. Written (plain JSON, no codec) before the first of
# its objects goes, deleted after the last; a reader never offers a chain that has it, and the next prune
# finishes what a crash left.
DELETING = "deleting.json"

_SEALED = re.compile(
    r"f-(\d{8})-(base|incr)-(\d{20})-(\d{20})-(\d{1,2})-(\d{1,10})-(n|\d{1,13})-(n|\d{1,13})-(\d{1,19})-([0-9a-f]{64})"
    r"\.(rdb|aof)"
)
_PART = re.compile(r"p-(\d{8})-(\d{16})-(\d{16})-([0-9a-f]{64})\.aof")
_HEAD = re.compile(r"h-(\d{20})-(\d{8})-(\d{16})-(\d{13})-([oc])\.json")


@dataclass(frozen=True)
class SealedObject:
    """A sealed data file (the base, or an incr file once closed), whole."""

    file: FileMeta


@dataclass(frozen=True)
class PartObject:
    """Bytes [start, end) of the open incr file seq, shipped before the file was sealed."""

    seq: int
    start: int
    end: int
    sha256: str


@dataclass(frozen=True)
class HeadObject:
    """The chain's head (its fields and open file) as of end_offset, and how many bytes of the open file
    its parts hold then (shipped); the newest name wins."""

    end_offset: int
    records: int  # the sealed files it commits (base first): the journal a reader makes from their names
    shipped: int
    written_ms: int
    closed: bool


RemoteObject = SealedObject | PartObject | HeadObject


def part_run(parts: Iterable[tuple[PartObject, T]], until: int | None = None) -> tuple[list[tuple[PartObject, T]], int]:
    """The parts that, put end to end from byte 0, cover a file (up to until), each start taken by its
    longest part; and how far they reach without a hole."""
    by_start: dict[int, tuple[PartObject, T]] = {}
    for p, tag in parts:
        if p.start not in by_start or p.end > by_start[p.start][0].end:
            by_start[p.start] = (p, tag)
    run: list[tuple[PartObject, T]] = []
    pos = 0
    while (until is None or pos < until) and pos in by_start:
        run.append(by_start[pos])
        pos = by_start[pos][0].end
    return run, pos


def _opt(v: int | None) -> str:
    return "n" if v is None else str(v)


def _unopt(s: str) -> int | None:
    return None if s == "n" else int(s)


def sealed_name(f: FileMeta) -> str:
    assert f.size is not None and f.sha256 is not None
    end = f.start_offset if f.end_offset is None else f.end_offset  # a base of format 1 may have none
    ext = "rdb" if f.type == "base" else "aof"
    return (
        f"f-{f.seq:08d}-{f.type}-{f.start_offset:020d}-{end:020d}-{f.header_size}-{f.start_db}-"
        f"{_opt(f.first_ts)}-{_opt(f.last_ts)}-{f.size}-{f.sha256}.{ext}"
    )


def part_name(seq: int, start: int, end: int, sha256: str) -> str:
    return f"p-{seq:08d}-{start:016d}-{end:016d}-{sha256}.aof"


def head_name(end_offset: int, records: int, shipped: int, written_ms: int, closed: bool) -> str:
    return f"h-{end_offset:020d}-{records:08d}-{shipped:016d}-{written_ms:013d}-{'c' if closed else 'o'}.json"


def parse(name: str) -> RemoteObject | None:
    """What an object name (inside its chain, without the codec's suffix) holds; None: not ours."""
    if m := _SEALED.fullmatch(name):
        seq, kind = int(m[1]), m[2]
        start, end = int(m[3]), int(m[4])
        file = FileMeta(
            name=naming.base_file(seq) if kind == "base" else naming.incr_file(seq),
            type="base" if kind == "base" else "incr",
            seq=seq,
            start_offset=start,
            end_offset=end,
            header_size=int(m[5]),
            start_db=int(m[6]),
            first_ts=_unopt(m[7]),
            last_ts=_unopt(m[8]),
            size=int(m[9]),
            sha256=m[10],
        )
        if (kind == "base") != (m[11] == "rdb"):
            return None
        return SealedObject(file)
    if m := _PART.fullmatch(name):
        start, end = int(m[2]), int(m[3])
        return PartObject(int(m[1]), start, end, m[4]) if end > start else None
    if m := _HEAD.fullmatch(name):
        return HeadObject(int(m[1]), int(m[2]), int(m[3]), int(m[4]), m[5] == "c")
    return None
