"""The offset probe against real servers: the primary's offset, never another server's, and a
connection lost (the primary restarted) asked again rather than taken for a refusal."""

from __future__ import annotations

import asyncio

from redis_backup.wire.client import ConnectionOptions
from redis_backup.wire.offsetprobe import OffsetProbe
from tests.support.servers import RedisFactory, RedisServer


def opts(server: RedisServer, **kw: str) -> ConnectionOptions:
    return ConnectionOptions(host=server.host, port=server.port, **kw)  # type: ignore[arg-type]  # (str fields)


def test_the_primary_offset_for_its_own_history_only(primary: RedisServer) -> None:
    primary.client().set("k", "v")

    async def scenario() -> tuple[int | None, int | None, bool]:
        probe = OffsetProbe(opts(primary))
        try:
            mine = await probe.sample(primary.replid())
            other = await probe.sample("f" * 40)  # an address that now leads to another history
            return mine, other, probe.available
        finally:
            await probe.close()

    mine, other, available = asyncio.run(scenario())
    assert mine == primary.master_repl_offset() and other is None and available


def test_a_restarted_primary_is_asked_again(redis_factory: RedisFactory) -> None:
    primary = redis_factory(extra_args=["--save", "3600 1"])
    replid = primary.replid()

    async def scenario() -> tuple[int | None, int | None, bool]:
        probe = OffsetProbe(opts(primary))
        try:
            before = await probe.sample(replid)
            await asyncio.to_thread(primary.restart)  # the probe's connection is closed under it
            lost = await probe.sample(replid)  # the closed connection: None, and not "refused"
            again = await probe.sample(primary.replid())
            assert probe.available, "a lost connection is not a refusal"
            return before, lost, again is not None
        finally:
            await probe.close()

    before, lost, again = asyncio.run(scenario())
    assert before is not None and lost is None and again


def test_a_replica_or_a_refusal_makes_it_unusable(redis_factory: RedisFactory) -> None:
    primary = redis_factory(acl_users=["backup on >pw -@all +psync +replconf +ping"])
    replica = redis_factory.replica_of(primary)

    async def scenario() -> tuple[bool, bool]:
        a = OffsetProbe(opts(replica))
        b = OffsetProbe(ConnectionOptions(host=primary.host, port=primary.port, username="backup", password="pw"))
        try:
            assert await a.sample(replica.replid()) is None
            assert await b.sample(primary.replid()) is None
            return a.available, b.available
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(scenario()) == (False, False)
