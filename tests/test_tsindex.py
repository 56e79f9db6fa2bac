"""tsindex: #TS positions, safe ends and damage, the same whatever the read chunk size."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redis_backup.chain.tsindex import FileIndex, TsMark, index_incr_file
from redis_backup.wire.resp import encode_command


def ts(n: int) -> bytes:
    return b"#TS:%d\r\n" % n


def cmd(*args: str | bytes | int) -> bytes:
    return encode_command(*args)


def index(
    tmp_path: Path,
    data: bytes,
    *,
    header: bytes = b"",
    db: int = 0,
    offset: int = 100,
    chunk: int = 1 << 20,
    hash: bool = False,
) -> FileIndex:
    path = tmp_path / "appendonly.aof.2.incr.aof"
    path.write_bytes(header + data)
    return index_incr_file(path, header_size=len(header), start_db=db, start_offset=offset, hash=hash, chunk=chunk)


def test_marks_positions_and_offsets(tmp_path: Path) -> None:
    header = cmd("SELECT", 3)
    a = cmd("SET", "a", "1")
    b = cmd("SET", "b", b"#TS:7\r\n")  # a value that looks like an annotation is not one
    body = ts(10) + a + ts(11) + b
    ix = index(tmp_path, body, header=header, db=3, hash=True)
    h = len(header)
    assert ix.header_ok and ix.error is None and not ix.incomplete_tail
    assert ix.marks == (
        TsMark(10, h, 100),
        TsMark(11, h + len(ts(10)) + len(a), 100 + len(a)),
    )
    assert ix.end_pos == ix.safe_pos == ix.size == h + len(body)
    assert ix.end_offset == ix.safe_offset == 100 + len(a) + len(b)
    assert (ix.first_ts, ix.last_ts) == (10, 11)
    assert ix.sha256 is not None and len(ix.sha256) == 64


def test_open_multi_and_incomplete_tail(tmp_path: Path) -> None:
    done = ts(5) + cmd("SET", "x", "1")
    multi = cmd("MULTI") + cmd("SET", "a", "1")
    partial = cmd("SET", "b", "2")[:-3]
    ix = index(tmp_path, done + multi + partial)
    assert ix.safe_pos == len(done)  # a file may only end before the MULTI
    assert ix.end_pos == len(done + multi)  # the last complete command
    assert ix.incomplete_tail and ix.error is None
    assert ix.safe_offset == 100 + len(cmd("SET", "x", "1"))
    assert ix.end_offset == ix.safe_offset + len(multi)


def test_transaction_spanning_seconds_has_its_ts_after_exec(tmp_path: Path) -> None:
    """What the writer produces when a transaction arrives across a second change."""
    tx = cmd("MULTI") + cmd("SET", "a", "1") + cmd("SET", "b", "1") + cmd("EXEC")
    body = ts(1) + cmd("SET", "x", "1") + tx + ts(2) + cmd("SET", "y", "1")
    ix = index(tmp_path, body)
    assert [m.ts for m in ix.marks] == [1, 2]
    assert all(m.safe for m in ix.marks)
    assert ix.marks[1].pos == body.index(ts(2))


def test_ts_inside_multi_is_flagged_unsafe(tmp_path: Path) -> None:
    body = ts(1) + cmd("MULTI") + cmd("SET", "a", "1") + ts(2) + cmd("EXEC")
    ix = index(tmp_path, body)
    assert [(m.ts, m.safe) for m in ix.marks] == [(1, True), (2, False)]


def test_bad_header_and_garbage(tmp_path: Path) -> None:
    ix = index(tmp_path, ts(1) + cmd("SET", "a", "1"), header=cmd("SELECT", 1), db=2)
    assert not ix.header_ok
    ix = index(tmp_path, ts(1) + cmd("SET", "a", "1") + b"garbage\r\n" + ts(2))
    assert ix.error is not None and "after byte" in ix.error
    assert [m.ts for m in ix.marks] == [1]


def test_out_of_order_ts(tmp_path: Path) -> None:
    ix = index(tmp_path, ts(5) + cmd("PING") + ts(4) + cmd("PING"))
    assert ix.ts_out_of_order


def test_hash_covers_whole_file_even_after_damage(tmp_path: Path) -> None:
    import hashlib

    data = ts(1) + b"*x\r\n" + b"z" * 5000
    ix = index(tmp_path, data, hash=True, chunk=7)
    assert ix.error is not None
    assert ix.sha256 == hashlib.sha256(data).hexdigest()


# A stream of items: (kind, payload); built into bytes together with the expected marks.
_value = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"#TS:", b"\r\n#TS:9\r\n", b"#", b"#TS:12", b"\n#TS:1\r\n*1\r\n"]),
)
_item = st.one_of(
    st.tuples(st.just("set"), _value),
    st.tuples(st.just("tx"), st.lists(_value, min_size=1, max_size=3)),
    st.tuples(st.just("ts"), st.integers(0, 3)),
)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(_item, max_size=25), chunk=st.integers(1, 64), cut=st.integers(0, 30))
def test_index_does_not_depend_on_chunking(
    tmp_path_factory: pytest.TempPathFactory, items: list[tuple[str, object]], chunk: int, cut: int
) -> None:
    tmp = tmp_path_factory.mktemp("ix")
    data = b""
    marks: list[TsMark] = []
    stream = 0
    second = 1000
    for kind, payload in items:
        if kind == "ts":
            assert isinstance(payload, int)
            second += payload
            marks.append(TsMark(second, len(data), 100 + stream))
            data += ts(second)
        else:
            raw = payload if isinstance(payload, list) else [payload]
            values = [v for v in raw if isinstance(v, bytes)]
            assert len(values) == len(raw)
            block = b"".join(cmd("SET", b"k", v) for v in values)
            if kind == "tx":
                block = cmd("MULTI") + block + cmd("EXEC")
            data += block
            stream += len(block)
    whole = index(tmp, data)
    assert whole.marks == tuple(marks)
    assert whole.error is None and whole.end_pos == whole.safe_pos == len(data)
    assert whole.end_offset == 100 + stream
    assert index(tmp, data, chunk=chunk) == whole
    # and a torn tail: the marks before it stay, the safe end is a real boundary of the whole file
    torn = data[: max(len(data) - cut, 0)]
    ix = index(tmp, torn, chunk=chunk)
    assert ix.error is None
    assert ix.marks == tuple(m for m in marks if m.pos + len(ts(m.ts)) <= len(torn))
    assert ix.safe_pos <= len(torn)
    assert index(tmp, data[: ix.safe_pos]).safe_pos == ix.safe_pos
