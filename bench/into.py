"""6. Restore into a running server: `redis-backup restore --into URL` against `redis-cli --pipe`.

A chain is built once: a primary loaded with ``into_keys`` small strings (one in ten with a TTL) by
`redis-cli --pipe`, then redis-backup attached (so the keys are in its snapshot) and stopped once it has
acknowledged everything. Each round then times, each into a fresh, empty redis-server:
- `redis-backup restore --into redis://127.0.0.1:PORT`, end to end (plan, scratch server, copy);
- `redis-cli -p PORT --pipe` of the same keys as RESP (the file is written once, before the rounds).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support.servers import RedisServer

from .lab import SERVICE, STARTUP_TIMEOUT, Lab, attach, command_env, service_command
from .measure import Finished, Stopwatch, run_measured
from .report import Metric, Section, Target
from .restore import CATCH_UP_TIMEOUT, check_available
from .settings import Settings

INTO = "restore --into"
PIPE = "redis-cli --pipe"
RATIO_LIMIT = 3.0
TTL_EVERY = 10  # one key in ten has a TTL
TTL_SECONDS = 86_400
SAMPLE_KEYS = 16  # DEBUG DIGEST-VALUE of these many keys, spread over the dataset


def _key(i: int) -> bytes:
    return b"into:%d" % i


def _value(i: int) -> bytes:
    return b"v:%012d" % i


def commands(n: int) -> Iterator[bytes]:
    """The dataset as RESP: SET into:I v:I, with EX on one key in ten (in chunks of 10,000 commands)."""
    chunk: list[bytes] = []
    for i in range(n):
        k, v = _key(i), _value(i)
        if i % TTL_EVERY == 0:
            chunk.append(b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nEX\r\n$5\r\n%d\r\n"
                         % (len(k), k, len(v), v, TTL_SECONDS))  # fmt: skip
        else:
            chunk.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
        if len(chunk) == 10_000:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)


def write_commands(path: Path, n: int) -> int:
    with open(path, "wb") as f:
        for chunk in commands(n):
            f.write(chunk)
    return path.stat().st_size


def pipe_into(server: RedisServer, resp: Path, output: Path) -> Finished:
    """`redis-cli --pipe` of the file into server, timed like any measured command."""
    argv = ["redis-cli", "-h", server.host, "-p", str(server.port), "--pipe"]
    with open(resp, "rb") as stdin:
        return run_measured(argv, output, stdin=stdin)


def fingerprint(server: RedisServer, n: int) -> str:
    """Key count, how many keys have a TTL, and the values of a few keys spread over the dataset."""
    info = server.info("keyspace").get("db0", "")
    fields = dict(part.split("=", 1) for part in info.split(",")) if info else {}
    sample = [_key(i * n // SAMPLE_KEYS) for i in range(SAMPLE_KEYS)] if n else []
    values = server.execute("DEBUG", "DIGEST-VALUE", *sample) if sample else []
    digest = hashlib.sha1(b",".join(v if isinstance(v, bytes) else str(v).encode() for v in values))
    return f"keys {fields.get('keys', 0)}, expires {fields.get('expires', 0)}, values {digest.hexdigest()[:16]}"


def build_chain(lab: Lab, resp: Path, n: int) -> tuple[Path, str]:
    """A backup whose snapshot holds the dataset; the primary's fingerprint once it was acknowledged."""
    primary = lab.primary()
    try:
        done = pipe_into(primary, resp, resp.parent / "populate.log")
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --pipe into the primary failed: {done.tail()}")
        expected = fingerprint(primary, n)
        with attach(lab, SERVICE, primary) as rep:
            primary.wait_replicas_caught_up(timeout=CATCH_UP_TIMEOUT)
    finally:
        primary.stop()
    chains = [p for p in rep.dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(chains) != 1:
        raise RuntimeError(f"expected one chain in {rep.dir}, found {sorted(p.name for p in chains)}")
    return chains[0], expected


def _target(lab: Lab) -> RedisServer:
    return lab.redis(extra_args=["--appendonly", "no"], startup_timeout=STARTUP_TIMEOUT)


def restore_into(lab: Lab, chain: Path, n: int, workdir: Path) -> tuple[Finished, str]:
    target = _target(lab)
    try:
        url = f"redis://{target.host}:{target.port}"
        argv = service_command("restore", "--into", url, "--backup-dir", str(chain.parent))
        done = run_measured(argv, workdir / "restore-into.log", env=command_env(LOG_LEVEL="warning"))
        if done.returncode != 0:
            raise RuntimeError(f"restore --into failed: {done.tail()}")
        return done, fingerprint(target, n)
    finally:
        target.stop()


def pipe_round(lab: Lab, resp: Path, n: int, workdir: Path) -> tuple[Finished, str]:
    target = _target(lab)
    try:
        done = pipe_into(target, resp, workdir / "pipe.log")
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --pipe failed: {done.tail()}")
        return done, fingerprint(target, n)
    finally:
        target.stop()


def run(lab: Lab, settings: Settings) -> list[Section]:
    check_available()
    n = settings.into_keys
    workdir = lab.subdir("into")
    resp = workdir / "keys.resp"
    clock = Stopwatch()
    resp_bytes = write_commands(resp, n)
    chain, expected = build_chain(lab, resp, n)
    build_seconds = clock.elapsed()
    wall: dict[str, list[float]] = {INTO: [], PIPE: []}
    cpu: dict[str, list[float]] = {INTO: [], PIPE: []}
    seen: dict[str, set[str]] = {INTO: set(), PIPE: set()}
    for _ in range(settings.rounds):  # A B A B
        for name in (INTO, PIPE):
            done, found = restore_into(lab, chain, n, workdir) if name == INTO else pipe_round(lab, resp, n, workdir)
            wall[name].append(done.wall)
            cpu[name].append(done.cpu)
            seen[name].add(found)
    section = Section("into", rounds=settings.rounds)
    section.metrics += [
        Metric(f"{n} small keys into an empty server", "s", INTO, wall[INTO], PIPE, wall[PIPE],
               Target("ratio", "<=", RATIO_LIMIT)),
        Metric("client CPU (context)", "s", INTO, cpu[INTO], PIPE, cpu[PIPE]),
    ]  # fmt: skip
    wrong = sorted(name for name, found in seen.items() if found != {expected})
    if wrong:
        section.metrics[0].note = f"DATA MISMATCH: {', '.join(wrong)} gave another dataset than the primary's"
    section.details = {
        "keys": n,
        "resp_bytes": resp_bytes,
        "build_seconds": round(build_seconds, 1),
        "data_matches_primary": not wrong,
        "python": sys.version.split()[0],
        "rounds": {"wall": wall, "cpu": cpu},
    }
    return [section]
