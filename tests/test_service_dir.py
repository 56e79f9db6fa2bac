"""One service per BACKUP_DIR, and a BACKUP_DIR that cannot be used found before the primary forks.

A second service appending to the chain of the first stores every command twice; a directory that
holds another primary's backup must not be continued (or superseded) by accident."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.chains import chain_dirs
from tests.support.faults import CAUGHT_UP, assert_restores, error_lines, start_service, wait_for_chain
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, run_cli, service_env

pytestmark = pytest.mark.slow


def full_syncs(primary: RedisServer) -> int:
    return int(primary.info("stats")["sync_full"])


def settled_files(root: Path) -> set[Path]:
    """What is under root, without the temporary names of a write in progress (the running service
    writes its metadata as .NAME.tmp and renames it: such a name may be gone by the time it is looked at)."""
    return {p.relative_to(root) for p in root.rglob("*") if not (p.name.startswith(".") and p.name.endswith(".tmp"))}


def test_a_second_service_on_the_same_dir_exits_and_touches_nothing(
    primary: RedisServer, service_factory: ServiceFactory, redis_factory: RedisFactory, tmp_backup_dir: Path
) -> None:
    first = start_service(service_factory, primary, tmp_backup_dir)
    c = primary.client(0)
    for _ in range(25):
        c.incr("counter")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    before = settled_files(tmp_backup_dir)
    second = service_factory(service_env(primary, tmp_backup_dir))
    assert second.wait(timeout=30) == 2
    lines = error_lines(second.stderr_text())
    assert lines and f"pid {first.pid}" in lines[-1] and "in use by another redis-backup service" in lines[-1]
    assert len(primary.replicas()) == 1  # it never connected
    for _ in range(25):
        c.incr("counter")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    after = settled_files(tmp_backup_dir)
    assert set(before) <= set(after)
    # the reading commands work beside the running service
    for args in (["list"], ["verify"], ["restore", "--to", str(tmp_backup_dir.parent / "r")]):
        r = run_cli(args, {"BACKUP_DIR": str(tmp_backup_dir)})
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    restored = redis_factory.load_aof_dir(tmp_backup_dir.parent / "r")
    assert restored.client(0).get("counter") == b"50"
    assert restored.digest() == primary.digest()
    assert first.alive()
    # deleting the lock file does not let a second one in: the directory itself is locked too
    (tmp_backup_dir / ".redis-backup.lock").unlink()
    third = service_factory(service_env(primary, tmp_backup_dir))
    assert third.wait(timeout=30) == 2 and "in use by another redis-backup service" in third.stderr_text()
    assert len(primary.replicas()) == 1


def test_two_services_started_at_once_on_an_empty_dir(
    primary: RedisServer, service_factory: ServiceFactory, redis_factory: RedisFactory, tmp_path: Path
) -> None:
    backup_dir = tmp_path / "new-backups"  # does not exist yet: both race to create it
    svcs = [service_factory(service_env(primary, backup_dir), start=False) for _ in range(2)]
    for s in svcs:
        s.start()
    loser = wait_until(lambda: next((s for s in svcs if not s.alive()), None), timeout=30,
                       message="one of the two services exits")  # fmt: skip
    winner = svcs[1 - svcs.index(loser)]
    assert loser.wait() == 2, loser.stderr_text()
    assert f"pid {winner.pid}" in error_lines(loser.stderr_text())[-1]
    chain = wait_for_chain(winner, backup_dir)
    c = primary.client(0)
    for _ in range(50):
        c.incr("counter")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert len(chain_dirs(backup_dir)) == 1
    restored = assert_restores(redis_factory, chain, primary)
    assert restored.client(0).get("counter") == b"50"


def test_a_dir_of_another_primary_is_refused_unless_allowed(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    a, b = redis_factory(), redis_factory()
    a.client().set("a", "1")
    b.client().set("b", "1")
    svc = start_service(service_factory, a, tmp_backup_dir)
    assert svc.stop() == 0
    old = chain_dirs(tmp_backup_dir)
    refused = service_factory(service_env(b, tmp_backup_dir))
    assert refused.wait(timeout=30) == 2
    line = error_lines(refused.stderr_text())[-1]
    assert f"primary {a.host}:{a.port}" in line and "ALLOW_OTHER_PRIMARY" in line
    assert full_syncs(b) == 0 and chain_dirs(tmp_backup_dir) == old
    assert '"closed": false' in (old[0] / "redis-backup.json").read_text()
    allowed = start_service(service_factory, b, tmp_backup_dir, ALLOW_OTHER_PRIMARY="true")
    # start_service is satisfied by the old chain already there: wait for b's own (a loaded machine)
    wait_until(lambda: len(chain_dirs(tmp_backup_dir)) == 2, timeout=60, message="a new chain for b")
    assert allowed.alive()


def test_a_read_only_backup_dir_is_refused_before_the_primary_forks(
    primary: RedisServer, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {done.stderr.strip()}")
    try:
        svc = service_factory(service_env(primary, ro))
        assert svc.wait(timeout=30) == 2
        line = error_lines(svc.stderr_text())[-1]
        assert f"{ro}" in line and "Read-only file system" in line, line
        assert full_syncs(primary) == 0
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True, check=False)


def test_a_backup_dir_that_is_a_file_says_so(
    primary: RedisServer, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    svc = service_factory(service_env(primary, f))
    assert svc.wait(timeout=30) == 2
    assert error_lines(svc.stderr_text())[-1] == f"redis-backup: error: BACKUP_DIR {f} is not a directory"
    assert full_syncs(primary) == 0
    assert os.path.getsize(f) == 1
