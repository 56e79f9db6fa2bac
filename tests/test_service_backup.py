"""The service against a real redis-server: what it stores must load in Redis and give the primary's
DEBUG DIGEST, through snapshots of both kinds, crashes, dropped links and new chains."""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.chains import chain_dirs, latest_chain, manifest_entries, read_meta, wait_for_chains
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, ServiceProcess, service_env
from tests.support.workload import BackgroundWriter, bulk_load, mixed_workload

CAUGHT_UP = 30.0


def start_service(
    service_factory: ServiceFactory, primary: RedisServer, backup_dir: Path, **env: str | int | None
) -> ServiceProcess:
    svc = service_factory(service_env(primary, backup_dir, **env))
    # "online" and offset 0 can come before the snapshot is stored: wait for the chain as well
    def ready() -> bool:
        assert svc.alive(), f"service exited: {svc.stderr_text()[-2000:]}"
        return bool(chain_dirs(backup_dir)) and (chain_dirs(backup_dir)[-1] / "redis-backup.json").exists()

    wait_until(ready, timeout=CAUGHT_UP, message="a chain")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    return svc


def assert_restores(redis_factory: RedisFactory, chain: Path, primary: RedisServer) -> None:
    restored = redis_factory.load_chain(chain)
    assert restored.digest() == primary.digest()
    assert restored.keyspace() == primary.keyspace()


def meta(chain: Path) -> dict:  # type: ignore[type-arg]
    return read_meta(chain)


@pytest.mark.parametrize("diskless", ["yes", "no"])
def test_backup_loads_with_primary_digest(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, diskless: str
) -> None:
    # A 1 s diskless delay makes the primary send "\n" keepalives before the snapshot.
    primary = redis_factory(extra_args=["--repl-diskless-sync", diskless, "--repl-diskless-sync-delay", "1"])
    bulk_load(primary.client(), 3000, 200)
    svc = start_service(service_factory, primary, tmp_backup_dir)
    mixed_workload(primary.client, rounds=8)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    chain = latest_chain(tmp_backup_dir)
    assert_restores(redis_factory, chain, primary)
    # Redis's own checkers accept every file the service wrote.
    rdb = subprocess.run(["redis-check-rdb", str(chain / "appendonly.aof.1.base.rdb")], capture_output=True, text=True)
    assert rdb.returncode == 0, rdb.stdout
    aof = subprocess.run(
        ["redis-check-aof", str(chain / "appendonly.aof.manifest")], capture_output=True, text=True
    )
    assert aof.returncode == 0 and "valid" in aof.stdout, aof.stdout
    assert svc.alive()


def test_files_rotate_with_select_header_timestamps_and_checksums(
    primary: RedisServer, redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    svc = start_service(service_factory, primary, tmp_backup_dir, SEGMENT_MAX_BYTES=8192)
    mixed_workload(primary.client, rounds=6)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.stop() == 0
    chain = latest_chain(tmp_backup_dir)
    m = meta(chain)
    incr = [f for f in m["files"] if f["type"] == "incr"]
    assert len(incr) >= 3
    assert [e["file"] for e in manifest_entries(chain)] == [f["name"] for f in m["files"]]
    for f in incr:
        body = (chain / f["name"]).read_bytes()
        if f["seq"] > 1:
            header = body[: f["header_size"]]
            assert header.startswith(b"*2\r\n$6\r\nSELECT\r\n"), header
        first_cmd = body.find(b"*", f["header_size"])
        if first_cmd >= 0:  # a file may hold only its header (rotated just before the end)
            assert body[f["header_size"] : first_cmd].startswith(b"#TS:")
        if f["sha256"] is not None:  # closed files: size and checksum recorded, offsets contiguous
            import hashlib

            assert f["size"] == len(body)
            assert f["sha256"] == hashlib.sha256(body).hexdigest()
    for a, b in itertools.pairwise(incr):
        assert a["end_offset"] == b["start_offset"]
    check = subprocess.run(["redis-check-aof", str(chain / "appendonly.aof.manifest")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    # private files and directories
    assert stat.S_IMODE(chain.stat().st_mode) == 0o700
    for p in chain.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert_restores(redis_factory, chain, primary)


def test_the_service_announces_each_sealed_file_once(
    primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    """The shard subscribes to its chain writer's events (logged at debug): one ChainBegun, then one
    FileSealed per file the journal lists as sealed, none twice."""
    svc = start_service(service_factory, primary, tmp_backup_dir, SEGMENT_MAX_BYTES=8192, LOG_LEVEL="debug")
    mixed_workload(primary.client, rounds=6)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.stop() == 0
    chain = latest_chain(tmp_backup_dir)
    sealed = [f["name"] for f in meta(chain)["files"] if f["type"] == "incr" and f["sha256"] is not None]
    lines = svc.stderr_text().splitlines()
    words = [line.split() for line in lines if " FileSealed " in line]
    announced = [w.split("=", 1)[1] for ws in words for w in ws if w.startswith("file=")]
    assert len(sealed) >= 2 and announced == sealed, (announced, sealed)
    assert sum(" ChainBegun " in line and f"chain={chain.name}" in line for line in lines) == 1


def test_kill9_in_the_middle_of_writes_then_restart_continues_the_chain(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    primary = redis_factory(extra_args=["--repl-backlog-size", "64mb"])  # room for what is written meanwhile
    env = service_env(primary, tmp_backup_dir, SEGMENT_MAX_BYTES=65536)
    svc = service_factory(env)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    with BackgroundWriter(primary.client()) as writer:
        mixed_workload(primary.client, rounds=4, seed=1)
        wait_until(lambda: writer.written > 2000, timeout=30, message="background writes")
        svc.kill9()
        mixed_workload(primary.client, rounds=4, seed=2)
        svc2 = service_factory(env)
        svc2.wait_for_output("partial resync accepted", timeout=20)
        mixed_workload(primary.client, rounds=4, seed=3)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert len(chain_dirs(tmp_backup_dir)) == 1
    assert_restores(redis_factory, latest_chain(tmp_backup_dir), primary)


def test_dropped_link_resumes_with_psync_and_no_gap(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    primary = redis_factory(extra_args=["--repl-backlog-size", "64mb"])
    svc = start_service(service_factory, primary, tmp_backup_dir)
    with BackgroundWriter(primary.client()) as writer:
        for n in range(3):
            wait_until(lambda n=n: writer.written > 500 * (n + 1), timeout=30, message="background writes")
            primary.execute("CLIENT", "KILL", "TYPE", "replica")
            primary.wait_replicas(1, timeout=20)
        mixed_workload(primary.client, rounds=3)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.stderr_text().count("partial resync accepted") >= 3
    assert len(chain_dirs(tmp_backup_dir)) == 1
    assert_restores(redis_factory, latest_chain(tmp_backup_dir), primary)


def test_primary_restarted_without_persistence_starts_a_new_chain_and_keeps_the_old(
    primary: RedisServer, redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    svc = start_service(service_factory, primary, tmp_backup_dir)
    mixed_workload(primary.client, rounds=3, seed=1)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    old_digest = primary.digest()
    primary.restart()  # no persistence: empty dataset, new replid
    mixed_workload(primary.client, rounds=2, seed=2)
    chains = wait_for_chains(tmp_backup_dir, 2, timeout=30)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    old, new = chains
    m = meta(old)
    assert m["closed"] is True and "superseded" in m["closed_reason"]
    assert all(f["sha256"] for f in m["files"])
    assert redis_factory.load_chain(old).digest() == old_digest
    assert_restores(redis_factory, new, primary)
    assert svc.alive()


def test_backlog_overrun_after_a_crash_starts_a_new_chain(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    primary = redis_factory(extra_args=["--repl-backlog-size", "16kb"])
    env = service_env(primary, tmp_backup_dir)
    svc = service_factory(env)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    mixed_workload(primary.client, rounds=2, seed=1)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    svc.kill9()
    primary.wait_no_replicas()
    client = primary.client()
    for i in range(200):  # ~200 KB: far more than the backlog holds
        client.set(f"overrun:{i}", b"x" * 1000)
    svc2 = service_factory(env)
    old, new = wait_for_chains(tmp_backup_dir, 2, timeout=30)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert "full resync" in svc2.stderr_text()
    assert meta(old)["closed"] is True
    assert redis_factory.load_chain(old).execute("EXISTS", "overrun:0") == 0
    assert_restores(redis_factory, new, primary)


def test_idle_service_keeps_acking_and_is_not_dropped(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    timeout = 2
    primary = redis_factory(extra_args=["--repl-timeout", str(timeout), "--repl-ping-replica-period", "1"])
    svc = start_service(service_factory, primary, tmp_backup_dir)
    first_id = primary.execute("CLIENT", "LIST", "TYPE", "replica")
    deadline = time.monotonic() + 3.5 * timeout
    while time.monotonic() < deadline:  # the condition is "still the same connection, all along"
        assert primary.execute("CLIENT", "LIST", "TYPE", "replica").split(b" ")[0] == first_id.split(b" ")[0]
        time.sleep(0.2)
    primary.client().set("after-idle", "1")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert "replication interrupted" not in svc.stderr_text()
    assert "timedout" not in primary.log_text().lower()
    assert_restores(redis_factory, latest_chain(tmp_backup_dir), primary)


def test_wait_returns_once_the_write_is_fsynced(
    primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    start_service(service_factory, primary, tmp_backup_dir)
    client = primary.client()
    for i in range(20):
        client.set(f"w{i}", i)
        assert client.execute_command("WAIT", 1, 1000) == 1
    # what was acknowledged is in the file
    chain = latest_chain(tmp_backup_dir)
    body = b"".join(p.read_bytes() for p in sorted(chain.glob("*.incr.aof")))
    assert b"w19" in body


def test_snapshot_is_streamed_in_constant_memory(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    primary = redis_factory(extra_args=["--rdbcompression", "no"])
    primary.execute("DEBUG", "POPULATE", 150_000, "big", 1000)  # ~150 MB of values
    svc = start_service(service_factory, primary, tmp_backup_dir)
    peak_kib = int(
        next(line for line in Path(f"/proc/{svc.pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
        .split()[1]
    )
    base = latest_chain(tmp_backup_dir) / "appendonly.aof.1.base.rdb"
    assert base.stat().st_size > 100 << 20
    print(f"service peak RSS {peak_kib} KiB")
    assert peak_kib < 64 * 1024, f"peak RSS {peak_kib} KiB for a {base.stat().st_size >> 20} MiB snapshot"
    assert redis_factory.load_chain(latest_chain(tmp_backup_dir)).digest() == primary.digest()


def test_sigterm_stops_cleanly_and_a_restart_continues(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    primary = redis_factory(extra_args=["--repl-backlog-size", "64mb"])
    env = service_env(primary, tmp_backup_dir)
    svc = service_factory(env)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    mixed_workload(primary.client, rounds=2)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.stop() == 0
    mixed_workload(primary.client, rounds=2, seed=5)
    svc2 = service_factory(env)
    svc2.wait_for_output("partial resync accepted", timeout=20)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert len(chain_dirs(tmp_backup_dir)) == 1
    assert_restores(redis_factory, latest_chain(tmp_backup_dir), primary)


def test_partial_snapshot_is_never_listed_and_is_cleaned_up(
    primary: RedisServer, redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    leftover = tmp_backup_dir / ".partial-20260101T000000Z-00000000-0"
    leftover.mkdir()
    (leftover / ".appendonly.aof.1.base.rdb.tmp").write_bytes(b"REDIS0010 half")
    start_service(service_factory, primary, tmp_backup_dir)
    assert not leftover.exists()
    assert all(not p.name.startswith(".") for p in tmp_backup_dir.iterdir() if p.name != ".redis-backup.lock")
    assert os.listdir(latest_chain(tmp_backup_dir))


def test_periodic_deep_verify_of_the_newest_closed_chain(
    primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    svc = start_service(service_factory, primary, tmp_backup_dir, VERIFY_INTERVAL_HOURS=0.0003)  # ~1 s
    mixed_workload(primary.client, rounds=2)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    svc.wait_for_output("deep verify skipped: no closed chain yet", timeout=20)
    primary.restart()  # a new replid: the first chain is closed
    old, _new = wait_for_chains(tmp_backup_dir, 2, timeout=30)
    svc.wait_for_output(rf"deep verify passed chain={old.name}", timeout=30)
    # damage the closed chain: the next round reports it, naming the file
    base = old / "appendonly.aof.1.base.rdb"
    raw = bytearray(base.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    base.write_bytes(bytes(raw))
    svc.wait_for_output(rf"deep verify failed chain={old.name} problem=.*appendonly.aof.1.base.rdb", timeout=30)
    assert svc.alive()
