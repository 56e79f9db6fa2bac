"""The version matrix: the integration tests that prove a backup restores, against every server version found
(the system's redis-server, and ../shared/redis-versions: Redis 7.2, Redis 7.4, Valkey 8.0; see
tests/support/versions.py and docs/COMPATIBILITY.md). A version whose binary is missing is skipped with a
message.

Each test runs primary, replicas and every server that checks a chain (the loads of ``restore --to``'s output)
with that version's binary: a chain is loaded by a server at least as new as the primary. The workload is
tests/support/workload.py's mixed workload plus what the version has (Functions everywhere, hash field
expiration on Redis 7.4+).

Tests that need the restore's scratch server to read that version's RDB (``restore --format rdb``,
``restore --into``, ``verify --deep``) pass ``REDIS_SERVER_BIN=<the version's redis-server>`` to the CLI
(Redis 7.0 cannot read RDB 11 and 12).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.chains import chain_dirs, read_meta
from tests.support.faults import CAUGHT_UP, meta, start_service, wait_for_chain
from tests.support.proxy import TcpProxy, proxied_env
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, ok, run_cli, service_env
from tests.support.versions import ServerVersion
from tests.support.workload import function_names, mixed_workload, version_workload
from tests.test_new_chains import SecondWriter, check_second, confirmed_past

pytestmark = pytest.mark.slow

MATRIX_FUNCTIONS = {b"matrix_hello", b"matrix_incr"}
SCRATCH_SERVER_BIN = "REDIS_SERVER_BIN"  # the scratch server's binary (restore --format rdb / --into, verify --deep)


@pytest.fixture
def services(version_factory: RedisFactory, tmp_path: Path) -> Iterator[ServiceFactory]:
    """The services of a test, killed before ``version_factory`` stops the servers."""
    factory = ServiceFactory(tmp_path / "services-matrix")
    try:
        yield factory
    finally:
        factory.close()


def scratch_env(version: ServerVersion, backup_dir: Path) -> dict[str, str]:
    """The CLI's environment for a command that starts a scratch redis-server: that version's binary."""
    return {"BACKUP_DIR": str(backup_dir), SCRATCH_SERVER_BIN: version.binary}


def write_everything(primary: RedisServer, version: ServerVersion, seed: int, *, replace: bool = False) -> None:
    mixed_workload(primary.client, rounds=3, seed=seed)
    version_workload(
        primary.client, hash_field_expiration=version.has_hash_field_expiration, seed=seed, replace=replace
    )


def assert_same_data(restored: RedisServer, primary: RedisServer) -> None:
    assert restored.digest() == primary.digest(), "DEBUG DIGEST differs from the primary's"
    assert restored.keyspace() == primary.keyspace()
    assert function_names(restored.client()) == function_names(primary.client()) == MATRIX_FUNCTIONS
    assert restored.client().fcall("matrix_hello", 0) == b"hello"


def hfe_ttls(server: RedisServer) -> list[object]:
    """The field TTLs of one hash written by version_workload (hash field expiration only)."""
    client: Any = server.client(1)
    return list(client.execute_command("HPEXPIRETIME", "hfe:1:big", "FIELDS", 3, "f10", "f20", "f30"))


@pytest.mark.parametrize("sync", ["diskless", "disk"])
def test_matrix_capture_restores_the_primary(
    server_version: ServerVersion, version_factory: RedisFactory, services: ServiceFactory, tmp_backup_dir: Path,
    tmp_path: Path, sync: str,
) -> None:
    """A mixed workload before (in the snapshot) and after (in the stream) the service attached, the snapshot
    sent diskless or from disk: `restore --to` loads with the primary's DEBUG DIGEST, keys per db and Functions."""
    primary = version_factory(extra_args=["--repl-diskless-sync", "yes" if sync == "diskless" else "no"])
    write_everything(primary, server_version, seed=1)
    svc = start_service(services, primary, tmp_backup_dir)
    write_everything(primary, server_version, seed=2, replace=True)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.alive(), svc.stderr_text()[-3000:]

    ok(run_cli(["restore", "--to", str(tmp_path / "out")], {"BACKUP_DIR": str(tmp_backup_dir)}, timeout=120))
    restored = version_factory.load_aof_dir(tmp_path / "out", strict=True)
    assert_same_data(restored, primary)
    if server_version.has_hash_field_expiration:
        assert hfe_ttls(restored) == hfe_ttls(primary)
        assert hfe_ttls(primary)[:2] != [-1, -1]


def test_matrix_pitr_gives_the_state_of_that_second(
    server_version: ServerVersion, version_factory: RedisFactory, services: ServiceFactory, tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    """`restore --at` a second the writer recorded gives that second's digest and keys per db (a second
    refused as inside a gap in capture is allowed on a loaded machine, but one at least must be offered)."""
    primary = version_factory()
    version_workload(primary.client, hash_field_expiration=server_version.has_hash_field_expiration, seed=1)
    start_service(services, primary, tmp_backup_dir, LAG_TOLERANCE_SECONDS=0.25, SEGMENT_MAX_SECONDS=1)
    with SecondWriter(primary) as writer:
        wait_until(lambda: len(writer.states) >= 3, timeout=30, message="3 seconds recorded")
    assert writer.error is None, writer.error
    last = max(writer.states)
    wait_until(lambda: confirmed_past(tmp_backup_dir, last), timeout=30, message=f"second {last} confirmed")
    env = {"BACKUP_DIR": str(tmp_backup_dir)}
    offered = [
        check_second(version_factory, env, tmp_path / f"at-{second}", second, state)
        for second, state in sorted(writer.states.items())
    ]
    assert any(offered), "no recorded second was restorable"


def test_matrix_rdb_restore_into_and_deep_verify(
    server_version: ServerVersion, version_factory: RedisFactory, services: ServiceFactory, tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    """With REDIS_SERVER_BIN the version's own: `restore --format rdb` (loaded by the version),
    `restore --into` a server of the version, and `verify --deep`, each with the primary's data."""
    primary = version_factory()
    write_everything(primary, server_version, seed=3)
    svc = start_service(services, primary, tmp_backup_dir)
    write_everything(primary, server_version, seed=4, replace=True)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.stop() == 0
    env = scratch_env(server_version, tmp_backup_dir)

    ok(run_cli(["restore", "--to", str(tmp_path / "rdb"), "--format", "rdb"], env, timeout=120))
    assert_same_data(version_factory.load_rdb(tmp_path / "rdb" / "dump.rdb"), primary)

    target = version_factory()
    ok(run_cli(["restore", "--into", f"redis://{target.host}:{target.port}"], env, timeout=120))
    assert target.digest() == primary.digest() and target.keyspace() == primary.keyspace()
    if server_version.has_hash_field_expiration:
        assert hfe_ttls(target) == hfe_ttls(primary)

    r = ok(run_cli(["verify", "--deep"], env, timeout=120))
    assert "Traceback" not in r.stderr


def test_matrix_failover_continues_the_chain_with_psync2(
    server_version: ServerVersion, version_factory: RedisFactory, services: ServiceFactory, tmp_backup_dir: Path,
) -> None:
    """Primary and replica of the version, the service through a proxy; the primary dies, the replica is
    promoted and the proxy points at it: the service continues the same chain (partial resync on the
    promoted replica's replid2) and the chain restores the new primary's data."""
    backlog = ["--repl-backlog-size", "64mb"]
    old_primary = version_factory(extra_args=backlog)
    replica = version_factory.replica_of(old_primary, extra_args=backlog)
    proxy = TcpProxy(old_primary.host, old_primary.port).start()
    try:
        svc = services(service_env(old_primary, tmp_backup_dir, **proxied_env(proxy)))
        wait_for_chain(svc, tmp_backup_dir)
        write_everything(old_primary, server_version, seed=5)
        old_primary.wait_replicas_caught_up(CAUGHT_UP, min_replicas=2)  # the service and the replica
        old_replid = old_primary.replid()

        old_primary.kill()
        replica.execute("REPLICAOF", "NO", "ONE")
        new_primary = replica
        assert new_primary.info("replication")["master_replid2"] == old_replid
        proxy.retarget(new_primary.host, new_primary.port)
        proxy.cut()
        svc.wait_for_output("primary has a new replication id", timeout=30)
        write_everything(new_primary, server_version, seed=6, replace=True)
        new_primary.wait_replicas_caught_up(CAUGHT_UP)
        assert "full resync" not in svc.stderr_text().split("primary has a new replication id")[-1]
        (chain,) = chain_dirs(tmp_backup_dir)
        assert [r["replid"] for r in meta(chain)["replids"]] == [old_replid, new_primary.replid()]
        assert_same_data(version_factory.load_chain(chain), new_primary)
    finally:
        proxy.stop()


def test_matrix_snapshot_now_begins_a_chain_that_restores(
    server_version: ServerVersion, version_factory: RedisFactory, services: ServiceFactory, tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    """`snapshot-now --wait` begins a new chain (its base a snapshot of the version's RDB); writes after it
    are in its stream; the latest state restores with the primary's data."""
    primary = version_factory()
    write_everything(primary, server_version, seed=7)
    svc = start_service(services, primary, tmp_backup_dir, SNAPSHOT_INTERVAL_HOURS=0)
    env = {"BACKUP_DIR": str(tmp_backup_dir)}
    r = run_cli(["snapshot-now", "--wait", "--timeout", "50"], env, timeout=60)
    assert r.returncode == 0, r.stderr + svc.stderr_text()[-3000:]
    first, _newest = chain_dirs(tmp_backup_dir)
    write_everything(primary, server_version, seed=8, replace=True)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    now = int(time.time())
    wait_until(lambda: confirmed_past(tmp_backup_dir, now), timeout=30, message="caught up")
    assert read_meta(first)["closed"]
    ok(run_cli(["restore", "--to", str(tmp_path / "latest")], env, timeout=120))
    restored = version_factory.load_aof_dir(tmp_path / "latest", strict=True)
    assert_same_data(restored, primary)
    assert svc.alive(), svc.stderr_text()[-3000:]
