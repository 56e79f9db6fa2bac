"""A hostile (or broken) primary can neither hold the service forever nor fill the disk.

- Endless keepalive newlines keep the link alive only while the snapshot is awaited, and only for
  SNAPSHOT_START_TIMEOUT_SECONDS from connecting: the attempt then fails with one clear line, counts
  as a failure (backoff, MAX_RETRIES). Before PSYNC they do not keep the link alive at all.
- A snapshot announced bigger than the free space of BACKUP_DIR less MIN_FREE_BYTES is refused before
  anything is written; one that never ends is stopped and discarded before the free space drops below
  MIN_FREE_BYTES. The chains already stored stay byte-for-byte as they were.

A real primary's slow snapshot start (a diskless sync's delay, a slow disk-based BGSAVE), with keepalive
newlines longer than READ_TIMEOUT_SECONDS, still succeeds, and so does a sized snapshot just under the
limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from redis_backup.errors import StorageError
from redis_backup.store.diskspace import SpaceGuard, auto_reserve
from redis_backup.wire.protocol import FullResync, ReplicaProtocol, SnapshotStart, State
from tests.support.chains import chain_dirs, partial_dirs
from tests.support.fake_primary import FakeConnection, FakePrimary
from tests.support.faults import CAUGHT_UP, all_bytes_under, assert_restores, error_lines, wait_for_chain
from tests.support.servers import RedisFactory, wait_until
from tests.support.service import ServiceFactory, service_env

REPLID = "badc0ffee0" * 4
FULLRESYNC = b"+FULLRESYNC %s 0\r\n" % REPLID.encode()
MARKER = b"NEVER-STORE-THIS-51c2"
Mount = Callable[[str], Path]


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Keepalives:
    """Sends a keepalive newline every 0.2 s to every connection added, until it closes."""

    def __init__(self) -> None:
        self.conns: list[FakeConnection] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keepalives", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for conn in list(self.conns):
                if not conn.closed:
                    conn.send(b"\n")

    def __enter__(self) -> Keepalives:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- the protocol reports what it consumed (sans-I/O) -----------------------------------------------


def _handshake(proto: ReplicaProtocol) -> None:
    proto.data_to_send()
    for _ in range(3):  # PING, REPLCONF listening-port, REPLCONF capa
        assert proto.receive_data(b"+OK\r\n") == []
    assert b"PSYNC" in proto.data_to_send()


def test_the_protocol_counts_keepalives_and_says_when_the_snapshot_is_awaited() -> None:
    proto = ReplicaProtocol()
    assert not proto.waiting_for_snapshot
    proto.receive_data(b"\n\n")  # before the PING reply: skipped, counted, not a reply
    assert proto.keepalive_bytes == 2 and proto.state is State.HANDSHAKE
    _handshake(proto)
    assert proto.waiting_for_snapshot and proto.state is State.PSYNC_REPLY
    assert proto.receive_data(b"\n" * 5) == []
    assert proto.keepalive_bytes == 7
    (ev,) = proto.receive_data(b"\n" + FULLRESYNC + b"\n\n")
    assert isinstance(ev, FullResync)
    assert proto.keepalive_bytes == 10 and proto.waiting_for_snapshot
    (start,) = proto.receive_data(b"$5\r\n")
    assert start == SnapshotStart(5) and not proto.waiting_for_snapshot
    events = proto.receive_data(b"\n\n\n\n\n")  # inside the snapshot a newline is data
    assert proto.keepalive_bytes == 10, events


# -- endless keepalives ----------------------------------------------------------------------------

KEEPALIVE_CASES = {
    # where the primary stops answering and only sends newlines: (reply that starts it, line logged)
    "before the PING reply": ("ping", "no data from"),
    "after PSYNC, never +FULLRESYNC": ("psync", "no reply to PSYNC"),
    "after +FULLRESYNC, never the snapshot header": ("fullresync", "no snapshot after +FULLRESYNC"),
}


@pytest.mark.parametrize("case", list(KEEPALIVE_CASES))
def test_endless_keepalives_end_the_attempt_within_the_bound(
    service_factory: ServiceFactory, tmp_backup_dir: Path, case: str
) -> None:
    where, logged = KEEPALIVE_CASES[case]
    retries, read_timeout, start_timeout = 2, 1.0, 2.0
    connected: list[float] = []
    closed: dict[int, float] = {}

    with Keepalives() as keepalives:

        def on_command(conn: FakeConnection, command: list[bytes]) -> bytes | None:
            name = command[0].upper() if command else b""
            if name == b"PING" and not conn.psync_done:
                connected.append(time.monotonic())
                if where == "ping":
                    keepalives.conns.append(conn)
                    return b"\n"  # and never +PONG
            return None

        def psync_reply(conn: FakeConnection) -> bytes:
            keepalives.conns.append(conn)
            return b"\n" if where == "psync" else FULLRESYNC

        with FakePrimary(psync_reply=psync_reply, script=on_command) as fake:
            env = service_env(
                None, tmp_backup_dir, REDIS_HOST="127.0.0.1", REDIS_PORT=fake.port, MAX_RETRIES=retries,
                RETRY_DELAY_SECONDS=0.1, MAX_RETRY_DELAY_SECONDS=5,
                READ_TIMEOUT_SECONDS=read_timeout, SNAPSHOT_START_TIMEOUT_SECONDS=start_timeout,
            )  # fmt: skip
            svc = service_factory(env)

            def track() -> bool:
                for conn in fake.conns:
                    if conn.closed and conn.index not in closed:
                        closed[conn.index] = time.monotonic()
                return not svc.alive()

            # Today's code waits forever here. The bound: start_timeout (plus the watchdog's second)
            # per attempt; the upper limit is generous so that a busy machine cannot break it.
            wait_until(track, timeout=30 * retries, interval=0.02, message="the service gave up")
            assert svc.wait(5) == 1
            assert fake.connections == retries

    out = svc.stderr_text()
    assert "Traceback" not in out
    warnings = [line for line in out.splitlines() if "replication interrupted" in line]
    assert len(warnings) == retries and all(logged in w for w in warnings), warnings
    (line,) = error_lines(out)
    assert f"giving up after {retries} failed attempts" in line and logged in line, line
    if where != "ping":
        assert "SNAPSHOT_START_TIMEOUT_SECONDS=2" in line and "keepalive newlines" in line, line
    # The keepalives kept the link alive past the read timeout, up to the start timeout; before
    # PSYNC they did not keep it alive at all. Lower bounds only (a little less: the service's clock
    # starts when it has connected, a moment before the fake primary saw the PING).
    least = (start_timeout if where != "ping" else read_timeout) - 0.3
    lasted = [closed[i] - connected[i] for i in range(retries) if i in closed]
    assert lasted and all(t >= least for t in lasted), lasted
    # reconnected with backoff: each retry at least the least its delay allows
    gaps = [b - a for a, b in itertools.pairwise(connected)]
    assert len(gaps) == retries - 1 and all(g >= 0.1 * 2 ** (n - 1) / 2 for n, g in enumerate(gaps, 1)), gaps
    assert partial_dirs(tmp_backup_dir) == [] and chain_dirs(tmp_backup_dir) == []


def _slow_start_args(how: str) -> list[str]:
    if how == "diskless, repl-diskless-sync-delay 5":
        return ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "5"]
    return ["--repl-diskless-sync", "no", "--rdb-key-save-delay", "100000"]  # 50 keys: a 5 s BGSAVE


@pytest.mark.parametrize("how", ["diskless, repl-diskless-sync-delay 5", "disk-based, a 5 s BGSAVE"])
def test_a_real_slow_snapshot_start_is_kept_alive_by_keepalives(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, how: str
) -> None:
    """No regression: a real primary sends a newline a second while it prepares the snapshot (before
    +FULLRESYNC during the diskless delay, after it during a disk-based BGSAVE); with a read timeout
    of 2 s the service still waits for it, and the chain restores. (A read timeout of 1 s would race
    the newlines, which come a second apart: it was already too short for a real primary.)"""
    primary = redis_factory(extra_args=_slow_start_args(how))
    for i in range(50):
        primary.client().set(f"k{i}", f"v{i}")
    svc = service_factory(service_env(primary, tmp_backup_dir, READ_TIMEOUT_SECONDS=2, MAX_RETRIES=1))
    chain = wait_for_chain(svc, tmp_backup_dir)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    out = svc.stderr_text()
    assert "replication interrupted" not in out and "Traceback" not in out, out[-3000:]
    assert_restores(redis_factory, chain, primary)


# -- snapshots that do not fit -----------------------------------------------------------------------


def _watch_names(dir: Path, seen: set[str], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                seen.update(p.name for p in dir.iterdir())
            time.sleep(0.002)

    thread = threading.Thread(target=run, name="watch", daemon=True)
    thread.start()
    return thread


def test_a_snapshot_announced_bigger_than_the_free_space_is_refused_at_once(
    service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    retries = 2
    size = 10**15
    # the header, then the beginning of an RDB; the link then stays open and quiet: today's code
    # writes what came and waits for the rest until the read timeout (30 s)
    reply = FULLRESYNC + b"$%d\r\n" % size + b"REDIS0010" + MARKER * 100
    psyncs: list[float] = []
    closed: dict[int, float] = {}

    def psync_reply(conn: FakeConnection) -> bytes:
        psyncs.append(time.monotonic())
        return reply

    seen: set[str] = set()
    stop = threading.Event()
    watcher = _watch_names(tmp_backup_dir, seen, stop)
    try:
        with FakePrimary(psync_reply=psync_reply) as fake:
            env = service_env(
                None, tmp_backup_dir, REDIS_HOST="127.0.0.1", REDIS_PORT=fake.port, MAX_RETRIES=retries,
                RETRY_DELAY_SECONDS=0.1, MAX_RETRY_DELAY_SECONDS=5, READ_TIMEOUT_SECONDS=30,
            )  # fmt: skip
            svc = service_factory(env)

            def done() -> bool:
                for conn in fake.conns:
                    if conn.closed and conn.index not in closed:
                        closed[conn.index] = time.monotonic()
                return not svc.alive()

            wait_until(done, timeout=20, interval=0.02, message="the service gave up before the read timeout")
            assert svc.wait(5) == 1
    finally:
        stop.set()
        watcher.join(5)

    out = svc.stderr_text()
    assert "Traceback" not in out
    announced = f"the primary announced a snapshot of {size} bytes"
    refusals = [line for line in out.splitlines() if "cannot store the backup" in line and announced in line]
    assert len(refusals) == retries, out[-3000:]
    (line,) = error_lines(out)
    assert f"giving up after {retries} failed attempts" in line and announced in line, line
    assert "MIN_FREE_BYTES=auto" in line and "nothing was written" in line and "grow the volume" in line, line
    # refused at once: each attempt ended long before the read timeout (generous bound)
    assert all(closed[i] - psyncs[i] < 15 for i in range(retries)), (psyncs, closed)
    # nothing was written: no partial snapshot, ever, and none of the bytes
    assert not [n for n in seen if n.startswith(".partial-")], seen
    assert partial_dirs(tmp_backup_dir) == [] and chain_dirs(tmp_backup_dir) == []
    assert MARKER not in all_bytes_under(tmp_backup_dir)


def test_the_space_guard_keeps_the_reserve(tmp_path: Path, small_fs: Mount) -> None:
    """As data: MIN_FREE_BYTES=0 still refuses what does not fit; auto is 1% of the volume, at most
    64 MiB; writes are allowed up to the room left and refused past it, with one line each."""
    big = auto_reserve(tmp_path)
    st = os.statvfs(tmp_path)
    assert big == min(64 << 20, st.f_blocks * st.f_frsize // 100)
    fs = small_fs("4m")
    assert auto_reserve(fs) == (4 << 20) // 100
    free = _free(fs)
    nothing = SpaceGuard(fs, 0)
    nothing.check_size(free // 2)
    with pytest.raises(StorageError, match=r"announced a snapshot of \d+ bytes .* MIN_FREE_BYTES=0 \(0 B\)"):
        nothing.check_size(free + 1)
    guard = SpaceGuard(fs, 1 << 20)
    room = free - (1 << 20) - os.statvfs(fs).f_frsize
    guard.check_size(room)
    with pytest.raises(StorageError, match="nothing was written"):
        guard.check_size(room + 1)
    guard.allow(room, 0)  # nothing written meanwhile: all of the room may be used
    with pytest.raises(StorageError, match=r"stopped the snapshot after .* MIN_FREE_BYTES=1048576 \(1.0 MiB\)"):
        SpaceGuard(fs, 1 << 20).allow(room + 1, 0)


def _chain_bytes(chain: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(chain.iterdir())}


def test_an_endless_diskless_snapshot_is_stopped_before_the_reserve_and_the_chains_are_kept(
    redis_factory: RedisFactory, service_factory: ServiceFactory, small_fs: Mount
) -> None:
    fs = small_fs("8m")
    backup_dir = fs / "backups"
    reserve = 3 << 20
    retries = 2

    # A real chain first, from a real primary, stopped cleanly.
    primary = redis_factory()
    for i in range(50):
        primary.client().set(f"key:{i}", os.urandom(100))
    svc = service_factory(service_env(primary, backup_dir))
    chain = wait_for_chain(svc, backup_dir)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.stop() == 0
    before = _chain_bytes(chain)
    free_before = _free(fs)
    assert free_before > reserve + (2 << 20)

    # Then a primary whose diskless snapshot never ends: $EOF:<mark>, then data without the mark.
    mark = b"E" * 40
    chunk = b"REDIS0010" + bytes(range(256)) * 256

    async def endless(conn: FakeConnection) -> None:
        writer = conn._writer
        assert writer is not None
        try:
            while not conn.closed:
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, RuntimeError):
            pass

    def psync_reply(conn: FakeConnection) -> bytes:
        asyncio.get_running_loop().create_task(endless(conn))
        return FULLRESYNC + b"$EOF:" + mark + b"\r\n"

    lowest = [free_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            lowest[0] = min(lowest[0], _free(fs))

    sampler = threading.Thread(target=sample, name="free-space", daemon=True)
    sampler.start()
    try:
        with FakePrimary(psync_reply=psync_reply) as fake:
            env = service_env(
                None, backup_dir, REDIS_HOST="127.0.0.1", REDIS_PORT=fake.port, MAX_RETRIES=retries,
                RETRY_DELAY_SECONDS=0.1, MAX_RETRY_DELAY_SECONDS=5, READ_TIMEOUT_SECONDS=30,
                MIN_FREE_BYTES=reserve, ALLOW_OTHER_PRIMARY="true",
            )  # fmt: skip
            svc = service_factory(env)
            assert svc.wait(60) == 1
            assert fake.connections == retries
    finally:
        stop.set()
        sampler.join(5)

    out = svc.stderr_text()
    assert "Traceback" not in out
    assert "No space left" not in out, out[-3000:]
    stopped = [x for x in out.splitlines() if "cannot store the backup" in x and "stopped the snapshot" in x]
    assert len(stopped) == retries, out[-3000:]
    (line,) = error_lines(out)
    assert f"giving up after {retries} failed attempts" in line and f"MIN_FREE_BYTES={reserve}" in line, line
    assert "the disk is full: free space or grow the volume" in line, line
    # it wrote a good part of the room before stopping, and never went below the reserve
    written = re.search(r"stopped the snapshot after ([\d.]+) MiB", line)
    assert written is not None and float(written.group(1)) >= 1.0, line
    assert lowest[0] >= reserve, f"free space went down to {lowest[0]} (< {reserve})"
    # discarded; the chain stored before is untouched, byte for byte
    wait_until(lambda: not partial_dirs(backup_dir), timeout=10, message="the partial snapshot removed")
    assert chain_dirs(backup_dir) == [chain]
    assert _chain_bytes(chain) == before
    assert _free(fs) >= free_before - (64 << 10)


def test_a_sized_snapshot_just_under_the_limit_is_stored_just_over_is_refused(
    redis_factory: RedisFactory, service_factory: ServiceFactory, small_fs: Mount
) -> None:
    """A real disk-based primary ($<len>): with MIN_FREE_BYTES set so that the snapshot needs a little
    more than the room there is, it is refused at once; with a little less, it is stored and restores."""
    fs = small_fs("16m")
    backup_dir = fs / "backups"
    backup_dir.mkdir()
    primary = redis_factory(extra_args=["--repl-diskless-sync", "no", "--rdbcompression", "no"])
    for i in range(400):
        primary.client().set(f"key:{i}", os.urandom(1000))
    primary.execute("SAVE")
    size = (primary.dir / "dump.rdb").stat().st_size  # the replication RDB differs by a few aux bytes
    assert size > 400_000
    margin = 64 << 10
    free = _free(fs)

    over = service_factory(service_env(primary, backup_dir, MAX_RETRIES=0, MIN_FREE_BYTES=free - size + margin))
    over.wait_for_output(r"the primary announced a snapshot of \d+ bytes", timeout=20)
    over.stop()
    assert partial_dirs(backup_dir) == [] and chain_dirs(backup_dir) == []

    under = service_factory(service_env(primary, backup_dir, MAX_RETRIES=1, MIN_FREE_BYTES=free - size - margin))
    chain = wait_for_chain(under, backup_dir)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    out = under.stderr_text()
    assert "announced" not in out and "stopped the snapshot" not in out and "Traceback" not in out, out[-3000:]
    assert_restores(redis_factory, chain, primary)
