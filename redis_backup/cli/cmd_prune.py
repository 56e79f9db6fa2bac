"""`redis-backup prune`: apply retention by hand, locally and in the bucket, with each decision's reason."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from redis_backup.chain import prune
from redis_backup.chain.retention import Outcome
from redis_backup.cli import config, stores
from redis_backup.cli.config import Config


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "prune", help="delete the chains retention does not keep (the service does this itself)",
        description="Apply the retention policy to BACKUP_DIR and, with S3_BUCKET, to the bucket: keep every "
        "chain needed to restore any second of the last BACKUP_RETENTION_HOURS, at most BACKUP_MAX_FILES "
        "chains, and always the open chain and the newest closed one; locally, once the bucket holds a chain "
        "completely, only LOCAL_RETENTION_HOURS. Prints one line per chain and place (action, chain, where, "
        "reason), then the restorable window that remains. Finishes any deletion a stopped prune left. "
        "Refused while the service runs on BACKUP_DIR (it prunes by itself); --dry-run is not.",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the decisions, delete nothing")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    config.add_options(p, ["storage", "s3", "retention", "log"])
    p.set_defaults(func=run)


def render(outcome: Outcome, leftovers: list[tuple[str, str]], *, dry_run: bool) -> str:
    lines = [f"{'finish':6} {chain}  {where:6}  a prune that was stopped had begun to delete it" for chain, where in
             leftovers]  # fmt: skip
    lines += [d.line() for d in outcome.decisions]
    if not lines:
        lines.append("no chains")
    lines += ["", *outcome.window_lines()]
    places = {"local": "locally", "bucket": "in the bucket"}
    counts = {w: len(outcome.deletions(w)) for w in outcome.windows}
    done = ", ".join(f"{n} {'chain' if n == 1 else 'chains'} {places[w]}" for w, n in counts.items())
    lines.append(f"dry run: would delete {done}; nothing deleted" if dry_run else f"deleted {done}")
    return "\n".join(lines)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from redis_backup.service.dirlock import lock_backup_dir
    from redis_backup.service.lease import Lease

    root = Path(cfg.backup_dir)
    bucket = stores.bucket_store(cfg) if cfg.s3_bucket else None
    if bucket is not None:
        bucket.check_access()
    lease = None
    if not args.dry_run:
        lock_backup_dir(root)  # refused while the service runs here (held until this process exits)
        if bucket is not None:
            lease = Lease(bucket, Lease.owner_for(cfg.backup_dir))
            lease.acquire()
    try:
        found = prune.survey(root, bucket, cfg.key())
        outcome = prune.plan(found, cfg.retention_policy(), bucket=bucket is not None)
        leftovers = [(c, "local") for c in found.local_leftovers]
        leftovers += [(c, "bucket") for c in found.bucket_leftovers]
        if not args.dry_run:
            prune.apply(outcome, root, bucket, finish=found)
    finally:
        if lease is not None:
            lease.release()
    if args.json:
        doc = {"dry_run": bool(args.dry_run), **outcome.to_dict(),
               "finished": [{"chain": c, "where": w} for c, w in leftovers]}  # fmt: skip
        print(json.dumps(doc, indent=1))
    else:
        print(render(outcome, leftovers, dry_run=args.dry_run))
    return 0
