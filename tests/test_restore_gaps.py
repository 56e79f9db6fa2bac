"""Point in time across gaps in capture: the commands the primary executed while the service was not
receiving (stopped, or a snapshot being transferred) arrive later, stamped when they arrived. Seconds
inside such a gap are refused, never silently restored from before the gap."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.chains import chain_dirs, read_meta
from tests.support.faults import CAUGHT_UP, per_db, start_service
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, cli, ok, service_env

pytestmark = pytest.mark.slow


def later_second(after: float) -> int:
    """Wait (polling the clock) until a later unix second has begun; returns it."""
    return int(wait_until(lambda: int(time.time()) > int(after) and int(time.time()), timeout=3, interval=0.005))


def gaps(backup_dir: Path, reason: str) -> list[dict[str, Any]]:
    """The chain's gaps of one kind (a snapshot's own gap may come first, on a busy machine)."""
    meta = read_meta(chain_dirs(backup_dir)[0])
    return [g for g in meta["gaps"] if g["reason"] == reason]


def restored(redis_factory: RedisFactory, out: Path) -> dict[int, dict[bytes, bytes]]:
    return per_db(redis_factory.load_aof_dir(out, strict=True))


def test_a_second_inside_a_stop_of_the_service_is_refused(
    primary: RedisServer, service_factory: ServiceFactory, redis_factory: RedisFactory, tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    bk = tmp_backup_dir
    svc = start_service(service_factory, primary, bk)
    c0, c3 = primary.client(0), primary.client(3)
    later_second(time.time())  # past the snapshot's second
    c0.set("a", "before the gap")
    c3.set("a3", "before the gap")
    state_a = per_db(primary)
    # the second the service last received something in is not exact (what came after it in that
    # second arrives after the restart): the exact seconds before the gap end before it
    later_second(time.time())
    c0.set("m", "in the last second received")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.stop() == 0
    t_stop = time.time()
    t_b = later_second(t_stop)
    c0.set("b", "during the gap")  # executed at t_b; the service receives it only after the restart
    c3.delete("a3")
    state_b = per_db(primary)
    later_second(t_b)
    svc = start_service(service_factory, primary, bk)
    wait_until(lambda: (g := gaps(bk, "reconnected")) and g[-1]["to_second"] is not None, timeout=CAUGHT_UP,
               message="the gap is recorded and caught up with")  # fmt: skip
    (gap,) = gaps(bk, "reconnected")
    assert gap["from_second"] <= int(t_stop) and gap["to_second"] > t_b
    first_after = gap["to_second"]

    # inside the gap: refused in one line naming the gap and the nearest exact seconds
    r = cli(bk, "restore", "--to", str(tmp_path / "in-gap"), "--at", str(t_b))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "inside a gap in capture" in r.stderr and "nearest exact seconds" in r.stderr, r.stderr
    assert not (tmp_path / "in-gap").exists()
    # --before-gap takes the last exact second before it: the state before the stop
    r = ok(cli(bk, "restore", "--to", str(tmp_path / "before"), "--at", str(t_b), "--before-gap"))
    assert restored(redis_factory, tmp_path / "before") == state_a
    # the first second after the gap is exact: everything executed meanwhile is in
    later_second(first_after)
    c0.set("c", "after the gap")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    wait_until(lambda: any(w["from_unix"] <= first_after <= w["to_unix"]
                           for w in json.loads(ok(cli(bk, "list", "--json")).stdout)["window"]),
               timeout=30, message="the first second after the gap is confirmed")  # fmt: skip
    ok(cli(bk, "restore", "--to", str(tmp_path / "after"), "--at", str(first_after)))
    assert restored(redis_factory, tmp_path / "after") == state_b
    # list shows the window split by the gap, and names it
    listed = json.loads(ok(cli(bk, "list", "--json")).stdout)
    spans = [(w["from_unix"], w["to_unix"]) for w in listed["window"]]
    assert spans[-2][1] == gap["from_second"] - 1 and spans[-1][0] == first_after, spans
    assert listed["chains"][0]["gaps"][-1]["to_unix"] == first_after - 1
    assert "gap in capture" in ok(cli(bk, "list")).stdout
    ok(cli(bk, "verify"))


def test_a_second_while_the_snapshot_was_transferred_is_refused(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, tmp_path: Path
) -> None:
    # 2000 keys at 1 ms each: the snapshot takes about two seconds to transfer, during which the
    # primary keeps executing commands that reach the service only after it
    primary = redis_factory(extra_args=["--rdb-key-save-delay", "1000"])
    primary.execute("DEBUG", "POPULATE", 2000, "k", 10)
    svc = service_factory(service_env(primary, tmp_backup_dir))
    def transferring() -> bool:
        return primary.info("persistence")["rdb_bgsave_in_progress"] == "1"

    wait_until(transferring, timeout=30, message="the snapshot transfer has begun")
    t_x = later_second(time.time())
    primary.client().set("x", "written during the transfer")
    assert transferring(), "the transfer ended too early for the test"
    wait_until(lambda: chain_dirs(tmp_backup_dir), timeout=60, message="the chain")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    wait_until(lambda: (g := gaps(tmp_backup_dir, "snapshot")) and g[-1]["to_second"] is not None,
               timeout=CAUGHT_UP, message="the snapshot's gap is caught up with")  # fmt: skip
    (gap,) = gaps(tmp_backup_dir, "snapshot")
    assert gap["from_second"] < t_x < gap["to_second"], (gap, t_x)
    r = cli(tmp_backup_dir, "restore", "--to", str(tmp_path / "x"), "--at", str(t_x))
    assert r.returncode == 1 and "snapshot was being transferred" in r.stderr, r.stderr
    ok(cli(tmp_backup_dir, "restore", "--to", str(tmp_path / "latest")))
    assert restored(redis_factory, tmp_path / "latest") == per_db(primary)
    assert svc.alive()


def test_without_info_no_second_is_offered(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, tmp_path: Path
) -> None:
    """A least-privilege user without +info: the service cannot tell whether it keeps up, so it says so
    (an open gap) rather than offer seconds it cannot vouch for; the latest state still restores."""
    primary = redis_factory(
        acl_users=["admin on >adminpw ~* &* +@all", "backup on >backuppw -@all +psync +replconf +ping"],
        admin_username="admin", admin_password="adminpw",
    )  # fmt: skip
    svc = start_service(service_factory, primary, tmp_backup_dir, REDIS_USERNAME="backup", REDIS_PASSWORD="backuppw")
    primary.client().set("k", "v")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    svc.wait_for_output("the primary.s offset cannot be asked", timeout=CAUGHT_UP)
    wait_until(lambda: gaps(tmp_backup_dir, "unverified"), timeout=CAUGHT_UP, message="an unverified gap")
    later_second(time.time())
    r = cli(tmp_backup_dir, "restore", "--to", str(tmp_path / "at"), "--at", str(int(time.time()) - 1))
    assert r.returncode == 1 and "grant +info to the backup user" in r.stderr, r.stderr
    listed = ok(cli(tmp_backup_dir, "list")).stdout
    assert "not verified: no +info" in listed, listed
    ok(cli(tmp_backup_dir, "restore", "--to", str(tmp_path / "latest")))
    assert restored(redis_factory, tmp_path / "latest") == per_db(primary)
