"""1. Snapshot: `redis-backup snapshot --out F` against `redis-cli --rdb F` on the same primary."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tests.support.servers import RedisServer, wait_until

from .datasets import populate
from .lab import SERVICE, Lab, command_env, service_command
from .measure import MIB, Finished, run_measured
from .report import Metric, Section, Target
from .settings import Settings, Size, room_for

REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
CLI = "redis-cli --rdb"
RSS_LIMIT_MIB = 64
WALL_RATIO = 1.0  # at most redis-cli's wall time: the primary's fork child, not the client, sets the pace
CPU_RATIO = 2.0  # client CPU (user + sys) at most twice redis-cli's: on a small machine it is taken from
# the primary's fork child

Argv = Callable[[RedisServer, Path], list[str]]


def _service_argv(primary: RedisServer, out: Path) -> list[str]:
    return service_command("snapshot", "--out", str(out))


def _cli_argv(primary: RedisServer, out: Path) -> list[str]:
    return [REDIS_CLI, "-h", primary.host, "-p", str(primary.port), "--rdb", str(out)]


CONTENDERS: dict[str, Argv] = {SERVICE: _service_argv, CLI: _cli_argv}


def _quiet(primary: RedisServer) -> None:
    """Wait until the last transfer is over: no replica connected, no fork child running."""

    def idle() -> bool:
        repl = primary.info("replication")
        persistence = primary.info("persistence")
        return repl.get("connected_slaves") == "0" and persistence.get("rdb_bgsave_in_progress") == "0"

    wait_until(idle, timeout=120, interval=0.02, message="primary idle after a snapshot")


def _take(primary: RedisServer, workdir: Path, name: str, argv: Argv) -> tuple[Finished, int]:
    """One snapshot by one contender; returns its run and the size of the RDB it wrote."""
    _quiet(primary)
    out = workdir / "dump.rdb"
    env = command_env(REDIS_HOST=primary.host, REDIS_PORT=str(primary.port), LOG_LEVEL="warning")
    log = workdir / f"{name.split()[0]}.log"
    done = run_measured(argv(primary, out), log, env=env).check()
    size = out.stat().st_size
    out.unlink()
    return done, size


def _bench_size(lab: Lab, settings: Settings, size: Size, section: Section) -> None:
    primary = lab.primary()
    runs: dict[str, list[Finished]] = {name: [] for name in CONTENDERS}
    rdb_bytes = 0
    try:
        plan = populate(primary, size.bytes)
        workdir = lab.subdir(f"snapshot-{size.label}")
        _take(primary, workdir, CLI, _cli_argv)  # warm-up, not counted: the first fork after loading is slower
        for _ in range(settings.rounds):
            for name, argv in CONTENDERS.items():
                done, rdb_bytes = _take(primary, workdir, name, argv)
                runs[name].append(done)
    finally:
        primary.stop()
    section.metrics += _metrics(size.label, runs[SERVICE], runs[CLI])
    section.details[size.label] = {"rdb_bytes": rdb_bytes, "keys": plan.keys, "dataset": asdict(plan)}


def _metrics(label: str, ours: list[Finished], cli: list[Finished]) -> list[Metric]:
    def compare(name: str, unit: str, value: Callable[[Finished], float], target: Target | None) -> Metric:
        return Metric(f"{name}, {label}", unit, SERVICE, [value(r) for r in ours], CLI, [value(r) for r in cli], target)

    return [
        compare("wall time", "s", lambda r: r.wall, Target("ratio", "<=", WALL_RATIO)),
        compare("peak RSS", "MiB", lambda r: r.max_rss / MIB, Target("a", "<", RSS_LIMIT_MIB)),
        compare("client CPU", "s", lambda r: r.cpu, Target("ratio", "<=", CPU_RATIO)),
    ]


def run(lab: Lab, settings: Settings) -> list[Section]:
    section = Section("snapshot", rounds=settings.rounds)
    for size in settings.snapshot_sizes:
        problem = room_for(size.bytes, lab.root, disk_factor=2.0)
        if problem is not None:
            section.details[size.label] = {"skipped": problem}
            print(f"snapshot {size.label}: skipped: {problem}", flush=True)
            continue
        _bench_size(lab, settings, size, section)
    if not section.metrics:
        section.skipped = "no dataset size fits this machine: " + "; ".join(
            str(d.get("skipped")) for d in section.details.values()
        )
    return [section]
