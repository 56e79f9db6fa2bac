"""The `redis-backup` command line: one subcommand per job, every setting also an environment variable."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from redis_backup import __version__
from redis_backup.cli import logs
from redis_backup.cli.config import Config, resolve
from redis_backup.cli.hints import describe
from redis_backup.errors import BackupError

log = logging.getLogger("redis_backup")

# Modules that add their own subcommands: each has add_parser(subparsers) -> None.
COMMAND_MODULES: tuple[str, ...] = (
    "cmd_run", "cmd_snapshot", "cmd_snapshot_now", "cmd_list", "cmd_restore", "cmd_verify", "cmd_upload",
    "cmd_prune", "cmd_status", "cmd_demo",
)

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redis-backup",
        description="Continuous, point-in-time-restorable backups of a Redis primary, taken as a replica.",
        epilog="Every --option is also an environment variable (shown in each command's --help); options win.",
    )
    parser.add_argument("--version", action="version", version=f"redis-backup {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name in COMMAND_MODULES:
        importlib.import_module(f"redis_backup.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The service handles its signals in its event loop once that runs; until then (and for every other
    # command) a signal unwinds the command as an exception.
    own_signals = bool(getattr(args, "own_signals", False))
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    cfg: Config | None = None
    try:
        cfg = resolve(args)
        known = cfg
        logs.setup(cfg.log_level, cfg.log_format, lambda e: describe(e, known))
        handler: Handler = args.func
        return handler(args, cfg)
    except BackupError as e:
        print(f"redis-backup: error: {describe(e, cfg)}", file=sys.stderr)
        return e.exit_code
    except Stopped as e:
        name = signal.Signals(e.signum).name
        if own_signals:  # the service, stopped before it began: nothing was opened, a clean stop
            print(f"redis-backup: stopped by {name} while starting", file=sys.stderr)
            return 0
        print(f"redis-backup: stopped by {name}: scratch servers stopped, temporary files removed", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # whoever read the output went away (`| head`): what Unix tools do is stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 128 + signal.SIGPIPE
    except Exception as e:  # a bug: one line, and the traceback only when asked for
        log.debug("internal error", exc_info=True)
        print(f"redis-backup: internal error: {type(e).__name__}: {e} (LOG_LEVEL=debug shows more)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
