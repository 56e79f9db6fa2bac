"""4. Restore: `redis-backup restore --format aof|rdb` against redis-server loading the chain directly.

A chain is built once (a snapshot of the dataset, then the redis-benchmark load until the stream is as
large as asked). Each round then times, on the page-cache-warm chain:
- redis-server --appendonly yes started on a copy of the chain directory, until it has loaded it
  (the copy is not timed);
- `restore --to DIR --format aof`, and redis-server loading its output;
- `restore --to DIR --format rdb`, and redis-server loading the RDB.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.support.servers import RedisServer

from .datasets import populate
from .lab import SERVICE, STARTUP_TIMEOUT, Lab, attach, command_env, service_command
from .load import run_load
from .measure import Stopwatch, run_measured
from .report import Metric, Section, Skip, Target
from .settings import Settings, room_for

DIRECT = "redis-server loads the chain"
RATIO_LIMIT = 1.2
FIRST_LOAD_REQUESTS = 60_000
CATCH_UP_TIMEOUT = 600.0
# redis-benchmark's fixed keys (LPUSH, SADD, HSET, ZADD) and the first key of each dataset kind.
FINGERPRINT_KEYS = ("mylist", "myset", "myhash", "myzset", "key:0", "string:0", "hash:0", "list:0", "set:0", "zset:0")


def check_available() -> None:
    """Skip unless `redis-backup restore --help` works (the command is still being written)."""
    proc = subprocess.run(
        service_command("restore", "--help"), env=command_env(), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise Skip(f"restore unavailable ({lines[-1] if lines else f'exit status {proc.returncode}'})")


# ------------------------------------------------------------------------------------------ the chain


def _write_stream(primary: RedisServer, size: int, workdir: Path) -> int:
    """Run the load until at least ``size`` bytes of replication stream were produced (a few % more)."""
    start = primary.master_repl_offset()
    sent = 0
    while (written := primary.master_repl_offset() - start) < size:
        requests = FIRST_LOAD_REQUESTS
        if sent and written:
            requests = max(requests, int((size - written) / (written / sent) * 1.03))
        run_load(primary, requests, workdir / "redis-benchmark.csv")
        sent += requests
    return written


@dataclass(frozen=True)
class Built:
    fingerprint: str  # of the primary once the backup had acknowledged everything
    base_bytes: int
    incr_bytes: int
    incr_files: int
    stream_bytes: int


def build_chain(lab: Lab, settings: Settings) -> tuple[Path, Built]:
    """A backup with one chain: about restore_snapshot bytes of RDB plus restore_stream of commands."""
    primary = lab.primary()
    try:
        populate(primary, settings.restore_snapshot.bytes)
        with attach(lab, SERVICE, primary) as rep:
            stream = _write_stream(primary, settings.restore_stream.bytes, rep.dir)
            primary.wait_replicas_caught_up(timeout=CATCH_UP_TIMEOUT)
            found = fingerprint(primary)
    finally:
        primary.stop()
    chains = [p for p in rep.dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(chains) != 1:
        raise RuntimeError(f"expected one chain in {rep.dir}, found {sorted(p.name for p in chains)}")
    chain = chains[0]
    files = sorted(chain.iterdir())
    incr = [f.stat().st_size for f in files if f.name.endswith(".aof")]
    base = sum(f.stat().st_size for f in files if f.name.endswith(".rdb"))
    return chain, Built(found, base, sum(incr), len(incr), stream)


# ------------------------------------------------------------------------------------------ timings


def fingerprint(server: RedisServer) -> str:
    """Key counts per db and the fingerprints of the keys the load writes to and of a few dataset keys.

    (DEBUG DIGEST of the whole dataset would be exact but takes longer than the loads it checks.)
    """
    values = server.execute("DEBUG", "DIGEST-VALUE", *FINGERPRINT_KEYS)
    digest = hashlib.sha1(b",".join(v if isinstance(v, bytes) else str(v).encode() for v in values))
    return f"keys {server.keyspace()}, digest-values {digest.hexdigest()[:16]}"


def _load(server: RedisServer) -> tuple[float, str]:
    """Start ``server`` on the files already in its dir: seconds until loaded, and its fingerprint."""
    clock = Stopwatch()
    server.start()
    seconds = clock.elapsed()
    found = fingerprint(server)
    server.stop()
    return seconds, found


def _server(lab: Lab, *, aof_dir: str | None) -> RedisServer:
    extra = ["--appenddirname", aof_dir] if aof_dir else []
    return lab.redis(start=False, appendonly=aof_dir is not None, extra_args=extra, startup_timeout=STARTUP_TIMEOUT)


def direct_load(lab: Lab, chain: Path) -> tuple[float, str]:
    server = _server(lab, aof_dir=chain.name)
    try:
        shutil.copytree(chain, server.dir / chain.name)
        return _load(server)
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


def restore_then_load(lab: Lab, chain: Path, fmt: str) -> tuple[float, float, str]:
    """(restore seconds, load seconds, fingerprint): `restore --to` an empty server dir, then start it."""
    server = _server(lab, aof_dir="appendonlydir" if fmt == "aof" else None)
    try:
        argv = service_command(
            "restore", "--to", str(server.dir), "--format", fmt, "--backup-dir", str(chain.parent),
        )  # fmt: skip
        done = run_measured(argv, server.dir.parent / f"restore-{fmt}.log", env=command_env(LOG_LEVEL="warning"))
        if done.returncode != 0:
            raise Skip(f"restore unavailable (restore --format {fmt} failed: {done.tail()})")
        load_seconds, found = _load(server)
        return done.wall, load_seconds, found
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ section


def _metrics(times: dict[str, list[float]]) -> list[Metric]:
    def vs_direct(name: str, key: str, target: Target | None) -> Metric:
        return Metric(name, "s", key, times[key], DIRECT, times[DIRECT], target)

    limit = Target("ratio", "<=", RATIO_LIMIT)
    return [
        vs_direct("restore --format aof", "restore aof", limit),
        vs_direct("restore --format rdb", "restore rdb", limit),
        vs_direct("restore aof, then redis-server loads it", "restore aof + load", limit),
        vs_direct("restore rdb, then redis-server loads it", "restore rdb + load", limit),
    ]


def _rounds(lab: Lab, settings: Settings, chain: Path) -> tuple[dict[str, list[float]], dict[str, set[str]]]:
    """Per round: the direct load, then restore aof, then restore rdb; times, and the fingerprints."""
    times: dict[str, list[float]] = {DIRECT: []}
    fingerprints: dict[str, set[str]] = {DIRECT: set(), "restore aof": set(), "restore rdb": set()}
    for _ in range(settings.rounds):
        seconds, found = direct_load(lab, chain)
        times[DIRECT].append(seconds)
        fingerprints[DIRECT].add(found)
        for fmt in ("aof", "rdb"):
            restore, load, found = restore_then_load(lab, chain, fmt)
            times.setdefault(f"restore {fmt}", []).append(restore)
            times.setdefault(f"restore {fmt} + load", []).append(restore + load)
            fingerprints[f"restore {fmt}"].add(found)
    return times, fingerprints


def run(lab: Lab, settings: Settings) -> list[Section]:
    check_available()
    total = settings.restore_snapshot.bytes + settings.restore_stream.bytes
    problem = room_for(total, lab.root, disk_factor=5.0)
    if problem is not None:
        raise Skip(problem)
    clock = Stopwatch()
    chain, built = build_chain(lab, settings)
    build_seconds = clock.elapsed()
    times, fingerprints = _rounds(lab, settings, chain)
    section = Section("restore", rounds=settings.rounds)
    section.metrics += _metrics(times)
    wrong = sorted(name for name, seen in fingerprints.items() if seen != {built.fingerprint})
    if wrong:
        section.metrics[0].note = f"DATA MISMATCH: {', '.join(wrong)} loaded another dataset than the primary's"
    section.details = {
        "chain": {**asdict(built), "snapshot_asked": settings.restore_snapshot.label,
                  "stream_asked": settings.restore_stream.label, "build_seconds": round(build_seconds, 1)},
        "data_matches_primary": not wrong,
        "rounds": times,
    }  # fmt: skip
    return [section]
