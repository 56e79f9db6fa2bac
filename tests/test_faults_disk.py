"""A full disk: BACKUP_DIR on a small tmpfs that the test mounts (root only). Expected: one clear line
saying the disk is full, the chain on disk stays restorable, and capture resumes (a new chain if
needed) once there is room again."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.support.chains import chain_dirs, partial_dirs
from tests.support.faults import (
    CAUGHT_UP,
    assert_holds_a_prefix,
    assert_restores,
    count_lines,
    error_lines,
    mount_tmpfs,
    start_service,
    wait_for_chain,
)
from tests.support.servers import RedisFactory, wait_until
from tests.support.service import ServiceFactory, service_env
from tests.support.workload import mixed_workload

DISK_FULL = "disk is full"
Mount = Callable[[str], Path]


def fill(fs: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on ``fs``."""
    st = os.statvfs(fs)
    left = max(st.f_bavail * st.f_frsize - leave, 0)
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\0" * (1 << 20)
        while left > 0:
            left -= os.write(fd, block[: min(left, len(block))])
    finally:
        os.close(fd)
    return filler


def test_disk_full_during_the_stream_keeps_the_chain_and_resumes_when_space_returns(
    redis_factory: RedisFactory, service_factory: ServiceFactory, small_fs: Mount
) -> None:
    fs = small_fs("16m")
    backup_dir = fs / "backups"
    primary = redis_factory(extra_args=["--repl-backlog-size", "64mb"])
    svc = start_service(service_factory, primary, backup_dir, MAX_RETRIES=0, SEGMENT_MAX_BYTES=256 << 10)
    mixed_workload(primary.client, rounds=1, seed=81)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    (chain,) = chain_dirs(backup_dir)

    filler = fill(fs, leave=400 << 10)
    client = primary.client(2)
    for i in range(40):  # 2 MB: does not fit
        client.set(f"once:{i}", os.urandom(50_000))
    svc.wait_for_output(DISK_FULL, timeout=20)
    assert svc.alive()

    # While the disk is full, what is on it restores to a state the primary went through.
    restored = redis_factory.load_chain(chain)
    assert_holds_a_prefix(restored, primary, immutable=b"once:")
    restored.stop()

    filler.unlink()  # room again
    primary.wait_replicas_caught_up(CAUGHT_UP)
    mixed_workload(primary.client, rounds=1, seed=82)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.alive()
    assert chain_dirs(backup_dir) == [chain], "the backlog held everything: the same chain continues"
    out = svc.stderr_text()
    assert "Traceback" not in out
    assert count_lines(out, DISK_FULL) >= 1
    assert all(line.count(DISK_FULL) == 1 for line in out.splitlines() if DISK_FULL in line)
    assert_restores(redis_factory, chain, primary)


def test_snapshot_that_does_not_fit_leaves_nothing_and_succeeds_once_the_volume_grows(
    redis_factory: RedisFactory, service_factory: ServiceFactory, small_fs: Mount
) -> None:
    fs = small_fs("2m")
    backup_dir = fs / "backups"
    primary = redis_factory(extra_args=["--rdbcompression", "no"])
    primary.execute("DEBUG", "POPULATE", 4000, "big", 1000)  # ~4 MB snapshot
    svc = service_factory(service_env(primary, backup_dir, MAX_RETRIES=0))
    svc.wait_for_output(DISK_FULL, timeout=20)
    wait_until(lambda: not partial_dirs(backup_dir), timeout=10, message="the partial snapshot removed")
    assert chain_dirs(backup_dir) == []

    grown = mount_tmpfs(fs, "32m", remount=True)
    assert grown.returncode == 0, grown.stderr
    chain = wait_for_chain(svc, backup_dir)
    mixed_workload(primary.client, rounds=1, seed=83)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert chain_dirs(backup_dir) == [chain]
    assert_restores(redis_factory, chain, primary)


def test_disk_full_with_max_retries_gives_up_with_one_clear_line(
    redis_factory: RedisFactory, service_factory: ServiceFactory, small_fs: Mount
) -> None:
    fs = small_fs("16m")
    backup_dir = fs / "backups"
    primary = redis_factory(extra_args=["--repl-backlog-size", "64mb"])
    svc = start_service(service_factory, primary, backup_dir, MAX_RETRIES=3)
    fill(fs, leave=100 << 10)
    client = primary.client()
    for i in range(20):
        client.set(f"once:{i}", os.urandom(50_000))
    assert svc.wait(30) == 1
    (line,) = error_lines(svc.stderr_text())
    assert "giving up after 3 failed attempts" in line and DISK_FULL in line, line
    assert "Traceback" not in svc.stderr_text()
    (chain,) = chain_dirs(backup_dir)
    assert_holds_a_prefix(redis_factory.load_chain(chain), primary, immutable=b"once:")
