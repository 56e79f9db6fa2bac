"""`redis-backup restore`: the state at a second (or the latest) as an AOF dir, an RDB, or into a server.

Every format starts the same way: plan (plan.py), then copy the planned files into an `appendonlydir`
while checking them against the metadata (aofdir.py). `--format rdb` and `--into` then load that
directory in a temporary redis-server on a unix socket (tempserver.py) and SAVE it, or copy its keys
(keycopy.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import config, naming
from .aofdir import AOF_DIR, replayed, write_aof_dir
from .catalog import Catalog, index_file, load_catalog
from .config import Config
from .errors import BackupError, ConfigError, StorageError
from .fsutil import FILE_MODE, fsync_dir, make_dir
from .keycopy import CopyResult, check_target_url, copy_keys, ping_target
from .plan import PlanError, RestorePlan, choose_chain, file_to_cut, plan_restore, resolve_time
from .progress import Progress, human_bytes
from .rdb import RdbError, check_rdb_file
from .tempserver import DEFAULT_DATABASES, databases_for, find_redis_server
from .times import iso, parse_time

log = logging.getLogger(__name__)
RDB_NAME = "dump.rdb"
WORK_PREFIX = ".redis-backup-restore-"


class RestoreRefused(BackupError):
    """The destination is not one we may write to as asked."""


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
    config.add_options(p, ["storage", "log"])
    p.set_defaults(func=run)


def make_plan(cat: Catalog, *, at: int | None, chain_id: str | None, before_gap: bool = False) -> RestorePlan:
    """Choose, index the one file the cut falls in (the open tail is already indexed), plan."""
    if chain_id is not None:
        broken = cat.find_broken(chain_id)
        if broken is not None:
            raise PlanError(f"chain {chain_id} cannot be read: {broken.error}")
    asked, at = at, resolve_time(cat.chains, at, before_gap=before_gap)
    chain = choose_chain(cat.chains, at=at, chain_id=chain_id)
    target = file_to_cut(chain, at)
    index = None
    if target is not None:
        tail = cat.tails.get(chain.chain)
        if tail is not None and tail.name == target.name:
            index = tail
        else:
            index = index_file(cat.chain_dir(chain.chain), target)
    plan = plan_restore(chain, at=at, index=index)
    return dataclasses.replace(plan, asked_at=asked) if asked != at else plan


def run(args: argparse.Namespace, cfg: Config) -> int:
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
    root = Path(cfg.backup_dir)
    cat = load_catalog(root)
    skipped = [f"{b.chain}: {b.error.replace(str(root / b.chain) + '/', '')}" for b in cat.broken]
    try:
        plan = make_plan(cat, at=at, chain_id=args.chain, before_gap=args.before_gap)
    except PlanError as e:  # still one line: the damaged chains it did not consider are part of why
        raise PlanError(f"{e} (damaged chains skipped: {'; '.join(skipped)})" if skipped else str(e)) from None
    for line in skipped:
        print(f"redis-backup: warning: skipping damaged chain {line}", file=sys.stderr)
    if args.dry_run:
        _print(args, plan.to_dict(), plan.render())
        return 0
    chain_dir = cat.chain_dir(plan.chain)
    if args.into is not None:
        find_redis_server()
        ping_target(args.into)
        result = restore_into(plan, chain_dir, args.into, replace=args.replace)
        _report_into(args, plan, result)
        return 0
    dest = Path(args.to)
    if fmt == "rdb":
        find_redis_server()
    refuse_inside_backups(dest, root)
    prepare_dir(dest, force=args.force)
    if fmt == "rdb":
        out, max_db = restore_rdb(plan, chain_dir, dest)
        hint = f"start it with: redis-server --dir {dest} --dbfilename {RDB_NAME}"
    else:
        out, max_db = restore_aof(plan, chain_dir, dest)
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


def refuse_inside_backups(dest: Path, root: Path) -> None:
    """DIR may be under BACKUP_DIR (the service ignores what is not a chain), never in a chain."""
    d, r = dest.resolve(), root.resolve()
    if d == r or (d.is_relative_to(r) and _is_backup_name(d.relative_to(r).parts[0])):
        raise RestoreRefused(f"--to {dest} is BACKUP_DIR or one of its chains: restore somewhere else")


def _is_backup_name(name: str) -> bool:
    return naming.is_chain_id(name) or name.startswith(naming.PARTIAL_PREFIX)


def prepare_dir(dest: Path, *, force: bool) -> None:
    if dest.exists():
        if not dest.is_dir():
            raise RestoreRefused(f"--to {dest} is not a directory")
        if any(dest.iterdir()) and not force:
            raise RestoreRefused(
                f"{dest} is not empty: restore into an empty or new directory, or pass --force to "
                f"replace {AOF_DIR}/ or {RDB_NAME} in it"
            )
    else:
        try:
            make_dir(dest)
        except OSError as e:
            raise StorageError(f"cannot create {dest}: {e.strerror}") from e


def restore_aof(plan: RestorePlan, chain_dir: Path, dest: Path) -> tuple[Path, int | None]:
    """The AOF directory, and the highest db it uses (None: not known)."""
    out = dest / AOF_DIR
    max_db = write_aof_dir(plan, chain_dir, out, replace=True)
    if (dest / RDB_NAME).exists():
        log.warning("%s also holds %s, which redis-server ignores when started with --appendonly yes", dest, RDB_NAME)
    return out, max_db


def restore_rdb(plan: RestorePlan, chain_dir: Path, dest: Path) -> tuple[Path, int | None]:
    """Replay into a temporary redis-server, SAVE, check and move the RDB into place."""
    with replayed(plan, chain_dir, prefix=WORK_PREFIX, under=dest) as srv:
        max_db = srv.max_db
        with contextlib.closing(srv.client()) as client:
            client.save()
        rdb = srv.data_dir / RDB_NAME  # complete once SAVE returned; the server never saves on its own
        try:
            check_rdb_file(str(rdb))
        except (OSError, RdbError) as e:
            raise StorageError(f"the RDB written by redis-server does not check out: {e}") from e
        out = dest / RDB_NAME
        os.chmod(rdb, FILE_MODE)
        os.replace(rdb, out)
        fsync_dir(dest)
    if (dest / AOF_DIR).exists():
        log.warning("%s also holds %s/, which redis-server loads instead when --appendonly yes", dest, AOF_DIR)
    return out, max_db


def restore_into(plan: RestorePlan, chain_dir: Path, url: str, *, replace: bool) -> CopyResult:
    """Rebuild the state in a temporary redis-server (temporary files under TMPDIR), then copy the keys."""
    with replayed(plan, chain_dir, prefix="redis-backup-restore-") as srv:
        progress = Progress("copying keys")
        result = copy_keys(srv.client, url, replace=replace, progress=progress)
        progress.finish()
    return result


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
