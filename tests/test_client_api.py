"""The replica client as a library, the way the README shows it, against a real primary."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from redis_backup.chain.rdb import RdbDigest
from redis_backup.wire.client import ConnectionOptions, ReplicaClient
from redis_backup.wire.protocol import Continue, FullResync
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import REPO_ROOT, base_env, run_cli_on_terminal, service_env


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
                return rc.sync, bytes(data.data)  # a view into the receive buffer: copied to keep it
        raise AssertionError("stream ended")

    sync, data = asyncio.run(asyncio.wait_for(second(), 30))
    assert sync == Continue(replid, offset)
    assert data.startswith(b"*2\r\n$6\r\nSELECT")  # the stream resumes right after the snapshot


def test_snapshot_shows_progress_on_a_terminal(redis_factory: RedisFactory, tmp_path: Path) -> None:
    primary = redis_factory(extra_args=["--rdbcompression", "no"])
    primary.execute("DEBUG", "POPULATE", 20_000, "p", 1000)
    run = run_cli_on_terminal(["snapshot", "--out", str(tmp_path / "d.rdb")], service_env(primary, None), timeout=60)
    assert run.returncode == 0
    shown = run.terminal
    assert b"snapshot: " in shown and b"/s" in shown and b"MiB" in shown, shown[-300:]


def _readme_example() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Using the replica client from Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_receives_the_stream(redis_factory: RedisFactory, tmp_path: Path) -> None:
    """Run as written (only the address changed): a diskless primary sends nothing after the snapshot
    until an ACK arrives, so the client must acknowledge the sync offset by itself."""
    primary = redis_factory(requirepass="secret")
    code = _readme_example()
    assert 'host="localhost", port=6379, password="secret"' in code
    script = tmp_path / "example.py"
    script.write_text(code.replace('host="localhost", port=6379', f'host="{primary.host}", port={primary.port}'))
    out = tmp_path / "out.txt"
    with out.open("wb") as f:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=base_env(), stdout=f,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until(lambda: "FullResync" in out.read_text(), timeout=30, message="the example prints the sync")
        c5 = primary.client(5)
        for i in range(20):
            c5.set(f"k{i}", i)

        def stream_lines() -> list[list[int]]:
            rows = [line.split() for line in out.read_text().splitlines()[1:]]
            return [[int(v) for v in r] for r in rows if len(r) == 3 and all(v.isdigit() for v in r)]

        target = primary.master_repl_offset()
        rows = wait_until(
            lambda: (r := stream_lines()) and r[-1][1] >= target and r,
            timeout=30,
            message=f"the example prints stream data up to offset {target}",
        )
        assert any(db == 5 for _, _, db in rows)
        # and its acks reach the primary: the replica's acknowledged offset follows
        primary.wait_replicas_caught_up(timeout=30)
        assert (tmp_path / "dump.rdb").read_bytes().startswith(b"REDIS")
    finally:
        proc.kill()
        proc.wait()
