"""The redis-backup service as a real child process (``python -m redis_backup ...``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.support.servers import RedisServer, reap, spawn, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]

# Variables the service reads: never inherited from the developer's environment.
_SERVICE_PREFIXES = ("REDIS_", "BACKUP_", "SEGMENT_")
_SERVICE_NAMES = {
    "RETRY_DELAY_SECONDS", "MAX_RETRY_DELAY_SECONDS", "MAX_RETRIES", "ALLOW_OTHER_PRIMARY", "LAG_TOLERANCE_SECONDS",
    "SNAPSHOT_START_TIMEOUT_SECONDS", "MIN_FREE_BYTES",
    "LOCAL_RETENTION_HOURS", "METRICS_PORT", "METRICS_HOST", "READY_MAX_UPLOAD_LAG_SECONDS",
}  # fmt: skip
# What is kept from os.environ.
_KEEP_NAMES = {
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "SYSTEMROOT", "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR",
}  # fmt: skip
_KEEP_PREFIXES = ("LC_", "PYTHON", "COVERAGE_", "PYENV")


def base_env() -> dict[str, str]:
    """A minimal copy of os.environ with every service setting removed.

    The repository root is put first on PYTHONPATH so the service runs the working tree's code.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if (k in _KEEP_NAMES or k.startswith(_KEEP_PREFIXES))
        and not k.startswith(_SERVICE_PREFIXES)
        and k not in _SERVICE_NAMES
    }
    paths = [str(REPO_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    env["METRICS_PORT"] = "0"  # no HTTP port unless a test asks for one (the default one would collide)
    return env


def service_env(
    server: RedisServer | None,
    backup_dir: Path | None,
    **overrides: str | int | float | Path | None,
) -> dict[str, str]:
    """The environment for a service backing up ``server`` into ``backup_dir``.

    Sets REDIS_HOST/REDIS_PORT, REDIS_USERNAME/REDIS_PASSWORD when the server has admin credentials,
    REDIS_TLS_ENABLED=true plus REDIS_TLS_CA_CERT/CERT/KEY for a TLS server, BACKUP_DIR, and short
    retry delays (RETRY_DELAY_SECONDS=0.05, MAX_RETRY_DELAY_SECONDS=0.5), LAG_TOLERANCE_SECONDS=1.
    ``overrides`` win; an override of ``None`` removes the variable.
    """
    # LAG_TOLERANCE_SECONDS=1: a test that is not about how exact a second is must not find its second
    # in a gap because a loaded machine held the service up for a quarter of a second
    env: dict[str, str] = {"RETRY_DELAY_SECONDS": "0.05", "MAX_RETRY_DELAY_SECONDS": "0.5",
                           "LAG_TOLERANCE_SECONDS": "1"}  # fmt: skip
    if server is not None:
        env["REDIS_HOST"] = server.host
        env["REDIS_PORT"] = str(server.port)
        if server.username is not None:
            env["REDIS_USERNAME"] = server.username
        if server.password is not None:
            env["REDIS_PASSWORD"] = server.password
        if server.tls is not None:
            env["REDIS_TLS_ENABLED"] = "true"
            env["REDIS_TLS_CA_CERT"] = str(server.tls.ca_cert)
            env["REDIS_TLS_CERT"] = str(server.tls.client_cert)
            env["REDIS_TLS_KEY"] = str(server.tls.client_key)
    if backup_dir is not None:
        env["BACKUP_DIR"] = str(backup_dir)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def _full_env(env: Mapping[str, str] | None) -> dict[str, str]:
    full = base_env()
    if env:
        full.update(env)
    return full


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    *,
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m redis_backup *args`` to completion; output captured as text, no check."""
    return subprocess.run(
        [sys.executable, "-m", "redis_backup", *args],
        env=_full_env(env),
        cwd=cwd or REPO_ROOT,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class TerminalRun:
    returncode: int
    stdout: str  # a pipe
    terminal: bytes  # everything written to stderr, a pseudo-terminal


def run_cli_on_terminal(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120.0, *, columns: int = 200
) -> TerminalRun:
    """Run ``python -m redis_backup *args`` with stderr on a pseudo-terminal (`columns` wide) and stdout
    on a pipe, as someone at a terminal piping the output; the terminal is read while it runs."""
    main, tty = pty.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    shown = bytearray()

    def drain() -> None:
        while True:
            try:
                block = os.read(main, 65536)
            except OSError:  # EIO: every copy of the terminal's other side is closed
                return
            if not block:
                return
            shown.extend(block)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "redis_backup", *args], env=_full_env(env), cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=tty, timeout=timeout, check=False,
        )  # fmt: skip
    finally:
        os.close(tty)
        reader.join(timeout=10)
        os.close(main)
    return TerminalRun(proc.returncode, proc.stdout.decode(), bytes(shown))


def cli(backup_dir: Path, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    """A reading command (list, restore, verify) on ``backup_dir``."""
    return run_cli(list(args), {"BACKUP_DIR": str(backup_dir)}, timeout=timeout)


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``r`` itself, once it has exited 0 (else its output, in the assertion)."""
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


class ServiceProcess:
    """``python -m redis_backup *args`` running in the background, output to files in ``workdir``."""

    def __init__(
        self,
        env: Mapping[str, str],
        workdir: Path,
        args: Sequence[str] = ("run",),
        *,
        start: bool = True,
        command: Sequence[str] | None = None,
    ) -> None:
        """``command`` replaces ``[python, -m, redis_backup]`` (only for testing this class itself)."""
        self.env = _full_env(env)
        self.args = list(args)
        self.command = list(command) if command is not None else [sys.executable, "-m", "redis_backup"]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.workdir / "stdout.log"
        self.stderr_path = self.workdir / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []
        if start:
            self.start()

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]

    def start(self) -> None:
        if self.alive():
            raise RuntimeError("service already running")
        self._close_files()
        out = open(self.stdout_path, "ab")  # noqa: SIM115 - closed in _close_files
        err = open(self.stderr_path, "ab")  # noqa: SIM115
        self._files = [out, err]
        self.proc = spawn(self.argv, cwd=REPO_ROOT, env=self.env, stdout=out, stderr=err)

    def _close_files(self) -> None:
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()
        self._files = []

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def terminate(self) -> None:
        """Send SIGTERM (does not wait; see :meth:`wait`)."""
        self.signal(signal.SIGTERM)

    def interrupt(self) -> None:
        """Send SIGINT (does not wait)."""
        self.signal(signal.SIGINT)

    def kill9(self) -> int:
        """SIGKILL the service (and anything in its process group) and wait; returns the status."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        rc = reap(self.proc)
        self._close_files()
        return rc

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for exit and return the status; raises subprocess.TimeoutExpired if still running."""
        assert self.proc is not None, "not started"
        rc = self.proc.wait(timeout=timeout)
        reap(self.proc)
        self._close_files()
        return rc

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL.  Returns the status (None if never started)."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill9()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.alive():
            self.kill9()
        self._close_files()

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def output_text(self) -> str:
        return self.stdout_text() + self.stderr_text()

    def wait_for_output(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 10.0,
        *,
        stream: str = "both",
    ) -> re.Match[str]:
        """Wait until ``pattern`` (regex) appears in stderr/stdout/both; fails early if the service exits."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern

        def read() -> str:
            if stream == "stderr":
                return self.stderr_text()
            if stream == "stdout":
                return self.stdout_text()
            return self.output_text()

        def found() -> re.Match[str] | None:
            match = regex.search(read())
            if match is None and not self.alive():
                match = regex.search(read())  # output written just before exit
                if match is None:
                    raise AssertionError(
                        f"service exited ({self.returncode}) before printing {regex.pattern!r}:\n"
                        f"{self.output_text()[-4000:]}"
                    )
            return match

        try:
            return wait_until(found, timeout=timeout, interval=0.02)
        except AssertionError as exc:
            if "exited" in str(exc):
                raise
            raise AssertionError(
                f"{regex.pattern!r} not in service output after {timeout}s:\n{self.output_text()[-4000:]}"
            ) from None

    def __repr__(self) -> str:
        return f"ServiceProcess(args={self.args}, pid={self.proc.pid if self.proc else None})"


class ServiceFactory:
    """Starts services in numbered subdirs of ``base``; :meth:`close` kills any still running."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.services: list[ServiceProcess] = []

    def __call__(
        self, env: Mapping[str, str], args: Sequence[str] = ("run",), **kwargs: Any
    ) -> ServiceProcess:
        workdir = self.base / f"service-{len(self.services) + 1}"
        service = ServiceProcess(env, workdir, args, **kwargs)
        self.services.append(service)
        return service

    def run_cli(
        self, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(args, env, timeout, **kwargs)

    def close(self) -> None:
        for service in self.services:
            if service.proc is not None and service.alive():
                service.kill9()
            service._close_files()
        self.services.clear()
