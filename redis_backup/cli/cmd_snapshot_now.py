"""`redis-backup snapshot-now`: ask the running service for a new chain at once (it is sent SIGUSR1)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import time
from pathlib import Path

from redis_backup.cli import config
from redis_backup.cli.config import Config
from redis_backup.errors import BackupError, ConfigError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "snapshot-now", help="ask the running service to begin a new chain now",
        description="Ask the service that runs on BACKUP_DIR to begin a new chain at once, as "
        "SNAPSHOT_INTERVAL_HOURS would: a fresh snapshot on a second connection, no gap. The same as "
        "`kill -USR1 <pid>` of the service (the pid is in BACKUP_DIR/.redis-backup.lock). Works on the "
        "host (or in the container) where the service runs.",
    )  # fmt: skip
    p.add_argument("--wait", action="store_true", help="wait until the new chain has begun, and print its id")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="with --wait: give up after this")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    config.add_options(p, ["storage", "log"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from redis_backup.chain.catalog import chain_dirs
    from redis_backup.service.dirlock import running_service

    root = Path(cfg.backup_dir)
    pid, host = running_service(root)
    if host != socket.gethostname():
        raise ConfigError(f"the service on BACKUP_DIR {root} runs on host {host}: run snapshot-now there")
    before = {p.name for p in chain_dirs(root)}
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        raise ConfigError(f"the service on BACKUP_DIR {root} (pid {pid}) is not in this process namespace") from None
    except PermissionError:
        raise ConfigError(f"not allowed to signal the service (pid {pid}): run as its user") from None
    result: dict[str, object] = {"pid": pid, "asked": True, "chain": None}
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while True:
            new = sorted({p.name for p in chain_dirs(root)} - before)
            if new:
                result["chain"] = new[-1]
                break
            if time.monotonic() > deadline:
                raise BackupError(f"no new chain after {args.timeout:g} s: see the service's log for why")
            time.sleep(0.2)
    if args.json:
        print(json.dumps(result))
    elif result["chain"]:
        print(f"new chain {result['chain']}")
    else:
        print(f"asked the service (pid {pid}) for a new chain")
    return 0
