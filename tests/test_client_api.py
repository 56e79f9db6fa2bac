"""The replica client as a library, the way the README shows it, against a real primary."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from pathlib import Path

from redis_backup.client import ConnectionOptions, ReplicaClient
from redis_backup.protocol import Continue, FullResync
from redis_backup.rdb import RdbDigest
from tests.support.servers import RedisFactory, RedisServer
from tests.support.service import REPO_ROOT, base_env, service_env


def test_full_sync_snapshot_stream_and_ack(primary: RedisServer) -> None:
    primary.client().set("before", "snapshot")

    async def scenario() -> tuple[FullResync, RdbDigest, bytes, int]:
        async with ReplicaClient(ConnectionOptions(host=primary.host, port=primary.port)) as rc:
            assert isinstance(rc.sync, FullResync)
            digest = RdbDigest()
            async for chunk in rc.snapshot():
                digest.update(chunk)
            rc.ack(rc.sync.offset)
            await asyncio.to_thread(primary.client().set, "after", "snapshot")
            seen = b""
            async for data in rc.stream():
                seen += data.data
                rc.ack(data.end_offset)
                if b"after" in seen:
                    return rc.sync, digest, seen, data.end_offset
        raise AssertionError("stream ended")

    sync, digest, seen, end = asyncio.run(asyncio.wait_for(scenario(), 30))
    digest.verify()
    assert len(sync.replid) == 40
    assert b"SELECT" in seen and b"after" in seen
    assert end == sync.offset + len(seen)


def test_continue_from_an_offset(primary: RedisServer) -> None:
    async def first() -> tuple[str, int]:
        async with ReplicaClient(ConnectionOptions(host=primary.host, port=primary.port)) as rc:
            assert isinstance(rc.sync, FullResync)
            async for _ in rc.snapshot():
                pass
            return rc.sync.replid, rc.sync.offset

    replid, offset = asyncio.run(asyncio.wait_for(first(), 30))
    primary.client().set("k", "v")

    async def second() -> tuple[Continue | FullResync | None, bytes]:
        async with ReplicaClient(ConnectionOptions(host=primary.host, port=primary.port), psync=(replid, offset)) as rc:
            async for data in rc.stream():
                return rc.sync, data.data
        raise AssertionError("stream ended")

    sync, data = asyncio.run(asyncio.wait_for(second(), 30))
    assert sync == Continue(replid, offset)
    assert data.startswith(b"*2\r\n$6\r\nSELECT")  # the stream resumes right after the snapshot


def test_snapshot_shows_progress_on_a_terminal(redis_factory: RedisFactory, tmp_path: Path) -> None:
    primary = redis_factory(extra_args=["--rdbcompression", "no"])
    primary.execute("DEBUG", "POPULATE", 20_000, "p", 1000)
    main, tty = pty.openpty()
    env = base_env() | service_env(primary, None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "redis_backup", "snapshot", "--out", str(tmp_path / "d.rdb")],
            env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=tty, timeout=60, check=False,
        )
        os.close(tty)
        shown = b""
        while True:
            try:
                block = os.read(main, 65536)
            except OSError:
                break
            if not block:
                break
            shown += block
    finally:
        os.close(main)
    assert proc.returncode == 0
    assert b"snapshot: " in shown and b"/s" in shown and b"MiB" in shown, shown[-300:]
