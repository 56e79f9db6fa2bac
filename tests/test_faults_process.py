"""Processes that die or change role: the service killed during a snapshot, the primary restarted with
persistence, a replica promoted to primary (psync2). Each ends with a chain whose DEBUG DIGEST equals
the (new) primary's."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.chains import chain_dirs, partial_dirs
from tests.support.faults import CAUGHT_UP, assert_restores, meta, start_service, wait_for_chain
from tests.support.proxy import TcpProxy, proxied_env
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, service_env
from tests.support.workload import mixed_workload


@pytest.fixture
def proxy_to() -> Iterator[list[TcpProxy]]:
    proxies: list[TcpProxy] = []
    yield proxies
    for p in proxies:
        p.stop()


def test_kill9_during_the_snapshot_lists_nothing_and_the_next_start_makes_a_clean_chain(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, proxy_to: list[TcpProxy]
) -> None:
    primary = redis_factory(extra_args=["--rdbcompression", "no"])
    primary.execute("DEBUG", "POPULATE", 10_000, "snap", 1000)  # ~10 MB snapshot
    proxy = TcpProxy(primary.host, primary.port).start()
    proxy_to.append(proxy)
    proxy.throttle(2_000_000)  # ~5 s for the snapshot: a wide window to kill in
    env = service_env(primary, tmp_backup_dir, **proxied_env(proxy))
    svc = service_factory(env)

    def half_received() -> bool:
        assert svc.alive(), svc.stderr_text()
        return any(
            f.stat().st_size > 1 << 20 for d in partial_dirs(tmp_backup_dir) for f in d.iterdir() if f.is_file()
        )

    wait_until(half_received, timeout=20, message="a snapshot being received")
    svc.kill9()

    # What the crash left is not a backup: no chain, and `list` shows none.
    assert chain_dirs(tmp_backup_dir) == []
    assert partial_dirs(tmp_backup_dir), "the test meant to kill during the transfer"
    listing = service_factory.run_cli(["list", "--json", "--backup-dir", str(tmp_backup_dir)])
    assert listing.returncode == 0, listing.stderr
    assert not json.loads(listing.stdout).get("chains"), listing.stdout

    proxy.throttle(None)
    svc2 = service_factory(env)
    chain = wait_for_chain(svc2, tmp_backup_dir)
    mixed_workload(primary.client, rounds=2, seed=51)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert "removing incomplete snapshot" in svc2.stderr_text()
    assert partial_dirs(tmp_backup_dir) == []
    assert chain_dirs(tmp_backup_dir) == [chain]
    assert_restores(redis_factory, chain, primary)


def _shutdown_save_and_restart(primary: RedisServer) -> None:
    """SHUTDOWN SAVE (the RDB then carries the replication id and offset), then start again."""
    with contextlib.suppress(redis.ConnectionError):
        primary.execute("SHUTDOWN", "SAVE")
    primary.restart()


@pytest.mark.parametrize("persistence", ["rdb", "aof"])
def test_primary_restarted_with_persistence(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, persistence: str
) -> None:
    """Redis 7.0 keeps its replication id across a restart from an RDB written by SHUTDOWN SAVE (as
    replid2, with the offset): the service continues the chain with +CONTINUE. Restarted from an AOF
    it has a new id and offset 0: the service starts a new chain. The digest matches either way."""
    args = ["--appendonly", "yes"] if persistence == "aof" else ["--dbfilename", "dump.rdb"]
    # the backlog must hold what is written after the restart, before the service is back
    primary = redis_factory(extra_args=[*args, "--repl-backlog-size", "64mb"])
    svc = start_service(service_factory, primary, tmp_backup_dir)
    mixed_workload(primary.client, rounds=2, seed=61)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    digest_before = primary.digest()
    replid_before = primary.replid()

    _shutdown_save_and_restart(primary)
    assert primary.digest() == digest_before, "the primary did not reload its data"
    mixed_workload(primary.client, rounds=2, seed=62)

    if persistence == "rdb":
        assert primary.info("replication")["master_replid2"] == replid_before
        svc.wait_for_output("partial resync accepted", timeout=30)
        primary.wait_replicas_caught_up(CAUGHT_UP)
        (chain,) = chain_dirs(tmp_backup_dir)
        replids = [r["replid"] for r in meta(chain)["replids"]]
        assert replids == [replid_before, primary.replid()]
    else:
        chain = wait_for_chain(svc, tmp_backup_dir, count=2)
        primary.wait_replicas_caught_up(CAUGHT_UP)
        old = chain_dirs(tmp_backup_dir)[0]
        assert meta(old)["closed"] is True
        assert redis_factory.load_chain(old).digest() == digest_before
    assert svc.alive()
    assert_restores(redis_factory, chain, primary)


@pytest.mark.parametrize("how", ["proxy-retargeted", "service-restarted"])
def test_failover_to_a_promoted_replica_continues_the_chain(
    redis_factory: RedisFactory,
    service_factory: ServiceFactory,
    tmp_backup_dir: Path,
    proxy_to: list[TcpProxy],
    how: str,
) -> None:
    old_primary = redis_factory(extra_args=["--repl-backlog-size", "64mb"])
    replica = redis_factory.replica_of(old_primary, extra_args=["--repl-backlog-size", "64mb"])
    proxy = TcpProxy(old_primary.host, old_primary.port).start()
    proxy_to.append(proxy)
    env = service_env(old_primary, tmp_backup_dir, **proxied_env(proxy))
    svc = service_factory(env)
    wait_for_chain(svc, tmp_backup_dir)
    mixed_workload(old_primary.client, rounds=3, seed=71)
    old_primary.wait_replicas_caught_up(CAUGHT_UP, min_replicas=2)  # the service and the replica
    old_replid = old_primary.replid()

    old_primary.kill()  # the primary dies; the replica is promoted
    replica.execute("REPLICAOF", "NO", "ONE")
    new_primary = replica
    assert new_primary.info("replication")["master_replid2"] == old_replid
    if how == "proxy-retargeted":
        proxy.retarget(new_primary.host, new_primary.port)
        proxy.cut()
    else:
        svc.stop()
        # another address: refused by default (one BACKUP_DIR per primary), continued once allowed
        refused = service_factory(service_env(new_primary, tmp_backup_dir))
        assert refused.wait(timeout=30) == 2 and "ALLOW_OTHER_PRIMARY" in refused.stderr_text()
        svc = service_factory(service_env(new_primary, tmp_backup_dir, ALLOW_OTHER_PRIMARY="true"))
    svc.wait_for_output("primary has a new replication id", timeout=30)
    if how != "proxy-retargeted":  # allowed once: the chain is this primary's now, a restart needs nothing
        svc.stop()
        svc = service_factory(service_env(new_primary, tmp_backup_dir))
        svc.wait_for_output("partial resync accepted", timeout=30)
    mixed_workload(new_primary.client, rounds=2, seed=72)
    new_primary.wait_replicas_caught_up(CAUGHT_UP)

    assert "full resync" not in svc.stderr_text().split("partial resync accepted")[-1]
    (chain,) = chain_dirs(tmp_backup_dir)
    replids = [r["replid"] for r in meta(chain)["replids"]]
    assert replids == [old_replid, new_primary.replid()]
    assert_restores(redis_factory, chain, new_primary)
