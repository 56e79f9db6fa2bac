"""3. WAIT latency: `SET` then `WAIT 1 1000`, one round trip, with redis-backup attached against a Redis
replica with appendfsync always (the other replica that answers only once the write is on its disk)."""

from __future__ import annotations

import time
from typing import Any, cast

from tests.support.servers import RedisServer

from .lab import REPLICA, SERVICE, Lab, attach
from .measure import percentile
from .report import Metric, Section, Target
from .settings import Settings

WARMUP = 20
WAIT_TIMEOUT_MS = 1000
P99_LIMIT_MS = 10.0
CONTENDERS = (SERVICE, REPLICA)


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


def _round(lab: Lab, kind: str, iterations: int) -> tuple[list[float], int]:
    primary = lab.primary()
    try:
        with attach(lab, kind, primary, appendfsync="always"):
            return set_and_wait(primary, iterations)
    finally:
        primary.stop()


def run(lab: Lab, settings: Settings) -> list[Section]:
    per_round: dict[str, list[dict[str, float]]] = {k: [] for k in CONTENDERS}
    for _ in range(settings.rounds):
        for kind in CONTENDERS:
            lat, timeouts = _round(lab, kind, settings.wait_iterations)
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
