"""3. WAIT latency: `SET` then `WAIT 1 1000`, one round trip, with redis-backup attached against a Redis
replica with appendfsync always (the other replica that answers only once the write is on its disk).

Then the same under a steady write load from a second client, redis-backup without rotation against
redis-backup rotating every MiB (several rotations a second): a rotation fsyncs more than once, and
it must not stall the acknowledgements (the spool thread keeps it off the event loop)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from tests.support.servers import RedisServer

from .lab import REPLICA, SERVICE, SERVICE_NO_ROTATION, SERVICE_ROTATING, Lab, attach
from .measure import percentile
from .report import Metric, Section, Target
from .settings import Settings

WARMUP = 20
WAIT_TIMEOUT_MS = 1000
P99_LIMIT_MS = 10.0
CONTENDERS = (SERVICE, REPLICA)
ROTATION = (SERVICE_ROTATING, SERVICE_NO_ROTATION)
ROTATION_P99_RATIO = 2.0
LOAD_VALUE = 4096
LOAD_PER_SECOND = 1500  # about 6 MB/s: six 1 MiB rotations a second


def set_and_wait(primary: RedisServer, iterations: int) -> tuple[list[float], int]:
    """Latencies in ms of SET + WAIT 1 1000 (pipelined: one round trip each), and how many WAITs
    returned 0 (timed out)."""
    client = primary.client()
    latencies: list[float] = []
    timeouts = 0
    try:
        pipe = cast(Any, client.pipeline(transaction=False))
        value = b"v" * 100
        for i in range(WARMUP + iterations):
            pipe.set(f"wait:{i % 1000}", value)
            pipe.execute_command("WAIT", 1, WAIT_TIMEOUT_MS)
            started = time.perf_counter()
            _, acked = pipe.execute()
            elapsed = (time.perf_counter() - started) * 1000
            if i >= WARMUP:
                latencies.append(elapsed)
                timeouts += int(acked) < 1
    finally:
        client.close()
    return latencies, timeouts


@contextlib.contextmanager
def write_load(primary: RedisServer, per_second: int) -> Iterator[list[int]]:
    """A second client writing LOAD_VALUE-byte values at a steady rate while the body runs; yields a
    one-item list that holds how many it wrote once the body is done."""
    stop = threading.Event()
    written = [0]

    def load() -> None:
        client = primary.client()
        value = b"x" * LOAD_VALUE
        batch = max(1, per_second // 100)
        try:
            next_at = time.monotonic()
            while not stop.is_set():
                pipe = cast(Any, client.pipeline(transaction=False))
                for _ in range(batch):
                    pipe.set(f"load:{written[0] % 10_000}", value)
                    written[0] += 1
                pipe.execute()
                next_at += batch / per_second
                stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            client.close()

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        yield written
    finally:
        stop.set()
        thread.join(30)


def _incr_files(root: Path) -> int:
    return sum(1 for _ in root.glob("*/appendonly.aof.*.incr.aof"))


def _round(lab: Lab, kind: str, iterations: int, *, load: int = 0) -> tuple[list[float], int, int]:
    """Latencies, timeouts, and the incr files the contender ended with (0 for a Redis replica)."""
    primary = lab.primary()
    try:
        with attach(lab, kind, primary, appendfsync="always") as rep:
            if load:
                with write_load(primary, load):
                    lat, timeouts = set_and_wait(primary, iterations)
            else:
                lat, timeouts = set_and_wait(primary, iterations)
            return lat, timeouts, _incr_files(rep.dir)
    finally:
        primary.stop()


def run(lab: Lab, settings: Settings) -> list[Section]:
    per_round: dict[str, list[dict[str, float]]] = {k: [] for k in CONTENDERS}
    for _ in range(settings.rounds):
        for kind in CONTENDERS:
            lat, timeouts, _ = _round(lab, kind, settings.wait_iterations)
            per_round[kind].append({
                "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat), "timeouts": timeouts,
            })  # fmt: skip
    section = Section("wait", rounds=settings.rounds)

    def metric(name: str, key: str, target: Target | None = None) -> Metric:
        a, b = ([r[key] for r in per_round[k]] for k in CONTENDERS)
        return Metric(name, "ms" if key != "timeouts" else "count", SERVICE, a, REPLICA + " (fsync always)", b, target)

    section.metrics += [
        metric("SET + WAIT 1 p50", "p50"),
        metric("SET + WAIT 1 p99", "p99", Target("a", "<", P99_LIMIT_MS)),
        metric("SET + WAIT 1 max", "max"),
        metric("WAIT timeouts", "timeouts"),
    ]
    section.details = {"iterations_per_round": settings.wait_iterations, "rounds": per_round}
    return [section]


def run_rotation(lab: Lab, settings: Settings) -> list[Section]:
    load = LOAD_PER_SECOND // (10 if settings.quick else 1)
    per_round: dict[str, list[dict[str, float]]] = {k: [] for k in ROTATION}
    for _ in range(settings.rounds):
        for kind in ROTATION:
            lat, timeouts, files = _round(lab, kind, settings.wait_iterations, load=load)
            per_round[kind].append({
                "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat), "timeouts": timeouts,
                "incr_files": files,
            })  # fmt: skip
    section = Section("rotation", rounds=settings.rounds)

    def metric(name: str, key: str, unit: str, target: Target | None = None) -> Metric:
        a, b = ([r[key] for r in per_round[k]] for k in ROTATION)
        return Metric(name, unit, ROTATION[0], a, ROTATION[1], b, target)

    section.metrics += [
        metric("SET + WAIT 1 p50", "p50", "ms"),
        metric("SET + WAIT 1 p99", "p99", "ms", Target("ratio", "<=", ROTATION_P99_RATIO)),
        metric("SET + WAIT 1 max", "max", "ms"),
        metric("WAIT timeouts", "timeouts", "count"),
        metric("incr files at the end (rotations + 1)", "incr_files", "count"),
    ]
    section.details = {
        "iterations_per_round": settings.wait_iterations,
        "load": {"value_bytes": LOAD_VALUE, "sets_per_second": load},
        "rounds": per_round,
    }
    return [section]
