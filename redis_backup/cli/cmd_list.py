"""`redis-backup list`: one row per chain, then the overall restorable window."""

from __future__ import annotations

import argparse
import json
from typing import Any

from redis_backup.chain.catalog import Catalog, ChainRecord, load_catalog, windows
from redis_backup.chain.metadata import Gap
from redis_backup.chain.schema import GAP_REASONS
from redis_backup.chain.summary import chain_dict, server_of, window_dicts
from redis_backup.cli import config, stores
from redis_backup.cli.config import Config
from redis_backup.progress import human_bytes
from redis_backup.store.base import Store
from redis_backup.times import iso


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "list",
        help="list the backup chains and the restorable window",
        description="One row per chain under BACKUP_DIR: id, primary, replication id, open or closed, "
        "snapshot time, first and last restorable second, stream offsets, size and number of files, the "
        "server (and version) that wrote the snapshot; then the restorable window (seconds restore --at accepts).",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    config.add_options(p, ["storage", "s3", "log"])
    stores.add_source(p)
    p.set_defaults(func=run)


def describe_gap(g: Gap) -> str:
    why = GAP_REASONS[g.reason][0]
    if g.to_second is None:
        return f"since {iso(g.from_second)} ({why}, not caught up yet)"
    return f"{iso(g.from_second)} .. {iso(g.to_second - 1)} ({why})"


def catalog_dict(cat: Catalog) -> dict[str, Any]:
    return {
        "backup_dir": cat.store.describe(),
        "chains": [chain_dict(c) for c in cat.chains],
        "broken": [{"chain": b.chain, "error": b.error} for b in cat.broken],
        "window": window_dicts(windows(cat.chains)),
    }


def _covered_by(cat: Catalog, chain: ChainRecord, g: Gap) -> str | None:
    """Another chain that restores every second of the gap exactly (a successor covers the second its
    predecessor ended in), so that the listing does not call a restorable second lost."""
    if g.to_second is None:
        return None
    for other in cat.chains:
        if other is not chain and any(lo <= g.from_second and g.to_second - 1 <= hi for lo, hi in other.exact_spans):
            return other.chain
    return None


def render(cat: Catalog) -> str:
    if not cat.chains and not cat.broken:
        return f"no backups in {cat.store.describe()}"
    # SERVER last: scripts that read the older columns by position keep working
    head = ("CHAIN", "PRIMARY", "REPLID", "STATE", "SNAPSHOT", "FIRST", "LAST", "OFFSETS", "SIZE", "FILES", "SERVER")
    rows = [head]
    for c in cat.chains:
        rows.append((
            c.chain, c.primary, c.replid, c.state, iso(c.snapshot_at), iso(c.first_second),
            iso(c.last_second), f"{c.start_offset}..{c.end_offset}", human_bytes(c.size), str(len(c.files)),
            server_of(c) or "-",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for b in cat.broken:
        lines.append(f"{b.chain}  DAMAGED: {b.error}")
    for c in cat.chains:
        for g in c.gaps:
            cover = _covered_by(cat, c, g)
            where = f"chain {cover} restores it" if cover else "not restorable to the second"
            lines.append(f"{c.chain}  gap in capture: {describe_gap(g)}: {where}")
    spans = windows(cat.chains)
    if spans:
        text = ", ".join(f"{iso(lo)} .. {iso(hi)}" for lo, hi in spans)
        lines.append("")
        lines.append(f"restorable window{'s' if len(spans) > 1 else ''}: {text}")
    else:
        lines.append("")
        lines.append("nothing restorable")
    return "\n".join(lines)


def run(args: argparse.Namespace, cfg: Config) -> int:
    with stores.opened(cfg, args.source) as store:
        return run_on(store, args)


def run_on(store: Store, args: argparse.Namespace) -> int:
    """The command on any store (the CLI's is BACKUP_DIR's local one)."""
    cat = load_catalog(store)
    print(json.dumps(catalog_dict(cat), indent=1) if args.json else render(cat))
    return 0
