"""The `redis-backup` command line: one subcommand per job, every setting also an environment variable."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from . import __version__, logs
from .config import Config, add_options, resolve
from .errors import BackupError

log = logging.getLogger("redis_backup")

# Modules that add their own subcommands: each has add_parser(subparsers) -> None.
COMMAND_MODULES: tuple[str, ...] = ("listing", "restore", "verify")

Handler = Callable[[argparse.Namespace, Config], int]


def _cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    from . import resp
    from .service import BackupService

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
    return asyncio.run(BackupService(cfg).run())


def _cmd_snapshot(args: argparse.Namespace, cfg: Config) -> int:
    from .progress import human_bytes
    from .snapshot import fetch_snapshot

    digest = asyncio.run(fetch_snapshot(cfg.connection(), args.out))
    if args.out != "-":
        print(f"{args.out}: {human_bytes(digest.size)}, RDB version {digest.version}, checksum ok", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redis-backup",
        description="Continuous, point-in-time-restorable backups of a Redis primary, taken as a replica.",
        epilog="Every --option is also an environment variable (shown in each command's --help); options win.",
    )
    parser.add_argument("--version", action="version", version=f"redis-backup {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run", help="attach to the primary as a replica and keep the backup up to date",
        description="Attach to the primary as a replica and store its snapshot and command stream under "
        "BACKUP_DIR, for as long as it runs. SIGTERM stops it cleanly.",
    )
    add_options(p, ["redis", "storage", "run", "log"])
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "snapshot", help="fetch one RDB snapshot and exit (like redis-cli --rdb)",
        description="Fetch one RDB snapshot from the primary, check its CRC64 and write it to FILE.",
    )
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="where to write the RDB ('-' for stdout)")
    add_options(p, ["redis", "log"])
    p.set_defaults(func=_cmd_snapshot)

    for name in COMMAND_MODULES:
        importlib.import_module(f"redis_backup.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = resolve(args)
        logs.setup(cfg.log_level, cfg.log_format)
        handler: Handler = args.func
        return handler(args, cfg)
    except BackupError as e:
        print(f"redis-backup: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: one line, and the traceback only when asked for
        log.debug("internal error", exc_info=True)
        print(f"redis-backup: internal error: {type(e).__name__}: {e} (LOG_LEVEL=debug shows more)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
