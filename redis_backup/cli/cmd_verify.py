"""`redis-backup verify`: check every chain against its metadata (and, with --deep, that it loads)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from redis_backup.chain.catalog import chain_dirs, foreign_entries
from redis_backup.cli import config
from redis_backup.cli.config import Config
from redis_backup.errors import BackupError
from redis_backup.restore.tempserver import find_redis_server
from redis_backup.restore.verify import Problem, verify_chain, verify_chain_deep


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check every chain against its metadata (and, with --deep, that it loads)",
        description="Check each chain: manifest and metadata agree with the files, sizes and SHA-256 of "
        "closed files, the snapshot's RDB CRC64, every incr file well-formed RESP with #TS lines in order, "
        "contiguous offsets. Prints each problem as CHAIN/FILE: WHAT; exit code 1 if there is any.",
    )
    p.add_argument("--chain", metavar="ID", help="check only this chain")
    p.add_argument("--deep", action="store_true", help="also load each chain into a temporary redis-server")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    config.add_options(p, ["storage", "log"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    root = Path(cfg.backup_dir)
    dirs = chain_dirs(root)
    foreign = foreign_entries(root)
    if args.chain is not None:
        dirs = [d for d in dirs if d.name == args.chain]
        foreign = [f for f in foreign if f.chain == args.chain]
        if not dirs and not foreign:
            raise BackupError(f"no chain {args.chain} in {root}")
    if args.deep:
        find_redis_server()
    results = [(f.chain, [Problem(f.chain, "", f.error)]) for f in foreign]
    if not args.json:
        for _, ps in results:
            print(ps[0])
    for d in dirs:
        problems = verify_chain_deep(d) if args.deep else verify_chain(d)
        results.append((d.name, problems))
        if not args.json:
            for p in problems:
                print(p)
    count = sum(len(p) for _, p in results)
    if args.json:
        doc = {
            "backup_dir": str(root),
            "deep": args.deep,
            "ok": count == 0,
            "chains": [
                {"chain": name, "ok": not ps, "problems": [{"file": p.file, "what": p.what} for p in ps]}
                for name, ps in results
            ],
        }
        print(json.dumps(doc, indent=1))
    else:
        bad = sum(1 for _, p in results if p)
        kind = "deep-verified" if args.deep else "verified"
        print(f"{len(results)} chains {kind}: {len(results) - bad} ok, {bad} with problems", flush=True)
    return 1 if count else 0
