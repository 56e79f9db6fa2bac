"""StreamScanner: command boundaries in the replication stream, resumable at any byte.

The expectations come from tests/support/reference.py (a whole-buffer parser sharing no code with
redis_backup.wire.resp) and from real replication streams recorded from redis-server 7.0.15
(tests/data/capture-*.bin, see tests/support/capture.py).
"""

from __future__ import annotations

import inspect
import random
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redis_backup.errors import ProtocolError
from redis_backup.wire import resp
from redis_backup.wire.resp import StreamScanner, encode_command
from tests.support.capture import Capture
from tests.support.reference import Chunk, Stream, encode
from tests.support.splits import pieces, random_pieces, split_positions
from tests.support.strategies import cuts_for, streams

DATA = Path(__file__).parent / "data"
# The scanner may have a C fast path for whole commands (resp._fast_scan); the Python code is the
# reference. Where it can be switched off, the main tests run both ways.
IMPLS = ["c", "python"] if "accelerate" in inspect.signature(StreamScanner).parameters else ["default"]
STREAM_CAPTURES = ("diskless", "disk", "continue")
BIG = 1024  # bulks longer than this are opaque: split tests sample their middles


def new_scanner(impl: str = "default", **kwargs: Any) -> StreamScanner:
    if impl == "python":
        kwargs["accelerate"] = False
    return StreamScanner(**kwargs)


def load_stream(name: str) -> Stream:
    cap = Capture.load(DATA, name)
    return Stream(cap.wire[cap.stream_start :], db=cap.start_db)


def reported(sc: StreamScanner) -> Chunk:
    return Chunk(
        first_safe=sc.first_safe,
        last_safe=sc.last_safe,
        last_safe_db=sc.last_safe_db if sc.last_safe >= 0 else None,
        last_boundary=sc.last_boundary,
        db=sc.db,
        in_multi=sc.in_multi,
        writes=sc.writes,
        getack=sc.getack,
        commands=sc.commands,
        annotation_bytes=sc.annotation_bytes,
        at_boundary=sc.at_boundary,
    )


def feed_checked(
    stream: Stream, cuts: Sequence[int], *, annotations: bool = False, impl: str = "default", reuse: bool = False
) -> StreamScanner:
    """Feed stream.data cut at ``cuts``; after every chunk the scanner must report what the reference
    parser says about that chunk.  Returns the scanner.

    reuse: feed memoryviews of one buffer that is overwritten after each chunk (as the driver does)."""
    sc = new_scanner(impl, db=stream.db0, in_multi=stream.multi0, annotations=annotations)
    buf = bytearray(len(stream.data))
    for a, chunk in pieces(stream.data, cuts):
        if reuse:
            buf[: len(chunk)] = chunk
            sc.feed(memoryview(buf)[: len(chunk)])
            buf[: len(chunk)] = b"\xee" * len(chunk)
        else:
            sc.feed(chunk)
        expected = stream.expect_chunk(a, a + len(chunk))
        assert reported(sc) == expected, f"chunk {a}..{a + len(chunk)} of {len(stream.data)}"
    return sc


def big_regions(stream: Stream) -> list[tuple[int, int]]:
    """The middles of bulks longer than BIG (64 bytes at each edge stay in)."""
    out = []
    for it in stream.items:
        for arg in it.args:
            if len(arg) > BIG:
                at = stream.data.index(arg, it.start)
                out.append((at + 64, at + len(arg) - 64))
    return out


# --------------------------------------------------------------------------------------------- captures


@pytest.mark.parametrize("name", STREAM_CAPTURES)
def test_capture_is_a_rich_real_stream(name: str) -> None:
    """The recorded streams hold what the split tests are meant to exercise."""
    stream = load_stream(name)
    names = [it.name for it in stream.items]
    assert {b"SELECT", b"MULTI", b"EXEC", b"SET", b"XADD", b"REPLCONF"} <= set(names)
    assert any(it.getack for it in stream.items)
    assert {it.db for it in stream.items} >= {0, 1, 5}
    assert any(len(arg) == 100 * 1024 for it in stream.items for arg in it.args)
    assert any(b"\r\n" in arg for it in stream.items for arg in it.args[1:])
    assert any(it.in_multi for it in stream.items)
    if name != "disk":
        assert stream.items[-1].args == (b"ping",)  # the primary's own PING, lower case on the wire


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", STREAM_CAPTURES)
def test_capture_whole(impl: str, name: str) -> None:
    stream = load_stream(name)
    sc = feed_checked(stream, [], impl=impl)
    assert sc.at_boundary and not sc.in_multi
    assert sc.commands == len(stream.items)
    assert sc.last_boundary == len(stream.data) == sc.last_safe
    assert sc.first_safe == 0 and sc.getack and sc.writes


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", STREAM_CAPTURES)
def test_capture_byte_by_byte_finds_every_boundary(impl: str, name: str) -> None:
    stream = load_stream(name)
    sc = new_scanner(impl, db=stream.db0)
    boundaries: set[int] = set()
    safe: set[int] = set()
    getacks: list[int] = []
    dbs: dict[int, int] = {}
    for a in range(len(stream.data)):
        sc.feed(stream.data[a : a + 1])
        if sc.last_boundary >= 0:
            boundaries.add(a + sc.last_boundary)
            dbs[a + 1] = sc.db
        if sc.last_safe > 0:
            safe.add(a + sc.last_safe)
        if sc.getack:
            getacks.append(a + 1)
    assert boundaries == stream.boundaries
    assert safe == set(stream.safe) - {0}
    assert getacks == [it.end for it in stream.items if it.getack]
    assert dbs == {it.end: it.db for it in stream.items}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", STREAM_CAPTURES)
def test_capture_split_at_every_position(impl: str, name: str) -> None:
    stream = load_stream(name)
    positions = split_positions(len(stream.data), skip=big_regions(stream), sample=300, seed=name)
    assert len(positions) > 1000
    for p in positions:
        feed_checked(stream, [p], impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", STREAM_CAPTURES)
def test_capture_split_into_random_pieces(impl: str, name: str) -> None:
    stream = load_stream(name)
    rng = random.Random(name)
    for i, max_piece in enumerate((7, 300, 8192) * 2):
        feed_checked(stream, random_pieces(len(stream.data), rng, max_piece), impl=impl, reuse=i >= 3)


@given(st.binary(max_size=300), st.binary(min_size=0, max_size=4), st.integers(-5, 310), st.integers(-5, 310))
def test_find_on_a_memoryview_is_bytes_find(hay: bytes, needle: bytes, start: int, end: int) -> None:
    start, end = max(start, 0), max(end, 0)
    assert resp.find(memoryview(hay), needle, start, end) == hay.find(needle, start, end)
    assert resp.find(memoryview(hay), needle, start) == hay.find(needle, start)
    assert resp.find(hay, needle, start, end) == hay.find(needle, start, end)


def annotated(stream: Stream, start_ts: int, step: int) -> tuple[bytes, list[int]]:
    """The stream with a ``#TS:`` line at every other safe boundary (as the chain writer stores it)."""
    out, ts_list, pos, ts = [], [], 0, start_ts
    for i, p in enumerate(stream.safe):
        if i % 2:
            continue
        out.append(stream.data[pos:p])
        out.append(b"#TS:%d\r\n" % ts)
        ts_list.append(ts)
        ts += step
        pos = p
    out.append(stream.data[pos:])
    return b"".join(out), ts_list


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["diskless", "continue"])
def test_annotated_capture(impl: str, name: str) -> None:
    plain = load_stream(name)
    data, stamps = annotated(plain, 1_764_000_000, 1)
    stream = Stream(data, db=plain.db0, annotations=True)
    assert len(stamps) > 10 and len(stream.items) == len(plain.items) + len(stamps)
    positions = split_positions(len(data), skip=big_regions(stream), sample=100, seed=name)
    for p in positions[::3]:
        sc = feed_checked(stream, [p], annotations=True, impl=impl)
        assert (sc.first_ts, sc.last_ts, sc.ts_out_of_order) == (stamps[0], stamps[-1], False)
    sc = new_scanner(impl, db=plain.db0, annotations=True)
    total = 0
    for _, chunk in pieces(data, range(1, len(data))):
        sc.feed(chunk)
        total += sc.annotation_bytes
    assert total == len(data) - len(plain.data)

    # Going back in time is noted, not refused.
    data, _ = annotated(plain, 1_764_000_000, -1)
    sc = new_scanner(impl, db=plain.db0, annotations=True)
    sc.feed(data)
    assert sc.ts_out_of_order and sc.first_ts == 1_764_000_000 and sc.last_ts is not None
    assert sc.last_ts < sc.first_ts

    # On the wire (annotations=False) a "#" line is not the protocol.
    with pytest.raises(ProtocolError, match="expected a command array"):
        new_scanner(impl).feed(b"#TS:1\r\n")


# --------------------------------------------------------------------------------------------- behaviours


@pytest.mark.parametrize("impl", IMPLS)
def test_select_multi_getack_and_safe_points(impl: str) -> None:
    set_cmd = encode("SET", "k", "v")
    data = (
        encode("SELECT", 3) + set_cmd + encode("MULTI") + encode("SELECT", 7) + set_cmd
        + encode("EXEC") + encode("REPLCONF", "GETACK", "*") + encode("PING")
    )  # fmt: skip
    stream = Stream(data)
    sc = feed_checked(stream, [], impl=impl)
    assert sc.db == 7 and not sc.in_multi and sc.getack and sc.commands == 8
    after_exec = data.index(encode("REPLCONF", "GETACK", "*"))
    # Cut inside the transaction: the chunk's last safe point is before MULTI.
    multi_at = data.index(encode("MULTI"))
    sc = new_scanner(impl)
    sc.feed(data[: multi_at + 20])
    assert (sc.last_safe, sc.last_safe_db, sc.in_multi) == (multi_at, 3, True)
    sc.feed(data[multi_at + 20 :])
    assert sc.first_safe == after_exec - multi_at - 20  # no safe point before EXEC
    assert sc.last_safe_db == 7
    # Only PING/SELECT/REPLCONF (and MULTI/EXEC): no writes.
    sc = new_scanner(impl)
    sc.feed(
        encode("SELECT", 1)
        + encode("ping")
        + encode("replconf", "getack", "*")
        + encode("MULTI")
        + encode("EXEC")
    )
    assert not sc.writes and sc.getack and sc.db == 1
    sc.feed(encode("set", "a", "b"))
    assert sc.writes and not sc.getack
    # A GETACK in the same chunk as other commands, and split in the middle of "GETACK".
    getack = encode("REPLCONF", "GETACK", "*")
    cut = getack.index(b"GET") + 2
    sc = new_scanner(impl)
    sc.feed(set_cmd + getack[:cut])
    assert not sc.getack
    sc.feed(getack[cut:])
    assert sc.getack and sc.commands == 1 and sc.last_boundary == len(getack) - cut


def test_chunk_starting_in_a_transaction_has_no_safe_point_at_zero() -> None:
    sc = StreamScanner(db=2, in_multi=True)
    sc.feed(encode("SET", "a", "b"))
    assert (sc.first_safe, sc.last_safe, sc.last_boundary) == (-1, -1, len(encode("SET", "a", "b")))
    sc.feed(b"")
    assert (sc.first_safe, sc.last_safe) == (-1, -1)
    sc.feed(encode("EXEC"))
    assert sc.first_safe == sc.last_safe == len(encode("EXEC")) and sc.last_safe_db == 2


def test_empty_and_boundary_chunks() -> None:
    sc = StreamScanner(db=4)
    sc.feed(b"")
    assert (sc.first_safe, sc.last_safe, sc.last_safe_db, sc.last_boundary) == (0, 0, 4, -1)
    assert sc.at_boundary
    sc.feed(b"*1\r")
    assert not sc.at_boundary and sc.first_safe == 0 and sc.last_safe == 0
    sc.feed(b"\n")
    assert not sc.at_boundary and (sc.first_safe, sc.last_safe) == (-1, -1)
    sc.feed(b"$4\r\nPING\r\n")
    assert sc.at_boundary and sc.last_boundary == 10


@pytest.mark.parametrize("impl", IMPLS)
def test_error_leaves_results_of_what_came_before(impl: str) -> None:
    """chain.scan_incr_file relies on this: after a ProtocolError the per-chunk results describe the
    bytes before the error."""
    good = encode("SELECT", 9) + encode("SET", "k", "v")
    sc = new_scanner(impl)
    with pytest.raises(ProtocolError):
        sc.feed(good + b"+OK\r\n")
    assert sc.last_boundary == len(good) and sc.db == 9 and sc.commands == 2


# MOVE key db, COPY src dst [DB db] [REPLACE], SWAPDB db1 db2: propagated as they were sent (Redis 7.0
# to 7.4, Valkey 8), they reach a db without SELECT. It counts in max_db (the databases a scratch server
# needs); db, the selected one, is unchanged. Each case: the command, the db it names (None: none) and
# the index of the argument that decides it.
DB_COMMANDS: list[tuple[tuple[str, ...], int | None, int]] = [
    (("MOVE", "k", "25"), 25, 2),
    (("move", "k", "25"), 25, 2),
    (("MOVE", "26", "k"), None, 0),  # a key, not a db
    (("MOVE", "k", "0"), None, 0),  # below the selected db
    (("COPY", "a", "b", "DB", "28"), 28, 4),
    (("copy", "a", "b", "db", "28", "replace"), 28, 4),
    (("COPY", "a", "b", "REPLACE", "Db", "27"), 27, 5),
    (("COPY", "a", "b", "DB", "29", "DB", "3"), 29, 4),  # every DB option counts
    (("COPY", "a", "b", "DB", "0", "DB", "29"), 29, 6),
    (("COPY", "a", "b"), None, 0),  # into the selected db
    (("COPY", "a", "b", "REPLACE"), None, 0),
    (("COPY", "db", "31"), None, 0),  # keys named db and 31
    (("COPY", "a", "db", "31"), None, 0),  # options start at argument 3
    (("COPY", "a", "b", "DB", "DB", "31"), None, 0),  # the argument after DB is its value, not an option
    (("COPY", "a", "b", "DB", "x" * 30, "31"), None, 0),  # ... even when too long to be looked at
    (("SWAPDB", "1", "30"), 30, 2),
    (("swapdb", "30", "1"), 30, 1),
    (("SwapDb", "2", "2"), 2, 1),
    (("SWAPDB", "2", "2", "31"), 2, 1),  # only arguments 1 and 2
    # Not an integer (the primary would not have propagated it): not a protocol error, ignored.
    (("MOVE", "k", "x"), None, 0),
    (("MOVE", "k", ""), None, 0),
    (("MOVE", "k", "-3"), None, 0),
    (("SWAPDB", "x", "y"), None, 0),
    (("COPY", "a", "b", "DB", "x"), None, 0),
    (("MOVE", "k", "9" * 21), None, 0),  # longer than any db index: not looked at
    (("MOVE", "k"), None, 0),
    (("SWAPDB",), None, 0),
]


def arg_ends(data: bytes, at: int) -> list[int]:
    """Where each argument (with its CRLF) of the command at ``at`` ends."""
    pos = data.index(b"\r\n", at) + 2
    ends = []
    for _ in range(int(data[at + 1 : pos - 2])):
        eol = data.index(b"\r\n", pos)
        pos = eol + 2 + int(data[pos + 1 : eol]) + 2
        ends.append(pos)
    return ends


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("args", "named", "decides"), DB_COMMANDS, ids=lambda v: repr(v)[:60])
def test_commands_naming_a_db_count_in_max_db_split_anywhere(
    impl: str, args: tuple[str, ...], named: int | None, decides: int
) -> None:
    cmd = encode(*args)
    data = encode("SELECT", 1) + encode("SET", "k", "v") + cmd + encode("SET", "k2", "v")
    at = data.index(cmd)
    expected = max(1, named) if named is not None else 1
    known_at = arg_ends(data, at)[decides] if named is not None else len(data)
    stream = Stream(data)  # the reference: db stays 1, the command is a write
    assert [it.db for it in stream.items] == [1, 1, 1, 1] and stream.items[2].write
    selected = len(encode("SELECT", 1))

    def after(fed: int) -> tuple[int, int]:
        """(db, max_db) once the first ``fed`` bytes were fed, however they were split."""
        db = 1 if fed >= selected else 0
        return db, expected if fed >= known_at else db

    for cut in range(len(data) + 1):
        sc = feed_checked(stream, [cut], impl=impl)
        assert (sc.db, sc.max_db, sc.last_safe_db) == (1, expected, 1)
        sc = new_scanner(impl)
        sc.feed(data[:cut])
        assert (sc.db, sc.max_db) == after(cut), cut
    sc = new_scanner(impl)
    for a in range(len(data)):  # byte by byte
        sc.feed(data[a : a + 1])
        assert (sc.db, sc.max_db) == after(a + 1), a
    assert (sc.db, sc.max_db, sc.commands) == (1, expected, 1)


@pytest.mark.parametrize("impl", IMPLS)
def test_db_commands_in_a_transaction_and_after_select(impl: str) -> None:
    """The sequence of the bug report, as a primary with 32 databases propagates it (7.2: SELECT inside
    MULTI): max_db is the highest db reached, db the last one selected, at any split."""
    data = (
        encode("SELECT", 0) + encode("SET", "tomove", "m") + encode("MOVE", "tomove", "25")
        + encode("SET", "tocopy", "c") + encode("COPY", "tocopy", "tocopy", "db", "28")
        + encode("SELECT", 1) + encode("SET", "s", "s") + encode("SELECT", 0) + encode("SWAPDB", "1", "30")
        + encode("MULTI") + encode("SELECT", 3) + encode("SET", "intx", "1") + encode("MOVE", "intx", "22")
        + encode("EXEC") + encode("SET", "after", "x")
    )  # fmt: skip
    stream = Stream(data)
    for cut in range(len(data) + 1):
        sc = feed_checked(stream, [cut], impl=impl)
        assert (sc.db, sc.max_db) == (3, 30)
    sc = feed_checked(stream, list(range(1, len(data))), impl=impl)
    assert (sc.db, sc.max_db) == (3, 30)
    # What a COPY said about its arguments does not carry over to the next one.
    data = encode("COPY", "a", "b", "DB", "5") + encode("COPY", "a", "b", "REPLACE", "31")
    for cuts in ([], list(range(1, len(data)))):
        sc = feed_checked(Stream(data), cuts, impl=impl)
        assert (sc.db, sc.max_db) == (0, 5)
    sc = new_scanner(impl, db=7)  # a chain continued in db 7: max_db starts there
    sc.feed(encode("MOVE", "k", "5"))
    assert (sc.db, sc.max_db) == (7, 7)


def test_encode_command() -> None:
    assert encode_command("SET", b"k\r\n", 12) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n"
    assert encode_command("REPLCONF", "ACK", 0) == encode("REPLCONF", "ACK", "0")


# --------------------------------------------------------------------------------------------- garbage

BAD_INPUTS = [
    b"+OK\r\n",
    b"*0\r\n",
    b"*-1\r\n",
    b"*\r\n",
    b"*x\r\n",
    b"*1\n",
    b"\r\n",
    b"*1\r\n:1\r\n",
    b"*1\r\n$-1\r\n",
    b"*1\r\n$-5\r\n",
    b"*1\r\n$\r\n",
    b"*1\r\n$1000000000000\r\n",
    b"*1\r\n$%d\r\n" % (resp.MAX_BULK + 1),
    b"*%d\r\n" % (resp.MAX_ARGS + 1),
    b"*1\r\n$1\r\nab\r\n",
    b"*1\r\n$1\r\na\n\r",
    b"*1\r\n$2\r\nab\r\r",
    b"*2\r\n$6\r\nSELECT\r\n$1\r\nx\r\n",
    b"*2\r\n$6\r\nSELECT\r\n$0\r\n\r\n",
    b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\n\n",
    b"*1" + b"1" * 100 + b"\r\n",
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_bad_input_is_a_protocol_error_whole_and_split(impl: str, bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        new_scanner(impl).feed(bad)
    for cut in range(len(bad) + 1):
        sc = new_scanner(impl)
        with pytest.raises(ProtocolError):
            sc.feed(bad[:cut])
            sc.feed(bad[cut:])


def test_huge_bulk_length_fails_before_any_payload() -> None:
    sc = StreamScanner()
    with pytest.raises(ProtocolError, match="bad bulk length"):
        sc.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000000000\r\n")


@pytest.mark.parametrize(
    ("prefix", "limit", "annotations"),
    [
        (b"*", resp.MAX_LINE, False),
        (b"*2\r\n$", resp.MAX_LINE, False),
        (b"*1\r\n$4\r\nPING\r\n#", resp.MAX_ANNOTATION, True),
        (b"#", resp.MAX_ANNOTATION, False),
    ],
)
def test_endless_line_fails_quickly(prefix: bytes, limit: int, annotations: bool) -> None:
    """A line that never ends is refused once it is longer than any valid one: memory stays bounded."""
    for piece in (1, 7, 4096):
        sc = StreamScanner(annotations=annotations)
        sc.feed(prefix)
        fed = 0
        with pytest.raises(ProtocolError, match=r"too long|no CRLF|expected|bad"):
            while fed < 1 << 20:
                sc.feed(b"1" * piece)
                fed += piece
        assert fed <= limit + piece


@pytest.mark.parametrize("impl", IMPLS)
def test_long_annotation_is_refused_however_it_is_split(impl: str) -> None:
    """An annotation longer than MAX_ANNOTATION is refused whole; it must be refused split too."""
    line = b"#TS:" + b"1" * (resp.MAX_ANNOTATION + 200) + b"\r\n"
    with pytest.raises(ProtocolError):
        new_scanner(impl, annotations=True).feed(line)
    for cut in (1, 100, resp.MAX_ANNOTATION - 1, resp.MAX_ANNOTATION, len(line) - 2, len(line) - 1):
        sc = new_scanner(impl, annotations=True)
        with pytest.raises(ProtocolError):
            sc.feed(line[:cut])
            sc.feed(line[cut:])
    # The longest accepted one is accepted both ways.
    longest = b"#" + b"x" * (resp.MAX_ANNOTATION - 2) + b"\r\n"
    for cut in range(0, len(longest) + 1, 97):
        sc = new_scanner(impl, annotations=True)
        sc.feed(longest[:cut])
        sc.feed(longest[cut:])
        assert sc.at_boundary


def test_big_bulks_cost_no_memory() -> None:
    """A 64 MiB value fed in 64 KiB chunks: nothing of it is kept."""
    chunk = bytes(64 * 1024)
    size = 1024 * len(chunk)
    sc = StreamScanner()
    tracemalloc.start()
    try:
        sc.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % size)
        for _ in range(1024):
            sc.feed(chunk)
        sc.feed(b"\r\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sc.at_boundary and sc.writes
    assert peak < 64 * 1024, peak


# --------------------------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.booleans())
def test_any_split_of_a_valid_stream(data: st.DataObject, annotations: bool) -> None:
    raw, db, in_multi = data.draw(streams(annotations))
    stream = Stream(raw, db=db, in_multi=in_multi, annotations=annotations)
    cuts = data.draw(cuts_for(len(raw)))
    for impl in IMPLS:
        feed_checked(stream, cuts, annotations=annotations, impl=impl)
        feed_checked(stream, list(range(1, len(raw))), annotations=annotations, impl=impl)


def _feed_pieces(sc: StreamScanner, data: bytes, cuts: Sequence[int]) -> None:
    for _, chunk in pieces(data, cuts):
        sc.feed(chunk)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000), st.data(), st.booleans())
def test_garbage_raises_only_protocol_error(garbage: bytes, data: st.DataObject, annotations: bool) -> None:
    for impl in IMPLS:
        for cuts in ([], data.draw(cuts_for(len(garbage)))):
            sc = new_scanner(impl, annotations=annotations)
            try:
                _feed_pieces(sc, garbage, cuts)
            except ProtocolError:
                continue
            # Accepted: a valid stream, perhaps with an incomplete tail, and little held back.
            assert len(sc._line) <= resp.MAX_ANNOTATION


_INSERTS = [b"\r", b"\n", b"\r\n", b"-", b"9", b"*", b"$", b"_", b" ", b"+", b"x" * 200]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw, _, _ = draw(streams(annotations=draw(st.booleans())))
    out = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            out.extend(draw(st.binary(min_size=1, max_size=5)))
            continue
        i = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "digit"]))
        if op == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[i:i] = draw(st.sampled_from(_INSERTS))
        elif op == "delete":
            del out[i]
        else:
            out[i] = draw(st.sampled_from(b"0123456789-+ _"))
    return bytes(out)


@settings(max_examples=500, deadline=None)
@given(mutated(), st.data(), st.booleans())
def test_damaged_streams_whatever_the_split(damaged: bytes, data: st.DataObject, annotations: bool) -> None:
    """Only ProtocolError, and the same bytes are accepted or refused alike however they are split
    (and by the C fast path and the Python code alike)."""
    outcomes: list[object] = []
    for impl in IMPLS:
        for cuts in ([], data.draw(cuts_for(len(damaged))), list(range(1, len(damaged)))):
            sc = new_scanner(impl, annotations=annotations)
            try:
                _feed_pieces(sc, damaged, cuts)
            except ProtocolError:
                outcomes.append("error")
                continue
            outcomes.append((sc.db, sc.in_multi, sc.at_boundary, sc.first_ts, sc.last_ts))
    assert len(set(outcomes)) == 1, outcomes
