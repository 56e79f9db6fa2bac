"""Bytes a real primary never sends, from a fake one: the service reports a protocol error naming what
it received, keeps its memory bounded, reconnects with growing delays (then gives up after
MAX_RETRIES), and never stores those bytes in a chain."""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from redis_backup.service.supervisor import backoff_delay
from tests.support.chains import chain_dirs, partial_dirs
from tests.support.fake_primary import FakeConnection, FakePrimary, empty_rdb, fullresync_reply
from tests.support.faults import all_bytes_under, error_lines, vm_hwm_kib
from tests.support.servers import wait_until
from tests.support.service import ServiceFactory, service_env

REPLID = "5eed" * 10
MARKER = b"NEVER-STORE-THIS-7f3a"
RETRIES = 4
ENDLESS = 50 << 20  # 50 MB without a CRLF


@dataclass(frozen=True)
class Case:
    name: str
    handshake: bytes  # the reply to PSYNC ? -1 (a full sync request)
    stream: bytes  # the reply to later PSYNC <replid> <offset> requests
    logged: str  # the protocol error names what was received
    after_sync: bytes = b""  # sent once the service acknowledges the sync (its first REPLCONF ACK)


_SYNCED = fullresync_reply(empty_rdb(), replid=REPLID)
_CONTINUE = b"+CONTINUE " + REPLID.encode() + b"\r\n"

CASES = [
    Case(
        "malformed RESP in the stream",
        _SYNCED,
        _CONTINUE,
        "expected a command array, got b'%NEVER-STORE-THIS",
        b"%" + MARKER + b"\r\n",
    ),
    Case(
        "bulk length of 10^12",
        _SYNCED,
        _CONTINUE,
        "bad bulk length: b'$1000000000000\\r\\n'",
        b"*3\r\n$3\r\nSET\r\n$21\r\n" + MARKER + b"\r\n$1000000000000\r\n" + MARKER,
    ),
    Case(
        "endless line in the stream",
        _SYNCED,
        _CONTINUE,
        "line too long or no CRLF: b'*NEVER-STORE-THIS",
        b"*" + MARKER + b"9" * ENDLESS,
    ),
    Case(
        "garbage with the PSYNC reply, in the same packet",
        _SYNCED + b"%" + MARKER + b"\r\n",
        _CONTINUE + b"%" + MARKER + b"\r\n",
        "expected a command array, got b'%NEVER-STORE-THIS",
    ),
    Case(
        "endless PSYNC reply line",
        b"+FULLRESYNC " + MARKER + b"x" * ENDLESS,
        b"",
        "reply line too long or no CRLF: b'+FULLRESYNC NEVER-STORE-THIS",
    ),
    Case(
        "unexpected PSYNC reply",
        b"+WHAT " + MARKER + b"\r\n",
        b"",
        "unexpected PSYNC reply: b'+WHAT NEVER-STORE-THIS",
    ),
    Case(
        "CONTINUE to a full sync request",
        b"+CONTINUE " + REPLID.encode() + b"\r\n" + MARKER,
        b"",
        "primary answered CONTINUE to a full sync request",
    ),
    Case(
        "garbage after +FULLRESYNC",
        b"+FULLRESYNC " + REPLID.encode() + b" 0\r\n" + MARKER + b"\r\n",
        b"",
        "expected the snapshot header, got b'NEVER-STORE-THIS",
    ),
    Case(
        "garbage as the snapshot",
        b"+FULLRESYNC " + REPLID.encode() + b" 0\r\n$%d\r\nREDIS0010" % (len(MARKER) * 100 + 9) + MARKER * 100,
        b"",
        "the snapshot received is damaged",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_bytes_are_a_protocol_error_never_stored(
    service_factory: ServiceFactory, tmp_backup_dir: Path, case: Case
) -> None:
    connected: list[float] = []

    def reply(conn: FakeConnection) -> bytes:
        psync = conn.received[-1]
        return case.handshake if psync[1] == b"?" else case.stream

    acked: set[int] = set()

    def on_command(conn: FakeConnection, command: list[bytes]) -> bytes | None:
        if command and command[0].upper() == b"PING" and not conn.psync_done:
            connected.append(time.monotonic())
        if case.after_sync and command[:2] == [b"REPLCONF", b"ACK"] and conn.index not in acked:
            acked.add(conn.index)  # the service stored the sync and said so: now the bad bytes
            return case.after_sync
        return None  # default replies

    with FakePrimary(psync_reply=reply, script=on_command) as fake:
        env = service_env(
            None, tmp_backup_dir, REDIS_HOST="127.0.0.1", REDIS_PORT=fake.port,
            RETRY_DELAY_SECONDS=0.1, MAX_RETRY_DELAY_SECONDS=5, MAX_RETRIES=RETRIES,
        )  # fmt: skip
        svc = service_factory(env)
        wait_until(lambda: fake.connections >= 2, timeout=20, message="a second connection")
        hwm_kib = vm_hwm_kib(svc.pid)  # while it runs, after it was offered the bytes at least once
        assert svc.wait(30) == 1
        assert fake.connections == RETRIES

    out = svc.stderr_text()
    assert case.logged in out, out[-3000:]
    (line,) = error_lines(out)
    assert f"giving up after {RETRIES} failed attempts" in line and case.logged in line, line
    assert "Traceback" not in out
    # each retry waited at least the least its backoff allows (the schedule itself is tested as data in
    # test_backoff_schedule; a lower bound is all that holds end to end on a busy machine)
    gaps = [b - a for a, b in itertools.pairwise(connected)]
    assert len(gaps) == RETRIES - 1, gaps
    assert all(g >= 0.1 * 2 ** (n - 1) / 2 for n, g in enumerate(gaps, 1)), gaps
    # memory stays bounded whatever the primary sends (50 MB without a CRLF included)
    assert hwm_kib < 48 * 1024, f"peak RSS {hwm_kib} KiB"
    # nothing received after the bad bytes, nor the bad bytes themselves, is in a chain
    if case.after_sync:
        assert "partial resync accepted" in out, "the bad bytes must come after a successful sync"
    assert MARKER not in all_bytes_under(tmp_backup_dir)
    assert partial_dirs(tmp_backup_dir) == []
    for chain in chain_dirs(tmp_backup_dir):  # the valid empty snapshot of the stream cases
        assert all(p.stat().st_size == 0 for p in chain.glob("*.incr.aof"))


def test_backoff_schedule() -> None:
    """The n-th consecutive failure waits between half and all of min(cap, base * 2**(n-1)): it
    doubles, stops at the cap, and the jitter spreads services that fail together."""
    base, cap = 0.1, 5.0
    for seed in range(20):
        rng = random.Random(seed)
        delays = [backoff_delay(n, base, cap, rng) for n in range(1, 12)]
        for n, d in enumerate(delays, 1):
            top = min(cap, base * 2 ** (n - 1))
            assert top / 2 <= d <= top, (seed, n, d)
        assert max(delays) <= cap
    # the same failure count, many services: spread over the upper half, not in step
    spread = [backoff_delay(3, base, cap, random.Random(s)) for s in range(200)]
    assert min(spread) < 0.25 and max(spread) > 0.35
    # reproducible from the seed; 0 failures waits like the first
    assert backoff_delay(4, base, cap, random.Random(7)) == backoff_delay(4, base, cap, random.Random(7))
    assert 0.05 <= backoff_delay(0, base, cap, random.Random(1)) <= 0.1
