"""`redis-backup run`: the service."""

from __future__ import annotations

import argparse
import asyncio
import logging

from redis_backup import __version__
from redis_backup.cli import config
from redis_backup.cli.config import Config

log = logging.getLogger("redis_backup")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "run", help="attach to the primary as a replica and keep the backup up to date",
        description="Attach to the primary as a replica and store its snapshot and command stream under "
        "BACKUP_DIR, for as long as it runs. SIGTERM stops it cleanly.",
    )
    config.add_options(p, ["redis", "storage", "run", "s3", "upload", "retention", "server", "metrics", "log"])
    p.set_defaults(func=run, own_signals=True)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from redis_backup.service.process import run_service
    from redis_backup.wire import resp

    log.info(
        "starting",
        extra={
            "version": __version__,
            "primary": cfg.connection().address,
            "backup_dir": cfg.backup_dir,
            "scanner": "c" if resp.accelerated() else "python",
        },
    )
    if not resp.accelerated():
        log.warning("the C stream scanner was not built (no compiler at install?): using the slower Python one")
    return asyncio.run(run_service(cfg.service_settings()))
