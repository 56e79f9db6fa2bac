"""The `redis-backup` command line: one subcommand per job, every setting also an environment variable."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from . import __version__, logs
from .config import Config, add_options, resolve
from .errors import BackupError

log = logging.getLogger("redis_backup")

# Modules that add their own subcommands: each has add_parser(subparsers) -> None.
COMMAND_MODULES: tuple[str, ...] = ("listing", "restore", "verify")

Handler = Callable[[argparse.Namespace, Config], int]


class Stopped(BaseException):
    """SIGTERM or SIGINT: unwinds the command like an exception, so that every scratch redis-server it
    started is stopped and every temporary file removed on the way out (a BaseException, so that no
    `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: FrameType | None) -> None:
    # a second signal while cleaning up would cut the cleanup short: ignore it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stopped(signum)


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
    if args.func is not _cmd_run:  # the service handles its signals itself, in its event loop
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    try:
        cfg = resolve(args)
        logs.setup(cfg.log_level, cfg.log_format)
        handler: Handler = args.func
        return handler(args, cfg)
    except BackupError as e:
        print(f"redis-backup: error: {e}", file=sys.stderr)
        return e.exit_code
    except Stopped as e:
        name = signal.Signals(e.signum).name
        print(f"redis-backup: stopped by {name}: scratch servers stopped, temporary files removed", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: one line, and the traceback only when asked for
        log.debug("internal error", exc_info=True)
        print(f"redis-backup: internal error: {type(e).__name__}: {e} (LOG_LEVEL=debug shows more)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
