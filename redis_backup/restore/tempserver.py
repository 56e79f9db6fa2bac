"""A throwaway redis-server: listens on a unix socket only (no TCP port), never saves on its own.

Used to turn a restored AOF directory into an RDB (`restore --format rdb`), to read its keys
(`restore --into`) and to check that a chain loads (`verify --deep`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # redis-py takes 40 ms to import: only commands that start a server pay for it (_redis())
    import redis

from redis_backup.errors import BackupError
from redis_backup.interrupts import held

PACKAGE = "redis-server"  # the Debian/Ubuntu package that provides the binary
DEFAULT_DATABASES = 16  # redis-server's default
_POLL = 0.02
_LOG_WARNING = re.compile(r"^\d+:[A-Z] .*? [#] (.*)$")
_CRITICAL = "== CRITICAL =="  # Redis logs a command of the AOF that failed (and, told to, panics)


def databases_for(max_db: int | None) -> int:
    """How many databases a server needs to load files that select db max_db (None: not known)."""
    return max(DEFAULT_DATABASES, (max_db or 0) + 1)


def _redis() -> Any:
    import redis

    return redis


class RedisServerMissing(BackupError):
    """No redis-server binary to run."""


class TempServerError(BackupError):
    """The temporary redis-server did not start or did not load the data."""


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RedisServerMissing(
            f"redis-server is not installed (not found on PATH); install the {PACKAGE} package "
            f"(apt-get install {PACKAGE})"
        )
    return path


class TempRedis:
    """``with TempRedis(data_dir) as srv: srv.client().dbsize()``; loads ``data_dir/appendonlydir``.

    The socket and the log live in a private temporary directory (unix socket paths are short).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        appendonly: bool = True,
        startup_timeout: float = 30.0,
        load_timeout: float | None = None,
        max_db: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.max_db = max_db  # the highest db the files use (None: not known)
        self.databases = databases_for(max_db)
        self.appendonly = appendonly
        self.startup_timeout = startup_timeout
        self.load_timeout = load_timeout
        self.binary = find_redis_server()
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        assert self._tmp is not None
        return self._tmp / "redis.sock"

    @property
    def log_file(self) -> Path:
        assert self._tmp is not None
        return self._tmp / "redis.log"

    def argv(self) -> list[str]:
        return [
            self.binary,
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--dbfilename", "dump.rdb",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appenddirname", "appendonlydir",
            "--appendfilename", "appendonly.aof",
            "--appendfsync", "no",
            "--aof-load-truncated", "no",
            "--auto-aof-rewrite-percentage", "0",
            "--databases", str(self.databases),
            # a command of the files that fails (SELECT of a db out of range...) must fail the load,
            # not leave a server with part of the data
            "--propagation-error-behavior", "panic",
            "--daemonize", "no",
            "--logfile", str(self.log_file),
        ]  # fmt: skip

    def start(self) -> None:
        try:
            with held():  # a signal here is delivered once stop() below can undo all of it
                self._tmp = Path(tempfile.mkdtemp(prefix="redis-backup-"))
                try:
                    self._proc = subprocess.Popen(
                        self.argv(),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        cwd=self._tmp,  # a crash report or core file stays in what is removed afterwards
                        start_new_session=True,  # a Ctrl-C reaches us, and we stop it
                    )
                except OSError as e:
                    raise TempServerError(f"cannot start {self.binary}: {e.strerror}") from e
            self._wait_loaded()
        except BaseException:
            self.stop()
            raise

    def _wait_loaded(self) -> None:
        assert self._proc is not None
        started = time.monotonic()
        connected = False
        client = self.client()
        try:
            while True:
                if self._proc.poll() is not None:
                    raise TempServerError(f"redis-server exited while loading the restored data: {self.last_warning()}")
                try:
                    if client.info("persistence").get("loading") == 0:
                        critical = self.critical_line()
                        if critical is not None:
                            raise TempServerError(f"redis-server reported an error while loading: {critical}")
                        return
                    connected = True
                except _redis().BusyLoadingError:
                    connected = True
                except _redis().ConnectionError:
                    pass
                waited = time.monotonic() - started
                limit = self.load_timeout if connected else self.startup_timeout
                if limit is not None and waited > limit:
                    raise TempServerError(
                        f"redis-server did not {'finish loading' if connected else 'start'} in {limit:g}s: "
                        f"{self.last_warning()}"
                    )
                time.sleep(_POLL)
        finally:
            client.close()

    def client(self, db: int = 0) -> redis.Redis:
        # no retries: a local server that does not answer has exited, and polling is ours to do
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client: redis.Redis = _redis().Redis(
            unix_socket_path=str(self.socket), db=db, socket_timeout=None, retry=Retry(NoBackoff(), 0)
        )
        return client

    def _log_lines(self) -> list[str] | None:
        try:
            return self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return None

    def critical_line(self) -> str | None:
        """The first command of the files that failed, as the server logged it."""
        for line in self._log_lines() or ():
            m = _LOG_WARNING.match(line)
            if m and _CRITICAL in m.group(1):
                return m.group(1).replace(_CRITICAL, "").strip()
        return None

    def last_warning(self) -> str:
        """Why the server refused the files: a failed command, else its last warning line."""
        lines = self._log_lines()
        if lines is None:
            return "(no log)"
        critical = self.critical_line()
        if critical is not None:
            return critical
        for line in reversed(lines):
            m = _LOG_WARNING.match(line)
            if m and "ready to exit" not in m.group(1):
                return m.group(1).strip()
        return lines[-1].strip() if lines else "(empty log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # SIGKILL: nothing of a scratch server is kept (what SAVE wrote is complete once SAVE
            # returned), and a server still loading would put off a SIGTERM until it is done
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> TempRedis:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
