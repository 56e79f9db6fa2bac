"""A throwaway redis-server: listens on a unix socket only (no TCP port), never saves on its own.

Used to turn a restored AOF directory into an RDB (`restore --format rdb`), to read its keys
(`restore --into`) and to check that a chain loads (`verify --deep`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # redis-py takes 40 ms to import: only commands that start a server pay for it (_redis())
    import redis

from redis_backup.errors import BackupError
from redis_backup.interrupts import held
from redis_backup.progress import Progress, silent

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


DEFAULT_BIN = "redis-server"  # REDIS_SERVER_BIN's default: the one on PATH
_VERSION_LINE = re.compile(r"^(Redis|Valkey) server v=(\d+)\.(\d+)\.(\d+)\b")
_VERSION_TIMEOUT = 10.0

# The highest RDB version each release line reads (it writes the same): Redis 7.0 wrote 10, 7.2 11,
# 7.4 12; Valkey 7.2 and 8.x write (and read) 11, and do not read Redis 7.4's 12. A server older than
# the table's oldest line reads at most what the oldest line before 7.0 wrote (9, Redis 5/6).
_READS: dict[str, tuple[tuple[tuple[int, int], int], ...]] = {
    "redis": (((5, 0), 9), ((7, 0), 10), ((7, 2), 11), ((7, 4), 12)),
    "valkey": (((7, 2), 11), ((8, 0), 11), ((8, 1), 11)),
}


@dataclass(frozen=True)
class ServerBinary:
    """A redis-server binary and what its `--version` says: "redis" or "valkey", and x.y.z."""

    path: str
    name: str
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def __str__(self) -> str:
        return f"{self.name} {self.version_text} ({self.path})"

    @property
    def max_rdb(self) -> int:
        """The highest RDB version it reads. A release line newer than the table is assumed to read
        what the newest line we know writes, and no more: a guess that errs towards refusing, which
        can_read() widens only for files its own family wrote at its version or before."""
        best = 0
        for line, rdb in _READS[self.name]:
            if self.version[:2] >= line:
                best = rdb
        return best

    def can_read(self, rdb_version: int, writer_name: str | None, writer_version: str | None) -> bool:
        """Whether it loads an RDB of that version, written by that server (name and x.y.z: from the
        file's aux fields, None when not known)."""
        if rdb_version <= self.max_rdb:
            return True
        # every server reads what its own family wrote at the same or an older version
        written = parse_version(writer_version) if writer_version else None
        return writer_name == self.name and written is not None and written <= self.version


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", text.strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


class ServerCannotRead(BackupError):
    """The scratch server is too old for the chain's snapshot: nothing is wrong with the chain."""


def find_redis_server(spec: str = DEFAULT_BIN) -> ServerBinary:
    """The binary REDIS_SERVER_BIN names (a path, or a name looked up on PATH) and its version."""
    default = spec == DEFAULT_BIN
    found = shutil.which(spec)
    # absolute: the server is started in its own temporary directory, where a relative path means nothing
    path = os.path.abspath(found) if found is not None else None
    if path is None:
        if default:
            raise RedisServerMissing(
                f"redis-server is not installed (not found on PATH); install the {PACKAGE} package "
                f"(apt-get install {PACKAGE}) or set REDIS_SERVER_BIN to a redis-server binary"
            )
        why = "not an executable file" if os.path.exists(spec) else "no such file" if "/" in spec else "not on PATH"
        raise RedisServerMissing(f"REDIS_SERVER_BIN={spec}: {why}")
    try:
        out = subprocess.run(
            [path, "--version"], stdin=subprocess.DEVNULL, capture_output=True, timeout=_VERSION_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        why = (e.strerror or str(e)) if isinstance(e, OSError) else f"no answer to --version in {_VERSION_TIMEOUT:g}s"
        raise RedisServerMissing(f"REDIS_SERVER_BIN={spec}: cannot run {path}: {why}") from e
    first = (out.stdout.decode("utf-8", "replace").splitlines() or [""])[0]
    m = _VERSION_LINE.match(first)
    if out.returncode != 0 or m is None:
        shown = first.strip()[:80] or f"exit status {out.returncode}, nothing printed"
        raise RedisServerMissing(
            f"REDIS_SERVER_BIN={spec}: {path} is not a redis-server (its --version says: {shown})"
        )
    return ServerBinary(path, m.group(1).lower(), (int(m.group(2)), int(m.group(3)), int(m.group(4))))


def check_reads(
    server: ServerBinary, rdb_version: int | None, writer_name: str | None, writer_version: str | None
) -> None:
    """ServerCannotRead when `server` cannot load the snapshot (not known: let the server try)."""
    if rdb_version is None or server.can_read(rdb_version, writer_name, writer_version):
        return
    writer = f"{writer_name or 'a server'} {writer_version}" if writer_version else "its primary"
    wanted = f"{writer_name or 'redis'}-server {writer_version} or newer" if writer_version else "newer redis-server"
    raise ServerCannotRead(
        f"the backup's snapshot is RDB version {rdb_version} (written by {writer}); the scratch server, "
        f"{server}, reads RDB versions up to {server.max_rdb}: set REDIS_SERVER_BIN to a {wanted}"
    )


_RUNNING: set[TempRedis] = set()  # started and not stopped: what kill_all() stops
_RUNNING_LOCK = threading.Lock()


def kill_all() -> None:
    """SIGKILL every scratch server still running and remove its directory: for a process about to
    leave with os._exit, which would leave them behind (each runs in a session of its own)."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for srv in running:
        with contextlib.suppress(Exception):
            srv.stop()


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
        server: ServerBinary | None = None,
        progress: Progress | None = None,
        debug: bool = False,
    ) -> None:
        # absolute: the server runs in its own temporary directory (cwd=), where a relative one means nothing
        self.data_dir = data_dir.absolute()
        self.max_db = max_db  # the highest db the files use (None: not known)
        self.databases = databases_for(max_db)
        self.appendonly = appendonly
        self.startup_timeout = startup_timeout
        self.load_timeout = load_timeout
        self.server = server if server is not None else find_redis_server()
        self.binary = self.server.path
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.progress = progress or silent()  # the load's: bytes loaded of the files' size
        self.debug = debug  # allow DEBUG (DIGEST) on the socket: Redis 7 refuses it by default

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
            # 7.0 added the option (and off by default); older servers always allowed DEBUG
            *(["--enable-debug-command", "local"] if self.debug and self.server.version >= (7, 0, 0) else []),
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
                with _RUNNING_LOCK:
                    _RUNNING.add(self)
            with self.progress.phase("loading into the scratch redis-server", total=self._files_size()):
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
                    info = client.info("persistence")
                    if info.get("loading") == 0:
                        critical = self.critical_line()
                        if critical is not None:
                            raise TempServerError(f"redis-server reported an error while loading: {critical}")
                        self.progress.update(self.progress.current.total or 0)
                        return
                    connected = True
                    self.progress.update(int(info.get("loading_loaded_bytes", 0)), info.get("loading_total_bytes"))
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

    def _files_size(self) -> int | None:
        """What the server loads: the data files of its appendonlydir (its INFO says so once it loads)."""
        if not self.appendonly:
            return None
        try:
            return sum(e.stat().st_size for e in os.scandir(self.data_dir / "appendonlydir") if e.is_file()
                       and not e.name.endswith(".manifest"))  # fmt: skip
        except OSError:
            return None

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
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
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
