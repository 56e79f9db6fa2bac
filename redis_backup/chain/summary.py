"""What an operator asks of a backup first, in one document: the chain being written, the restorable
window and the gaps that are not restorable yet. Pure over a catalog, so that `status` (on a directory
or a bucket) and the service's `/status` (on its own directory) say the same thing in the same words."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis_backup.chain.catalog import Catalog, ChainRecord, windows
from redis_backup.chain.metadata import Gap
from redis_backup.times import iso


def chain_dict(c: ChainRecord) -> dict[str, Any]:
    """One chain as `list --json` prints it and `/status` shows the current one."""
    return {
        "chain": c.chain,
        "primary": c.primary,
        "replid": c.replid,
        "state": c.state,
        "closed_reason": c.closed_reason,
        "snapshot_at": iso(c.snapshot_at),
        "snapshot_at_unix": c.snapshot_at,
        "first_second": iso(c.first_second),
        "first_second_unix": c.first_second,
        "last_second": iso(c.last_second),
        "last_second_unix": c.last_second,
        "start_offset": c.start_offset,
        "end_offset": c.end_offset,
        "size": c.size,
        "files": len(c.files),
        "server_name": c.server_name,
        "server_version": c.server_version,
        "server": server_of(c),
        "max_db": c.max_db,
        "gaps": [gap_dict(g) for g in c.gaps],
    }


def server_of(c: ChainRecord) -> str | None:
    """What wrote the snapshot, from its aux fields ("redis 7.4.1", "valkey 8.0.1"); the name is not
    recorded in chains written before it was (only the version: "7.4.1")."""
    if c.server_version is None:
        return None
    return f"{c.server_name} {c.server_version}" if c.server_name else c.server_version


def gap_dict(g: Gap) -> dict[str, Any]:
    return {
        "from": iso(g.from_second),
        "to": iso(g.to_second - 1) if g.to_second is not None else None,
        "from_unix": g.from_second,
        "to_unix": g.to_second - 1 if g.to_second is not None else None,
        "caught_up": g.to_second is not None,
        "reason": g.reason,
    }


def window_dicts(spans: Iterable[tuple[int, int]]) -> list[dict[str, Any]]:
    return [{"from": iso(lo), "to": iso(hi), "from_unix": lo, "to_unix": hi} for lo, hi in spans]


def summarize(cat: Catalog) -> dict[str, Any]:
    """chains (how many), current (the newest chain, or None), window (restorable spans, oldest first),
    first/last restorable second (None when nothing restores), open_gaps (gaps not caught up yet in any
    chain), broken (chains that cannot be read)."""
    spans = windows(cat.chains)
    newest = cat.chains[-1] if cat.chains else None
    open_gaps = [
        {"chain": c.chain, "from": iso(g.from_second), "from_unix": g.from_second, "reason": g.reason}
        for c in cat.chains
        for g in c.gaps
        if g.to_second is None
    ]
    return {
        "chains": len(cat.chains),
        "current": chain_dict(newest) if newest is not None else None,
        "window": window_dicts(spans),
        "first_restorable": iso(spans[0][0]) if spans else None,
        "first_restorable_unix": spans[0][0] if spans else None,
        "last_restorable": iso(spans[-1][1]) if spans else None,
        "last_restorable_unix": spans[-1][1] if spans else None,
        "open_gaps": open_gaps,
        "broken": [{"chain": b.chain, "error": b.error} for b in cat.broken],
    }
