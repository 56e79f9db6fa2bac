"""Restores that must bring back everything the primary has, beyond the keys of db 0..15: function
libraries, databases above 15 (in the snapshot and only in the stream), compared db by db."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.chains import chain_dirs, read_meta
from tests.support.faults import CAUGHT_UP, per_db, start_service
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, cli, ok

pytestmark = pytest.mark.slow

LIB = "#!lua name=%s\nredis.register_function('%s', function(keys, args) return %s end)"


def libraries(server: RedisServer) -> dict[bytes, bytes]:
    out = {}
    entry: Any
    for entry in server.execute("FUNCTION", "LIST", "WITHCODE"):
        fields = entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
        out[fields[b"library_name"]] = fields[b"library_code"]
    return out


def test_restore_into_copies_function_libraries(
    primary: RedisServer, service_factory: ServiceFactory, redis_factory: RedisFactory, tmp_backup_dir: Path
) -> None:
    primary.execute("FUNCTION", "LOAD", LIB % ("inbase", "f_base", "1"))
    primary.client().set("k", "v")
    start_service(service_factory, primary, tmp_backup_dir)
    primary.execute("FUNCTION", "LOAD", LIB % ("instream", "f_stream", "2"))
    primary.wait_replicas_caught_up(CAUGHT_UP)
    want = libraries(primary)
    assert len(want) == 2

    target = redis_factory()
    url = f"redis://{target.host}:{target.port}"
    r = ok(cli(tmp_backup_dir, "restore", "--into", url))
    assert "1 keys and 2 function libraries restored" in r.stdout, r.stdout
    assert libraries(target) == want
    assert target.digest() == primary.digest()

    # the keys' policy: an existing library is left alone (and named) unless --replace
    other = redis_factory()
    other.execute("FUNCTION", "LOAD", LIB % ("inbase", "f_base", "99"))
    url = f"redis://{other.host}:{other.port}"
    r = ok(cli(tmp_backup_dir, "restore", "--into", url))
    assert "1 function libraries already existed" in r.stderr and "inbase" in r.stderr, r.stderr
    assert b"return 99" in libraries(other)[b"inbase"]
    ok(cli(tmp_backup_dir, "restore", "--into", url, "--replace"))
    assert libraries(other) == want

    # a function name another library of the target defines: refused before any key is written
    clash = redis_factory()
    clash.execute("FUNCTION", "LOAD", LIB % ("theirs", "f_base", "3"))
    for flags in ([], ["--replace"]):
        r = cli(tmp_backup_dir, "restore", "--into", f"redis://{clash.host}:{clash.port}", *flags)
        assert r.returncode == 1 and "Function f_base already exists" in r.stderr, r.stderr
        assert "no key was written" in r.stderr and clash.keyspace() == {}


def meta_of(chain: Path) -> dict[str, Any]:
    return read_meta(chain)


def test_more_than_16_databases_in_snapshot_and_stream(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, tmp_path: Path
) -> None:
    primary = redis_factory(extra_args=["--databases", "32"])
    primary.client(0).set("zero", "0")
    primary.client(17).set("in-snapshot", "17")  # only the snapshot has db 17
    start_service(service_factory, primary, tmp_backup_dir)
    c20 = primary.client(20)  # only the stream has db 20
    c20.set("in-stream", "20")
    c20.rpush("list", "a", "b")
    primary.client(0).set("zero", "changed")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    want = per_db(primary)
    assert set(want) == {0, 17, 20}
    chain = chain_dirs(tmp_backup_dir)[0]
    wait_until(lambda: meta_of(chain)["stream_max_db"] == 20, timeout=CAUGHT_UP, message="stream_max_db recorded")
    assert meta_of(chain)["base_max_db"] == 17

    r = ok(cli(tmp_backup_dir, "restore", "--to", str(tmp_path / "aof")))
    assert "--databases 21" in r.stdout, r.stdout
    aof = redis_factory.load_aof_dir(tmp_path / "aof", strict=True, extra_args=["--databases", "21"])
    assert per_db(aof) == want

    r = ok(cli(tmp_backup_dir, "restore", "--to", str(tmp_path / "rdb"), "--format", "rdb"))
    assert "--databases 21" in r.stdout, r.stdout
    rdb = redis_factory.load_rdb(tmp_path / "rdb" / "dump.rdb", extra_args=["--databases", "21"])
    assert per_db(rdb) == want

    small = redis_factory()  # 16 databases: refused before anything is written
    r = cli(tmp_backup_dir, "restore", "--into", f"redis://{small.host}:{small.port}")
    assert r.returncode == 1 and "fewer databases than the backup uses (db 20)" in r.stderr, r.stderr
    assert small.keyspace() == {}
    target = redis_factory(extra_args=["--databases", "32"])
    ok(cli(tmp_backup_dir, "restore", "--into", f"redis://{target.host}:{target.port}"))
    assert per_db(target) == want
    assert target.digest() == primary.digest()

    ok(cli(tmp_backup_dir, "verify", "--deep"))
    listed = json.loads(ok(cli(tmp_backup_dir, "list", "--json")).stdout)
    assert listed["chains"][0]["max_db"] == 20


def test_an_error_while_the_scratch_server_loads_fails_the_restore(
    primary: RedisServer, service_factory: ServiceFactory, tmp_backup_dir: Path, tmp_path: Path
) -> None:
    svc = start_service(service_factory, primary, tmp_backup_dir)
    primary.client().set("text", "not a number")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.stop() == 0
    chain = chain_dirs(tmp_backup_dir)[0]
    newest = sorted(chain.glob("*.incr.aof"))[-1]
    with newest.open("ab") as f:  # well-formed, but it fails when executed: the load is incomplete
        f.write(b"*2\r\n$4\r\nINCR\r\n$4\r\ntext\r\n")
    r = cli(tmp_backup_dir, "restore", "--to", str(tmp_path / "rdb"), "--format", "rdb")
    assert r.returncode == 1 and "value is not an integer" in r.stderr, r.stderr
    assert not (tmp_path / "rdb" / "dump.rdb").exists()
    r = cli(tmp_backup_dir, "verify", "--deep")
    assert r.returncode == 1 and "value is not an integer" in r.stdout, r.stdout
