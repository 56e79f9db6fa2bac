"""The reused receive buffer (client.Receiver) and what reads its memoryviews: lifetime, back-pressure,
pacing, and the RDB checks fed views that are overwritten afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import pytest

from redis_backup.chain.rdb import RdbDigest, RdbError, crc64
from redis_backup.chain.rdbscan import scan_rdb_file
from redis_backup.chain.snapshot import fetch_snapshot
from redis_backup.wire import client
from redis_backup.wire.client import ConnectionOptions, Receiver
from tests.support.servers import RedisFactory, TlsMaterial

TOTAL = 8 << 20


def _pattern(n: int) -> bytes:
    return random.Random(n).randbytes(n)


async def _serve(data: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _connect(port: int, size: int) -> Receiver:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: Receiver(size), "127.0.0.1", port)
    return proto


def test_views_stay_intact_until_the_next_receive_and_memory_is_bounded() -> None:
    """A slow consumer: while it holds a view, more arrives (into the free part of the buffer), never
    over the view; once the buffer is nearly full reading pauses; everything arrives, in order."""
    data = _pattern(TOTAL)
    size = 256 << 10

    async def scenario() -> tuple[bytes, int, bool]:
        server, port = await _serve(data)
        rcv = await _connect(port, size)
        got = hashlib.sha256()
        n = largest = 0
        paused_seen = False
        try:
            while True:
                view = await rcv.receive()
                if not view:
                    break
                before = bytes(view)
                await asyncio.sleep(0.001)  # the transport runs meanwhile
                assert rcv.transport is not None
                paused_seen = paused_seen or not rcv.transport.is_reading()
                assert bytes(view) == before, "a view was overwritten before the next receive"
                largest = max(largest, len(view))
                got.update(view)
                n += len(view)
        finally:
            server.close()
        assert n == len(data)
        return got.digest(), largest, paused_seen

    digest, largest, paused_seen = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert digest == hashlib.sha256(data).digest()
    assert largest <= size
    assert paused_seen  # back-pressure: the kernel holds the rest, not our memory


def test_pacing_gathers_small_writes_into_larger_receives() -> None:
    """While pacing (a snapshot), a primary that trickles data is read in fewer, larger receives."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(200):
            writer.write(b"x" * 4096)
            await writer.drain()
            await asyncio.sleep(0.0002)
        writer.close()

    async def scenario(pacing: bool) -> int:
        server = await asyncio.start_server(trickle, "127.0.0.1", 0)
        rcv = await _connect(server.sockets[0].getsockname()[1], client.RECEIVE_BUFFER)
        rcv.pacing = pacing
        receives = total = 0
        try:
            while view := await rcv.receive():
                receives += 1
                total += len(view)
        finally:
            server.close()
        assert total == 200 * 4096
        return receives

    plain = asyncio.run(asyncio.wait_for(scenario(False), 60))
    paced = asyncio.run(asyncio.wait_for(scenario(True), 60))
    assert paced < plain


def test_the_end_of_the_connection_reaches_the_consumer() -> None:
    """What arrived before a close is handed out first; then an error is raised, a clean end is empty."""

    async def scenario(exc: Exception | None) -> None:
        rcv = Receiver(1 << 16)
        rcv.get_buffer(-1)[:3] = b"abc"
        rcv.buffer_updated(3)
        rcv.connection_lost(exc)
        assert bytes(await rcv.receive()) == b"abc"
        if exc is None:
            assert not await rcv.receive()
        else:
            with pytest.raises(ConnectionResetError):
                await rcv.receive()
        assert rcv.closed.done()

    asyncio.run(scenario(None))
    asyncio.run(scenario(ConnectionResetError("reset by peer")))


def _rdb(body_len: int) -> bytes:
    body = b"REDIS0011" + _pattern(body_len) + b"\xff"
    return body + crc64(body).to_bytes(8, "little")


@pytest.mark.parametrize("max_piece", [1, 7, 9, 64, 70000])
def test_rdb_digest_reads_views_of_a_reused_buffer(max_piece: int) -> None:
    rdb = _rdb(200_000)
    rng = random.Random(max_piece)
    buf = bytearray(max_piece)
    d = RdbDigest()
    pos = 0
    while pos < len(rdb):
        n = min(rng.randint(1, max_piece), len(rdb) - pos)
        buf[:n] = rdb[pos : pos + n]
        d.update(memoryview(buf)[:n])
        buf[:n] = b"\xee" * n  # what the digest kept without copying it would now be garbage
        pos += n
    assert d.verify() == 11
    assert d.sha256.digest() == hashlib.sha256(rdb).digest()


def test_rdb_digest_of_views_still_catches_damage() -> None:
    rdb = bytearray(_rdb(10_000))
    rdb[5000] ^= 1
    d = RdbDigest()
    view = memoryview(rdb)
    for i in range(0, len(rdb), 4096):
        d.update(view[i : i + 4096])
    with pytest.raises(RdbError, match="checksum mismatch"):
        d.verify()


@pytest.mark.parametrize("diskless", ["yes", "no"])
def test_a_large_snapshot_over_tls(
    redis_factory: RedisFactory, tls_material: TlsMaterial, tmp_path: Path, diskless: str
) -> None:
    """BufferedProtocol over an SSL transport, with pacing and back-pressure, for both framings: the
    RDB arrives whole (its CRC64 is checked before the file is named) and walks to every key."""
    primary = redis_factory(
        tls=tls_material, extra_args=["--rdbcompression", "no", "--repl-diskless-sync", diskless]
    )
    primary.execute("DEBUG", "POPULATE", 100_000, "k", 300)
    opts = ConnectionOptions(
        host=primary.host, port=primary.port, tls=True, tls_ca_cert=str(tls_material.ca_cert),
        tls_cert=str(tls_material.client_cert), tls_key=str(tls_material.client_key),
    )  # fmt: skip
    out = tmp_path / "dump.rdb"
    digest = asyncio.run(asyncio.wait_for(fetch_snapshot(opts, str(out)), 120))
    assert digest.size == out.stat().st_size > 30_000_000
    scan = scan_rdb_file(out)
    assert scan.complete and scan.keys == 100_000
