"""Restore planning, as pure functions over chain records and file indexes (no I/O here).

Steps, with the only I/O between them done by the caller:

1. ``choose_chain(chains, at, chain_id)``: the newest chain whose window covers TIME (or the one asked for).
2. ``file_to_cut(chain, at)``: the incr file the cut falls in; the caller indexes it (tsindex).
3. ``plan_restore(chain, at, index)``: the base, the incr files in order and, for the last one, the byte
   where the first ``#TS`` line later than TIME begins. ``#TS`` lines are written only outside
   MULTI/EXEC, so that byte is a safe place to end a file. Without TIME (the latest state) the last file
   ends after its last complete command outside MULTI/EXEC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis_backup.chain.catalog import ChainRecord, FileRecord, describe_spans, windows
from redis_backup.chain.schema import GAP_REASONS
from redis_backup.chain.tsindex import FileIndex
from redis_backup.errors import BackupError
from redis_backup.progress import human_bytes
from redis_backup.times import iso


class PlanError(BackupError):
    """No restore is possible as asked: the message says why and what the window is."""


@dataclass(frozen=True)
class PlannedFile:
    name: str
    type: Literal["base", "incr"]
    seq: int
    size: int  # the source file's size
    copy_bytes: int  # bytes to copy from its start
    sha256: str | None  # expected SHA-256 of the whole source file; None: still open, checked by scanning
    start_offset: int
    end_offset: int  # stream offset where the copy ends
    cut_before_ts: int | None = None  # the copy ends where the `#TS` line of this second begins

    @property
    def cut(self) -> bool:
        return self.copy_bytes < self.size


@dataclass(frozen=True)
class RestorePlan:
    chain: str
    primary: str
    chain_state: str
    at: int | None  # the second asked for (None: the latest state)
    included_until: int  # commands recorded up to the end of this second are in
    snapshot_at: float
    window: tuple[int, int]  # the chain's first and last restorable second
    base: PlannedFile
    incr: tuple[PlannedFile, ...]
    max_db: int | None = None  # the highest db the chain uses, if its metadata knows (else the copy finds out)
    asked_at: int | None = None  # the second asked for, when --before-gap moved `at` out of a gap
    # what wrote the base (from the metadata; None: not known): a scratch server must read it
    rdb_version: int | None = None
    server_name: str | None = None
    server_version: str | None = None

    @property
    def files(self) -> tuple[PlannedFile, ...]:
        return (self.base, *self.incr)

    @property
    def end_offset(self) -> int:
        return self.incr[-1].end_offset if self.incr else self.base.start_offset

    @property
    def expected_size(self) -> int:
        return sum(f.copy_bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "primary": self.primary,
            "chain_state": self.chain_state,
            "at": iso(self.at) if self.at is not None else None,
            "at_unix": self.at,
            "asked_at_unix": self.asked_at,
            "max_db": self.max_db,
            "included_until": iso(self.included_until),
            "included_until_unix": self.included_until,
            "snapshot_at": iso(self.snapshot_at),
            "window": {
                "from": iso(self.window[0]),
                "to": iso(self.window[1]),
                "from_unix": self.window[0],
                "to_unix": self.window[1],
            },
            "start_offset": self.base.start_offset,
            "end_offset": self.end_offset,
            "expected_size": self.expected_size,
            "files": [
                {
                    "name": f.name,
                    "type": f.type,
                    "seq": f.seq,
                    "size": f.size,
                    "copy_bytes": f.copy_bytes,
                    "cut": f.cut,
                    "cut_before_ts": f.cut_before_ts,
                    "start_offset": f.start_offset,
                    "end_offset": f.end_offset,
                    "checked_by": "sha256" if f.sha256 else "scan",
                }
                for f in self.files
            ],
        }

    def render(self) -> str:
        target = f"the state at {iso(self.at)}" if self.at is not None else "the latest state"
        if self.asked_at is not None and self.asked_at != self.at:
            target += f" (the last exact second before the gap in capture that {iso(self.asked_at)} is in)"
        rows = [
            f"chain     {self.chain} ({self.chain_state}, primary {self.primary})",
            f"restores  {target}: commands recorded up to {iso(self.included_until)}",
            f"window    {iso(self.window[0])} .. {iso(self.window[1])}",
            f"snapshot  {iso(self.snapshot_at)}; offsets {self.base.start_offset} .. {self.end_offset}",
        ]
        width = max(len(f.name) for f in self.files)
        for i, f in enumerate(self.files):
            if not f.cut:
                how = f"{human_bytes(f.size)}, whole"
            elif f.cut_before_ts is not None:
                how = f"{f.copy_bytes} of {f.size} bytes: cut before #TS {iso(f.cut_before_ts)}"
            else:
                how = f"{f.copy_bytes} of {f.size} bytes: cut after the last complete command"
            rows.append(f"{'files' if i == 0 else '':9} {f.name:{width}}  {how}")
        rows.append(f"size      {human_bytes(self.expected_size)}")
        return "\n".join(rows)


# --------------------------------------------------------------------------------------------- windows


def describe_windows(chains: Sequence[ChainRecord]) -> str:
    return describe_spans(windows(chains))


# --------------------------------------------------------------------------------------------- planning


def _exact(chain: ChainRecord, at: int) -> bool:
    return any(lo <= at <= hi for lo, hi in chain.exact_spans)


def nearest_exact(chains: Sequence[ChainRecord], at: int) -> tuple[int | None, int | None]:
    """The last exactly restorable second before `at` and the first after it (None: there is none)."""
    spans = windows(chains)
    before = max((min(hi, at - 1) for lo, hi in spans if lo < at), default=None)
    after = min((max(lo, at + 1) for lo, hi in spans if hi > at), default=None)
    return before, after


def _gap_error(chains: Sequence[ChainRecord], chain: ChainRecord, at: int) -> PlanError | None:
    gap = chain.gap_at(at)
    if gap is None:
        return None
    before, after = nearest_exact(chains, at)
    if gap.to_second is None:
        span = f"since {iso(gap.from_second)} (not caught up yet)"
    else:
        span = f"{iso(gap.from_second)} .. {iso(gap.to_second - 1)}"
    why = GAP_REASONS[gap.reason][1]
    near = f"nearest exact seconds: {iso(before) if before is not None else 'none'} before, " + (
        f"{iso(after)} after" if after is not None else "none after"
    )
    hint = f"; --before-gap restores {iso(before)}" if before is not None else ""
    return PlanError(
        f"{iso(at)} is inside a gap in capture of chain {chain.chain} ({span}: {why}, so the commands of "
        f"those seconds arrived later and which second each belongs to is not known); {near}{hint}"
    )


def resolve_time(chains: Sequence[ChainRecord], at: int | None, *, before_gap: bool = False) -> int | None:
    """`at` itself, or (before_gap) the last exact second before the gap in capture it falls in."""
    if at is None or not before_gap or any(_exact(c, at) for c in chains):
        return at
    if any(c.gap_at(at) for c in chains):
        before, _ = nearest_exact(chains, at)
        if before is not None:
            return before
    return at  # not in a gap: choose_chain says what is wrong


def choose_chain(chains: Sequence[ChainRecord], *, at: int | None, chain_id: str | None = None) -> ChainRecord:
    """The chain asked for, or the newest whose window covers `at` exactly (the newest chain for the
    latest). A second inside a gap in capture is refused, naming the gap and the nearest exact seconds."""
    if chain_id is not None:
        chain = next((c for c in chains if c.chain == chain_id), None)
        if chain is None:
            raise PlanError(f"no chain {chain_id}; {describe_windows(chains)}")
        if at is not None and not _exact(chain, at):
            gap = _gap_error(chains, chain, at)
            if gap is not None:
                raise gap
            raise PlanError(
                f"{iso(at)} is outside chain {chain.chain} ({iso(chain.first_second)} .. "
                f"{iso(chain.last_second)}); {describe_windows(chains)}"
            )
        return chain
    if not chains:
        raise PlanError(describe_windows(chains))
    newest_first = sorted(chains, key=lambda c: (c.snapshot_at, c.chain), reverse=True)
    if at is None:
        return newest_first[0]
    for chain in newest_first:
        if _exact(chain, at):
            return chain
    for chain in newest_first:
        gap = _gap_error(chains, chain, at)
        if gap is not None:
            raise gap
    raise PlanError(f"{iso(at)} ({at}) is outside the backups; {describe_windows(chains)}")


def file_to_cut(chain: ChainRecord, at: int | None) -> FileRecord | None:
    """The incr file whose end (or `#TS` line) the restore stops at; None when the chain has none."""
    if not chain.incr:
        return None
    if at is not None:
        for f in chain.incr:
            if f.last_ts is not None and f.last_ts > at:
                return f
    return chain.incr[-1]


def _damaged(chain: ChainRecord, name: str, what: str) -> PlanError:
    return PlanError(f"{chain.chain}/{name}: {what}; restore refused (run `redis-backup verify`)")


def plan_restore(chain: ChainRecord, *, at: int | None, index: FileIndex | None) -> RestorePlan:
    """The files to copy and where to cut, given the index of ``file_to_cut(chain, at)``."""
    target = file_to_cut(chain, at)
    if (target.name if target else None) != (index.name if index else None):
        raise ValueError(f"plan_restore needs the index of {target.name if target else 'no file'}")
    base = chain.base
    if base.size is None:
        raise _damaged(chain, base.name, "the metadata gives no size")
    planned_base = PlannedFile(
        name=base.name,
        type="base",
        seq=base.seq,
        size=base.size,
        copy_bytes=base.size,
        sha256=base.sha256,
        start_offset=base.start_offset,
        end_offset=base.start_offset,
    )
    included = chain.first_second
    incr: list[PlannedFile] = []
    if target is not None and index is not None:
        for f in chain.incr:
            if f is target:
                break
            if not f.closed or f.size is None or f.end_offset is None:
                raise _damaged(chain, f.name, "is not closed but newer files follow")
            incr.append(
                PlannedFile(
                    name=f.name,
                    type="incr",
                    seq=f.seq,
                    size=f.size,
                    copy_bytes=f.size,
                    sha256=f.sha256,
                    start_offset=f.start_offset,
                    end_offset=f.end_offset,
                )
            )
            if f.last_ts is not None:
                included = max(included, f.last_ts)
        last = _cut(chain, target, index, at)
        if last.copy_bytes > target.header_size:
            incr.append(last)
        included = max([included, *(m.ts for m in index.marks if m.pos < last.copy_bytes)])
    return RestorePlan(
        chain=chain.chain,
        primary=chain.primary,
        chain_state=chain.state,
        at=at,
        included_until=included,
        snapshot_at=chain.snapshot_at,
        window=(chain.first_second, chain.last_second),
        base=planned_base,
        incr=tuple(incr),
        max_db=chain.max_db,
        rdb_version=chain.rdb_version,
        server_name=chain.server_name,
        server_version=chain.server_version,
    )


def _cut(chain: ChainRecord, f: FileRecord, index: FileIndex, at: int | None) -> PlannedFile:
    if index.error is not None:
        raise _damaged(chain, f.name, index.error)
    if not index.header_ok:
        raise _damaged(chain, f.name, f"does not begin with SELECT {f.start_db}")
    if f.closed and f.size is not None and index.size != f.size:
        raise _damaged(chain, f.name, f"is {index.size} bytes, the metadata says {f.size}")
    mark = next((m for m in index.marks if m.ts > at), None) if at is not None else None
    if mark is None:
        if at is not None and f is not chain.incr[-1]:
            raise _damaged(chain, f.name, f"the metadata says it holds a #TS after {at}, it has none")
        pos, offset, before = index.safe_pos, index.safe_offset, None
    else:
        if not mark.safe or mark.pos > index.safe_pos:
            raise _damaged(chain, f.name, f"#TS line inside MULTI/EXEC at byte {mark.pos}")
        pos, offset, before = mark.pos, mark.offset, mark.ts
    return PlannedFile(
        name=f.name,
        type="incr",
        seq=f.seq,
        size=index.size,
        copy_bytes=pos,
        sha256=f.sha256,
        start_offset=f.start_offset,
        end_offset=offset,
        cut_before_ts=before,
    )
