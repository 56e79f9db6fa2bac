"""`redis-backup snapshot`: one RDB, checked, like `redis-cli --rdb`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fake_primary import FakePrimary, empty_rdb, fullresync_reply
from tests.support.servers import RedisFactory
from tests.support.service import REPO_ROOT, ServiceFactory, base_env, service_env
from tests.support.workload import mixed_workload


@pytest.mark.parametrize("diskless", ["yes", "no"])
def test_snapshot_to_file_loads_with_the_primary_digest(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, diskless: str
) -> None:
    primary = redis_factory(extra_args=["--repl-diskless-sync", diskless])
    mixed_workload(primary.client, rounds=3)
    out = tmp_path / "out" / "dump.rdb"
    out.parent.mkdir()
    result = service_factory.run_cli(["snapshot", "--out", str(out)], service_env(primary, None))
    assert result.returncode == 0, result.stderr
    assert "checksum ok" in result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["dump.rdb"]  # no temporary left behind
    assert redis_factory.load_rdb(out).digest() == primary.digest()
    primary.wait_no_replicas()  # rdb-only: the primary does not keep it as a replica


def test_snapshot_to_stdout(redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path) -> None:
    primary = redis_factory()
    mixed_workload(primary.client, rounds=2)
    env = base_env() | service_env(primary, None)
    with open(tmp_path / "piped.rdb", "wb") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "redis_backup", "snapshot", "--out", "-"],
            env=env, cwd=REPO_ROOT, stdout=f, stderr=subprocess.PIPE, timeout=60, check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert redis_factory.load_rdb(tmp_path / "piped.rdb").digest() == primary.digest()


def test_snapshot_memory_does_not_grow_with_the_dataset(
    redis_factory: RedisFactory, tmp_path: Path
) -> None:
    primary = redis_factory(extra_args=["--rdbcompression", "no"])
    primary.execute("DEBUG", "POPULATE", 120_000, "big", 1000)
    out = tmp_path / "big.rdb"
    env = base_env() | service_env(primary, None)
    # Peak RSS of the snapshot process alone: measured by a wrapper whose only child it is.
    wrapper = (
        "import resource, subprocess, sys;"
        f"rc = subprocess.call([sys.executable, '-m', 'redis_backup', 'snapshot', '--out', {str(out)!r}]);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    peak_kib = int(proc.stdout.split()[-1])
    assert out.stat().st_size > 100 << 20
    assert peak_kib < 64 * 1024, f"peak RSS {peak_kib} KiB for {out.stat().st_size >> 20} MiB"


def test_damaged_snapshot_is_refused_and_not_written(service_factory: ServiceFactory, tmp_path: Path) -> None:
    rdb = bytearray(empty_rdb())
    rdb[-1] ^= 0xFF  # wrong CRC64
    with FakePrimary(psync_reply=fullresync_reply(bytes(rdb))) as fake:
        out = tmp_path / "dump.rdb"
        env = service_env(None, None, REDIS_HOST="127.0.0.1", REDIS_PORT=fake.port)
        result = service_factory.run_cli(["snapshot", "--out", str(out)], env, timeout=30)
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
