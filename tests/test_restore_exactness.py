"""Against ground truth: a writer records when each transaction was sent and when the primary answered
it, and every second a restore offers as exact must hold every transaction answered before that second
ended and none sent after it (the seconds after a large catch-up and after a pause included)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.chains import chain_dirs
from tests.support.faults import CAUGHT_UP, start_service
from tests.support.proxy import TcpProxy
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, run_cli

pytestmark = pytest.mark.slow
TOLERANCE = 0.25  # LAG_TOLERANCE_SECONDS for these tests (its default)
LAG = TOLERANCE + 0.05  # what a command may take to reach the service: a second's end is exact to this
PAD = b"p" * 2048


class Writer:
    """MULTI INCR ctr; SET pad EXEC, as fast as it goes: (sent, answered, counter) per transaction."""

    def __init__(self, primary: RedisServer) -> None:
        self.client = primary.client()
        self.log: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            sent = time.time()
            with self.client.pipeline(transaction=True) as tx:
                tx.incr("ctr")
                tx.set(f"pad:{i % 5000}", PAD)
                ctr, _ = tx.execute()
            self.log.append((sent, time.time(), int(ctr)))
            i += 1

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def bounds(self, second: int) -> tuple[int, int]:
        """The counter at the end of `second` is at least lo and at most hi."""
        end = second + 1
        lo = max((c for s, a, c in self.log if a < end - LAG), default=0)
        hi = min((c - 1 for s, a, c in self.log if s >= end), default=1 << 62)
        return lo, hi


def restored_counter(redis_factory: RedisFactory, bk: Path, out: Path, second: int) -> int | None:
    r = run_cli(["restore", "--to", str(out), "--at", str(second)], {"BACKUP_DIR": str(bk)}, timeout=180)
    if r.returncode != 0:
        assert "inside a gap in capture" in r.stderr or "outside" in r.stderr, r.stderr
        return None
    value = redis_factory.load_aof_dir(out, strict=True).client().get("ctr")
    return int(value) if value is not None else 0


def gaps(bk: Path) -> list[dict[str, Any]]:
    return list(json.loads((chain_dirs(bk)[0] / "redis-backup.json").read_text())["gaps"])


def check_every_second(redis_factory: RedisFactory, bk: Path, tmp: Path, writer: Writer, seconds: range) -> int:
    """Every second offered as exact restores within the ground truth; returns how many were offered."""
    offered = 0
    for s in seconds:
        got = restored_counter(redis_factory, bk, tmp / f"at-{s}", s)
        if got is None:
            continue
        offered += 1
        lo, hi = writer.bounds(s)
        assert lo <= got <= hi, f"second {s}: restored ctr={got}, the primary had {lo}..{hi}; gaps {gaps(bk)}"
    return offered


def test_seconds_after_a_large_catch_up_are_exact(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, tmp_path: Path
) -> None:
    primary = redis_factory(extra_args=["--repl-backlog-size", "512mb", "--client-output-buffer-limit",
                                        "replica 0 0 0"])  # fmt: skip
    svc = start_service(service_factory, primary, tmp_backup_dir, RETRY_DELAY_SECONDS=3, MAX_RETRY_DELAY_SECONDS=3,
                        LAG_TOLERANCE_SECONDS=TOLERANCE)  # fmt: skip
    start = int(time.time())
    with Writer(primary) as writer:
        wait_until(lambda: len(writer.log) > 200, timeout=30, message="writes")
        primary.execute("CLIENT", "KILL", "TYPE", "replica")  # back in 3 s: a backlog to catch up with
        svc.wait_for_output("partial resync accepted", timeout=30)
        wait_until(lambda: any(g["reason"] == "reconnected" and g["to_second"] for g in gaps(tmp_backup_dir)),
                   timeout=60, message="the gap is caught up with")  # fmt: skip
        end = int(time.time()) + 2
        wait_until(lambda: time.time() > end + 1, timeout=10)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    offered = check_every_second(redis_factory, tmp_backup_dir, tmp_path, writer, range(start, end + 1))
    assert offered >= 1


@pytest.mark.parametrize("how", ["sigstop-3s", "sigstop-1.6s-x3", "link-stall-1.5s", "link-bursts-0.4s"])
def test_a_pause_or_a_stall_without_a_reconnect_is_a_gap(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, tmp_path: Path, how: str
) -> None:
    """A VM pause, a stalled disk, a link that stalls for less than the read timeout or delivers in bursts
    0.4 s apart (more than the tolerance): the stream queues up meanwhile and arrives late, with no
    reconnect to say so."""
    primary = redis_factory(extra_args=["--client-output-buffer-limit", "replica 0 0 0"])
    proxy = TcpProxy(primary.host, primary.port).start()
    try:
        svc = start_service(service_factory, primary, tmp_backup_dir, REDIS_HOST=proxy.host, REDIS_PORT=proxy.port,
                            LAG_TOLERANCE_SECONDS=TOLERANCE)  # fmt: skip
        start = int(time.time())
        with Writer(primary) as writer:
            wait_until(lambda: len(writer.log) > 200, timeout=30, message="writes")
            pauses = {"sigstop-3s": [3.0], "sigstop-1.6s-x3": [1.6] * 3, "link-stall-1.5s": [1.5],
                      "link-bursts-0.4s": [3.0]}[how]  # fmt: skip
            for length in pauses:
                began = time.time()
                if how.startswith("sigstop"):
                    os.kill(svc.pid, signal.SIGSTOP)
                    wait_until(lambda b=began, n=length: time.time() > b + n, timeout=10)  # type: ignore[misc]
                    os.kill(svc.pid, signal.SIGCONT)
                elif how == "link-bursts-0.4s":
                    while time.time() < began + length:  # held 0.4 s, let through for 0.05 s, again
                        proxy.stall_for(0.4)
                        burst = time.time()
                        wait_until(lambda b=burst: time.time() > b + 0.45, timeout=10)  # type: ignore[misc]
                else:
                    proxy.stall_for(length)
                    wait_until(lambda b=began, n=length: time.time() > b + n, timeout=10)  # type: ignore[misc]
                wait_until(lambda b=began: any(g["from_second"] <= int(b) and g["to_second"] and
                                               g["to_second"] > int(b) for g in gaps(tmp_backup_dir)),
                           timeout=60, message="a gap over the pause, caught up with")  # fmt: skip
                later = time.time() + 1.5
                wait_until(lambda t=later: time.time() > t, timeout=10)  # type: ignore[misc]
            end = int(time.time()) + 2
            wait_until(lambda: time.time() > end + 1, timeout=10)
        primary.wait_replicas_caught_up(CAUGHT_UP)
        assert all(g["reason"] in ("behind", "snapshot") for g in gaps(tmp_backup_dir)), gaps(tmp_backup_dir)
        offered = check_every_second(redis_factory, tmp_backup_dir, tmp_path, writer, range(start, end + 1))
        assert offered >= 1
    finally:
        proxy.stop()
