"""Databases the stream reaches without SELECT: MOVE key db, COPY src dst DB db, SWAPDB a b.

Redis 7.0 to 7.4 and Valkey 8 propagate these as they were sent, with no SELECT of the db they reach,
so a restore must count their db arguments too: its scratch server needs that many databases, and so
does the server the user loads the files in (the printed ``--databases N``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.chains import chain_dirs, read_meta
from tests.support.faults import CAUGHT_UP, per_db, start_service
from tests.support.servers import RedisFactory, wait_until
from tests.support.service import ServiceFactory, cli, ok

pytestmark = pytest.mark.slow


def meta_of(chain: Path) -> dict[str, Any]:
    return read_meta(chain)


def test_move_copy_and_swapdb_reach_databases_the_restore_must_have(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, tmp_path: Path
) -> None:
    primary = redis_factory(extra_args=["--databases", "32"])
    primary.client(0).set("zero", "0")  # the snapshot uses db 0 only
    start_service(service_factory, primary, tmp_backup_dir)
    c0, c1 = primary.client(0), primary.client(1)
    c0.execute_command("SET", "tomove", "m")
    assert c0.execute_command("MOVE", "tomove", "25") == 1
    c0.execute_command("SET", "tocopy", "c")
    assert c0.execute_command("COPY", "tocopy", "tocopy", "db", "28") == 1
    assert c0.execute_command("COPY", "tocopy", "replaced", "REPLACE", "DB", "27") == 1
    c1.execute_command("SET", "s", "s")
    assert c0.execute_command("SWAPDB", "1", "30") in (True, b"OK")
    c0.execute_command("SET", "zero", "changed")  # and the selected db is still 0
    primary.wait_replicas_caught_up(CAUGHT_UP)
    want = per_db(primary)
    assert set(want) == {0, 25, 27, 28, 30} and want[30].keys() == {b"s"}
    chain = chain_dirs(tmp_backup_dir)[0]
    wait_until(lambda: meta_of(chain)["stream_max_db"] == 30, timeout=CAUGHT_UP, message="stream_max_db is 30")
    assert meta_of(chain)["base_max_db"] == 0

    r = ok(cli(tmp_backup_dir, "restore", "--to", str(tmp_path / "aof")))
    assert "--databases 31" in r.stdout, r.stdout
    aof = redis_factory.load_aof_dir(tmp_path / "aof", strict=True, extra_args=["--databases", "31"])
    assert per_db(aof) == want

    # The RDB is written by a scratch server that replays the stream: it needs the 31 databases.
    r = ok(cli(tmp_backup_dir, "restore", "--to", str(tmp_path / "rdb"), "--format", "rdb"))
    assert "--databases 31" in r.stdout, r.stdout
    rdb = redis_factory.load_rdb(tmp_path / "rdb" / "dump.rdb", extra_args=["--databases", "31"])
    assert per_db(rdb) == want

    ok(cli(tmp_backup_dir, "verify", "--deep"))

    target = redis_factory(extra_args=["--databases", "32"])
    ok(cli(tmp_backup_dir, "restore", "--into", f"redis://{target.host}:{target.port}"))
    assert per_db(target) == want
    assert target.digest() == primary.digest()
