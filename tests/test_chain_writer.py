"""The chain writer in-process: rotation, rewind, recovery after a crash at each step, events, format 3.

No redis-server and no subprocess: stream chunks are built with the same scanner the protocol uses, and
crashes are simulated by making one step of a rotation raise and dropping the writer, as a killed process
would leave it (every completed step durable, nothing after it)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from redis_backup.chain import metadata as md
from redis_backup.chain import naming
from redis_backup.chain import writer as writer_mod
from redis_backup.chain.events import ChainBegun, ChainClosed, Event, Events, FileSealed
from redis_backup.chain.writer import ChainWriter, Limits, SnapshotWriter, recover
from redis_backup.store.local import LocalStore
from redis_backup.wire.protocol import StreamData
from redis_backup.wire.resp import StreamScanner, encode_command
from tests.support.chains import read_meta, write_meta
from tests.support.fake_primary import empty_rdb

T0 = 1_800_000_000.0
REPLID = "ab" * 20
START = 1000


class Stream:
    """What the protocol hands the writer: StreamData per received chunk, from one scanner per connection."""

    def __init__(self, offset: int, db: int = 0, in_multi: bool = False) -> None:
        self.sc = StreamScanner(db=db, in_multi=in_multi)
        self.offset = offset

    def chunk(self, data: bytes) -> StreamData:
        sc = self.sc
        sc.feed(data)
        start, self.offset = self.offset, self.offset + len(data)
        return StreamData(data, start, self.offset, sc.first_safe, sc.last_safe, sc.last_safe_db, sc.last_boundary,
                          sc.db, sc.in_multi, sc.writes, sc.getack, sc.max_db)  # fmt: skip


def cmd(*args: str | int) -> bytes:
    return encode_command(*args)


class Recorder:
    def __init__(self) -> None:
        self.events = Events()
        self.seen: list[Event] = []
        self.events.subscribe(self.seen.append)

    def sealed(self) -> list[str]:
        return [e.name for e in self.seen if isinstance(e, FileSealed)]


def new_chain(root: Path, limits: Limits, events: Events | None = None) -> ChainWriter:
    snap = SnapshotWriter(root, primary="db:6379", replid=REPLID, offset=START, now=T0, limits=limits, events=events)
    snap.write(empty_rdb())
    return snap.finish(T0)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "bk"
    d.mkdir()
    return d


def chain_dir(root: Path) -> Path:
    (d,) = [p for p in root.iterdir() if naming.is_chain_id(p.name)]
    return d


def check_consistent(d: Path) -> md.ChainMeta:
    """What every reader must be able to rely on at any moment: metadata readable locally and through the
    store alike, contiguous, manifest loadable (every listed file exists) and derived from the metadata,
    and agreeing with the test's own reader of the format."""
    meta = md.load(d)
    assert md.read(LocalStore(d.parent), d.name) == meta
    assert [f["name"] for f in read_meta(d)["files"]] == [f.name for f in meta.files]
    listed = md.parse_manifest((d / naming.MANIFEST).read_bytes())
    assert all((d / name).is_file() for name, _, _ in listed)
    names = [f.name for f in meta.files]
    assert [n for n, _, _ in listed] in (names, [*names, naming.incr_file(meta.files[-1].seq + 1)])
    for f in meta.files:
        if f.closed and f.type == "incr":
            assert (d / f.name).stat().st_size == f.size
    return meta


def sets(n: int, size: int = 20) -> Iterator[bytes]:
    for i in range(n):
        yield cmd("SET", f"k{i}", "v" * size)


# --------------------------------------------------------------------------------------------- rotation


def test_rotates_at_the_size_limit_and_seals_each_file_once(root: Path) -> None:
    rec = Recorder()
    w = new_chain(root, Limits(segment_max_bytes=300, segment_max_seconds=3600), rec.events)
    s = Stream(START)
    for i, c in enumerate(sets(40)):
        w.append(s.chunk(c), T0 + i)
    d = chain_dir(root)
    meta = check_consistent(d)
    incr = meta.incr_files
    assert len(incr) > 5
    assert all(f.size is not None and f.size <= 300 + 60 for f in incr[:-1])  # at most one command over
    assert len(w.meta.files) == 1  # the writer holds the open file only
    assert w.meta.journal_records == len(meta.files) - 1
    assert isinstance(rec.seen[0], ChainBegun) and rec.seen[0].base == naming.base_file()
    assert rec.sealed() == [f.name for f in incr[:-1]]
    for e in rec.seen[1:]:
        assert isinstance(e, FileSealed)
        f = next(f for f in incr if f.name == e.name)
        assert (e.size, e.sha256, e.start_offset, e.end_offset) == (f.size, f.sha256, f.start_offset, f.end_offset)
    assert meta.end_offset == w.offset == s.offset


def test_rotates_at_the_age_limit_only_with_data_commands(root: Path) -> None:
    w = new_chain(root, Limits(segment_max_bytes=1 << 30, segment_max_seconds=10))
    s = Stream(START)
    w.append(s.chunk(cmd("PING")), T0 + 1)
    assert not w.maybe_rotate(T0 + 100)  # pings only: nothing worth a file
    w.append(s.chunk(cmd("SET", "a", "1")), T0 + 101)
    assert w.maybe_rotate(T0 + 101)  # the age counts from when the file was opened
    assert w.current.name == naming.incr_file(2)
    w.append(s.chunk(cmd("SET", "b", "1")), T0 + 102)
    assert not w.maybe_rotate(T0 + 110)
    assert w.maybe_rotate(T0 + 111)
    meta = check_consistent(chain_dir(root))
    assert meta.files[1].last_ts == int(T0 + 101) and meta.files[3].start_offset == s.offset


def test_never_rotates_inside_multi(root: Path) -> None:
    w = new_chain(root, Limits(segment_max_bytes=1 << 30, segment_max_seconds=10))
    s = Stream(START)
    w.append(s.chunk(cmd("SET", "a", "1") + cmd("MULTI") + cmd("SET", "b", "2")), T0)
    assert not w.maybe_rotate(T0 + 60)  # the tail is inside the transaction
    # due, and the chunk that ends the transaction begins another: the cut is at the safe point between
    w.append(s.chunk(cmd("SET", "c", "3") + cmd("EXEC") + cmd("MULTI") + cmd("SET", "d", "4")), T0 + 61)
    assert w.current.name == naming.incr_file(2)
    d = chain_dir(root)
    first = (d / naming.incr_file(1)).read_bytes()
    second = (d / naming.incr_file(2)).read_bytes()
    assert first.count(b"MULTI") == 1 and first.endswith(cmd("EXEC"))
    assert second.startswith(cmd("SELECT", 0)) and cmd("MULTI") + cmd("SET", "d", "4") in second
    w.append(s.chunk(cmd("EXEC")), T0 + 62)
    check_consistent(d)


def test_a_size_rotation_cuts_at_the_last_safe_point_of_the_chunk(root: Path) -> None:
    w = new_chain(root, Limits(segment_max_bytes=100, segment_max_seconds=3600))
    s = Stream(START)
    w.append(s.chunk(cmd("SET", "a", "1")), T0)  # a file takes at least one chunk, however large
    w.append(s.chunk(cmd("SET", "y", "1") + cmd("MULTI") + b"".join(sets(5))), T0)
    d = chain_dir(root)
    assert (d / naming.incr_file(1)).read_bytes().endswith(cmd("SET", "a", "1") + cmd("SET", "y", "1"))
    w.append(s.chunk(cmd("EXEC")), T0)
    second = (d / naming.incr_file(2)).read_bytes()
    assert second == cmd("SELECT", 0) + b"#TS:%d\r\n" % T0 + cmd("MULTI") + b"".join(sets(5)) + cmd("EXEC")
    w.write_metadata()
    check_consistent(d)


# --------------------------------------------------------------------------------------------- rewind


def test_rewind_cuts_a_partial_command_back_to_the_last_whole_one(root: Path) -> None:
    w = new_chain(root, Limits())
    s = Stream(START)
    whole = cmd("SET", "a", "1")
    w.append(s.chunk(whole), T0)
    fd, offset = w.sync_point()
    writer_mod.os.fsync(fd)
    writer_mod.os.close(fd)
    w.synced(offset)
    partial = cmd("SET", "b", "2")
    w.append(s.chunk(partial[:7]), T0)  # the connection is lost mid-command
    assert w.offset == START + len(whole) + 7
    w.rewind()
    assert w.resume_state() == (REPLID, START + len(whole), 0, False)
    assert w.offset == w.durable_offset == START + len(whole)
    path = chain_dir(root) / naming.incr_file(1)
    assert path.read_bytes().endswith(whole)
    s2 = Stream(START + len(whole))  # the primary resends from there on a new connection
    w.append(s2.chunk(partial), T0 + 1)
    data = path.read_bytes()
    assert data.endswith(partial) and b"SET\r\n$1\r\nb\r\n$1\r\n2" in data and data.count(b"$1\r\nb") == 1
    w.write_metadata()
    assert check_consistent(chain_dir(root)).end_offset == START + len(whole)  # what is durable
    fd, offset = w.sync_point()
    writer_mod.os.fsync(fd)
    writer_mod.os.close(fd)
    w.synced(offset)
    w.write_metadata()
    assert check_consistent(chain_dir(root)).end_offset == START + len(whole) + len(partial)


def test_rewind_inside_multi_resumes_inside_it(root: Path) -> None:
    w = new_chain(root, Limits())
    s = Stream(START)
    w.append(s.chunk(cmd("MULTI") + cmd("SET", "a", "1") + cmd("SET", "b", "2")[:5]), T0)
    w.rewind()
    _, offset, db, in_multi = w.resume_state()
    assert in_multi and offset == START + len(cmd("MULTI") + cmd("SET", "a", "1")) and db == 0


# --------------------------------------------------------------------------------------------- recovery


def crash(w: ChainWriter) -> None:
    """What a killed process leaves: what was written stays, the writer is gone."""
    w.release()


def test_recovery_cuts_a_partial_write_at_the_end_of_the_file(root: Path) -> None:
    w = new_chain(root, Limits())
    s = Stream(START)
    w.append(s.chunk(cmd("SELECT", 3) + cmd("SET", "a", "1") + cmd("MULTI") + cmd("SET", "b", "2")[:9]), T0)
    w.write_metadata()
    crash(w)
    d = chain_dir(root)
    w2 = recover(d, limits=Limits(), now=T0 + 5)
    whole = cmd("SELECT", 3) + cmd("SET", "a", "1") + cmd("MULTI")
    assert w2.offset == START + len(whole) and w2.db == 3 and w2.in_multi
    assert (d / naming.incr_file(1)).read_bytes().endswith(whole)
    assert check_consistent(d).end_offset == w2.offset


@pytest.mark.parametrize(
    "step",
    ["journal", "new file", "manifest", "head"],
)
def test_recovery_after_a_rotation_interrupted_at_each_step(
    root: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A crash at each step of a rotation: before the head commits it, the chain is as it was (the old
    file still open, the new one removed, the journal's record not committed); the next rotation seals it
    once. At no step is the chain unreadable or the manifest naming a missing file."""
    rec = Recorder()
    limits = Limits(segment_max_bytes=1 << 30, segment_max_seconds=10)
    w = new_chain(root, limits, rec.events)
    s = Stream(START)
    w.append(s.chunk(cmd("SET", "a", "1")), T0)
    assert w.maybe_rotate(T0 + 10)  # one rotation that works: file 1 sealed
    w.append(s.chunk(cmd("SET", "b", "2")), T0 + 11)
    d = chain_dir(root)

    class Crash(Exception):
        pass

    def boom(*a: object, **k: object) -> None:
        raise Crash

    if step == "journal":  # a torn record: part of the line on disk
        def torn(dir: Path, committed: int, lines: list[bytes]) -> None:
            with open(dir / naming.JOURNAL, "ab") as f:
                f.write(lines[0][:20])
            raise Crash

        monkeypatch.setattr(writer_mod, "append_journal", torn)
    elif step == "new file":
        monkeypatch.setattr(writer_mod, "encode_command", boom)
    elif step == "manifest":
        monkeypatch.setattr(md, "append_manifest", boom)
    else:
        monkeypatch.setattr(ChainWriter, "write_metadata", boom)
    with pytest.raises(Crash):
        w.maybe_rotate(T0 + 30)
    monkeypatch.undo()
    check_consistent(d)  # readable as it is, before any recovery
    if step in ("manifest", "head"):
        assert (d / naming.incr_file(3)).exists()  # created, not yet committed
    w2 = recover(d, limits=limits, now=T0 + 40, events=rec.events)
    assert not (d / naming.incr_file(3)).exists()
    meta = check_consistent(d)
    assert [f.name for f in meta.incr_files] == [naming.incr_file(1), naming.incr_file(2)]
    assert (d / naming.JOURNAL).stat().st_size == meta.journal_bytes
    assert w2.current.name == naming.incr_file(2) and w2.offset == s.offset
    w2.append(s.chunk(cmd("SET", "c", "3")), T0 + 41)
    assert w2.maybe_rotate(T0 + 60)
    meta = check_consistent(d)
    assert [f.name for f in meta.incr_files] == [naming.incr_file(i) for i in (1, 2, 3)]
    assert meta.files[2].end_offset == s.offset
    assert rec.sealed() == [naming.incr_file(1), naming.incr_file(2)]  # once each, none from recovery


def test_an_uncommitted_journal_tail_is_ignored_by_readers_and_cut_by_recovery(root: Path) -> None:
    w = new_chain(root, Limits(segment_max_bytes=120, segment_max_seconds=3600))
    s = Stream(START)
    for c in sets(6):
        w.append(s.chunk(c), T0)
    crash(w)
    d = chain_dir(root)
    before = md.load(d)
    with open(d / naming.JOURNAL, "ab") as f:
        f.write(b'{"name":"appendonly.aof.99.incr.aof","seq":99')  # a record whose head never came
    assert md.load(d) == before
    recover(d, limits=Limits(), now=T0 + 1).release()
    assert (d / naming.JOURNAL).read_bytes().endswith(b"}\n")
    assert len(md.load(d).files) == len(before.files)


def test_recovery_emits_nothing_and_a_closed_chain_is_left_as_it_is(root: Path) -> None:
    rec = Recorder()
    w = new_chain(root, Limits(segment_max_bytes=100, segment_max_seconds=3600), rec.events)
    s = Stream(START)
    for c in sets(5):
        w.append(s.chunk(c), T0)
    w.close("superseded by chain x", T0 + 2)
    d = chain_dir(root)
    meta = check_consistent(d)
    assert meta.closed and all(f.closed for f in meta.files)
    assert rec.sealed() == [f.name for f in meta.incr_files]
    assert isinstance(rec.seen[-1], ChainClosed) and rec.seen[-1].end_offset == s.offset
    n = len(rec.seen)
    files = {p.name: p.read_bytes() for p in d.iterdir()}
    w2 = recover(d, limits=Limits(), now=T0 + 3, events=rec.events)
    assert w2.meta.closed
    w2.release()
    assert {p.name: p.read_bytes() for p in d.iterdir()} == files
    assert len(rec.seen) == n


def test_a_format_2_chain_is_read_and_continued_in_format_3(root: Path) -> None:
    w = new_chain(root, Limits(segment_max_bytes=120, segment_max_seconds=3600))
    s = Stream(START)
    for c in sets(6):
        w.append(s.chunk(c), T0)
    w.write_metadata()
    crash(w)
    d = chain_dir(root)
    meta = md.load(d)
    old = asdict(meta)
    for k in ("journal_records", "journal_bytes"):
        del old[k]
    old["format"] = 2
    (d / naming.METADATA).write_text(json.dumps(old, indent=1, sort_keys=True))
    (d / naming.JOURNAL).unlink()
    as_two = md.load(d)
    assert as_two.format == 2 and as_two.files == meta.files
    assert md.read(LocalStore(root), d.name).files == meta.files
    w2 = recover(d, limits=Limits(segment_max_bytes=120, segment_max_seconds=3600), now=T0 + 1)
    w2.append(s.chunk(cmd("SET", "x", "y" * 100)), T0 + 2)
    w2.append(s.chunk(cmd("SET", "x", "y")), T0 + 2)
    after = check_consistent(d)
    assert after.format == 3 and after.files[: len(meta.files) - 1] == meta.files[:-1]
    assert json.loads((d / naming.METADATA).read_text())["format"] == 3


# --------------------------------------------------------------------------------------------- format 3 reading


def _chain_with_files(root: Path) -> Path:
    w = new_chain(root, Limits(segment_max_bytes=120, segment_max_seconds=3600))
    s = Stream(START)
    for c in sets(6):
        w.append(s.chunk(c), T0)
    w.write_metadata()
    crash(w)
    return chain_dir(root)


def test_journal_damage_is_one_clear_line(root: Path) -> None:
    d = _chain_with_files(root)
    good = (d / naming.JOURNAL).read_bytes()
    (d / naming.JOURNAL).write_bytes(good[:-10])
    with pytest.raises(md.MetadataError, match="bytes the head commits"):
        md.load(d)
    with pytest.raises(md.MetadataError, match="bytes the head commits"):
        md.read(LocalStore(root), d.name)
    (d / naming.JOURNAL).unlink()
    with pytest.raises(md.MetadataError, match="is missing"):
        md.load(d)
    with pytest.raises(md.MetadataError, match="is missing"):
        md.read(LocalStore(root), d.name)
    lines = good.splitlines(keepends=True)
    rec = json.loads(lines[1])
    rec["header_size"] = 10**15
    bad = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
    (d / naming.JOURNAL).write_bytes(lines[0] + bad + b"".join(lines[2:]))
    head = json.loads((d / naming.METADATA).read_text())
    head["journal_bytes"] += len(bad) - len(lines[1])
    (d / naming.METADATA).write_text(json.dumps(head))
    with pytest.raises(md.MetadataError, match=r"files\[1\]\.header_size: expected an integer 0\.\.64"):
        md.load(d)
    rec["header_size"] = 0
    rec["sha256"] = None
    unsealed = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
    (d / naming.JOURNAL).write_bytes(lines[0] + unsealed + b"".join(lines[2:]))
    head["journal_bytes"] += len(unsealed) - len(bad)
    (d / naming.METADATA).write_text(json.dumps(head))
    with pytest.raises(md.MetadataError, match="without its size and SHA-256"):
        md.load(d)


def test_journal_fields_belong_to_format_3_only(root: Path) -> None:
    d = _chain_with_files(root)
    meta = read_meta(d)
    meta["format"] = 2
    (d / naming.METADATA).write_text(json.dumps(meta))
    with pytest.raises(md.MetadataError, match="journal_bytes: unknown field"):
        md.load(d)


def test_the_test_helpers_write_what_the_package_reads(root: Path) -> None:
    d = _chain_with_files(root)
    meta = md.load(d)
    write_meta(d, read_meta(d))
    assert md.load(d) == meta
    everything_in_the_head = {**read_meta(d), "journal_records": 0, "journal_bytes": 0}
    (d / naming.METADATA).write_text(json.dumps(everything_in_the_head))
    assert md.load(d).files == meta.files  # a head may list sealed files itself; recovery moves them
    recover(d, limits=Limits(), now=T0).release()
    assert md.load(d).files == meta.files and len(json.loads((d / naming.METADATA).read_text())["files"]) == 1


# --------------------------------------------------------------------------------------------- events


def test_a_failing_subscriber_is_logged_and_the_writer_goes_on(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    events = Events()
    seen: list[Event] = []

    def broken(ev: Event) -> None:
        raise RuntimeError("subscriber bug")

    events.subscribe(broken)
    events.subscribe(seen.append)
    w = new_chain(root, Limits(segment_max_bytes=100, segment_max_seconds=3600), events)
    s = Stream(START)
    with caplog.at_level(logging.ERROR, logger="redis_backup.chain.events"):
        for c in sets(6):
            w.append(s.chunk(c), T0)
    assert "an event subscriber failed" in caplog.text and "subscriber bug" in caplog.text
    meta = check_consistent(chain_dir(root))
    assert [e.name for e in seen if isinstance(e, FileSealed)] == [f.name for f in meta.incr_files[:-1]]
    assert w.offset == s.offset


def test_unsubscribe() -> None:
    events = Events()
    seen: list[Event] = []
    stop = events.subscribe(seen.append)
    ev = ChainClosed("c", "r", 1)
    events.emit(ev)
    stop()
    stop()
    events.emit(ev)
    assert seen == [ev]


def test_an_event_follows_the_metadata_that_records_it(root: Path) -> None:
    """A subscriber that reads the chain when told finds the sealed file already in the metadata."""
    events = Events()
    d: list[Path] = []
    checked: list[str] = []

    def on(ev: Event) -> None:
        if isinstance(ev, ChainBegun):
            d.append(root / ev.chain)
            assert md.load(d[0]).files[0].sha256 == ev.sha256
        elif isinstance(ev, FileSealed):
            f = next(f for f in md.load(d[0]).files if f.name == ev.name)
            assert f.sha256 == ev.sha256 and (d[0] / f.name).stat().st_size == ev.size
            checked.append(ev.name)
        else:
            assert md.load(d[0]).closed

    events.subscribe(on)
    w = new_chain(root, Limits(segment_max_bytes=100, segment_max_seconds=3600), events)
    s = Stream(START)
    for c in sets(4):
        w.append(s.chunk(c), T0)
    w.close("done", T0 + 1)
    assert len(checked) == len(md.load(d[0]).incr_files)


# --------------------------------------------------------------------------------------------- flat cost


def test_the_writer_keeps_no_list_of_files_and_the_head_stays_small(root: Path) -> None:
    w = new_chain(root, Limits(segment_max_bytes=60, segment_max_seconds=3600))
    s = Stream(START)
    sizes = []
    for i, c in enumerate(sets(300, size=40)):
        w.append(s.chunk(c), T0 + i)
        if i in (10, 299):
            w.write_metadata()
            sizes.append((chain_dir(root) / naming.METADATA).stat().st_size)
    assert len(w.meta.files) == 1 and w.meta.journal_records >= 150
    assert sizes[1] - sizes[0] < 40  # a few digits more, not a record per file
    assert len(check_consistent(chain_dir(root)).incr_files) == w.meta.journal_records


def test_recovery_cuts_at_bytes_that_are_not_a_command_and_keeps_the_seconds(root: Path) -> None:
    w = new_chain(root, Limits())
    s = Stream(START)
    whole = cmd("SET", "a", "1") + cmd("MULTI") + cmd("SET", "b", "2") + cmd("EXEC")
    w.append(s.chunk(whole), T0 + 7)
    crash(w)
    d = chain_dir(root)
    with open(d / naming.incr_file(1), "ab") as f:
        f.write(b"#TS:%d\r\n" % (T0 + 9) + b"garbage\r\n" + cmd("SET", "c", "3"))
    w2 = recover(d, limits=Limits(), now=T0 + 10)
    data = (d / naming.incr_file(1)).read_bytes()
    assert data.endswith(b"#TS:%d\r\n" % (T0 + 9))  # the whole annotation stays, what follows is cut
    assert w2.offset == START + len(whole) and not w2.in_multi
    assert w2.current.first_ts == int(T0 + 7) and w2.current.last_ts == int(T0 + 9)
    w2.append(Stream(w2.offset).chunk(cmd("SET", "d", "4")), T0 + 9)  # same second: no second #TS line
    assert (d / naming.incr_file(1)).read_bytes().count(b"#TS:%d" % (T0 + 9)) == 1


# --------------------------------------------------------------------------------------------- ship points


def _sync(w: ChainWriter) -> None:
    fd, offset = w.sync_point()
    writer_mod.os.fsync(fd)
    writer_mod.os.close(fd)
    w.synced(offset)


def test_a_ship_point_holds_only_durable_whole_commands_and_vouches_only_for_what_it_holds(root: Path) -> None:
    w = new_chain(root, Limits())
    s = Stream(START)
    a, b = cmd("SET", "a", "1"), cmd("SET", "b", "2")
    w.append(s.chunk(a), T0)
    w.confirmed(T0 + 0.5)  # everything before T0+0.5 has arrived: command a
    w.append(s.chunk(b[:5]), T0 + 1)  # half of b, not yet fsync'd
    point = w.ship_point()
    assert point is not None and point.pos == 0 and point.offset == START  # nothing durable yet
    assert point.head.verified_until is None  # the copy holds nothing the confirmation vouches for
    _sync(w)
    point = w.ship_point()
    assert point is not None
    data = (chain_dir(root) / point.name).read_bytes()
    assert data[: point.pos].endswith(a) and point.offset == START + len(a)  # the half command is not in it
    assert point.head.end_offset == point.offset and point.head.verified_until == T0 + 0.5
    w.append(s.chunk(b[5:]), T0 + 1)
    w.confirmed(T0 + 1.5)  # vouches for b, which no copy holds until it is durable
    assert w.ship_point().head.verified_until == T0 + 0.5  # type: ignore[union-attr]
    _sync(w)
    point = w.ship_point()
    assert point is not None and point.offset == START + len(a) + len(b) and point.head.verified_until == T0 + 1.5
