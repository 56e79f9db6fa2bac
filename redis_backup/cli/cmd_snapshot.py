"""`redis-backup snapshot`: one RDB, like `redis-cli --rdb`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from redis_backup.cli import config
from redis_backup.cli.config import Config


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "snapshot", help="fetch one RDB snapshot and exit (like redis-cli --rdb)",
        description="Fetch one RDB snapshot from the primary, check its CRC64 and write it to FILE.",
    )
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="where to write the RDB ('-' for stdout)")
    config.add_options(p, ["redis", "log"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from redis_backup.chain.snapshot import fetch_snapshot
    from redis_backup.progress import human_bytes

    digest = asyncio.run(fetch_snapshot(cfg.connection(), args.out))
    if args.out != "-":
        print(f"{args.out}: {human_bytes(digest.size)}, RDB version {digest.version}, checksum ok", file=sys.stderr)
    return 0
