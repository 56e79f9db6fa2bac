"""What is local and not yet in the bucket: a pure function of the local metadata and one listing.

The uploader derives its work from this at start and after any failure, never from memory, so that a
crash loses nothing: whatever was not uploaded is still local, and the listing says what was. The
order of the steps is the order of safety: data before the head that commits it, deletions last
(they only ever remove what a newer head no longer needs). `redis-backup upload --dry-run` prints it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from redis_backup.chain.metadata import FileMeta
from redis_backup.chain.objects import HeadObject, PartObject, RemoteObject, SealedObject, part_run

Action = Literal["upload", "ship", "head", "delete"]


@dataclass(frozen=True)
class LocalChain:
    """One local chain as its metadata has it (files complete, the sealed ones with size and SHA-256)."""

    chain: str
    closed: bool
    end_offset: int
    files: tuple[FileMeta, ...]

    @property
    def sealed(self) -> tuple[FileMeta, ...]:
        return tuple(f for f in self.files if f.closed)


@dataclass(frozen=True)
class Step:
    action: Action
    chain: str
    what: str  # a file name, or the objects to delete
    why: str
    file: FileMeta | None = None
    names: tuple[str, ...] = ()  # objects (inside the chain, as in the bucket) to delete
    from_pos: int = 0  # ship: the bytes of the open file the bucket already holds

    def line(self) -> str:
        return f"{self.action:8} {self.chain}  {self.what}: {self.why}"


def part_reach(parts: Sequence[PartObject], seq: int) -> int:
    """How far the parts of file seq, put end to end from byte 0, reach without a hole."""
    return part_run((p, None) for p in parts if p.seq == seq)[1]


def complete_in_bucket(c: LocalChain, newest: HeadObject | None) -> bool:
    """The bucket holds the whole local chain: it is closed, and so is the bucket's newest head, which
    commits every sealed file up to the same end (a head is written only after every object it commits)."""
    return bool(c.closed and newest and newest.closed and newest.end_offset == c.end_offset
                and newest.records == len(c.sealed))  # fmt: skip


def backlog(local: Sequence[LocalChain], remote: Mapping[str, Mapping[str, tuple[RemoteObject, str]]]) -> list[Step]:
    """The steps that make the bucket hold every local chain; remote: per chain, its objects by logical
    name (chain.remoteview.physical_objects). Chains only in the bucket are not this function's (retention)."""
    steps: list[Step] = []
    deletes: list[Step] = []
    for c in local:
        objs = remote.get(c.chain, {})
        have = {(o.file.type, o.file.seq, o.file.sha256) for o, _ in objs.values() if isinstance(o, SealedObject)}
        parts = [o for o, _ in objs.values() if isinstance(o, PartObject)]
        heads = sorted(((o, phys) for o, phys in objs.values() if isinstance(o, HeadObject)),
                       key=lambda h: (h[0].end_offset, h[0].written_ms))  # fmt: skip
        for f in c.sealed:  # names carry the SHA-256: an object of another content is never overwritten
            if (f.type, f.seq, f.sha256) not in have:
                steps.append(Step("upload", c.chain, f.name, "sealed locally, not in the bucket", file=f))
        newest = heads[-1][0] if heads else None
        if c.closed:
            if not complete_in_bucket(c, newest):
                steps.append(Step("head", c.chain, "final head", "closed locally; the bucket's head is older"))
        else:
            open_file = c.files[-1]
            reach = part_reach(parts, open_file.seq)
            steps.append(Step("ship", c.chain, open_file.name, f"open: the bucket holds its first {reach} bytes",
                              file=open_file, from_pos=reach))  # fmt: skip
        open_seq = None if c.closed else c.files[-1].seq
        stale_parts = tuple(phys for o, phys in objs.values() if isinstance(o, PartObject) and o.seq != open_seq)
        if stale_parts:
            deletes.append(Step("delete", c.chain, f"{len(stale_parts)} part objects",
                                "of files the bucket now holds whole", names=tuple(sorted(stale_parts))))  # fmt: skip
        old_heads = tuple(phys for _, phys in heads[:-1])
        if old_heads:
            deletes.append(Step("delete", c.chain, f"{len(old_heads)} older heads", "superseded by a newer head",
                                names=old_heads))  # fmt: skip
    return steps + deletes
