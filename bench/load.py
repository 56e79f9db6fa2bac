"""A sustained write load on a primary: redis-benchmark, pipelined, several command types."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import RedisServer

from .measure import run_measured

REDIS_BENCHMARK = shutil.which("redis-benchmark") or "redis-benchmark"
TESTS = ("set", "lpush", "hset", "incr", "sadd", "zadd")
PIPELINE = 16
CLIENTS = 50
VALUE_SIZE = 100
KEYSPACE = 100_000


@dataclass(frozen=True)
class Load:
    requests: int
    wall: float  # seconds, the whole redis-benchmark run
    rps: float  # requests per second over all tests (total requests / sum of each test's duration)
    per_test: dict[str, float]  # test name -> requests per second, as redis-benchmark reports it


def benchmark_argv(server: RedisServer, per_test: int, tests: tuple[str, ...] = TESTS) -> list[str]:
    return [
        REDIS_BENCHMARK,
        "-h", server.host, "-p", str(server.port),
        "-c", str(CLIENTS), "-P", str(PIPELINE), "-d", str(VALUE_SIZE), "-r", str(KEYSPACE),
        "-n", str(per_test), "-t", ",".join(tests), "--csv",
    ]  # fmt: skip


def parse_csv(text: str) -> dict[str, float]:
    rows = csv.DictReader(line for line in text.splitlines() if line.startswith('"'))
    return {row["test"]: float(row["rps"]) for row in rows}


def run_load(server: RedisServer, requests: int, output: Path, tests: tuple[str, ...] = TESTS) -> Load:
    """About ``requests`` requests in all, split evenly between the tests."""
    per_test = max(1, requests // len(tests))
    done = run_measured(benchmark_argv(server, per_test, tests), output).check()
    rates = parse_csv(output.read_text())
    if len(rates) != len(tests):
        raise RuntimeError(f"redis-benchmark reported {sorted(rates)}, expected {len(tests)} tests: {done.tail()}")
    seconds = sum(per_test / rps for rps in rates.values())
    total = per_test * len(tests)
    return Load(requests=total, wall=done.wall, rps=total / seconds, per_test=rates)
