"""What an operator asks of a backup first, in one document: the chain being written, the restorable
window and the gaps that are not restorable yet. Pure over a catalog, so that `status` (on a directory
or a bucket) and the service's `/status` (on its own directory) say the same thing in the same words."""

from __future__ import annotations

from typing import Any

from redis_backup.chain.catalog import Catalog, ChainRecord, windows
from redis_backup.times import iso


def _chain(c: ChainRecord) -> dict[str, Any]:
    return {
        "chain": c.chain,
        "state": c.state,
        "primary": c.primary,
        "replid": c.replid,
        "snapshot_at": iso(c.snapshot_at),
        "snapshot_at_unix": c.snapshot_at,
        "start_offset": c.start_offset,
        "end_offset": c.end_offset,
        "files": len(c.files),
        "size": c.size,
    }


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
        "current": _chain(newest) if newest is not None else None,
        "window": [{"from": iso(lo), "to": iso(hi), "from_unix": lo, "to_unix": hi} for lo, hi in spans],
        "first_restorable": iso(spans[0][0]) if spans else None,
        "first_restorable_unix": spans[0][0] if spans else None,
        "last_restorable": iso(spans[-1][1]) if spans else None,
        "last_restorable_unix": spans[-1][1] if spans else None,
        "open_gaps": open_gaps,
        "broken": [{"chain": b.chain, "error": b.error} for b in cat.broken],
    }
