"""Retention as a pure function: which chains to delete, where, and why (no I/O here).

The input is one summary per chain, made from its metadata (chain.prune gathers them from BACKUP_DIR and
the bucket), the time, and the policy; the output is one decision per chain and place that holds it,
each with its reason, and the restorable windows that remain. The rules, in order:

1. Never deleted, whatever the settings say: *the open chain* (the newest, still written), any other
   open chain newer than the newest closed one (a chain the service is closing as it begins the next),
   *the newest closed chain*, and the newest open chain even if a closed chain sorts after it (a clock
   that went back: the chains sort by their snapshot's time). A chain whose metadata cannot be read is
   never deleted automatically.
2. Deleted everywhere if it is beyond the newest `BACKUP_MAX_FILES` chains (0: no limit), or if none of
   its seconds is in the last `BACKUP_RETENTION_HOURS` (its last second is before the cutoff): every
   chain needed to restore a second of that window is kept, and the count caps even inside it.
3. Locally, with a bucket, also deleted if its last second is before the cutoff of
   `LOCAL_RETENTION_HOURS`, but only once the bucket holds it completely: nothing is deleted locally that
   has not been uploaded. Without a bucket the local directory follows rule 2 alone.

Chains only in the bucket follow rule 2 (the bucket is their source of truth). `tests/test_retention.py`
is a table of scenarios and their decisions.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from redis_backup.chain.catalog import ChainRecord, describe_spans, merge_spans
from redis_backup.times import iso

Where = Literal["local", "bucket"]
PLACES: tuple[Where, ...] = ("local", "bucket")


@dataclass(frozen=True)
class Policy:
    retention_hours: float = 24.0  # BACKUP_RETENTION_HOURS
    max_chains: int = 10  # BACKUP_MAX_FILES; 0: no limit
    local_retention_hours: float | None = None  # LOCAL_RETENTION_HOURS; None: retention_hours

    @property
    def local_hours(self) -> float:
        return self.retention_hours if self.local_retention_hours is None else self.local_retention_hours


@dataclass(frozen=True)
class ChainSummary:
    """One chain as retention sees it: its place in time and where it is held."""

    chain: str
    snapshot_at: float
    closed: bool
    first_second: int
    last_second: int
    spans: tuple[tuple[int, int], ...] = ()  # the exactly restorable seconds (ChainRecord.exact_spans)
    local: bool = True  # BACKUP_DIR holds it (readable)
    bucket: bool = False  # the bucket holds it (readable)
    uploaded: bool = False  # the bucket holds the local chain completely (closed, every file, same end)
    bucket_spans: tuple[tuple[int, int], ...] | None = None  # the bucket's copy's, where it lags (None: spans)

    @classmethod
    def of(cls, record: ChainRecord, *, local: bool, bucket: bool = False, uploaded: bool = False) -> ChainSummary:
        return cls(record.chain, record.snapshot_at, record.closed, record.first_second, record.last_second,
                   tuple(record.exact_spans), local, bucket, uploaded)  # fmt: skip


@dataclass(frozen=True)
class Unreadable:
    """A chain whose metadata cannot be read in one place (the catalog's broken chains)."""

    chain: str
    where: Where
    error: str


@dataclass(frozen=True)
class Decision:
    chain: str
    where: Where
    delete: bool
    reason: str

    @property
    def action(self) -> str:
        return "delete" if self.delete else "keep"

    def line(self) -> str:
        return f"{self.action:6} {self.chain}  {self.where:6}  {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "chain": self.chain, "where": self.where, "reason": self.reason}


@dataclass(frozen=True)
class Outcome:
    decisions: tuple[Decision, ...]
    cutoff: int  # the first second of the last BACKUP_RETENTION_HOURS
    local_cutoff: int
    windows: dict[Where, list[tuple[int, int]]] = field(default_factory=dict)  # after pruning, per place

    def deletions(self, where: Where) -> list[Decision]:
        return [d for d in self.decisions if d.delete and d.where == where]

    def find(self, chain: str, where: Where) -> Decision | None:
        return next((d for d in self.decisions if d.chain == chain and d.where == where), None)

    def window_lines(self) -> list[str]:
        return [f"{where}: after pruning, {describe_spans(spans)}" for where, spans in self.windows.items()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "cutoff": iso(self.cutoff), "cutoff_unix": self.cutoff,
            "local_cutoff": iso(self.local_cutoff), "local_cutoff_unix": self.local_cutoff,
            "decisions": [d.to_dict() for d in self.decisions],
            "windows": {where: [{"from": iso(lo), "to": iso(hi), "from_unix": lo, "to_unix": hi} for lo, hi in spans]
                        for where, spans in self.windows.items()},
        }  # fmt: skip


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def cutoff_second(now: float, hours: float) -> int:
    """The first second of the last `hours`: a second that overlaps the window at all is in it. Never
    before the epoch (no chain is older; a huge setting would not be a time at all: -inf, year -10**8)."""
    return math.floor(max(0.0, now - hours * 3600))


def _protected(chains: Sequence[ChainSummary], live: Collection[str] = ()) -> dict[str, str]:
    """The chains no setting deletes, with why (chains oldest first)."""
    out: dict[str, str] = {c: "being written by the service" for c in live}
    closed = [c for c in chains if c.closed]
    newest_closed = closed[-1] if closed else None
    if newest_closed is not None:
        out.setdefault(newest_closed.chain, "the newest closed chain")
    for i, c in enumerate(chains):
        if c.closed or (newest_closed is not None and i < chains.index(newest_closed)):
            continue
        out.setdefault(c.chain, "the open chain" if i == len(chains) - 1 else
                       "open and newer than the newest closed chain (the service may be closing it)")
    opened = [c for c in chains if not c.closed]
    if opened:  # older by its time than a closed chain: a clock that went back; it may hold the latest state
        out.setdefault(opened[-1].chain, "the newest open chain (it sorts before a closed chain by its time)")
    return out


def decide(
    chains: Sequence[ChainSummary], now: float, policy: Policy, *, bucket: bool = False,
    unreadable: Sequence[Unreadable] = (), live: Collection[str] = (),
) -> Outcome:  # fmt: skip
    """One decision per chain and place that holds it (local, bucket: with `bucket`, a bucket is
    configured), oldest chain first, and the restorable window that remains in each place. live: the
    chains the service is writing, kept whatever else holds (it writes only the newest: a safety net)."""
    ordered = sorted(chains, key=lambda c: (c.snapshot_at, c.chain))
    protected = _protected(ordered, live)
    cutoff = cutoff_second(now, policy.retention_hours)
    local_hours = policy.local_hours if bucket else policy.retention_hours
    local_cutoff = cutoff_second(now, local_hours)
    decisions: list[Decision] = []
    for rank, c in enumerate(reversed(ordered)):  # 0: the newest
        why_not: list[str] = []
        if policy.max_chains and rank >= policy.max_chains:
            why_not.append(f"beyond BACKUP_MAX_FILES={policy.max_chains}: the {ordinal(rank + 1)} newest")
        if c.last_second < cutoff:
            why_not.append(f"older than BACKUP_RETENTION_HOURS={policy.retention_hours:g}: its last second "
                           f"{iso(c.last_second)} is before {iso(cutoff)}")  # fmt: skip
        if c.chain in protected:
            keep = protected[c.chain] + (f", kept whatever the settings say ({why_not[0]})" if why_not else "")
            everywhere = Decision(c.chain, "bucket", False, keep)
        elif why_not:
            everywhere = Decision(c.chain, "bucket", True, "; ".join(why_not))
        else:
            everywhere = Decision(c.chain, "bucket", False, f"needed for seconds after {iso(cutoff)}: its last "
                                  f"second is {iso(c.last_second)}")  # fmt: skip
        if c.bucket:
            decisions.append(everywhere)
        if not c.local:
            continue
        local = Decision(c.chain, "local", everywhere.delete, everywhere.reason)
        if bucket and not everywhere.delete and c.chain not in protected and c.last_second < local_cutoff:
            old = (f"older than LOCAL_RETENTION_HOURS={local_hours:g}: its last second {iso(c.last_second)} is "
                   f"before {iso(local_cutoff)}")  # fmt: skip
            if c.uploaded:
                local = Decision(c.chain, "local", True, f"{old}, and the bucket holds it completely")
            else:
                local = Decision(c.chain, "local", False, f"{old}, but not yet in the bucket (completely): kept "
                                 "until it is")  # fmt: skip
        decisions.append(local)
    for u in unreadable:
        decisions.append(Decision(u.chain, u.where, False, f"cannot be read ({u.error}): never deleted "
                                  "automatically (verify says what is wrong; delete it by hand if it is not needed)"))
    decisions.sort(key=lambda d: (d.chain, PLACES.index(d.where)))
    gone = {(d.chain, d.where) for d in decisions if d.delete}
    windows: dict[Where, list[tuple[int, int]]] = {}
    for where in PLACES if bucket else PLACES[:1]:
        held = [c for c in ordered if (c.local if where == "local" else c.bucket) and (c.chain, where) not in gone]
        windows[where] = merge_spans(s for c in held for s in (c.spans if where == "local" or c.bucket_spans is None
                                                                 else c.bucket_spans))
    return Outcome(tuple(decisions), cutoff, local_cutoff, windows)
