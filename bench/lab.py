"""The processes a benchmark run starts: primaries, and the contenders that replicate from them.

Everything is started through tests.support (real redis-servers on free ports in their own directories,
the service as ``python -m redis_backup``; children die with this process) and stopped by
:meth:`Lab.close` at the latest.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import RedisFactory, RedisServer, parse_replica_line, wait_until
from tests.support.service import ServiceFactory, base_env, service_env

SERVICE = "redis-backup"
REPLICA = "redis replica"
COPY = "byte copy"
SERVICE_NO_ROTATION = "redis-backup, no rotation"
SERVICE_ROTATING = "redis-backup, 1 MiB segments"

# Every primary: a plain redis-server; tests.support adds --save "" --enable-debug-command yes
# --repl-diskless-sync-delay 0. No output-buffer limit is changed: a slow replica is dropped at the
# defaults (256 MB hard, 64 MB for 60 s), as it would be in production.
PRIMARY_ARGS = ("--appendonly", "no")
STARTUP_TIMEOUT = 600.0  # loading a 2 GB dataset
SYNC_TIMEOUT = 600.0


class Lab:
    """A temporary directory holding every server and service of one benchmark run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.redis = RedisFactory(root / "redis")
        self.services = ServiceFactory(root / "services")
        self._dirs = 0

    def subdir(self, prefix: str) -> Path:
        self._dirs += 1
        path = self.root / f"{prefix}-{self._dirs}"
        path.mkdir(parents=True)
        return path

    def primary(self, *extra_args: str) -> RedisServer:
        return self.redis(extra_args=[*PRIMARY_ARGS, *extra_args], startup_timeout=STARTUP_TIMEOUT)

    def close(self) -> None:
        try:
            self.services.close()
        finally:
            self.redis.close()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class Attached:
    """A contender replicating from a primary: its process, where it keeps its files, how to stop it."""

    name: str
    pid: int
    dir: Path
    alive: Callable[[], bool]
    stop: Callable[[], object]
    output: Callable[[], str]  # its log, for error messages


def _start_service(lab: Lab, primary: RedisServer, appendfsync: str, **env: str) -> Attached:
    backup_dir = lab.subdir("backup")
    service = lab.services(service_env(primary, backup_dir, LOG_LEVEL="warning", **env))
    return Attached(
        SERVICE, service.pid, backup_dir, service.alive, lambda: service.stop(timeout=30), service.output_text
    )


def _start_replica(lab: Lab, primary: RedisServer, appendfsync: str) -> Attached:
    """A Redis replica with appendonly yes; AOF rewrites off, so no rewrite child runs while measuring."""
    replica = lab.redis.replica_of(
        primary,
        wait=False,
        appendonly=True,
        extra_args=["--appendfsync", appendfsync, "--auto-aof-rewrite-percentage", "0"],
        startup_timeout=STARTUP_TIMEOUT,
    )
    assert replica.pid is not None
    return Attached(REPLICA, replica.pid, replica.dir, replica.alive, replica.stop, replica.log_text)


def _start_copy(lab: Lab, primary: RedisServer, appendfsync: str) -> Attached:
    workdir = lab.subdir("copy")
    args = ["--host", primary.host, "--port", str(primary.port), "--out", str(workdir / "stream.bin")]
    copier = lab.services({}, args, command=[sys.executable, "-m", "bench.copier"])
    return Attached(COPY, copier.pid, workdir, copier.alive, lambda: copier.stop(timeout=30), copier.output_text)


STARTERS: dict[str, Callable[[Lab, RedisServer, str], Attached]] = {
    SERVICE: _start_service,
    # the same service, once without rotation and once rotating every MiB (the WAIT benchmark)
    SERVICE_NO_ROTATION: functools.partial(
        _start_service, SEGMENT_MAX_BYTES=str(1 << 40), SEGMENT_MAX_SECONDS="86400"
    ),
    SERVICE_ROTATING: functools.partial(_start_service, SEGMENT_MAX_BYTES=str(1 << 20)),
    REPLICA: _start_replica,
    COPY: _start_copy,
}


def wait_in_sync(primary: RedisServer, rep: Attached, timeout: float = SYNC_TIMEOUT) -> None:
    """Until the primary has one online replica that acknowledged its whole stream (fails at once if
    the contender exits)."""

    def in_sync() -> bool:
        if not rep.alive():
            raise RuntimeError(f"{rep.name} exited before it was in sync: {rep.output()[-2000:]}")
        info = primary.info("replication")
        offset = int(info["master_repl_offset"])
        replicas = [parse_replica_line(v) for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()]
        return len(replicas) == 1 and replicas[0].state == "online" and replicas[0].offset == offset

    wait_until(in_sync, timeout=timeout, interval=0.02, message=f"{rep.name} in sync with :{primary.port}")


@contextlib.contextmanager
def attach(
    lab: Lab, kind: str, primary: RedisServer, *, appendfsync: str = "everysec", **env: str
) -> Iterator[Attached]:
    """Start contender ``kind`` against ``primary``, wait until it is in sync, stop it on exit.

    ``appendfsync`` applies to the Redis replica, ``env`` (settings) to the service.
    """
    starter: Callable[..., Attached] = STARTERS[kind]
    rep = starter(lab, primary, appendfsync, **env)
    try:
        wait_in_sync(primary, rep)
        yield rep
        if not rep.alive():
            raise RuntimeError(f"{rep.name} exited during the measurement: {rep.output()[-2000:]}")
    finally:
        with contextlib.suppress(Exception):
            rep.stop()


def service_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "redis_backup", *args]


def command_env(**env: str) -> dict[str, str]:
    """The environment for a one-shot ``python -m redis_backup`` (the working tree's code)."""
    return base_env() | env
