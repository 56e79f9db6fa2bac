"""`redis-backup verify`: check every chain against its metadata (and, with --deep, that it loads)."""

from __future__ import annotations

import argparse
import json

from redis_backup.chain import naming
from redis_backup.chain.catalog import list_store
from redis_backup.cli import config, stores
from redis_backup.cli.config import Config
from redis_backup.errors import BackupError
from redis_backup.progress import Progress
from redis_backup.restore.tempserver import DEFAULT_BIN, ServerCannotRead, find_redis_server
from redis_backup.restore.verify import Problem, verify_chain, verify_chain_deep
from redis_backup.store.base import Store


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check every chain against its metadata (and, with --deep, that it loads)",
        description="Check each chain: manifest and metadata agree with the files, sizes and SHA-256 of "
        "closed files, the snapshot's RDB CRC64, every incr file well-formed RESP with #TS lines in order, "
        "contiguous offsets. Prints each problem as CHAIN/FILE: WHAT; exit code 1 if there is any, else 3 if "
        "--deep could not load a chain because REDIS_SERVER_BIN is too old for its snapshot (not checked).",
    )
    p.add_argument("--chain", metavar="ID", help="check only this chain")
    p.add_argument("--deep", action="store_true", help="also load each chain into a temporary redis-server")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    config.add_options(p, ["storage", "s3", "server", "log"])
    stores.add_source(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    with stores.opened(cfg, args.source) as store:
        return run_on(store, args, server_bin=cfg.redis_server_bin)


NOT_CHECKED = "not checked: needs a newer redis-server"
EXIT_NOT_CHECKED = 3  # no problem found, but --deep could not load every chain


def run_on(store: Store, args: argparse.Namespace, *, server_bin: str = DEFAULT_BIN) -> int:
    """The command on any store (the CLI's is BACKUP_DIR's local one). Exit code 1 when a chain has a
    problem; else 3 when --deep left a chain not checked (the scratch server `server_bin` cannot read
    its snapshot: nothing is known to be wrong with it); else 0."""
    listing = list_store(store)  # one listing: every chain's files and sizes
    chains = list(listing.chains)
    foreign = list(listing.foreign)  # a local directory's links and files with a chain's name
    if args.chain is not None:
        chains = [c for c in chains if c == args.chain]
        foreign = [f for f in foreign if f.chain == args.chain]
        if not chains and not foreign:
            raise BackupError(f"no chain {args.chain} in {store.describe()}")
    server = find_redis_server(server_bin) if args.deep else None
    results = [(f.chain, [Problem(f.chain, "", f.error)]) for f in foreign]
    unchecked: dict[str, str] = {}  # chain -> why --deep did not load it
    if not args.json:
        for _, ps in results:
            print(ps[0])
    data = [size for c in chains for name, size in listing.chains[c].items() if naming.is_data_file(name)]
    with (
        Progress.on_terminal("verify", json=args.json, keep=False) as progress,
        progress.phase("", total=sum(data), items=len(data)) as checked,
    ):
        for i, chain in enumerate(chains, 1):
            checked.name = f"chain {i}/{len(chains)}"
            objects = listing.chains[chain]
            try:
                if server is not None:
                    problems = verify_chain_deep(store, chain, objects, server=server, progress=progress)
                else:
                    problems = verify_chain(store, chain, objects, progress=progress)
            except ServerCannotRead as e:
                problems, unchecked[chain] = [], str(e)
                if not args.json:
                    progress.clear()
                    print(f"{chain}: {NOT_CHECKED}: {e}")
            results.append((chain, problems))
            if problems and not args.json:
                progress.clear()  # the problems on lines of their own; the next figures redraw the line
                for p in problems:
                    print(p)
    count = sum(len(p) for _, p in results)
    if args.json:
        doc = {
            "backup_dir": store.describe(),
            "deep": args.deep,
            "ok": count == 0,
            "checked": not unchecked,
            "chains": [
                {
                    "chain": name,
                    "ok": not ps,
                    "problems": [{"file": p.file, "what": p.what} for p in ps],
                    # only where --deep could not load it (ok then means: no problem found without loading)
                    **({"not_checked": f"{NOT_CHECKED}: {unchecked[name]}"} if name in unchecked else {}),
                }
                for name, ps in results
            ],
        }
        print(json.dumps(doc, indent=1))
    else:
        bad = sum(1 for _, p in results if p)
        kind = "deep-verified" if args.deep else "verified"
        ok = len(results) - bad - len(unchecked)
        skipped = f", {len(unchecked)} not checked (REDIS_SERVER_BIN too old)" if unchecked else ""
        print(f"{len(results)} chains {kind}: {ok} ok, {bad} with problems{skipped}", flush=True)
    return 1 if count else EXIT_NOT_CHECKED if unchecked else 0
