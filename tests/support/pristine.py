"""A small real backup, made once per module: one chain of several incr files, the older closed and the
newest open, written by the real service from a real redis-server (one SET per incr file)."""

from __future__ import annotations

from pathlib import Path

from tests.support.chains import METADATA
from tests.support.servers import RedisServer, wait_until
from tests.support.service import ServiceProcess, service_env


def incr_bytes(bk: Path) -> int:
    return sum(p.stat().st_size for p in bk.glob("*/*.incr.aof"))


def make_small_backup(base: Path, keys: int) -> Path:
    """BACKUP_DIR under base, holding the chain; the primary and the service are stopped on return."""
    bk = base / "backups"
    bk.mkdir()
    primary = RedisServer(base / "redis")
    try:
        env = service_env(primary, bk, SEGMENT_MAX_BYTES=1024)  # a new incr file every ~1 KiB
        service = ServiceProcess(env, base / "service")
        try:
            primary.wait_replicas(1, timeout=20)
            c = primary.client()
            for i in range(keys):
                stored = incr_bytes(bk)
                c.set(f"key:{i}", f"value-{i:04d}-" + "x" * 400)
                # one chunk per write (rotations fall between them): wait until the service wrote it
                wait_until(lambda: incr_bytes(bk) > stored + 400, timeout=10)  # noqa: B023 (called here)
            primary.wait_replicas_caught_up()
        finally:
            assert service.stop() == 0
    finally:
        primary.stop()
    return bk


def chain_names(bk: Path) -> list[str]:
    """The complete chains (with their metadata) in bk, oldest first, by name alone."""
    if not bk.is_dir():
        return []
    return sorted(p.name for p in bk.iterdir() if not p.name.startswith(".") and (p / METADATA).is_file())


def new_chain(primary: RedisServer, bk: Path, *, keys: int = 3, tag: str = "") -> str:
    """With the service running on primary: write a few keys, restart the primary (no persistence: an
    empty dataset and a new replication id, so a full resync) and wait until the service has begun a
    chain for it and caught up with it; its name."""
    before = set(chain_names(bk))
    c = primary.client()
    for i in range(keys):
        c.set(f"before-restart{tag}:{i}", "x" * 100)
    primary.wait_replicas_caught_up(30)
    primary.restart()
    name: str = wait_until(lambda: next(iter(set(chain_names(bk)) - before), None), timeout=30,
                           message=f"a new chain in {bk}")  # fmt: skip
    primary.wait_replicas(1, timeout=30)
    c = primary.client()
    for i in range(keys):
        c.set(f"in-chain{tag}:{i}", f"{name}-{i}")
    primary.wait_replicas_caught_up(30)
    return name


def make_chains(base: Path, count: int) -> Path:
    """BACKUP_DIR under base holding `count` chains written by the real service, each begun by a full
    resync (the primary restarted without persistence), the older closed and the newest open; the primary
    and the service are stopped on return."""
    bk = base / "backups"
    bk.mkdir()
    primary = RedisServer(base / "redis")
    try:
        service = ServiceProcess(service_env(primary, bk), base / "service")
        try:
            primary.wait_replicas(1, timeout=30)
            wait_until(lambda: chain_names(bk), timeout=30, message="the first chain")
            while len(chain_names(bk)) < count:
                new_chain(primary, bk)
        finally:
            assert service.stop() == 0, service.stderr_text()[-3000:]
    finally:
        primary.stop()
    return bk
