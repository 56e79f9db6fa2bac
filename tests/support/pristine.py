"""A small real backup, made once per module: one chain of several incr files, the older closed and the
newest open, written by the real service from a real redis-server (one SET per incr file)."""

from __future__ import annotations

from pathlib import Path

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
