"""restore against real redis-servers: chains written by the real service, checked with DEBUG DIGEST."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from redis_backup.chain import naming
from redis_backup.times import iso
from tests.support.chains import read_meta
from tests.support.fake_primary import FakePrimary, empty_rdb, fullresync_reply, resp_command
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, ServiceProcess, run_cli, service_env
from tests.support.workload import BackgroundWriter

pytestmark = pytest.mark.slow


def cli(backup_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), {"BACKUP_DIR": str(backup_dir)}, timeout=120)


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def chains(backup_dir: Path) -> list[str]:
    return sorted(p.name for p in backup_dir.iterdir() if naming.is_chain_id(p.name))


def start_backup(
    primary: RedisServer, service_factory: ServiceFactory, backup_dir: Path, **env: str | int
) -> ServiceProcess:
    svc = service_factory(service_env(primary, backup_dir, **env))
    primary.wait_replicas(1, timeout=20)
    return svc


def next_second(after: float) -> int:
    """Wait (polling the clock) until a later unix second has begun; returns it."""
    return int(wait_until(lambda: int(time.time()) > int(after) and int(time.time()), timeout=3, interval=0.005))


def wait_restorable(backup_dir: Path, second: int) -> None:
    """Until the service has confirmed the end of that second (and written so): it is then exact."""

    def covered() -> bool:
        doc = json.loads(ok(cli(backup_dir, "list", "--json")).stdout)
        return any(w["from_unix"] <= second <= w["to_unix"] for w in doc["window"])

    wait_until(covered, timeout=30, message=f"second {second} restorable")


def digest_of_aof(redis_factory: RedisFactory, out: Path) -> tuple[str, RedisServer]:
    # strict: a truncated or half-transaction tail would be an error, not silently dropped
    srv = redis_factory.load_aof_dir(out, strict=True)
    return srv.digest(), srv


def test_point_in_time_in_every_format(
    primary: RedisServer,
    service_factory: ServiceFactory,
    redis_factory: RedisFactory,
    tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    bk = tmp_backup_dir
    start_backup(primary, service_factory, bk)
    c0, c1 = primary.client(0), primary.client(1)
    # T1: the first writes, in two dbs, one with a TTL, one as a transaction
    c0.set("first", "1")
    c0.set("ttl", "expires", ex=1000)
    c1.hset("hash", mapping={"a": "1", "b": "2"})
    with c0.pipeline(transaction=True) as tx:
        tx.rpush("list", "a", "b")
        tx.incr("counter")
        tx.execute()
    primary.wait_replicas_caught_up()
    d1 = primary.digest()
    t1 = int(time.time())  # every T1 write was stored (acknowledged) before the end of this second
    next_second(t1)
    # T2 > T1: changes, deletions, new keys
    c0.set("first", "changed")
    c0.set("second", "2")
    c1.delete("hash")
    c1.sadd("set", "x", "y")
    primary.wait_replicas_caught_up()
    d2 = primary.digest()
    assert d1 != d2

    wait_restorable(bk, t1)
    plan = json.loads(ok(cli(bk, "restore", "--dry-run", "--json", "--at", iso(t1))).stdout)
    assert plan["at_unix"] == t1 and plan["chain"] == chains(bk)[0]
    assert plan["window"]["from_unix"] <= t1 < plan["window"]["to_unix"]

    # --format aof at T1, and the latest
    ok(cli(bk, "restore", "--to", str(tmp_path / "t1"), "--at", iso(t1)))
    digest, srv = digest_of_aof(redis_factory, tmp_path / "t1")
    assert digest == d1
    assert srv.client().get("second") is None and srv.client().get("first") == b"1"
    ok(cli(bk, "restore", "--to", str(tmp_path / "latest")))
    assert digest_of_aof(redis_factory, tmp_path / "latest")[0] == d2

    # --format rdb gives the same state
    r = ok(cli(bk, "restore", "--to", str(tmp_path / "rdb"), "--at", str(t1), "--format", "rdb"))
    assert "dump.rdb" in r.stdout
    assert sorted(p.name for p in (tmp_path / "rdb").iterdir()) == ["dump.rdb"]  # temporary files gone
    assert redis_factory.load_rdb(tmp_path / "rdb" / "dump.rdb").digest() == d1

    # --into a running server: existing keys are left alone without --replace, overwritten with it
    target = redis_factory()
    target.client().set("first", "already here")
    url = f"redis://{target.host}:{target.port}"
    r = ok(cli(bk, "restore", "--into", url, "--at", str(t1)))
    assert "1 keys already existed" in r.stderr and "db0:first" in r.stderr
    assert target.client().get("first") == b"already here"
    ok(cli(bk, "restore", "--into", url, "--at", str(t1), "--replace"))
    assert target.digest() == d1
    pttl = target.client().pttl("ttl")
    assert 900_000 < pttl <= 1_000_000  # the remaining TTL came along

    # refusals: one line each, stating the window
    r = cli(bk, "restore", "--to", str(tmp_path / "t1"), "--at", str(t1))
    assert r.returncode == 1 and "is not empty" in r.stderr and "--force" in r.stderr
    r = cli(bk, "restore", "--to", str(tmp_path / "never"), "--at", str(t1 - 3600))
    assert r.returncode == 1 and "restorable window: " in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()
    r = cli(bk, "restore", "--to", str(tmp_path / "never"), "--chain", "20200101T000000Z-00000000-0")
    assert r.returncode == 1 and "no chain 20200101T000000Z-00000000-0; restorable window" in r.stderr
    r = cli(bk, "restore", "--to", str(tmp_path / "never"), "--at", "soon")
    assert r.returncode == 2 and "invalid --at 'soon'" in r.stderr
    # --force replaces what a restore writes
    ok(cli(bk, "restore", "--to", str(tmp_path / "t1"), "--force"))
    assert digest_of_aof(redis_factory, tmp_path / "t1")[0] == d2


def test_restore_from_the_older_of_two_chains(
    redis_factory: RedisFactory,
    service_factory: ServiceFactory,
    tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    bk = tmp_backup_dir
    # no PINGs from the primary: nothing lands in the old chain after the writes below
    primary = redis_factory(extra_args=["--repl-ping-replica-period", "3600"])
    start_backup(primary, service_factory, bk)
    c = primary.client()
    c.mset({"a": "1", "b": "2"})
    primary.wait_replicas_caught_up()
    d1 = primary.digest()
    (old,) = chains(bk)
    # the last second an old chain received anything in is not exact (the link was lost at some point
    # of it): the state at d1 is the second before it
    next_second(time.time())
    c.set("marker", "in the old chain's last second")
    primary.wait_replicas_caught_up()
    next_second(time.time())  # the new chain's snapshot falls in a later second
    primary.execute("DEBUG", "CHANGE-REPL-ID")  # the next PSYNC cannot continue: a full sync, a new chain
    primary.execute("CLIENT", "KILL", "TYPE", "replica")

    def old_closed() -> bool:
        meta = read_meta(bk / old)
        return len(chains(bk)) == 2 and bool(meta["closed"])

    wait_until(old_closed, timeout=20, message="a second chain superseding the first")
    primary.wait_replicas_caught_up(timeout=20)
    c.set("a", "changed")
    c.set("c", "3")
    primary.wait_replicas_caught_up()
    d2 = primary.digest()

    listing = json.loads(ok(cli(bk, "list", "--json")).stdout)
    rows = {row["chain"]: row for row in listing["chains"]}
    assert [rows[old]["state"], rows[chains(bk)[1]]["state"]] == ["closed", "open"]
    last = rows[old]["last_second_unix"]
    assert last < rows[chains(bk)[1]]["first_second_unix"]
    r = cli(bk, "restore", "--dry-run", "--at", str(last))
    assert r.returncode == 1 and "the link was lost in it and a newer chain began" in r.stderr, r.stderr
    at = last - 1
    plan = json.loads(ok(cli(bk, "restore", "--dry-run", "--json", "--at", str(at))).stdout)
    assert plan["chain"] == old

    ok(cli(bk, "restore", "--to", str(tmp_path / "old"), "--at", str(at)))
    assert digest_of_aof(redis_factory, tmp_path / "old")[0] == d1
    r = ok(cli(bk, "restore", "--to", str(tmp_path / "new"), "--json"))
    assert json.loads(r.stdout)["plan"]["chain"] == chains(bk)[1]
    assert digest_of_aof(redis_factory, tmp_path / "new")[0] == d2
    ok(cli(bk, "verify"))


def test_multi_exec_straddling_the_cut_is_all_in_or_all_out(
    service_factory: ServiceFactory,
    redis_factory: RedisFactory,
    tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    """A fake primary streams a transaction in two pieces, a second apart; no `#TS` is stored inside
    it, so every cut keeps the transaction whole."""
    bk = tmp_backup_dir
    sent = 0
    # it answers the service's offset probe: what it sent so far is all it has
    with FakePrimary(psync_reply=fullresync_reply(empty_rdb(10)), info_offset=lambda: sent) as fp:
        service_factory(service_env(None, bk, REDIS_HOST="127.0.0.1", REDIS_PORT=fp.port))
        fp.wait_for_psync()

        def caught_up() -> bool:
            """The snapshot's gap in capture has ended (on a loaded machine it can last past a second)."""
            found = chains(bk)
            meta = read_meta(bk / found[0]) if found else None
            return meta is not None and all(g["to_second"] is not None for g in meta["gaps"])

        wait_until(caught_up, timeout=30, message="the snapshot's gap ends")
        next_second(time.time())  # "before" is written in a second after it

        def send(*commands: tuple[str, ...]) -> int:
            """Stream commands, wait until the service acknowledges them; returns a second they arrived in."""
            nonlocal sent
            data = b"".join(resp_command(*cmd) for cmd in commands)
            fp.send(data)
            sent += len(data)
            ack = [b"REPLCONF", b"ACK", str(sent).encode()]
            wait_until(lambda: ack in fp.commands(b"REPLCONF"), timeout=10, message=f"ACK {sent}")
            return int(time.time())

        def restored(name: str, *args: str) -> dict[str, bytes | None]:
            ok(cli(bk, "restore", "--to", str(tmp_path / name), *args))
            client = redis_factory.load_aof_dir(tmp_path / name, strict=True).client()
            return {k: client.get(k) for k in ("before", "a", "b", "after")}  # type: ignore[misc]

        send(("SELECT", "0"), ("SET", "before", "1"))
        next_second(time.time())
        send(("MULTI",), ("SET", "a", "1"))
        # the stream now ends inside MULTI: the latest restore stops before it
        assert restored("open-multi") == {"before": b"1", "a": None, "b": None, "after": None}
        ok(cli(bk, "verify"))
        next_second(time.time())
        s_exec = send(("SET", "b", "1"), ("EXEC",))
        next_second(time.time())
        send(("SET", "after", "1"))
        # a second is restorable once the primary's offset was seen to have arrived after it ended (the
        # probe asks ten times a second): keep the primary up until that happened for the EXEC's second
        wait_until(lambda: cli(bk, "restore", "--dry-run", "--at", str(s_exec)).returncode == 0, timeout=20,
                   message=f"second {s_exec} restorable")  # fmt: skip

    (chain,) = chains(bk)
    data = (bk / chain / "appendonly.aof.1.incr.aof").read_bytes()
    seconds = [int(line[4:]) for line in data.split(b"\r\n") if line.startswith(b"#TS:")]
    # No #TS can stand inside the transaction: its second piece counts with the second of its MULTI
    # (a primary executes a transaction at once; only the link split it), and the next #TS is "after"'s.
    assert len(seconds) == 3 and seconds == sorted(set(seconds)), seconds
    s_before, s_multi, s_after = seconds
    assert s_multi < s_exec < s_after
    assert b"EXEC\r\n#TS:%d\r\n" % s_after in data

    assert restored("before", "--at", str(s_before)) == {"before": b"1", "a": None, "b": None, "after": None}
    tx_in = {"before": b"1", "a": b"1", "b": b"1", "after": None}
    assert restored("multi", "--at", str(s_multi)) == tx_in
    assert restored("exec", "--at", str(s_exec)) == tx_in
    assert restored("latest") == {"before": b"1", "a": b"1", "b": b"1", "after": b"1"}


def test_missing_redis_server_names_the_package(tmp_backup_dir: Path, tmp_path: Path) -> None:
    # a chain is needed to get past planning: make one from a fake primary's empty snapshot
    bk = tmp_backup_dir
    with FakePrimary(psync_reply=fullresync_reply(empty_rdb(10))) as fp:
        svc = ServiceProcess(service_env(None, bk, REDIS_HOST="127.0.0.1", REDIS_PORT=fp.port), tmp_path / "svc")
        try:
            wait_until(lambda: chains(bk), timeout=10, message="a chain")
        finally:
            svc.stop()
    r = run_cli(
        ["restore", "--to", str(tmp_path / "out"), "--format", "rdb"],
        {"BACKUP_DIR": str(bk), "PATH": str(tmp_path / "empty-path")},
    )
    assert r.returncode == 1
    assert "redis-server is not installed" in r.stderr and "redis-server package" in r.stderr
    assert not (tmp_path / "out").exists()


def test_list_shows_rows_and_window(
    primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    bk = tmp_backup_dir
    start_backup(primary, service_factory, bk)
    primary.client().set("k", "v")
    primary.wait_replicas_caught_up()
    (chain,) = chains(bk)
    # the window ends at the last second the service has confirmed the end of (a second or two ago)
    wait_until(lambda: json.loads(ok(cli(bk, "list", "--json")).stdout)["window"], timeout=30,
               message="a confirmed second")  # fmt: skip
    # a snapshot still being received is not a chain
    (bk / naming.partial_chain_dir("20261125T000000Z-00000000-0")).mkdir()
    r = ok(cli(bk, "list"))
    lines = r.stdout.splitlines()
    assert lines[0].split() == [
        "CHAIN",
        "PRIMARY",
        "REPLID",
        "STATE",
        "SNAPSHOT",
        "FIRST",
        "LAST",
        "OFFSETS",
        "SIZE",
        "FILES",
        "SERVER",
    ]
    row = lines[1].split()
    assert row[-2:] == ["redis", primary.info("server")["redis_version"]]  # what wrote the snapshot
    assert row[0] == chain and row[1] == f"127.0.0.1:{primary.port}" and row[2] == primary.replid()
    assert row[3] == "open"
    assert lines[-1].startswith("restorable window: ")
    doc = json.loads(ok(cli(bk, "list", "--json")).stdout)
    (c,) = doc["chains"]
    assert c["end_offset"] >= primary.master_repl_offset() - 100  # the tail was scanned, not just metadata
    assert c["first_second_unix"] <= doc["window"][0]["to_unix"] <= c["last_second_unix"]


def test_restore_and_verify_while_the_service_writes(
    primary: RedisServer,
    service_factory: ServiceFactory,
    redis_factory: RedisFactory,
    tmp_backup_dir: Path,
    tmp_path: Path,
) -> None:
    """A latest restore of a chain being appended to is a clean prefix of the stream (a strict load
    succeeds), and verify accepts the growing file."""
    bk = tmp_backup_dir
    start_backup(primary, service_factory, bk, SEGMENT_MAX_BYTES=8192)
    with BackgroundWriter(primary.client()) as writer:
        wait_until(lambda: writer.written > 200, timeout=10)
        for n in range(3):
            ok(cli(bk, "restore", "--to", str(tmp_path / f"r{n}")))
            restored = redis_factory.load_aof_dir(tmp_path / f"r{n}", strict=True).client()
            count = int(restored.get("bg:count") or 0)
            assert count > 0
            # each SET bg:<i> precedes its INCR bg:count in the stream
            assert restored.exists(*[f"bg:{i}" for i in range(count)]) == count
        ok(cli(bk, "verify"))
    assert writer.error is None
