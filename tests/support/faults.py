"""Helpers shared by the fault tests (tests/test_faults_*.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, cast

from tests.support.chains import METADATA, chain_dirs, read_meta
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, ServiceProcess, service_env

CAUGHT_UP = 30.0
WORKLOAD_DBS = (0, 1, 3)


def meta(chain: Path) -> dict[str, Any]:
    return read_meta(chain)


def wait_for_chain(svc: ServiceProcess, backup_dir: Path, count: int = 1, timeout: float = CAUGHT_UP) -> Path:
    """Wait until ``count`` complete chains exist (failing early if the service exits); the newest."""

    def ready() -> Path | None:
        assert svc.alive(), f"service exited ({svc.returncode}): {svc.stderr_text()[-3000:]}"
        chains = [c for c in chain_dirs(backup_dir) if (c / METADATA).is_file()]
        return chains[-1] if len(chains) >= count else None

    return wait_until(ready, timeout=timeout, message=f"{count} chain(s) in {backup_dir}")


def start_service(
    service_factory: ServiceFactory,
    primary: RedisServer,
    backup_dir: Path,
    *,
    caught_up: RedisServer | None = None,
    **env: str | int | float | Path | None,
) -> ServiceProcess:
    """Start the service on ``primary`` (env overrides win, e.g. REDIS_PORT of a proxy), wait for its
    chain, then for ``caught_up`` (default: ``primary``) to see every replica caught up."""
    svc = service_factory(service_env(primary, backup_dir, **env))
    wait_for_chain(svc, backup_dir)
    (caught_up or primary).wait_replicas_caught_up(CAUGHT_UP)
    return svc


def assert_restores(redis_factory: RedisFactory, chain: Path, primary: RedisServer) -> RedisServer:
    """The chain loads in a real redis-server and holds exactly the primary's dataset."""
    restored = redis_factory.load_chain(chain)
    assert restored.digest() == primary.digest(), f"{chain.name}: digest differs from the primary's"
    assert restored.keyspace() == primary.keyspace()
    return restored


def per_db(server: RedisServer) -> dict[int, dict[bytes, bytes]]:
    """db -> key -> DUMP: compared db by db, so that keys that land in another db show."""
    out: dict[int, dict[bytes, bytes]] = {}
    for db in server.keyspace():
        c = server.client(db)
        out[db] = {k: c.dump(k) for k in c.scan_iter(count=1000)}  # type: ignore[misc]
    return out


def key_digests(server: RedisServer) -> dict[tuple[int, bytes], bytes]:
    """(db, key) -> DEBUG DIGEST-VALUE, for every key in every db."""
    out: dict[tuple[int, bytes], bytes] = {}
    for db in server.keyspace():
        client = server.client(db)
        for key in client.scan_iter(count=1000):
            value = cast(Any, client).execute_command("DEBUG", "DIGEST-VALUE", key)
            out[(db, key)] = value[0] if isinstance(value, list) else value
    return out


def assert_holds_a_prefix(restored: RedisServer, primary: RedisServer, *, immutable: bytes) -> None:
    """What a chain that stopped early holds is true: every key whose name starts with ``immutable``
    (keys written once, never changed) has the primary's value."""
    mine = {k: v for k, v in key_digests(restored).items() if k[1].startswith(immutable)}
    theirs = key_digests(primary)
    wrong = [k for k, v in mine.items() if theirs.get(k) != v]
    assert not wrong, f"keys restored with a value the primary never had: {wrong[:5]}"


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("redis-backup: ")]


def count_lines(text: str, pattern: str) -> int:
    return len([line for line in text.splitlines() if re.search(pattern, line)])


def all_bytes_under(path: Path) -> bytes:
    """Every file's content under ``path`` (recursively), concatenated, to grep for markers."""
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


def vm_hwm_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1])


def mount_tmpfs(dir: Path, size: str, *, remount: bool = False) -> subprocess.CompletedProcess[str]:
    """A tmpfs of ``size`` on ``dir`` (root only), or the same one resized with ``remount``."""
    opts = f"remount,size={size}" if remount else f"size={size},mode=0755"
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(dir)], capture_output=True, text=True, check=False
    )
