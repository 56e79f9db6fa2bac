"""2. Stream ingestion and 5. memory while streaming.

Each round starts a fresh primary, attaches one contender (redis-backup run, a Redis replica with
appendonly yes / appendfsync everysec, or the byte copy), waits until it is in sync, then runs the
redis-benchmark load while a monitor polls the primary. CPU is read from /proc before the load and
after the contender has acknowledged everything; peak RSS (VmHWM) covers the contender's whole life.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from tests.support.servers import RedisServer

from .lab import COPY, REPLICA, SERVICE, Attached, Lab, attach
from .load import CLIENTS, KEYSPACE, PIPELINE, TESTS, VALUE_SIZE, run_load
from .measure import GIB, MIB, cpu_seconds, peak_rss
from .monitor import LagMonitor, output_buffer_drops
from .report import Metric, Section, Target
from .settings import Settings

CATCH_UP_TIMEOUT = 300.0
RSS_LIMIT_MIB = 64


@dataclass(frozen=True)
class Round:
    contender: str
    stream_bytes: int  # master_repl_offset delta over the load and the catch-up
    cpu: float  # the contender's user+sys seconds over the same span
    rps: float  # the primary's throughput as redis-benchmark saw it
    load_seconds: float
    max_lag: int  # bytes not yet acknowledged, largest seen
    caught_up_after: float  # seconds from the end of the load until everything was acknowledged
    caught_up: bool
    max_omem: int  # the primary's output buffer for the replica, largest seen
    drops: int  # output-buffer disconnections (primary's log)
    resyncs: int  # full resyncs after the first
    offline_samples: int
    peak_rss: int  # VmHWM at the end of the round

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu / (self.stream_bytes / GIB) if self.stream_bytes else 0.0


def measure(settings: Settings, primary: RedisServer, rep: Attached) -> Round:
    offset0 = primary.master_repl_offset()
    cpu0 = cpu_seconds(rep.pid)
    with LagMonitor(primary) as mon:
        load = run_load(primary, settings.requests, rep.dir / "redis-benchmark.csv")
        stopped = time.monotonic()
        done = mon.wait_caught_up(stopped, CATCH_UP_TIMEOUT)
    cpu1 = cpu_seconds(rep.pid)
    offset1 = done.master if done is not None else primary.master_repl_offset()
    return Round(
        contender=rep.name,
        stream_bytes=offset1 - offset0,
        cpu=cpu1 - cpu0,
        rps=load.rps,
        load_seconds=load.wall,
        max_lag=mon.max_lag(),
        caught_up_after=(done.t - stopped) if done is not None else CATCH_UP_TIMEOUT,
        caught_up=done is not None,
        max_omem=mon.max_omem(),
        drops=output_buffer_drops(primary),
        resyncs=int(primary.info("stats")["sync_full"]) - 1,
        offline_samples=mon.offline_samples(),
        peak_rss=peak_rss(rep.pid),
    )


def _round(lab: Lab, settings: Settings, kind: str) -> Round:
    primary = lab.primary()
    try:
        with attach(lab, kind, primary) as rep:
            return measure(settings, primary, rep)
    finally:
        primary.stop()


def _compare(
    rounds: dict[str, list[Round]], a: str, b: str
) -> Callable[[str, str, Callable[[Round], float], Target | None], Metric]:
    def metric(name: str, unit: str, value: Callable[[Round], float], target: Target | None = None) -> Metric:
        return Metric(name, unit, a, [value(r) for r in rounds[a]], b, [value(r) for r in rounds[b]], target)

    return metric


def _stream_section(settings: Settings, rounds: dict[str, list[Round]]) -> Section:
    section = Section("stream", rounds=settings.rounds)
    vs_replica = _compare(rounds, SERVICE, REPLICA)
    section.metrics += [
        vs_replica("CPU per GiB of stream", "s/GiB", lambda r: r.cpu_per_gib, Target("ratio", "<=", 1.0)),
        vs_replica("primary throughput", "req/s", lambda r: r.rps, Target("ratio", ">=", 0.95)),
        vs_replica("largest lag (acknowledged)", "MiB", lambda r: r.max_lag / MIB, None),
        vs_replica("lag to zero after the load", "s", lambda r: r.caught_up_after, Target("a", "<", 1.0)),
        vs_replica("largest output buffer on the primary", "MiB", lambda r: r.max_omem / MIB, None),
        vs_replica("output-buffer disconnections", "count", lambda r: r.drops + r.resyncs, Target("a", "==", 0)),
    ]
    if rounds.get(COPY):
        section.add(_compare(rounds, COPY, REPLICA)("CPU per GiB of stream", "s/GiB", lambda r: r.cpu_per_gib, None))
    section.details = {
        "load": {
            "tool": "redis-benchmark", "tests": list(TESTS), "requests_per_round": settings.requests,
            "pipeline": PIPELINE, "clients": CLIENTS, "value_size": VALUE_SIZE, "keyspace": KEYSPACE,
        },
        "rounds": {name: [asdict(r) for r in rs] for name, rs in rounds.items()},
    }  # fmt: skip
    return section


def _memory_section(settings: Settings, rounds: dict[str, list[Round]]) -> Section:
    section = Section("memory", rounds=settings.rounds)
    section.add(Metric(
        "peak RSS while streaming", "MiB", SERVICE, [r.peak_rss / MIB for r in rounds[SERVICE]],
        REPLICA, [r.peak_rss / MIB for r in rounds[REPLICA]], Target("a", "<", RSS_LIMIT_MIB),
        note="VmHWM over each contender's whole life; the Redis replica also holds the dataset",
    ))  # fmt: skip
    return section


def run(lab: Lab, settings: Settings) -> list[Section]:
    kinds = [SERVICE, REPLICA] + ([COPY] if settings.wants("stream") else [])
    rounds: dict[str, list[Round]] = {k: [] for k in kinds}
    for i in range(settings.rounds):
        for kind in kinds:
            r = _round(lab, settings, kind)
            rounds[kind].append(r)
            print(
                f"  stream round {i + 1} {kind}: {r.stream_bytes / MIB:.0f} MiB, cpu {r.cpu:.2f}s, "
                f"{r.rps:,.0f} req/s, caught up after {r.caught_up_after:.2f}s",
                flush=True,
            )
    sections = []
    if settings.wants("stream"):
        sections.append(_stream_section(settings, rounds))
    if settings.wants("memory"):
        sections.append(_memory_section(settings, rounds))
    return sections
