"""`redis-backup restore`: the state at a second (or the latest) as an AOF dir, an RDB, or into a server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from redis_backup.chain import naming
from redis_backup.chain.catalog import load_catalog
from redis_backup.cli import config, stores
from redis_backup.cli.config import Config
from redis_backup.errors import ConfigError
from redis_backup.progress import Progress, human_bytes
from redis_backup.restore.keycopy import CopyResult, check_target_url, ping_target
from redis_backup.restore.outputs import (
    RDB_NAME,
    make_plan,
    prepare_dir,
    refuse_inside_backups,
    restore_aof,
    restore_into,
    restore_rdb,
)
from redis_backup.restore.plan import PlanError, RestorePlan
from redis_backup.restore.tempserver import (
    DEFAULT_BIN,
    DEFAULT_DATABASES,
    ServerBinary,
    check_reads,
    databases_for,
    find_redis_server,
)
from redis_backup.store.base import Store
from redis_backup.store.local import LocalStore
from redis_backup.times import iso, parse_time


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "restore",
        help="restore the state at a second (or the latest) to files or into a running server",
        description="Restore the dataset as it was at TIME (the latest state without --at): as a Redis 7 "
        "AOF directory DIR/appendonlydir (load it with `redis-server --appendonly yes --dir DIR`), as "
        "DIR/dump.rdb, or into a running server with DUMP/RESTORE. Every file is checked against its "
        "checksum first; a damaged chain is refused.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--to", metavar="DIR", help="write the files into this (empty) directory")
    where.add_argument(
        "--into", metavar="URL",
        help="copy every key into this server: redis://[user:password@]host:port or rediss://...",
    )  # fmt: skip
    p.add_argument(
        "--at", metavar="TIME",
        help="ISO-8601 (2026-11-25T18:00:05Z, with an offset, or no zone meaning UTC) or unix seconds",
    )  # fmt: skip
    p.add_argument("--chain", metavar="ID", help="restore from this chain (default: chosen by TIME)")
    p.add_argument(
        "--before-gap", action="store_true",
        help="when TIME falls inside a gap in capture (refused by default), restore the last exact second before it",
    )  # fmt: skip
    p.add_argument("--format", choices=("aof", "rdb"), default=None, help="with --to: aof (default) or rdb")
    p.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    p.add_argument("--json", action="store_true", help="print the plan and the result as JSON")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR (replacing our files)")
    p.add_argument("--replace", action="store_true", help="with --into: overwrite keys that exist there")
    config.add_options(p, ["storage", "s3", "server", "log"])
    stores.add_source(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    with stores.opened(cfg, args.source) as store:
        return run_on(store, args, server_bin=cfg.redis_server_bin)


def run_on(store: Store, args: argparse.Namespace, *, server_bin: str = DEFAULT_BIN) -> int:
    """The command on any store (the CLI's is BACKUP_DIR's local one); the output is local. `server_bin`
    (REDIS_SERVER_BIN) is the scratch server of --format rdb and --into."""
    at = parse_time(args.at) if args.at is not None else None
    if args.chain is not None and not naming.is_chain_id(args.chain):
        raise ConfigError(f"invalid --chain {args.chain!r}: chain ids look like 20261125T190811Z-c2abd784-0")
    if args.into is not None:
        if args.format is not None:
            raise ConfigError("--format applies to --to; --into copies keys into the server")
        if args.force:
            raise ConfigError("--force applies to --to; use --replace to overwrite keys with --into")
        check_target_url(args.into)
    elif args.replace:
        raise ConfigError("--replace applies to --into")
    if args.before_gap and at is None:
        raise ConfigError("--before-gap goes with --at TIME")
    if args.to is None and args.into is None and not args.dry_run:
        raise ConfigError("say where to restore: --to DIR or --into URL (or --dry-run to see the plan)")
    fmt = args.format or "aof"
    cat = load_catalog(store)
    skipped = [f"{b.chain}: {b.error.replace(f'{store.describe()}/{b.chain}/', '')}" for b in cat.broken]
    try:
        plan = make_plan(cat, at=at, chain_id=args.chain, before_gap=args.before_gap)
    except PlanError as e:  # still one line: the damaged chains it did not consider are part of why
        raise PlanError(f"{e} (damaged chains skipped: {'; '.join(skipped)})" if skipped else str(e)) from None
    for line in skipped:
        print(f"redis-backup: warning: skipping damaged chain {line}", file=sys.stderr)
    if args.dry_run:
        _print(args, plan.to_dict(), plan.render())
        return 0
    if args.into is not None:
        scratch = find_redis_server(server_bin)
        check_reads(scratch, plan.rdb_version, plan.server_name, plan.server_version)
        ping_target(args.into)
        with Progress.on_terminal("restore", json=args.json) as progress:
            result = restore_into(plan, store, args.into, replace=args.replace, server=scratch, progress=progress)
        _report_into(args, plan, result)
        return 0
    dest = Path(args.to)
    server: ServerBinary | None = None
    if fmt == "rdb":  # before anything is written: a server that cannot read the base leaves DIR alone
        server = find_redis_server(server_bin)
        check_reads(server, plan.rdb_version, plan.server_name, plan.server_version)
    if isinstance(store, LocalStore):
        refuse_inside_backups(dest, store.root)
    prepare_dir(dest, force=args.force)
    with Progress.on_terminal("restore", json=args.json) as progress:
        if server is not None:
            out, max_db = restore_rdb(plan, store, dest, server, progress=progress)
            hint = f"start it with: redis-server --dir {dest} --dbfilename {RDB_NAME}"
        else:
            out, max_db = restore_aof(plan, store, dest, progress=progress)
            hint = f"start it with: redis-server --appendonly yes --dir {dest}"
    databases = databases_for(max_db)
    if databases > DEFAULT_DATABASES:
        hint += f" --databases {databases}"
    elif max_db is None:
        hint += " (which databases the snapshot uses is not known: for more than 16, add --databases N)"
    doc = {
        "plan": plan.to_dict(),
        "result": {"format": fmt, "path": str(out), "max_db": max_db, "databases": databases},
    }
    _print(args, doc, f"{_what(plan)} restored to {out} ({human_bytes(plan.expected_size)} read); {hint}")
    return 0


def _what(plan: RestorePlan) -> str:
    when = iso(plan.at) if plan.at is not None else f"latest, {iso(plan.included_until)}"
    return f"chain {plan.chain} at {when}"


def _print(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(json.dumps(doc, indent=1) if args.json else text)


def _report_into(args: argparse.Namespace, plan: RestorePlan, result: CopyResult) -> None:
    shown = check_target_url(args.into)
    doc = {
        "plan": plan.to_dict(),
        "result": {
            "target": shown,
            "copied": result.copied,
            "existing": result.existing,
            "existing_sample": result.existing_sample,
            "dbs": result.dbs,
            "bytes": result.bytes,
            "functions": result.functions,
            "functions_existing": result.functions_existing,
        },
    }
    dbs = ", ".join(str(d) for d in result.dbs) or "none"
    libs = f" and {result.functions} function librar{'y' if result.functions == 1 else 'ies'}"
    text = f"{_what(plan)}: {result.copied} keys{libs} restored into {shown} (dbs {dbs})"
    _print(args, doc, text)
    if result.functions_existing:
        print(
            f"redis-backup: warning: {len(result.functions_existing)} function libraries already existed on "
            f"{shown} and were left alone (--replace overwrites them): {', '.join(result.functions_existing)}",
            file=sys.stderr,
        )
    if result.existing:
        print(
            f"redis-backup: warning: {result.existing} keys already existed on {shown} and were left alone "
            f"(--replace overwrites them): {', '.join(result.existing_sample)}"
            + (", ..." if result.existing > len(result.existing_sample) else ""),
            file=sys.stderr,
        )
