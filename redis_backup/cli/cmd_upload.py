"""`redis-backup upload`: ship what BACKUP_DIR holds and the bucket does not, once (or print it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from redis_backup.cli import config, stores
from redis_backup.cli.config import Config
from redis_backup.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "upload", help="upload what BACKUP_DIR holds and the bucket does not (the service does this itself)",
        description="Compare BACKUP_DIR with one listing of the bucket and upload what is missing: sealed "
        "files, the open file's tail, the heads; then delete objects a newer head no longer needs. For a "
        "backup made while the bucket was unreachable and the service is not running any more; while it "
        "runs, the service holds the bucket's lease and this command is refused.",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: one JSON document")
    config.add_options(p, ["storage", "s3", "upload", "log"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from redis_backup.service.dirlock import lock_backup_dir
    from redis_backup.service.lease import Lease
    from redis_backup.service.uploader import Shipper

    if not cfg.s3_bucket:
        raise ConfigError("upload needs S3_BUCKET")
    bucket = stores.bucket_store(cfg)
    shipper = Shipper(Path(cfg.backup_dir), bucket, cfg.codec())
    bucket.check_access()
    steps = shipper.plan()
    if args.dry_run:
        if args.json:
            print(json.dumps([{"action": s.action, "chain": s.chain, "what": s.what, "why": s.why} for s in steps],
                             indent=1))  # fmt: skip
        else:
            for s in steps:
                print(s.line())
            print(f"{len(steps)} steps" if steps else "nothing to upload")
        return 0
    lock_backup_dir(Path(cfg.backup_dir))  # refused while the service runs here (it holds the lease too)
    lease = Lease(bucket, Lease.owner_for(cfg.backup_dir))
    lease.acquire()
    try:
        shipper.run_steps(steps)
    finally:
        lease.release()
    print(f"{bucket.describe()}: {sum(1 for s in steps if s.action != 'delete')} steps done")
    return 0
