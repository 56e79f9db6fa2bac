"""Network faults through a TCP proxy between the service and a real primary: stalls, cuts in the
snapshot and in a command, and a slow link that overflows the primary's output buffer. Each ends with
the service caught up and a chain whose DEBUG DIGEST equals the primary's."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.chains import chain_dirs, partial_dirs, wait_for_chains
from tests.support.faults import (
    CAUGHT_UP,
    assert_holds_a_prefix,
    assert_restores,
    meta,
    start_service,
    wait_for_chain,
)
from tests.support.proxy import TcpProxy, proxied_env
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, service_env
from tests.support.workload import mixed_workload

BIG_BACKLOG = ["--repl-backlog-size", "64mb"]


@pytest.fixture
def proxy_factory() -> Iterator[Any]:
    proxies: list[TcpProxy] = []

    def make(server: RedisServer) -> TcpProxy:
        p = TcpProxy(server.host, server.port).start()
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.stop()
        assert not p.errors, p.errors


def test_stall_longer_than_read_and_repl_timeout_reconnects_and_continues(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Any, proxy_factory: Any
) -> None:
    primary = redis_factory(extra_args=[*BIG_BACKLOG, "--repl-timeout", "2", "--repl-ping-replica-period", "1"])
    proxy = proxy_factory(primary)
    svc = start_service(
        service_factory, primary, tmp_backup_dir, READ_TIMEOUT_SECONDS=2, **proxied_env(proxy)
    )
    mixed_workload(primary.client, rounds=2, seed=11)
    primary.wait_replicas_caught_up(CAUGHT_UP)

    proxy.stall_for(4.0)  # a partition: > READ_TIMEOUT_SECONDS and > repl-timeout
    mixed_workload(primary.client, rounds=2, seed=12)  # written while nothing gets through
    svc.wait_for_output("link considered dead", timeout=10)
    wait_until(lambda: "timedout replica" in primary.log_text(), timeout=10, message="primary drops the replica")
    wait_until(lambda: not proxy.stalled, timeout=10, message="stall over")
    svc.wait_for_output("partial resync accepted", timeout=20)
    mixed_workload(primary.client, rounds=2, seed=13)
    primary.wait_replicas_caught_up(CAUGHT_UP)

    assert len(chain_dirs(tmp_backup_dir)) == 1
    assert svc.alive()
    assert_restores(redis_factory, chain_dirs(tmp_backup_dir)[-1], primary)


@pytest.mark.parametrize("diskless", ["yes", "no"])
def test_cut_in_the_middle_of_the_snapshot_lists_nothing_then_makes_a_clean_chain(
    redis_factory: RedisFactory,
    service_factory: ServiceFactory,
    tmp_backup_dir: Any,
    proxy_factory: Any,
    diskless: str,
) -> None:
    primary = redis_factory(extra_args=["--rdbcompression", "no", "--repl-diskless-sync", diskless])
    primary.execute("DEBUG", "POPULATE", 8000, "snap", 1000)  # ~8 MB snapshot
    proxy = proxy_factory(primary)
    fired = proxy.cut_after(2 << 20, refuse_after=True)  # 2 MB into the snapshot, then unreachable
    svc = service_factory(service_env(primary, tmp_backup_dir, MAX_RETRIES=0, **proxied_env(proxy)))
    assert fired.wait(20), "the cut never happened"
    svc.wait_for_output("replication interrupted", timeout=20)

    # The half-received snapshot is not a backup: nothing listed, nothing left over.
    assert chain_dirs(tmp_backup_dir) == []
    assert partial_dirs(tmp_backup_dir) == []
    listing = service_factory.run_cli(["list", "--json", "--backup-dir", str(tmp_backup_dir)])
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout)["chains"] == [], listing.stdout

    proxy.refuse(False)
    chain = wait_for_chain(svc, tmp_backup_dir)
    mixed_workload(primary.client, rounds=2, seed=21)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert len(chain_dirs(tmp_backup_dir)) == 1
    assert partial_dirs(tmp_backup_dir) == []
    assert_restores(redis_factory, chain, primary)


@pytest.mark.parametrize("where", ["command", "transaction"])
def test_cut_in_the_middle_of_a_command_is_rewound_and_continued(
    redis_factory: RedisFactory,
    service_factory: ServiceFactory,
    tmp_backup_dir: Any,
    proxy_factory: Any,
    where: str,
) -> None:
    primary = redis_factory(extra_args=BIG_BACKLOG)
    proxy = proxy_factory(primary)
    svc = start_service(service_factory, primary, tmp_backup_dir, **proxied_env(proxy))
    mixed_workload(primary.client, rounds=2, seed=31)
    primary.wait_replicas_caught_up(CAUGHT_UP)

    marker = b"CUT-IN-THE-MIDDLE-%d" % random.randrange(10**9)
    value = b"a" * 100_000 + marker + b"b" * 100_000
    fired = proxy.cut_after_marker(marker, extra=5000)  # 5000 bytes into the rest of the bulk
    client = primary.client(1)
    if where == "command":
        client.set("cut:value", value)
    else:  # inside MULTI/EXEC: the rewind point is a boundary inside the transaction
        tx = client.pipeline(transaction=True)
        tx.set("cut:before", "1")
        tx.set("cut:value", value)
        tx.incr("cut:after")
        tx.execute()
    assert fired.wait(20), "the cut never happened"
    svc.wait_for_output(r"partial command dropped .*bytes=\d+", timeout=20)
    wait_until(
        lambda: svc.stderr_text().count("partial resync accepted") >= 1, timeout=20, message="+CONTINUE"
    )
    mixed_workload(primary.client, rounds=2, seed=32)
    primary.wait_replicas_caught_up(CAUGHT_UP)

    assert len(chain_dirs(tmp_backup_dir)) == 1, "the cut must not start a new chain"
    chain = chain_dirs(tmp_backup_dir)[-1]
    stored = b"".join(p.read_bytes() for p in sorted(chain.glob("*.incr.aof")))
    assert stored.count(marker) == 1, "the command is stored exactly once, whole"
    assert_restores(redis_factory, chain, primary)


def test_slow_link_overflows_the_output_buffer_then_resyncs_into_a_new_chain(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Any, proxy_factory: Any
) -> None:
    primary = redis_factory(
        extra_args=["--client-output-buffer-limit", "replica 256kb 128kb 1", "--repl-backlog-size", "1mb"]
    )
    proxy = proxy_factory(primary)
    proxy.throttle(100_000)  # from the start: the link's receive window toward the primary is small
    svc = start_service(service_factory, primary, tmp_backup_dir, MAX_RETRIES=0, **proxied_env(proxy))
    small = primary.client(2).pipeline(transaction=False)
    for i in range(500):  # well within what the slow link carries
        small.set(f"once:small:{i}", i)
    small.execute()
    primary.wait_replicas_caught_up(CAUGHT_UP)
    (first,) = chain_dirs(tmp_backup_dir)

    client = primary.client()
    pipe = client.pipeline(transaction=False)
    # 12 MB at once: beyond 256 kB of output buffer plus what the kernel's socket buffers may hold
    # (up to 4 MB of send buffer on loopback), and beyond the 1 MB backlog
    for i in range(120):
        pipe.set(f"once:{i}", random.Random(i).randbytes(100_000))
    pipe.execute()
    wait_until(
        lambda: "overcoming of output buffer limits" in primary.log_text(),
        timeout=30,
        message="primary drops the slow replica",
    )
    proxy.throttle(None)
    old, new = wait_for_chains(tmp_backup_dir, 2, timeout=30)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert old == first
    assert svc.alive()

    # The new chain is the primary; the old one is closed and what it holds was true.
    assert_restores(redis_factory, new, primary)
    assert meta(old)["closed"] is True
    restored_old = redis_factory.load_chain(old)
    assert_holds_a_prefix(restored_old, primary, immutable=b"once:")
    assert restored_old.execute("DBSIZE") > 0
