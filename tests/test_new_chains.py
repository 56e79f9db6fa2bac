"""New chains on a schedule and on request (SNAPSHOT_INTERVAL_HOURS, SIGUSR1, snapshot-now): a snapshot on a
second connection while the stream goes on, and every second across each switch restorable exactly.

Ground truth: a writer writes only in the first half of each second (several databases, a hash, a big
value now and then) and records the primary's DEBUG DIGEST and keyspace in the quiet second half: that is
the state at the end of that second, which a restore --at that second must give.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.chains import chain_dirs, read_meta
from tests.support.faults import per_db, start_service
from tests.support.s3server import s3_env
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, run_cli, service_env

pytestmark = pytest.mark.slow
DBS = (0, 1, 3, 7)


class SecondWriter:
    """Writes in [s+0.05, s+0.45) of each second s, then records (digest, keyspace) of s at s+0.6."""

    def __init__(self, primary: RedisServer) -> None:
        self.primary = primary
        self.clients = {db: primary.client(db) for db in DBS}
        self.states: dict[int, tuple[str, dict[int, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            n = 0
            while not self._stop.is_set():
                second = int(time.time())
                self._wait_for(second + 0.05)
                while time.time() < second + 0.45:
                    db = DBS[n % len(DBS)]
                    c = self.clients[db]
                    c.incr("ctr")
                    c.hset(f"h:{n % 50}", str(n), n)
                    if n % 97 == 0:
                        c.set(f"big:{n % 3}", b"v" * (256 << 10))
                    n += 1
                    time.sleep(0.005)
                self._wait_for(second + 0.6)
                if int(time.time()) == second:  # a loaded machine may have run past the second: no record
                    state = (self.primary.digest(), self.primary.keyspace())
                    if int(time.time()) == second:
                        self.states[second] = state
                self._wait_for(second + 1.0)
        except BaseException as e:  # reported by the test
            self.error = e

    def _wait_for(self, t: float) -> None:
        while not self._stop.is_set() and time.time() < t:
            time.sleep(min(0.01, max(t - time.time(), 0)))

    def __enter__(self) -> SecondWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def listing(bk: Path) -> dict[str, Any]:
    r = run_cli(["list", "--json"], {"BACKUP_DIR": str(bk)})
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def restore_at(redis_factory: RedisFactory, bk: Path, out: Path, second: int | None) -> RedisServer:
    args = ["restore", "--to", str(out)] + ([] if second is None else ["--at", str(second)])
    r = run_cli(args, {"BACKUP_DIR": str(bk)}, timeout=180)
    assert r.returncode == 0, f"restore --at {second}: {r.stderr}"
    return redis_factory.load_aof_dir(out, strict=True)


def check_second(redis_factory: RedisFactory, env: dict[str, str], out: Path, second: int,
                 state: tuple[str, dict[int, int]], *source: str) -> bool:
    """A second the backup offers restores the primary's state of that second (True); one it refuses must
    be refused as inside a gap in capture (a loaded machine makes those: False). Never wrong data."""
    r = run_cli(["restore", *source, "--to", str(out), "--at", str(second)], env, timeout=180)
    if r.returncode != 0:
        assert "inside a gap in capture" in r.stderr, f"restore --at {second}: {r.stderr}"
        return False
    restored = redis_factory.load_aof_dir(out, strict=True)
    assert (restored.digest(), restored.keyspace()) == state, f"restore --at {second}: not that second's data"
    restored.stop()
    return True


def switches_covered(cat: dict[str, Any]) -> None:
    """The second each superseded chain ended in is restorable from another chain, or inside a gap in
    capture that is not the switch's own (the service fell behind on a loaded machine): never lost to it."""
    windows = [(w["from_unix"], w["to_unix"]) for w in cat["window"]]
    other_gaps = [(g["from_unix"], g["to_unix"]) for c in cat["chains"] for g in c["gaps"] if g["reason"] != "ended"]
    for c in cat["chains"][:-1]:
        for g in (g for g in c["gaps"] if g["reason"] == "ended"):
            second = g["from_unix"]
            assert any(lo <= second <= hi for lo, hi in windows + other_gaps), (c["chain"], second, cat["window"])


def confirmed_past(bk: Path, second: int) -> bool:
    """The newest chain vouches for every second up to `second` (its verified_until is later)."""
    chains = chain_dirs(bk)
    return bool(chains) and (read_meta(chains[-1]).get("verified_until") or 0) > second + 1


def test_scheduled_chains_leave_no_second_unrestorable(
    redis_factory: RedisFactory, primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    primary.client().function_load(
        "#!lua name=lib\nredis.register_function('hello', function() return 'hi' end)"
    )  # a Function is in every snapshot too
    # a new chain about every 4.3 s; the default tolerance (0.25 s) is within the writer's quiet 0.6 s, so
    # every second the backup offers must be that second's state
    svc = start_service(service_factory, primary, tmp_backup_dir, SNAPSHOT_INTERVAL_HOURS=0.0012,
                        SEGMENT_MAX_SECONDS=1.5, LAG_TOLERANCE_SECONDS=0.25)  # fmt: skip
    with SecondWriter(primary) as writer:
        wait_until(lambda: len(chain_dirs(tmp_backup_dir)) >= 4, timeout=120, message="4 chains")
    assert writer.error is None, writer.error
    last = max(writer.states)
    wait_until(lambda: confirmed_past(tmp_backup_dir, last), timeout=30, message=f"second {last} confirmed")
    assert svc.alive(), svc.stderr_text()[-3000:]

    cat = listing(tmp_backup_dir)
    chains = cat["chains"]
    assert len(chains) >= 4 and [c["state"] for c in chains][:-1] == ["closed"] * (len(chains) - 1)
    switches_covered(cat)  # one window across every switch (on a quiet machine: len(cat["window"]) == 1)

    checks: set[int] = set()
    for prev, c in itertools.pairwise(chains):
        first, end = c["first_second_unix"], prev["last_second_unix"]
        checks |= {first - 1, first, first + 1, end - 1, end, end + 1}
    checks &= set(writer.states)
    assert len(checks) >= 6, (checks, sorted(writer.states))
    env = {"BACKUP_DIR": str(tmp_backup_dir)}
    offered = [check_second(redis_factory, env, tmp_path / f"at-{i}", s, writer.states[s])
               for i, s in enumerate(sorted(checks))]  # fmt: skip
    assert any(offered), "no second around a switch was restorable"
    latest = restore_at(redis_factory, tmp_backup_dir, tmp_path / "latest", None)
    assert latest.digest() == primary.digest()
    assert per_db(latest) == per_db(primary)
    assert latest.client().fcall("hello", 0) == b"hi"


def test_snapshot_now_and_sigusr1_begin_a_chain(
    redis_factory: RedisFactory, primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    for db in DBS:
        primary.client(db).set("k", db)
    svc = start_service(service_factory, primary, tmp_backup_dir, SNAPSHOT_INTERVAL_HOURS=0)
    r = run_cli(["snapshot-now", "--wait", "--timeout", "50", "--json"], {"BACKUP_DIR": str(tmp_backup_dir)})
    assert r.returncode == 0, r.stderr + svc.stderr_text()[-3000:]
    second = json.loads(r.stdout)["chain"]
    assert second == chain_dirs(tmp_backup_dir)[-1].name and len(chain_dirs(tmp_backup_dir)) == 2
    primary.client(3).set("after", "snapshot-now")
    svc.signal(signal.SIGUSR1)
    wait_until(lambda: len(chain_dirs(tmp_backup_dir)) == 3, timeout=60, message="a chain after SIGUSR1")
    primary.client(7).set("after", "sigusr1")
    now = int(time.time())
    wait_until(lambda: confirmed_past(tmp_backup_dir, now), timeout=30, message="caught up")
    first, *_ = chain_dirs(tmp_backup_dir)
    assert read_meta(first)["closed"] and read_meta(chain_dirs(tmp_backup_dir)[1])["closed"]
    latest = restore_at(redis_factory, tmp_backup_dir, tmp_path / "latest", None)
    assert per_db(latest) == per_db(primary)


def test_snapshot_now_without_a_service_says_so(tmp_backup_dir: Path) -> None:
    r = run_cli(["snapshot-now"], {"BACKUP_DIR": str(tmp_backup_dir)})
    assert r.returncode != 0
    assert "no redis-backup service runs on BACKUP_DIR" in r.stderr and "Traceback" not in r.stderr


def test_kill9_around_each_switch_leaves_a_backup_that_restores(
    redis_factory: RedisFactory, primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    """kill -9 at moments spread over a switch (snapshot on the second connection, prepare, handover):
    the next start closes what a newer chain supersedes, no partial is left listed, and the latest state
    restores exactly, db by db."""
    env = {"SNAPSHOT_INTERVAL_HOURS": 0.0004, "SEGMENT_MAX_SECONDS": 0.5}  # a switch about every 1.5 s
    stop = threading.Event()

    def write() -> None:
        clients = [primary.client(db) for db in DBS]
        n = 0
        while not stop.is_set():
            clients[n % len(DBS)].incr(f"c:{n % 20}")
            n += 1
            time.sleep(0.002)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        for delay in (0.0, 0.05, 0.15, 0.3, 0.6, 1.0):
            svc = service_factory(service_env(primary, tmp_backup_dir, **env))  # under writes: never "caught up"
            svc.wait_for_output(r"new chain: snapshot on a second connection", timeout=60)
            time.sleep(delay)  # the moment of the crash, not a wait for a condition
            svc.kill9()
    finally:
        stop.set()
        writer.join(timeout=10)
    svc = start_service(service_factory, primary, tmp_backup_dir, SNAPSHOT_INTERVAL_HOURS=0)
    now = int(time.time())
    wait_until(lambda: confirmed_past(tmp_backup_dir, now), timeout=30, message="caught up")
    chains = chain_dirs(tmp_backup_dir)
    assert [read_meta(c)["closed"] for c in chains] == [True] * (len(chains) - 1) + [False]
    r = run_cli(["verify"], {"BACKUP_DIR": str(tmp_backup_dir)}, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    latest = restore_at(redis_factory, tmp_backup_dir, tmp_path / "latest", None)
    assert latest.digest() == primary.digest()
    assert per_db(latest) == per_db(primary)
    svc.stop()


def test_a_switch_after_an_idle_while_keeps_one_window(
    redis_factory: RedisFactory, primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    """The old chain's window ends at its last command; the new one must begin there, not at the request,
    or the idle seconds between would be lost."""
    svc = start_service(service_factory, primary, tmp_backup_dir, SNAPSHOT_INTERVAL_HOURS=0)
    primary.client(2).set("before", "idle")
    written = int(time.time())
    wait_until(lambda: int(time.time()) >= written + 3, timeout=10, message="three idle seconds")
    r = run_cli(["snapshot-now", "--wait", "--timeout", "50"], {"BACKUP_DIR": str(tmp_backup_dir)})
    assert r.returncode == 0, r.stderr + svc.stderr_text()[-3000:]
    primary.client(5).set("after", "switch")
    now = int(time.time())
    wait_until(lambda: confirmed_past(tmp_backup_dir, now), timeout=30, message="caught up")
    cat = listing(tmp_backup_dir)
    assert len(cat["chains"]) == 2 and len(cat["window"]) == 1, cat
    assert cat["chains"][1]["first_second_unix"] <= written  # the second of the last command before it
    for i, second in enumerate(range(written, written + 3)):  # the idle seconds, each from either chain
        restored = restore_at(redis_factory, tmp_backup_dir, tmp_path / f"idle-{i}", second)
        assert per_db(restored) == {2: {b"before": restored.client(2).dump("before")}}
        restored.stop()


def test_successor_chains_reach_the_bucket_and_restore_from_it_alone(
    redis_factory: RedisFactory, primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path,
    tmp_path: Path, s3_endpoint: str, s3_bucket: str,
) -> None:
    """A successor's linked files and its copied first file are uploaded like any; the bucket alone lists
    one window and restores the seconds across a switch and the latest state, db by db."""
    bucket = {**s3_env(s3_endpoint), "S3_BUCKET": s3_bucket, "S3_PREFIX": "bk/"}
    svc = start_service(service_factory, primary, tmp_backup_dir, SNAPSHOT_INTERVAL_HOURS=0.0008,
                        SEGMENT_MAX_SECONDS=1, S3_SYNC_SECONDS=1, LAG_TOLERANCE_SECONDS=0.25, **bucket)  # fmt: skip
    with SecondWriter(primary) as writer:
        wait_until(lambda: len(chain_dirs(tmp_backup_dir)) >= 3, timeout=120, message="3 chains")
    assert writer.error is None, writer.error
    last = max(writer.states)
    env = {**bucket, "BACKUP_DIR": str(tmp_backup_dir)}

    def bucket_listing() -> dict[str, Any] | None:
        r = run_cli(["list", "--source", "s3", "--json"], env)
        doc = json.loads(r.stdout) if r.returncode == 0 else None
        done = doc and len(doc["chains"]) >= 3 and doc["window"] and doc["window"][-1]["to_unix"] >= last
        return doc if done else None

    cat = wait_until(bucket_listing, timeout=60, message="the bucket holds the chains up to the last second")
    switches_covered(cat)
    svc.stop()
    second = cat["chains"][1]["first_second_unix"]
    checks = sorted(s for s in writer.states if second - 1 <= s <= second + 1 or s == last)
    assert checks
    offered = [check_second(redis_factory, env, tmp_path / f"s3-{i}", s, writer.states[s], "--source", "s3")
               for i, s in enumerate(checks)]  # fmt: skip
    assert any(offered), "no second around a switch was restorable from the bucket"


def test_max_files_2_keeps_the_newest_two_of_five_scheduled_chains_locally_and_in_the_bucket(
    redis_factory: RedisFactory, primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path,
    tmp_path: Path, s3_endpoint: str, s3_bucket: str,
) -> None:
    """Five chains from the schedule under writes, BACKUP_MAX_FILES=2: the newest two remain in both places
    (the prune after each new chain, and the one at the next start), and both restore the primary."""
    bucket = {**s3_env(s3_endpoint), "S3_BUCKET": s3_bucket, "S3_PREFIX": "bk/"}
    env = {**bucket, "BACKUP_MAX_FILES": 2, "S3_SYNC_SECONDS": 1, "SEGMENT_MAX_SECONDS": 1}
    svc = start_service(service_factory, primary, tmp_backup_dir, SNAPSHOT_INTERVAL_HOURS=0.0005, **env)
    with SecondWriter(primary) as writer:
        svc.wait_for_output(r"(?s)(new chain begun without a gap.*){4}", timeout=120)  # five chains in all
    assert writer.error is None, writer.error
    made = [m for m in svc.stderr_text().split("\n") if "new chain begun without a gap" in m]
    assert svc.stop() == 0
    assert "retention deletes a chain" in svc.stderr_text()  # while running, after the new chains
    svc = start_service(service_factory, primary, tmp_backup_dir, SNAPSHOT_INTERVAL_HOURS=0, **env)
    newest = [p.name for p in chain_dirs(tmp_backup_dir)][-2:]
    assert len(made) >= 4 and newest[-1] in made[-1]
    cli = {**bucket, "BACKUP_DIR": str(tmp_backup_dir)}

    def both_places() -> bool:
        local = [p.name for p in chain_dirs(tmp_backup_dir)]
        r = run_cli(["list", "--source", "s3", "--json"], cli)
        remote = [c["chain"] for c in json.loads(r.stdout)["chains"]] if r.returncode == 0 else None
        return local == newest and remote == newest

    wait_until(both_places, timeout=60, interval=0.2, message=f"only {newest} locally and in the bucket")
    now = int(time.time())
    wait_until(lambda: confirmed_past(tmp_backup_dir, now), timeout=30, message="caught up")
    latest = restore_at(redis_factory, tmp_backup_dir, tmp_path / "latest", None)
    assert per_db(latest) == per_db(primary) and latest.digest() == primary.digest()
    offset = primary.master_repl_offset()

    def bucket_caught_up() -> bool:
        r = run_cli(["list", "--source", "s3", "--json"], cli)
        return r.returncode == 0 and json.loads(r.stdout)["chains"][-1]["end_offset"] >= offset

    wait_until(bucket_caught_up, timeout=60, interval=0.2, message="the bucket catches up")
    out = tmp_path / "from-s3"
    r = run_cli(["restore", "--source", "s3", "--to", str(out)], cli, timeout=180)
    assert r.returncode == 0, r.stderr
    assert redis_factory.load_aof_dir(out, strict=True).digest() == primary.digest()


def test_the_latest_restores_after_a_switch_in_the_first_second(
    redis_factory: RedisFactory, primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    """A new chain whose first second is the old chain's: it must still sort as the newer one, or a
    restore of the latest state takes the closed chain and leaves out everything since the switch."""
    start_service(service_factory, primary, tmp_backup_dir, SNAPSHOT_INTERVAL_HOURS=0)
    r = run_cli(["snapshot-now", "--wait", "--timeout", "50"], {"BACKUP_DIR": str(tmp_backup_dir)})
    assert r.returncode == 0, r.stderr
    primary.client(1).set("after", "the switch")
    now = int(time.time())
    wait_until(lambda: confirmed_past(tmp_backup_dir, now), timeout=30, message="caught up")
    assert [c["state"] for c in listing(tmp_backup_dir)["chains"]] == ["closed", "open"]
    latest = restore_at(redis_factory, tmp_backup_dir, tmp_path / "latest", None)
    assert per_db(latest) == per_db(primary)


@pytest.mark.parametrize(("prev", "at", "named"), [
    ("20261202T185726Z-389fd4d2-9990", 1796237846.5, 1796237847.0),  # its second: "…-10020" < "…-9990"
    ("20261202T185726Z-389fd4d2-9990", 1796237845.5, 1796237847.0),  # a clock that went back
    ("20261202T185726Z-389fd4d2-9990", 1796237900.2, 1796237900.2),  # later: the time itself
    (None, 1796237846.5, 1796237846.5),  # the first chain
])  # fmt: skip
def test_a_new_chain_id_sorts_after_the_newest_one(prev: str | None, at: float, named: float) -> None:
    from redis_backup.chain import naming

    assert naming.name_after(prev, at) == named
    assert prev is None or naming.chain_id(named, "389fd4d2de451bb7", 10020) > prev
