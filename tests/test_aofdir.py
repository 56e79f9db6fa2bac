"""aofdir: what a restore writes, and what it refuses, on a chain made by hand (no servers)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from redis_backup.chain import metadata as md
from redis_backup.chain.catalog import load_chain
from redis_backup.chain.metadata import ChainMeta, FileMeta
from redis_backup.restore.aofdir import ChainDamaged, write_aof_dir
from redis_backup.restore.plan import RestorePlan, file_to_cut, plan_restore
from redis_backup.store.local import LocalStore
from redis_backup.wire.resp import encode_command
from tests.support.fake_primary import empty_rdb

CHAIN = "20261125T000000Z-aaaaaaaa-0"


def ts(n: int) -> bytes:
    return b"#TS:%d\r\n" % n


def make_chain(root: Path, incr: list[bytes], seconds: list[tuple[int, int]]) -> Path:
    """A closed chain: an empty RDB, then the given incr files (each after the first has a SELECT 0)."""
    d = root / CHAIN
    d.mkdir(parents=True)
    rdb = empty_rdb(10)
    (d / "appendonly.aof.1.base.rdb").write_bytes(rdb)
    files = [
        FileMeta(
            "appendonly.aof.1.base.rdb",
            "base",
            1,
            0,
            0,
            0,
            0,
            100,
            100,
            len(rdb),
            hashlib.sha256(rdb).hexdigest(),
        )
    ]
    offset = 0
    for n, (body, (first, last)) in enumerate(zip(incr, seconds, strict=True), 1):
        header = b"" if n == 1 else encode_command("SELECT", 0)
        data = header + body
        (d / f"appendonly.aof.{n}.incr.aof").write_bytes(data)
        stream = len(body) - sum(len(line) + 2 for line in body.split(b"\r\n") if line.startswith(b"#TS:"))
        files.append(
            FileMeta(
                f"appendonly.aof.{n}.incr.aof",
                "incr",
                n,
                offset,
                offset + stream,
                len(header),
                0,
                first,
                last,
                len(data),
                hashlib.sha256(data).hexdigest(),
            )
        )
        offset += stream
    meta = ChainMeta(CHAIN, "db:6379", "a" * 40, 0, offset, 0, 100.5, closed=True, rdb_version=10, files=files)
    md.save(d, meta)
    md.save_manifest(d, meta)
    return d


def plan_for(d: Path, at: int | None) -> RestorePlan:
    from redis_backup.chain.catalog import index_file

    record, _ = load_chain(LocalStore(d.parent), d.name)
    f = file_to_cut(record, at)
    return plan_restore(record, at=at, index=index_file(LocalStore(d.parent), d.name, f) if f else None)


SET = encode_command


def test_writes_the_planned_files_and_manifest(tmp_path: Path) -> None:
    d = make_chain(
        tmp_path / "bk",
        [ts(101) + SET("SET", "a", "1") + ts(102) + SET("SET", "b", "2"), ts(103) + SET("SET", "c", "3")],
        [(101, 102), (103, 103)],
    )
    plan = plan_for(d, 101)
    out = tmp_path / "out" / "appendonlydir"
    out.parent.mkdir()
    write_aof_dir(plan, LocalStore(d.parent), out)
    assert sorted(p.name for p in out.iterdir()) == [
        "appendonly.aof.1.base.rdb",
        "appendonly.aof.1.incr.aof",
        "appendonly.aof.manifest",
    ]
    assert (out / "appendonly.aof.1.incr.aof").read_bytes() == ts(101) + SET("SET", "a", "1")
    assert (out / "appendonly.aof.manifest").read_bytes() == (
        b"file appendonly.aof.1.base.rdb seq 1 type b\nfile appendonly.aof.1.incr.aof seq 1 type i\n"
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["appendonlydir"]  # no temporary left


def test_metadata_seconds_are_checked_against_what_is_copied(tmp_path: Path) -> None:
    """The metadata says file 1 ends at 101 (it holds 105): the restore at 101 would take it whole."""
    d = make_chain(
        tmp_path / "bk",
        [ts(101) + SET("SET", "a", "1") + ts(105) + SET("SET", "b", "2"), ts(106) + SET("SET", "c", "3")],
        [(101, 101), (106, 106)],
    )
    plan = plan_for(d, 102)
    assert [f.name for f in plan.incr] == ["appendonly.aof.1.incr.aof"]  # what the lie leads to
    out = tmp_path / "out" / "appendonlydir"
    out.parent.mkdir()
    with pytest.raises(ChainDamaged, match=r"appendonly\.aof\.1\.incr\.aof: holds commands of 105, after 102"):
        write_aof_dir(plan, LocalStore(d.parent), out)
    assert list(out.parent.iterdir()) == []


def test_refuses_names_that_are_not_data_files(tmp_path: Path) -> None:
    d = make_chain(tmp_path / "bk", [ts(101) + SET("SET", "a", "1")], [(101, 101)])
    plan = plan_for(d, None)
    evil = replace(plan, incr=(replace(plan.incr[0], name="../../evil"),))
    out = tmp_path / "out" / "appendonlydir"
    out.parent.mkdir()
    with pytest.raises(ChainDamaged, match="not an AOF data file name"):
        write_aof_dir(evil, LocalStore(d.parent), out)
    assert not (tmp_path / "evil").exists() and list(out.parent.iterdir()) == []


def test_a_copy_that_changed_since_planning_is_refused(tmp_path: Path) -> None:
    d = make_chain(tmp_path / "bk", [ts(101) + SET("SET", "a", "1") + ts(102) + SET("SET", "b", "2")], [(101, 102)])
    plan = plan_for(d, 101)
    path = d / "appendonly.aof.1.incr.aof"
    path.write_bytes(path.read_bytes().replace(b"$1\r\na", b"$1\r\nz"))
    out = tmp_path / "out" / "appendonlydir"
    out.parent.mkdir()
    with pytest.raises(ChainDamaged, match="SHA-256 does not match"):
        write_aof_dir(plan, LocalStore(d.parent), out)
    assert list(out.parent.iterdir()) == []
