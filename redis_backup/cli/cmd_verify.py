"""`redis-backup verify`: check every chain against its metadata (and, with --deep, that it loads)."""

from __future__ import annotations

import argparse
import json

from redis_backup.chain.catalog import list_store
from redis_backup.cli import config, stores
from redis_backup.cli.config import Config
from redis_backup.errors import BackupError
from redis_backup.restore.tempserver import find_redis_server
from redis_backup.restore.verify import Problem, verify_chain, verify_chain_deep
from redis_backup.store.base import Store


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
    config.add_options(p, ["storage", "s3", "log"])
    stores.add_source(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    with stores.opened(cfg, args.source) as store:
        return run_on(store, args)


def run_on(store: Store, args: argparse.Namespace) -> int:
    """The command on any store (the CLI's is BACKUP_DIR's local one)."""
    listing = list_store(store)  # one listing: every chain's files and sizes
    chains = list(listing.chains)
    foreign = list(listing.foreign)  # a local directory's links and files with a chain's name
    if args.chain is not None:
        chains = [c for c in chains if c == args.chain]
        foreign = [f for f in foreign if f.chain == args.chain]
        if not chains and not foreign:
            raise BackupError(f"no chain {args.chain} in {store.describe()}")
    if args.deep:
        find_redis_server()
    results = [(f.chain, [Problem(f.chain, "", f.error)]) for f in foreign]
    if not args.json:
        for _, ps in results:
            print(ps[0])
    for chain in chains:
        objects = listing.chains[chain]
        problems = verify_chain_deep(store, chain, objects) if args.deep else verify_chain(store, chain, objects)
        results.append((chain, problems))
        if not args.json:
            for p in problems:
                print(p)
    count = sum(len(p) for _, p in results)
    if args.json:
        doc = {
            "backup_dir": store.describe(),
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
