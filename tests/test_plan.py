"""Restore planning as data: chain records and file indexes in, a plan or a clear refusal out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from redis_backup.chain.catalog import ChainRecord, FileRecord
from redis_backup.chain.metadata import Gap
from redis_backup.chain.tsindex import FileIndex, TsMark, index_incr_file
from redis_backup.errors import ConfigError
from redis_backup.restore.plan import (
    PlanError,
    RestorePlan,
    choose_chain,
    describe_windows,
    file_to_cut,
    nearest_exact,
    plan_restore,
    resolve_time,
    windows,
)
from redis_backup.times import iso, parse_time
from redis_backup.wire.resp import encode_command

HEADER = 23  # len(SELECT <db>) for a one-digit db
T0 = 1_795_600_000  # the seconds used below are T0 + small numbers


def ts_len(t: int) -> int:
    return len(b"#TS:%d\r\n" % t)


class Built:
    """A chain as data: per incr file a list of (second, bytes of commands recorded in it)."""

    def __init__(
        self,
        chain: str,
        snapshot: float,
        files: list[list[tuple[int, int]]],
        *,
        closed: bool = False,
        tail: int = 0,
        tail_in_multi: int = 0,
    ) -> None:
        self.indexes: dict[str, FileIndex] = {}
        records = [
            FileRecord(
                "appendonly.aof.1.base.rdb",
                "base",
                1,
                0,
                0,
                0,
                0,
                int(snapshot),
                int(snapshot),
                500,
                "b" * 64,
            )
        ]
        offset = 0
        for n, segments in enumerate(files, 1):
            name = f"appendonly.aof.{n}.incr.aof"
            header = 0 if n == 1 else HEADER
            pos, start = header, offset
            marks = []
            for second, size in segments:
                marks.append(TsMark(second, pos, offset))
                pos += ts_len(second) + size
                offset += size
            last = n == len(files)
            is_open = last and not closed
            safe_pos, safe_offset = pos, offset
            end_pos, end_offset = pos, offset
            size = pos
            if last:  # an open MULTI, then a command still arriving, at the very end
                end_pos += tail_in_multi
                end_offset += tail_in_multi
                size = end_pos + tail
            self.indexes[name] = FileIndex(
                name=name,
                size=size,
                header_size=header,
                start_offset=start,
                marks=tuple(marks),
                end_pos=end_pos,
                end_offset=end_offset,
                safe_pos=safe_pos,
                safe_offset=safe_offset,
            )
            records.append(
                FileRecord(
                    name,
                    "incr",
                    n,
                    start,
                    None if is_open else end_offset,
                    header,
                    0,
                    marks[0].ts if marks else None,
                    marks[-1].ts if marks else None,
                    None if is_open else size,
                    None if is_open else f"{n:064x}",
                )
            )
        self.record = ChainRecord(
            chain=chain,
            primary="db:6379",
            replid="a" * 40,
            closed=closed,
            snapshot_at=snapshot,
            start_offset=0,
            end_offset=offset,
            files=tuple(records),
        )

    def plan(self, at: int | None, index: FileIndex | None = None) -> RestorePlan:
        f = file_to_cut(self.record, at)
        return plan_restore(self.record, at=at, index=index or (self.indexes[f.name] if f else None))


def old_and_new() -> tuple[Built, Built]:
    old = Built(
        "20261125T000000Z-aaaaaaaa-0",
        T0 + 0.4,
        [[(T0, 10), (T0 + 1, 10)], [(T0 + 2, 10), (T0 + 5, 10)], [(T0 + 6, 10)]],
        closed=True,
    )
    new = Built("20261125T000100Z-bbbbbbbb-70", T0 + 20.7, [[(T0 + 21, 10), (T0 + 22, 10)], [(T0 + 30, 10)]], tail=7)
    return old, new


# --------------------------------------------------------------------------------------------- choice


def test_latest_is_the_newest_chain_cut_after_its_last_complete_command() -> None:
    old, new = old_and_new()
    chain = choose_chain([old.record, new.record], at=None)
    assert chain is new.record
    plan = new.plan(None)
    assert [f.name for f in plan.files] == [
        "appendonly.aof.1.base.rdb",
        "appendonly.aof.1.incr.aof",
        "appendonly.aof.2.incr.aof",
    ]
    last = plan.incr[-1]
    ix = new.indexes[last.name]
    assert last.copy_bytes == ix.safe_pos < ix.size  # the 7-byte partial command stays behind
    assert last.cut and last.cut_before_ts is None and last.sha256 is None
    assert plan.end_offset == 30 and plan.included_until == T0 + 30
    assert plan.expected_size == 500 + new.indexes["appendonly.aof.1.incr.aof"].size + ix.safe_pos


def test_time_picks_the_newest_chain_that_covers_it() -> None:
    old, new = old_and_new()
    chains = [new.record, old.record]  # order does not matter
    assert choose_chain(chains, at=T0 + 3) is old.record
    assert choose_chain(chains, at=T0 + 20) is new.record  # the snapshot's own second
    assert choose_chain(chains, at=T0 + 30) is new.record
    # overlapping chains: the newer wins where both cover the second
    overlap = Built("20261125T000010Z-cccccccc-5", T0 + 4.0, [[(T0 + 4, 1), (T0 + 9, 1)]], closed=True)
    assert choose_chain([old.record, overlap.record], at=T0 + 5) is overlap.record
    assert choose_chain([old.record, overlap.record], at=T0 + 3) is old.record


@pytest.mark.parametrize("at", [T0 - 1, T0 + 7, T0 + 19, T0 + 31])
def test_time_outside_the_window_is_refused_with_the_window(at: int) -> None:
    old, new = old_and_new()
    with pytest.raises(PlanError) as e:
        choose_chain([old.record, new.record], at=at)
    text = str(e.value)
    assert iso(at) in text
    assert f"restorable windows: {iso(T0)} .. {iso(T0 + 6)}, {iso(T0 + 20)} .. {iso(T0 + 30)}" in text


def test_chain_by_id() -> None:
    old, new = old_and_new()
    chains = [old.record, new.record]
    assert choose_chain(chains, at=None, chain_id=old.record.chain) is old.record
    assert choose_chain(chains, at=T0 + 2, chain_id=old.record.chain) is old.record
    with pytest.raises(PlanError, match=r"is outside chain 20261125T000000Z-aaaaaaaa-0 .*restorable windows"):
        choose_chain(chains, at=T0 + 21, chain_id=old.record.chain)
    with pytest.raises(PlanError, match=r"no chain 20261125T000000Z-dddddddd-0; restorable windows"):
        choose_chain(chains, at=None, chain_id="20261125T000000Z-dddddddd-0")


def test_no_chains() -> None:
    with pytest.raises(PlanError, match="no backups"):
        choose_chain([], at=None)


def test_windows_merge_touching_seconds() -> None:
    a = Built("20261125T000000Z-aaaaaaaa-0", T0, [[(T0 + 1, 1), (T0 + 4, 1)]], closed=True)
    b = Built("20261125T000005Z-bbbbbbbb-9", T0 + 5.9, [[(T0 + 6, 1)]])
    c = Built("20261125T000009Z-cccccccc-9", T0 + 9.0, [[]])
    assert windows([b.record, a.record, c.record]) == [(T0, T0 + 6), (T0 + 9, T0 + 9)]
    assert describe_windows([]) == "there are no backups to restore from"


# --------------------------------------------------------------------------------------------- cuts


def test_cut_in_the_middle_of_a_file() -> None:
    old, _ = old_and_new()
    plan = old.plan(T0 + 3)  # file 2 holds T0+2 and T0+5: cut where #TS T0+5 begins
    ix2 = old.indexes["appendonly.aof.2.incr.aof"]
    assert [f.name for f in plan.incr] == ["appendonly.aof.1.incr.aof", "appendonly.aof.2.incr.aof"]
    first, cut = plan.incr
    assert not first.cut and first.copy_bytes == first.size
    assert cut.copy_bytes == ix2.marks[1].pos and cut.cut_before_ts == T0 + 5
    assert cut.end_offset == ix2.marks[1].offset == 30
    assert cut.sha256 is not None  # closed: its checksum (over the whole file) is still checked
    assert plan.included_until == T0 + 2 and plan.at == T0 + 3


def test_cut_at_the_first_ts_of_a_file_drops_the_file() -> None:
    old, _ = old_and_new()
    plan = old.plan(T0 + 1)  # file 2 begins (after its header) with #TS T0+2
    assert [f.name for f in plan.incr] == ["appendonly.aof.1.incr.aof"]
    assert not plan.incr[0].cut and plan.end_offset == 20


def test_snapshot_second_before_any_command_is_the_base_alone() -> None:
    b = Built("20261125T000000Z-aaaaaaaa-0", T0 + 0.5, [[(T0 + 2, 10)]])
    plan = b.plan(T0)
    assert plan.incr == () and plan.end_offset == 0 and plan.included_until == T0
    assert [f.name for f in plan.files] == ["appendonly.aof.1.base.rdb"]


def test_time_at_the_last_second_takes_everything_complete() -> None:
    old, _ = old_and_new()
    plan = old.plan(T0 + 6)
    assert len(plan.incr) == 3 and not plan.incr[-1].cut and plan.end_offset == 50


def test_open_multi_at_the_end_is_left_out() -> None:
    b = Built("20261125T000000Z-aaaaaaaa-0", T0, [[(T0, 10), (T0 + 1, 10)]], tail_in_multi=40, tail=3)
    plan = b.plan(None)
    ix = b.indexes["appendonly.aof.1.incr.aof"]
    assert plan.incr[-1].copy_bytes == ix.safe_pos < ix.end_pos < ix.size
    assert plan.end_offset == 20  # not the 40 bytes of MULTI... nor the partial command


def test_multi_straddling_a_second_change_is_all_in_or_all_out(tmp_path: Path) -> None:
    """The real index of what the writer stores: the #TS of the next second follows EXEC."""
    c = encode_command
    tx = c("MULTI") + c("SET", "a", "1") + c("SET", "b", "1") + c("EXEC")
    body = b"#TS:%d\r\n" % (T0 + 1) + c("SELECT", 0) + c("SET", "x", "1") + tx
    body += b"#TS:%d\r\n" % (T0 + 2) + c("SET", "y", "1") + b"#TS:%d\r\n" % (T0 + 3) + c("MULTI") + c("SET", "z", 1)
    path = tmp_path / "appendonly.aof.1.incr.aof"
    path.write_bytes(body)
    ix = index_incr_file(path, header_size=0, start_db=0, start_offset=0)
    b = Built("20261125T000000Z-aaaaaaaa-0", T0, [[]])
    rec = replace(b.record, files=(b.record.files[0], replace(b.record.files[1], first_ts=T0 + 1, last_ts=T0 + 3)))
    cuts = {}
    for at in (T0, T0 + 1, T0 + 2, T0 + 3, None):
        plan = plan_restore(rec, at=at, index=ix)
        cuts[at] = body[: plan.incr[0].copy_bytes] if plan.incr else b""
    assert cuts[T0] == b""
    assert cuts[T0 + 1].endswith(tx)  # the transaction is in, whole
    assert cuts[T0 + 2].endswith(c("SET", "y", "1"))
    assert cuts[T0 + 3] == cuts[None] == cuts[T0 + 2] + b"#TS:%d\r\n" % (T0 + 3)  # the open MULTI is out


def test_damaged_index_is_refused() -> None:
    old, _ = old_and_new()
    f = file_to_cut(old.record, T0 + 3)
    assert f is not None
    ix = old.indexes[f.name]
    with pytest.raises(PlanError, match=r"aaaaaaaa-0/appendonly.aof.2.incr.aof: not a valid .*restore refused"):
        old.plan(T0 + 3, replace(ix, error="not a valid command stream after byte 23: junk"))
    unsafe = replace(ix, marks=(ix.marks[0], replace(ix.marks[1], safe=False)))
    with pytest.raises(PlanError, match="inside MULTI/EXEC"):
        old.plan(T0 + 3, unsafe)
    with pytest.raises(PlanError, match=rf"is {ix.size + 1} bytes, the metadata says {ix.size}"):
        old.plan(T0 + 3, replace(ix, size=ix.size + 1))
    with pytest.raises(PlanError, match="does not begin with SELECT"):
        old.plan(T0 + 3, replace(ix, header_ok=False))
    with pytest.raises(ValueError, match=r"needs the index of appendonly\.aof\.2\.incr\.aof"):
        old.plan(T0 + 3, old.indexes["appendonly.aof.1.incr.aof"])


def test_a_non_last_file_without_checksum_is_refused() -> None:
    old, _ = old_and_new()
    files = list(old.record.files)
    files[1] = replace(files[1], sha256=None)
    rec = replace(old.record, files=tuple(files))
    with pytest.raises(PlanError, match="is not closed but newer files follow"):
        plan_restore(rec, at=T0 + 3, index=old.indexes["appendonly.aof.2.incr.aof"])


def test_plan_renders() -> None:
    old, _ = old_and_new()
    plan = old.plan(T0 + 3)
    doc = plan.to_dict()
    assert doc["chain"] == old.record.chain and doc["at_unix"] == T0 + 3
    assert [f["cut"] for f in doc["files"]] == [False, False, True]
    assert doc["files"][2]["cut_before_ts"] == T0 + 5
    assert "cut before #TS " + iso(T0 + 5) in plan.render()


# --------------------------------------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T18:00:05Z", 1795629605),
        ("2026-11-25T18:00:05", 1795629605),  # no zone: UTC
        ("2026-11-25T19:00:05+01:00", 1795629605),
        ("2026-11-25T18:00:05.900Z", 1795629605),  # granularity: the second it falls in
        ("1795629605", 1795629605),
        ("1795629605.7", 1795629605),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text) == expected
    assert iso(expected) == "2026-11-25T18:00:05Z"


@pytest.mark.parametrize("text", ["yesterday", "", "-5", "2026-13-01T00:00:00Z"])
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid --at"):
        parse_time(text)


# --------------------------------------------------------------------------------------------- gaps


def with_gaps(built: Built, *gaps: Gap) -> ChainRecord:
    return replace(built.record, gaps=gaps)


def test_gaps_are_cut_out_of_the_window_and_split_it() -> None:
    old, new = old_and_new()
    # old chain: T0 .. T0+6; the service was away from T0+2 and caught up at T0+5
    rec = with_gaps(old, Gap(T0 + 2, T0 + 5, 20, "reconnected"))
    assert rec.exact_spans == [(T0, T0 + 1), (T0 + 5, T0 + 6)]
    assert windows([rec, new.record]) == [(T0, T0 + 1), (T0 + 5, T0 + 6), (T0 + 20, T0 + 30)]
    # a gap at the start (the snapshot's transfer), and one never caught up with
    rec = with_gaps(old, Gap(T0, T0 + 1, 0, "snapshot"), Gap(T0 + 5, None, 30, "reconnected"))
    assert rec.exact_spans == [(T0 + 1, T0 + 4)]
    # a gap caught up with after the last second recorded leaves nothing after it
    rec = with_gaps(old, Gap(T0 + 6, T0 + 9, 40, "reconnected"))
    assert rec.exact_spans == [(T0, T0 + 5)]


@pytest.mark.parametrize("at", [T0 + 2, T0 + 3, T0 + 4])
def test_a_second_inside_a_gap_is_refused_naming_the_gap_and_the_nearest_exact_seconds(at: int) -> None:
    old, new = old_and_new()
    chains = [with_gaps(old, Gap(T0 + 2, T0 + 5, 20, "reconnected")), new.record]
    with pytest.raises(PlanError) as e:
        choose_chain(chains, at=at)
    msg = str(e.value)
    assert f"{iso(at)} is inside a gap in capture of chain {old.record.chain}" in msg
    assert f"({iso(T0 + 2)} .. {iso(T0 + 4)}: the service was not receiving" in msg
    assert f"nearest exact seconds: {iso(T0 + 1)} before, {iso(T0 + 5)} after" in msg
    assert f"--before-gap restores {iso(T0 + 1)}" in msg
    with pytest.raises(PlanError, match="inside a gap"):  # also when the chain is named
        choose_chain(chains, at=at, chain_id=old.record.chain)
    assert resolve_time(chains, at, before_gap=True) == T0 + 1
    assert resolve_time(chains, at) == at
    # the seconds on both sides are exact and plan normally
    assert choose_chain(chains, at=T0 + 1) is chains[0]
    assert choose_chain(chains, at=T0 + 5) is chains[0]


def test_the_nearest_exact_second_may_be_in_another_chain_or_missing() -> None:
    old, new = old_and_new()
    chains = [old.record, with_gaps(new, Gap(T0 + 20, T0 + 22, 70, "snapshot"))]
    assert nearest_exact(chains, T0 + 21) == (T0 + 6, T0 + 22)
    with pytest.raises(PlanError, match="the snapshot was being transferred"):
        choose_chain(chains, at=T0 + 20)
    assert resolve_time(chains, T0 + 21, before_gap=True) == T0 + 6
    # nothing before: --before-gap cannot help, the refusal stands
    only = [with_gaps(new, Gap(T0 + 20, T0 + 22, 70, "snapshot"))]
    assert resolve_time(only, T0 + 21, before_gap=True) == T0 + 21
    with pytest.raises(PlanError, match="nearest exact seconds: none before"):
        choose_chain(only, at=T0 + 21)
    # outside every chain is still "outside", not a gap
    with pytest.raises(PlanError, match="outside the backups"):
        choose_chain(chains, at=T0 + 10)


def test_an_open_gap_refuses_every_later_second_but_not_the_latest_state() -> None:
    _, new = old_and_new()
    chains = [with_gaps(new, Gap(T0 + 22, None, 80, "reconnected"))]
    with pytest.raises(PlanError, match="not caught up yet"):
        choose_chain(chains, at=T0 + 30)
    assert choose_chain(chains, at=None) is chains[0]
    assert choose_chain(chains, at=T0 + 21) is chains[0]
