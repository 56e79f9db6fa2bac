"""The successor chain built from files, without servers: where it starts, what it copies and links, how
it sorts against the chain it supersedes (restore takes the newest for the latest state)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from redis_backup.chain import metadata as md
from redis_backup.chain import naming
from redis_backup.chain.catalog import load_catalog
from redis_backup.chain.successor import Successor
from redis_backup.chain.writer import ChainWriter, Limits, SnapshotWriter
from redis_backup.restore.plan import choose_chain
from redis_backup.store.local import LocalStore
from tests.support.fake_primary import empty_rdb
from tests.test_chain_writer import REPLID, START, T0, Recorder, Stream, check_consistent, cmd


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "bk"
    d.mkdir()
    return d


def snapshot(root: Path, offset: int, now: float) -> SnapshotWriter:
    snap = SnapshotWriter(root, primary="db:6379", replid=REPLID, offset=offset, now=now, limits=Limits())
    snap.write(empty_rdb())
    return snap


def take_over(old: ChainWriter, offset: int, requested_at: float, now: float) -> ChainWriter:
    """What rechain and the tick do, in order: snapshot at offset, seal, prepare, hand over."""
    snap = snapshot(old.dir.parent, offset, requested_at)
    succ = Successor(snap, snap.seal_base(), old)
    old.ask_rotation()
    assert old.maybe_rotate(now) and old.current.start_offset >= offset
    succ.prepare()
    assert old.at_safe_boundary
    old.close(f"superseded by chain {snap.chain}", now, before_commit=succ.complete)
    succ.announce()
    succ.abandon()
    assert succ.writer is not None
    return succ.writer


def stream_bytes(d: Path, meta: md.ChainMeta) -> bytes:
    """The replication stream an incr file list holds: headers and #TS lines removed."""
    out = b""
    for f in meta.incr_files:
        data = (d / f.name).read_bytes()[f.header_size :]
        out += b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"#TS:"))
    return out


def test_a_successor_of_an_idle_chain_sorts_after_it_and_gives_the_latest_state(root: Path) -> None:
    rec = Recorder()
    snap = SnapshotWriter(root, primary="db:6379", replid=REPLID, offset=START, now=T0 + 0.78, limits=Limits(),
                          events=rec.events)  # fmt: skip
    snap.write(empty_rdb())
    old = snap.finish(T0 + 0.78)
    new = take_over(old, START, T0 + 0.9, T0 + 0.95)  # asked within the old chain's own second, nothing written
    new.append(Stream(START).chunk(cmd("SET", "after", "switch")), T0 + 2)
    new.write_metadata()
    cat = load_catalog(LocalStore(root))
    assert [c.chain for c in cat.chains] == [old.chain, new.chain] == [p.name for p in sorted(root.iterdir())
                                                                       if naming.is_chain_id(p.name)]  # fmt: skip
    assert choose_chain(cat.chains, at=None).chain == new.chain  # the latest state is the successor's
    assert cat.chains[1].first_second == math.floor(T0)  # the state at its offset holds from then on


def test_a_successor_copies_from_its_offset_links_the_rest_and_holds_the_same_stream(root: Path) -> None:
    rec = Recorder()
    snap = SnapshotWriter(root, primary="db:6379", replid=REPLID, offset=START, now=T0, limits=Limits(),
                          events=rec.events)  # fmt: skip
    snap.write(empty_rdb())
    old = snap.finish(T0)
    old.limits = Limits(segment_max_bytes=200, segment_max_seconds=3600)
    s = Stream(START)
    x = None
    for i in range(30):
        data = cmd("SELECT", i % 4) + cmd("SET", f"k{i}", "v" * 20)
        if i == 9:
            x = s.offset + len(cmd("SELECT", i % 4))  # between a SELECT and its SET, in the middle of a file
        old.append(s.chunk(data), T0 + i)
    assert x is not None
    new = take_over(old, x, T0 + 30, T0 + 30)
    d_old, d_new = old.dir, new.dir
    before, after = md.load(d_old), check_consistent(d_new)
    assert after.start_offset == x and after.files[1].start_offset == x
    assert after.files[1].start_db == 1 and after.snapshot_at == T0 + 9  # the db and second in effect at x
    assert stream_bytes(d_new, after) == stream_bytes(d_old, before)[x - START :]
    linked = [f for f in after.incr_files[1:] if f.closed]
    assert linked and all((d_new / f.name).stat().st_nlink == 2 for f in linked)
    assert after.incr_files[-1].end_offset is None and after.end_offset == before.end_offset
