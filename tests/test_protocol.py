"""ReplicaProtocol: handshake, PSYNC replies, snapshot framing and the stream, from bytes alone.

Recorded connections to a real redis-server 7.0.15 (tests/data/capture-*.bin, made by
tests/support/capture.py) are fed whole, split at (nearly) every position and in random pieces; the
results must not depend on the split, and must agree with what the capture script saw independently
(replid, offsets, snapshot digest) and with the reference parser of tests/support/reference.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import socket
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from redis_backup.chain.rdb import RdbDigest
from redis_backup.errors import BackupError, FatalReplicationError, ProtocolError, RetryableError
from redis_backup.wire import protocol
from redis_backup.wire.protocol import (
    Continue,
    Event,
    FullResync,
    ReplicaProtocol,
    SnapshotData,
    SnapshotEnd,
    SnapshotStart,
    State,
    StreamData,
)
from tests.support.capture import Capture, record, stream_workload
from tests.support.fake_primary import empty_rdb
from tests.support.reference import Stream, encode
from tests.support.servers import RedisFactory, RedisServer
from tests.support.splits import pieces, random_pieces, split_positions
from tests.support.strategies import cuts_for, hex40, streams

DATA = Path(__file__).parent / "data"
CAPTURES = ("diskless", "disk", "continue", "rdb-only")
LISTENING_PORT = 6399  # what the capture script announced
REPLID = "0123456789abcdef0123456789abcdef01234567"
MARK = b"f87efccaedae6a6bf0f15f642fea55c7e9861acb"


# --------------------------------------------------------------------------------------------- helpers


@dataclass
class Run:
    """Everything a ReplicaProtocol produced for one input, however it was split."""

    control: list[Event] = field(default_factory=list)  # every event but SnapshotData/StreamData
    snapshot: bytes = b""
    stream: bytes = b""
    chunks: list[StreamData] = field(default_factory=list)
    offset: int = -1
    state: State = State.HANDSHAKE
    sent: bytes = b""

    def summary(self) -> tuple[object, ...]:
        last = self.chunks[-1] if self.chunks else None
        return (
            self.control,
            self.snapshot,
            self.stream,
            self.offset,
            self.state,
            self.sent,
            (last.db, last.in_multi) if last else None,
            any(c.getack for c in self.chunks),
        )


def feed(
    proto: ReplicaProtocol, data: bytes, cuts: Sequence[int] = (), ref: Stream | None = None, *, reuse: bool = False
) -> Run:
    """Feed data cut at cuts; check the invariants of every event and, given the reference parse of the
    stream, what each StreamData says about its chunk.

    reuse: feed memoryviews of one buffer, as the driver does, and overwrite it after each chunk's
    events are consumed, so that anything the protocol kept without copying it shows as garbage."""
    run = Run()
    snapshot: list[bytes] = []
    stream: list[bytes] = []
    run.sent = proto.data_to_send()
    base: int | None = None
    buf = bytearray(max((len(c) for _, c in pieces(data, cuts)), default=0)) if reuse else bytearray()
    for _, piece in pieces(data, cuts):
        chunk: bytes | memoryview = piece
        if reuse:
            buf[: len(piece)] = piece
            chunk = memoryview(buf)[: len(piece)]
        events = proto.receive_data(chunk)
        if reuse:
            events = [_copied(ev) for ev in events]  # the consumer is done with them: the buffer is reused
            buf[: len(piece)] = b"\xee" * len(piece)
        for ev in events:
            if isinstance(ev, SnapshotData):
                assert ev.data, "empty SnapshotData"
                snapshot.append(bytes(ev.data))
            elif isinstance(ev, StreamData):
                assert ev.data, "empty StreamData"
                if base is None:
                    base = ev.start_offset
                    syncs = [e for e in run.control if isinstance(e, FullResync | Continue)]
                    assert not syncs or base == syncs[-1].offset
                else:
                    assert ev.start_offset == run.chunks[-1].end_offset
                assert ev.end_offset - ev.start_offset == len(ev.data)
                if ref is not None:
                    a = ev.start_offset - base
                    want = ref.expect_chunk(a, a + len(ev.data))
                    got = (
                        ev.first_safe,
                        ev.last_safe,
                        ev.last_boundary,
                        ev.db,
                        ev.in_multi,
                        ev.writes,
                        ev.getack,
                    )
                    assert got == (
                        want.first_safe, want.last_safe, want.last_boundary, want.db, want.in_multi,
                        want.writes, want.getack,
                    ), f"stream chunk {a}..{a + len(ev.data)}"  # fmt: skip
                    if want.last_safe_db is not None:
                        assert ev.last_safe_db == want.last_safe_db
                stream.append(bytes(ev.data))
                run.chunks.append(ev)
            else:
                run.control.append(ev)
        run.sent += proto.data_to_send()
    run.snapshot, run.stream = b"".join(snapshot), b"".join(stream)
    run.offset, run.state = proto.offset, proto.state
    return run


def _copied(ev: Event) -> Event:
    if isinstance(ev, SnapshotData):
        return SnapshotData(bytes(ev.data))
    if isinstance(ev, StreamData):
        return dataclasses.replace(ev, data=bytes(ev.data))
    return ev


def proto_for(cap: Capture) -> ReplicaProtocol:
    return ReplicaProtocol(
        username=cap.username,
        password=cap.password,
        listening_port=LISTENING_PORT,
        psync=cap.psync,
        db=cap.start_db,
        rdb_only=cap.rdb_only,
    )


def handshake_bytes(
    *, username: str | None = None, password: str | None = None, psync: tuple[str, int] | None = None,
    rdb_only: bool = False, port: int = LISTENING_PORT,
) -> bytes:  # fmt: skip
    """What a replica sends, in order (checked against redis-server by the capture script)."""
    out = encode("PING")
    if password is not None:
        out += encode("AUTH", *([username] if username else []), password)
    out += encode("REPLCONF", "listening-port", port) + encode("REPLCONF", "capa", "eof", "capa", "psync2")
    if rdb_only:
        out += encode("REPLCONF", "rdb-only", "1")
    replid, offset = psync if psync else ("?", -2)
    return out + encode("PSYNC", replid, offset + 1)


def check_capture_run(cap: Capture, run: Run) -> None:
    """What the capture script recorded independently of redis_backup."""
    if cap.snapshot:
        size = cap.snapshot_size
        assert run.control == [
            FullResync(cap.replid, cap.start_offset),
            SnapshotStart(None if cap.snapshot == "eof" else size),
            SnapshotEnd(size),
        ]
        assert hashlib.sha256(run.snapshot).hexdigest() == cap.snapshot_sha256
    else:
        assert run.control == [Continue(cap.replid, cap.start_offset)]
        assert run.snapshot == b""
    assert run.stream == cap.wire[cap.stream_start :]
    assert run.offset == cap.final_offset == cap.start_offset + len(run.stream)
    assert run.state is (State.DONE if cap.rdb_only else State.STREAMING)
    assert run.sent == handshake_bytes(
        username=cap.username, password=cap.password, psync=cap.psync, rdb_only=cap.rdb_only
    )


def capture_skips(cap: Capture, ref: Stream) -> list[tuple[int, int]]:
    """Opaque middles: the snapshot's and those of stream bulks over 1 KB (2 KB / 64 bytes kept)."""
    skip = []
    if cap.snapshot:
        skip.append((cap.snapshot_start + 2048, cap.snapshot_start + cap.snapshot_size - 2048))
    for it in ref.items:
        for arg in it.args:
            if len(arg) > 1024:
                at = cap.stream_start + ref.data.index(arg, it.start)
                skip.append((at + 64, at + len(arg) - 64))
    return skip


def load(name: str) -> tuple[Capture, Stream]:
    cap = Capture.load(DATA, name)
    return cap, Stream(cap.wire[cap.stream_start :], db=cap.start_db)


# --------------------------------------------------------------------------------------------- captures


def test_captures_cover_the_wire_features() -> None:
    caps = {name: Capture.load(DATA, name) for name in CAPTURES}
    assert caps["diskless"].snapshot == "eof" and caps["diskless"].keepalives_before_reply >= 1
    assert caps["disk"].snapshot == "sized" and caps["disk"].keepalives_before_header >= 1
    assert caps["continue"].snapshot == "" and caps["continue"].psync is not None
    assert caps["rdb-only"].rdb_only and caps["rdb-only"].stream_start == len(caps["rdb-only"].wire)
    assert caps["diskless"].wire.startswith(b"-NOAUTH")  # PING before AUTH
    assert caps["disk"].username == "backup"  # an ACL user with +psync +replconf +ping only
    for cap in caps.values():
        assert len(cap.wire) < 200 * 1024
        # WAIT 1 was satisfied by the capture's REPLCONF ACK (no workload, so no WAIT, for rdb-only).
        assert cap.wait_acked == (-1 if cap.rdb_only else 1)


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_whole(name: str) -> None:
    cap, ref = load(name)
    run = feed(proto_for(cap), cap.wire, ref=ref)
    check_capture_run(cap, run)
    digest = RdbDigest()
    digest.update(run.snapshot)
    if cap.snapshot:
        assert digest.verify() == 10  # REDIS0010: Redis 7.0


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_split_at_every_position(name: str) -> None:
    cap, ref = load(name)
    whole = feed(proto_for(cap), cap.wire).summary()
    positions = split_positions(len(cap.wire), skip=capture_skips(cap, ref), sample=300, seed=name)
    assert len(positions) > min(len(cap.wire), 1500)
    for p in positions:
        run = feed(proto_for(cap), cap.wire, [p], ref)
        assert run.summary() == whole, f"split at {p}"
    # And byte by byte through the handshake, the PSYNC reply and the snapshot header.
    head = cap.snapshot_start if cap.snapshot else cap.stream_start
    run = feed(proto_for(cap), cap.wire, range(1, head + 2), ref)
    assert run.summary() == whole


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_split_into_random_pieces(name: str) -> None:
    cap, ref = load(name)
    whole = feed(proto_for(cap), cap.wire).summary()
    rng = random.Random(name)
    for i, max_piece in enumerate((16, 256, 4096, 70000) * 2):
        cuts = random_pieces(len(cap.wire), rng, max_piece)
        run = feed(proto_for(cap), cap.wire, cuts, ref, reuse=i % 2 == 1)
        check_capture_run(cap, run)
        assert run.summary() == whole


# --------------------------------------------------------------------------------------------- handshake


def test_handshake_step_by_step() -> None:
    """PING alone; the rest after its reply; PSYNC only once every reply is in."""
    p = ReplicaProtocol(username="backup", password="pw", listening_port=1234)
    assert p.data_to_send() == encode("PING")
    assert p.data_to_send() == b""
    assert p.receive_data(b"+PONG\r\n") == []
    assert p.data_to_send() == (
        encode("AUTH", "backup", "pw")
        + encode("REPLCONF", "listening-port", "1234")
        + encode("REPLCONF", "capa", "eof", "capa", "psync2")
    )
    for _ in range(2):
        assert p.receive_data(b"+OK\r\n") == []
        assert p.data_to_send() == b""
        assert p.state is State.HANDSHAKE
    assert p.receive_data(b"+OK\r\n") == []
    assert p.data_to_send() == encode("PSYNC", "?", "-1")
    assert p.state is State.PSYNC_REPLY
    assert p.receive_data(b"+FULLRESYNC %s 7\r\n" % REPLID.encode()) == [FullResync(REPLID, 7)]
    assert p.data_to_send() == b""


@pytest.mark.parametrize(
    ("kwargs", "replies"),
    [
        ({}, 3),
        ({"password": "pw"}, 4),
        ({"password": "pw", "rdb_only": True}, 5),
        ({"psync": (REPLID, 99)}, 3),
    ],
)
def test_psync_is_sent_after_the_last_reply_byte(kwargs: dict[str, object], replies: int) -> None:
    wire = b"+PONG\r\n" + b"+OK\r\n" * (replies - 1)
    p = ReplicaProtocol(**kwargs)  # type: ignore[arg-type]
    sent = p.data_to_send()
    for i in range(len(wire)):
        p.receive_data(wire[i : i + 1])
        sent += p.data_to_send()
        assert (b"PSYNC" in sent) == (i == len(wire) - 1), i
    assert sent == handshake_bytes(port=0, **kwargs)  # type: ignore[arg-type]
    if "psync" in kwargs:
        assert sent.endswith(encode("PSYNC", REPLID, "100"))  # the offset after the last one held


def test_auth_without_username_and_ping_noauth() -> None:
    p = ReplicaProtocol(password="secret")
    p.data_to_send()
    p.receive_data(b"-NOAUTH Authentication required.\r\n")
    assert p.data_to_send() == (
        encode("AUTH", "secret")
        + encode("REPLCONF", "listening-port", "0")
        + encode("REPLCONF", "capa", "eof", "capa", "psync2")
    )
    p.receive_data(b"+OK\r\n+OK\r\n+OK\r\n")
    assert p.data_to_send() == encode("PSYNC", "?", "-1")


def _after_ping(p: ReplicaProtocol, reply: bytes = b"+PONG\r\n") -> None:
    p.data_to_send()
    p.receive_data(reply)
    p.data_to_send()


@pytest.mark.parametrize(
    "reply",
    [
        b"-WRONGPASS invalid username-password pair or user is disabled.",
        b"-NOPERM this user has no permissions to run the 'auth' command",
        b"-ERR invalid password",
        b"-ERR AUTH <password> called without any password configured for the default user.",
    ],
)
def test_auth_errors_are_fatal_and_name_the_setting(reply: bytes) -> None:
    p = ReplicaProtocol(username="backup", password="nope")
    _after_ping(p)
    with pytest.raises(FatalReplicationError) as info:
        p.receive_data(reply + b"\r\n")
    # the setting is named for the CLI to spell out (the library names no environment variable)
    assert "redis_password" in info.value.settings and reply[1:30].decode() in str(info.value)
    assert info.value.exit_code == 2


def test_missing_password_is_fatal() -> None:
    p = ReplicaProtocol()
    _after_ping(p, b"-NOAUTH Authentication required.\r\n")
    with pytest.raises(FatalReplicationError, match="authentication failed") as info:
        p.receive_data(b"-NOAUTH Authentication required.\r\n")
    assert "redis_password" in info.value.settings


@pytest.mark.parametrize("what", ["REPLCONF", "PSYNC"])
def test_missing_acl_permission_is_fatal_and_names_it(what: str) -> None:
    p = ReplicaProtocol(password="pw")
    _after_ping(p)
    p.receive_data(b"+OK\r\n")  # AUTH
    noperm = b"-NOPERM User backup has no permissions to run the '%s' command\r\n" % what.lower().encode()
    if what == "PSYNC":
        p.receive_data(b"+OK\r\n+OK\r\n")
    with pytest.raises(FatalReplicationError) as info:
        p.receive_data(noperm)
    assert "+psync +replconf +ping" in str(info.value) and what.lower() in str(info.value)


def test_replconf_errors_are_ignored() -> None:
    p = ReplicaProtocol(rdb_only=True)
    _after_ping(p)
    p.receive_data(b"-ERR Unrecognized REPLCONF option: listening-port\r\n+OK\r\n")
    assert p.data_to_send() == b""
    p.receive_data(b"-ERR Unrecognized REPLCONF option: rdb-only\r\n")
    assert p.data_to_send() == encode("PSYNC", "?", "-1")


@pytest.mark.parametrize("reply", [b"-LOADING Redis is loading the dataset in memory", b"-BUSY script"])
def test_busy_primary_is_retryable_during_the_handshake(reply: bytes) -> None:
    p = ReplicaProtocol()
    p.data_to_send()
    with pytest.raises(RetryableError) as info:
        p.receive_data(reply + b"\r\n")
    assert not isinstance(info.value, ProtocolError)


@pytest.mark.parametrize("reply", [b":1", b"$3", b"*1", b"-ERR unknown command 'PING'", b"hello"])
def test_unexpected_handshake_replies_are_protocol_errors(reply: bytes) -> None:
    p = ReplicaProtocol()
    p.data_to_send()
    with pytest.raises(ProtocolError):
        p.receive_data(reply + b"\r\n")


# --------------------------------------------------------------------------------------------- PSYNC reply


def _at_psync(psync: tuple[str, int] | None = None, **kwargs: object) -> ReplicaProtocol:
    p = ReplicaProtocol(psync=psync, **kwargs)  # type: ignore[arg-type]
    p.data_to_send()
    p.receive_data(b"+PONG\r\n")
    while p.state is State.HANDSHAKE:
        p.receive_data(b"+OK\r\n")
    replid, offset = psync if psync else ("?", -2)
    assert p.data_to_send().endswith(encode("PSYNC", replid, offset + 1))
    return p


@pytest.mark.parametrize(
    "reply",
    [
        b"-LOADING Redis is loading the dataset in memory",
        b"-NOMASTERLINK Can't SYNC while not connected with my master",
        b"-MASTERDOWN Link with MASTER is down",
        b"-ERR Replica can't interact with the keyspace",
    ],
)
def test_psync_refusals_are_retryable(reply: bytes) -> None:
    p = _at_psync()
    with pytest.raises(RetryableError) as info:
        p.receive_data(b"\n" + reply + b"\r\n")
    assert not isinstance(info.value, ProtocolError)
    assert reply[1:20].decode() in str(info.value)


@pytest.mark.parametrize(
    "reply",
    [
        b"+FULLRESYNC",
        b"+FULLRESYNC %s" % REPLID.encode(),
        b"+FULLRESYNC %s -1" % REPLID.encode(),
        b"+FULLRESYNC %s 1 2" % REPLID.encode(),
        b"+FULLRESYNC %s 1" % REPLID[:-1].encode(),
        b"+FULLRESYNC %s 1" % REPLID.upper().encode(),
        b"+FULLRESYNC %s\n 1" % REPLID.encode(),
        b"+FULLRESYNC %s x" % REPLID.encode(),
        b"+CONTINUE",  # to a full sync request
        b"+OK",
        b":0",
    ],
)
def test_malformed_psync_replies(reply: bytes) -> None:
    p = _at_psync()
    with pytest.raises(ProtocolError):
        p.receive_data(reply + b"\r\n")


@pytest.mark.parametrize("reply", [b"+CONTINUE %s\n" % REPLID.encode(), b"+CONTINUE abc", b"+CONTINUE a b"])
def test_malformed_continue(reply: bytes) -> None:
    p = _at_psync(("f" * 40, 10))
    with pytest.raises(ProtocolError):
        p.receive_data(reply + b"\r\n")


@pytest.mark.parametrize("new_replid", [None, REPLID])
def test_continue_with_and_without_a_new_replid(new_replid: str | None) -> None:
    old = "f" * 40
    p = _at_psync((old, 1000), db=3)
    reply = b"+CONTINUE\r\n" if new_replid is None else b"+CONTINUE %s\r\n" % new_replid.encode()
    cmd = encode("SET", "k", "v")
    events = p.receive_data(reply + cmd)
    replid = new_replid or old
    assert events[0] == Continue(replid, 1000) and p.replid == replid
    (data,) = events[1:]
    assert isinstance(data, StreamData)
    assert (data.data, data.start_offset, data.end_offset) == (cmd, 1000, 1000 + len(cmd))
    assert data.db == 3 and data.writes  # the db is carried over: no SELECT after +CONTINUE
    assert p.offset == 1000 + len(cmd)


# --------------------------------------------------------------------------------------------- snapshot


def _at_header(offset: int = 100, *, rdb_only: bool = False) -> ReplicaProtocol:
    p = _at_psync(rdb_only=rdb_only)
    assert p.receive_data(b"+FULLRESYNC %s %d\r\n" % (REPLID.encode(), offset)) == [
        FullResync(REPLID, offset)
    ]
    return p


def test_keepalives_before_fullresync_and_before_the_header_are_skipped() -> None:
    rdb = empty_rdb()
    cmd = encode("SELECT", 0) + encode("SET", "a", "b")
    wire = (
        b"\n\n" + b"+FULLRESYNC %s 100\r\n" % REPLID.encode() + b"\n\n\n"
        + b"$EOF:%s\r\n" % MARK + rdb + MARK + cmd
    )  # fmt: skip
    for cuts in ([], range(1, len(wire)), [1, 2, 3, 50, 51, 52, 53]):
        p = _at_psync()
        run = feed(p, wire, list(cuts), Stream(cmd))
        assert run.control == [FullResync(REPLID, 100), SnapshotStart(None), SnapshotEnd(len(rdb))]
        assert run.snapshot == rdb and run.stream == cmd
        assert run.offset == 100 + len(cmd)  # keepalives are not stream bytes


@pytest.mark.parametrize("reuse", [False, True])
def test_eof_mark_split_across_feeds(reuse: bool) -> None:
    # The payload holds most of the mark just before the real one, and ends like a mark would start.
    rdb = empty_rdb()[:-8] + MARK[:39] + MARK[:20] + b"\x00" * 8
    cmd = encode("PING") + encode("SET", "k", "v")
    body = b"$EOF:%s\r\n" % MARK + rdb + MARK + cmd
    mark_at = body.index(MARK, 50)
    for a in range(mark_at - 42, mark_at + 42):
        for b in (a, a + 1, a + 20, a + 39, a + 40, a + 41, len(body)):
            p = _at_header()
            run = feed(p, body, sorted({a, min(b, len(body))}), Stream(cmd), reuse=reuse)
            assert run.snapshot == rdb and run.control[-1] == SnapshotEnd(len(rdb)), (a, b)
            assert run.stream == cmd and run.offset == 100 + len(cmd)


@pytest.mark.parametrize("reuse", [False, True])
def test_eof_mark_prefix_at_a_chunk_end_that_is_data_after_all(reuse: bool) -> None:
    """Only a chunk that ends like the mark starts holds bytes back; they are data if the mark does not
    follow, whether the next chunk is long or short."""
    rdb = empty_rdb()
    for tail in (MARK[:1], MARK[:20], MARK[:39]):
        for nxt in (b"x", b"x" * 39, b"x" * 100):
            body = b"$EOF:%s\r\n" % MARK + b"A" * 50 + tail + nxt + rdb + MARK
            cut = len(b"$EOF:%s\r\n" % MARK) + 50 + len(tail)
            run = feed(_at_header(), body, [cut, cut + len(nxt)], reuse=reuse)
            assert run.snapshot == b"A" * 50 + tail + nxt + rdb, (tail, nxt)
            assert run.control[-1] == SnapshotEnd(len(run.snapshot))


def test_a_diskless_chunk_is_passed_on_whole() -> None:
    """No copy and no extra event per chunk: a chunk that cannot hold the start of the mark is one slice."""
    p = _at_header()
    p.receive_data(b"$EOF:%s\r\n" % MARK)
    buf = bytearray(b"REDIS0011" + b"\x01" * 1000)
    view = memoryview(buf)
    (ev,) = p.receive_data(view)
    assert isinstance(ev, SnapshotData) and isinstance(ev.data, memoryview) and ev.data.obj is buf
    assert len(ev.data) == len(buf)


def test_disk_snapshot_then_commands_in_the_same_chunk() -> None:
    rdb = empty_rdb()
    cmd = encode("SELECT", 4) + encode("SET", "k", "v")
    p = _at_header(offset=5)
    events = p.receive_data(b"\n$%d\r\n" % len(rdb) + rdb + cmd)
    assert events[:3] == [SnapshotStart(len(rdb)), SnapshotData(rdb), SnapshotEnd(len(rdb))]
    (data,) = events[3:]
    assert isinstance(data, StreamData)
    assert (data.data, data.start_offset, data.end_offset, data.db) == (cmd, 5, 5 + len(cmd), 4)
    assert data.last_boundary == len(cmd) == data.last_safe and data.first_safe == 0


def test_empty_disk_snapshot() -> None:
    p = _at_header()
    cmd = encode("PING")
    assert p.receive_data(b"$0\r\n" + cmd)[:2] == [SnapshotStart(0), SnapshotEnd(0)]
    assert p.offset == 100 + len(cmd)


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (b"$-1", ProtocolError),
        (b"$", ProtocolError),
        (b"$ 5", ProtocolError),
        (b"$1x", ProtocolError),
        (b"$EOF:short", ProtocolError),
        (b"$EOF:%s0" % MARK, ProtocolError),
        (b"+OK", ProtocolError),
        (b"*1", ProtocolError),
        (b"-ERR background save failed", RetryableError),
    ],
)
def test_bad_snapshot_headers(header: bytes, error: type[Exception]) -> None:
    p = _at_header()
    with pytest.raises(error):
        p.receive_data(header + b"\r\n")


def test_stream_offsets_follow_the_fullresync_offset() -> None:
    cmds = [
        encode("SELECT", 1),
        encode("SET", "a", "1"),
        encode("MULTI"),
        encode("INCR", "x"),
        encode("EXEC"),
    ]
    p = _at_header(offset=1_000_000)
    p.receive_data(b"$%d\r\n" % len(empty_rdb()) + empty_rdb())
    pos = 1_000_000
    for c in cmds:
        (ev,) = p.receive_data(c)
        assert isinstance(ev, StreamData)
        assert (ev.start_offset, ev.end_offset) == (pos, pos + len(c))
        pos += len(c)
    assert p.offset == pos == 1_000_000 + len(b"".join(cmds))


def test_ack_encodes_replconf_ack() -> None:
    p = _at_header()
    p.ack(100)
    p.ack(123456789012)
    assert p.data_to_send() == encode("REPLCONF", "ACK", "100") + encode("REPLCONF", "ACK", "123456789012")
    assert p.data_to_send() == b""


@pytest.mark.parametrize("sized", [False, True])
def test_rdb_only_ends_after_the_snapshot(sized: bool) -> None:
    rdb = empty_rdb()
    header = b"$%d\r\n" % len(rdb) if sized else b"$EOF:%s\r\n" % MARK
    tail = b"" if sized else MARK
    # Whatever follows (a primary that ignored rdb-only streams commands) is not part of the snapshot,
    # and the outcome does not depend on how it is split.
    after = encode("SELECT", 0) + encode("SET", "k", "v")
    wire = header + rdb + tail + after
    outcomes = set()
    for cut in range(len(wire) + 1):
        p = _at_header(rdb_only=True)
        try:
            run = feed(p, wire, [cut])
        except ProtocolError:
            outcomes.add("error")
            continue
        assert run.control == [SnapshotStart(len(rdb) if sized else None), SnapshotEnd(len(rdb))]
        assert run.snapshot == rdb and run.state is State.DONE and not run.chunks
        assert run.offset == 100
        outcomes.add("done")
    assert outcomes == {"done"}


# --------------------------------------------------------------------------------------------- limits


@pytest.mark.parametrize("state", ["handshake", "psync", "header"])
def test_endless_reply_line_fails_quickly(state: str) -> None:
    for piece in (1, 100, 8192):
        p = ReplicaProtocol() if state == "handshake" else _at_psync() if state == "psync" else _at_header()
        fed = 0
        with pytest.raises(ProtocolError, match="too long"):
            while fed < 1 << 20:
                p.receive_data(b"+" * piece)
                fed += piece
        assert fed <= protocol.MAX_REPLY_LINE + piece


def test_reply_line_limit_does_not_depend_on_the_split() -> None:
    """The longest reply line allowed is accepted, and one byte more refused, however it arrives."""
    limit = protocol.MAX_REPLY_LINE
    longest = b"+" + b"x" * (limit - 1) + b"\r\n"
    too_long = b"+" + b"x" * limit + b"\r\n"
    for cuts in ([], [1], [limit - 1], [limit], [limit + 1], [limit + 2], range(limit - 3, limit + 3)):
        p = ReplicaProtocol()
        p.data_to_send()
        assert feed(p, longest, list(cuts)).sent.startswith(encode("REPLCONF", "listening-port", "0"))
        p = ReplicaProtocol()
        p.data_to_send()
        with pytest.raises(ProtocolError, match="too long"):
            feed(p, too_long, list(cuts))


def test_keepalives_cost_nothing() -> None:
    p = _at_psync()
    newlines = b"\n" * (1 << 16)
    tracemalloc.start()
    try:
        for _ in range(64):
            assert p.receive_data(newlines) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak
    assert p.receive_data(b"+FULLRESYNC %s 0\r\n" % REPLID.encode()) == [FullResync(REPLID, 0)]


def test_big_snapshot_and_stream_in_bounded_memory() -> None:
    """A 16 MiB diskless snapshot and a 16 MiB value, in 64 KiB reads: nothing accumulates."""
    chunk = b"\xab" * (64 * 1024)
    p = _at_header()
    p.receive_data(b"$EOF:%s\r\n" % MARK)
    total = 0
    tracemalloc.start()
    try:
        for _ in range(256):
            for ev in p.receive_data(chunk):
                assert isinstance(ev, SnapshotData)
                total += len(ev.data)
        events = p.receive_data(MARK + b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (256 * len(chunk)))
        for _ in range(256):
            p.receive_data(chunk)
        events += p.receive_data(b"\r\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total += sum(len(ev.data) for ev in events if isinstance(ev, SnapshotData))  # whatever was held back
    assert total == 256 * len(chunk)
    assert SnapshotEnd(256 * len(chunk)) in events
    assert isinstance(events[-1], StreamData) and events[-1].last_boundary == 2
    assert peak < 1024 * 1024, peak


# --------------------------------------------------------------------------------------------- properties


@dataclass(frozen=True)
class Session:
    kwargs: dict[str, object]
    wire: bytes
    stream: Stream | None
    control: list[Event]
    snapshot: bytes
    offset: int
    sent: bytes


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    """A whole valid connection: handshake replies, PSYNC reply, snapshot, stream; keepalives anywhere
    a primary sends them."""
    password = draw(st.sampled_from([None, "pw"]))
    rdb_only = draw(st.booleans())
    resume = not rdb_only and draw(st.booleans())
    nl = st.integers(0, 3).map(lambda n: b"\n" * n)
    replid = draw(hex40)
    offset = draw(st.integers(0, 2**40))
    raw, db, in_multi = draw(streams(max_size=15))
    kwargs: dict[str, object] = {"password": password, "rdb_only": rdb_only}
    wire = (
        b"+PONG\r\n" if password is None or draw(st.booleans()) else b"-NOAUTH Authentication required.\r\n"
    )
    if password is not None:
        wire += b"+OK\r\n"  # AUTH
    for _ in range(2 + rdb_only):  # REPLCONF: errors are ignored
        wire += draw(st.sampled_from([b"+OK\r\n", b"-ERR Unrecognized REPLCONF option\r\n"]))
    wire += draw(nl)
    snapshot = b""
    if resume:
        kwargs.update(psync=(replid, offset), db=db, in_multi=in_multi)
        new = draw(st.none() | hex40)
        wire += b"+CONTINUE\r\n" if new is None else b"+CONTINUE %s\r\n" % new.encode()
        control: list[Event] = [Continue(new or replid, offset)]
    else:
        in_multi, db = False, 0
        raw = raw if draw(st.booleans()) else encode("SELECT", 0) + raw
        snapshot = draw(st.binary(max_size=600))
        wire += b"+FULLRESYNC %s %d\r\n" % (replid.encode(), offset) + draw(nl)
        if draw(st.booleans()):
            mark = draw(hex40).encode()
            assume((snapshot + mark).find(mark) == len(snapshot))
            wire += b"$EOF:%s\r\n" % mark + snapshot + mark
            control = [FullResync(replid, offset), SnapshotStart(None), SnapshotEnd(len(snapshot))]
        else:
            wire += b"$%d\r\n" % len(snapshot) + snapshot
            control = [FullResync(replid, offset), SnapshotStart(len(snapshot)), SnapshotEnd(len(snapshot))]
    sent = handshake_bytes(password=password, psync=kwargs.get("psync"), rdb_only=rdb_only, port=0)  # type: ignore[arg-type]
    if rdb_only:
        # The snapshot is all there is; a primary that ignored rdb-only may send more: not ours.
        extra = draw(st.sampled_from([b"", b"\n", raw]))
        return Session(kwargs, wire + extra, None, control, snapshot, offset, sent)
    stream = Stream(raw, db=db, in_multi=in_multi) if raw else None
    return Session(kwargs, wire + raw, stream, control, snapshot, offset + len(raw), sent)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions(), st.data())
def test_any_split_of_a_valid_session(s: Session, data: st.DataObject) -> None:
    whole = feed(ReplicaProtocol(**s.kwargs), s.wire, (), s.stream)  # type: ignore[arg-type]
    assert whole.control == s.control and whole.snapshot == s.snapshot and whole.offset == s.offset
    assert whole.stream == (s.stream.data if s.stream else b"")
    assert whole.sent == s.sent
    for cuts in (data.draw(cuts_for(len(s.wire))), range(1, len(s.wire))):
        run = feed(ReplicaProtocol(**s.kwargs), s.wire, list(cuts), s.stream)  # type: ignore[arg-type]
        assert run.summary() == whole.summary()
    # as the driver feeds it: views of one reused buffer
    run = feed(ReplicaProtocol(**s.kwargs), s.wire, list(data.draw(cuts_for(len(s.wire)))), s.stream, reuse=True)  # type: ignore[arg-type]
    assert run.summary() == whole.summary()


_PREFIXES = {
    "start": b"",
    "handshake": b"+PONG\r\n+OK\r\n",
    "psync": b"+PONG\r\n+OK\r\n+OK\r\n",
    "header": b"+PONG\r\n+OK\r\n+OK\r\n+FULLRESYNC %s 0\r\n" % REPLID.encode(),
    "eof": b"+PONG\r\n+OK\r\n+OK\r\n+FULLRESYNC %s 0\r\n$EOF:%s\r\nREDIS" % (REPLID.encode(), MARK),
    "sized": b"+PONG\r\n+OK\r\n+OK\r\n+FULLRESYNC %s 0\r\n$20\r\nREDIS" % REPLID.encode(),
    "stream": b"+PONG\r\n+OK\r\n+OK\r\n+FULLRESYNC %s 0\r\n$0\r\n*1\r\n$4\r\nPING\r\n" % REPLID.encode(),
}


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(_PREFIXES)), st.binary(max_size=5000), st.data())
def test_garbage_raises_only_backup_errors(state: str, garbage: bytes, data: st.DataObject) -> None:
    """Anything at all: a ProtocolError, or another BackupError for a "-" error reply; never an
    IndexError/ValueError/...; and nothing held back grows past the line limits."""
    for cuts in ([], data.draw(cuts_for(len(garbage)))):
        p = ReplicaProtocol(password="pw" if state == "handshake" else None)
        p.receive_data(_PREFIXES[state])
        try:
            for _, chunk in pieces(garbage, cuts):
                p.receive_data(chunk)
        except ProtocolError:
            continue
        except BackupError:
            assert b"-" in garbage
            continue
        assert len(p._buf) <= protocol.MAX_REPLY_LINE


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions(), st.data())
def test_damaged_sessions_raise_only_backup_errors_whatever_the_split(
    s: Session, data: st.DataObject
) -> None:
    wire = bytearray(s.wire)
    for _ in range(data.draw(st.integers(1, 3))):
        if not wire:
            break
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.sampled_from(b"\r\n-+$*:0 9xF"))
    outcomes: list[object] = []
    for cuts in ([], data.draw(cuts_for(len(wire))), range(1, len(wire))):
        try:
            run = feed(ReplicaProtocol(**s.kwargs), bytes(wire), list(cuts))  # type: ignore[arg-type]
        except BackupError as e:
            outcomes.append(type(e))
        else:
            outcomes.append(run.summary())
    # However the bytes are split, they are accepted or refused alike.
    assert outcomes[1:] == outcomes[:-1], outcomes


# --------------------------------------------------------------------------------------------- live


class LiveReplica:
    """ReplicaProtocol over a blocking socket to a real redis-server (a minimal test driver).

    Once the snapshot is in it acknowledges its offset every 0.1 s, as the service does every second:
    a diskless primary starts the stream on the first ACK after it noted the end of the transfer.
    """

    def __init__(self, server: RedisServer, **kwargs: object) -> None:
        self.proto = ReplicaProtocol(listening_port=server.port + 1, **kwargs)  # type: ignore[arg-type]
        self.sock = socket.create_connection((server.host, server.port), timeout=5)
        self.sock.settimeout(0.05)
        self.events: list[Event] = []
        self.snapshot = RdbDigest()
        self.next_ack = 0.0

    def pump(self) -> None:
        if self.proto.state is State.STREAMING and time.monotonic() >= self.next_ack:
            self.proto.ack(self.proto.offset)
            self.next_ack = time.monotonic() + 0.1
        out = self.proto.data_to_send()
        if out:
            self.sock.sendall(out)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return
        if not data:
            raise ConnectionError("closed by the primary")
        for ev in self.proto.receive_data(data):
            if isinstance(ev, SnapshotData):
                self.snapshot.update(ev.data)
            self.events.append(ev)

    def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; events so far: {self.events[:5]}"
            self.pump()

    def close(self) -> None:
        self.sock.close()


def test_live_full_sync_stream_and_ack(redis_factory: RedisFactory) -> None:
    """Against redis-server: the offsets we compute are the primary's, and our ACK is understood."""
    server = redis_factory()
    server.client(2).set("before", b"snap\r\nshot")
    r = LiveReplica(server)
    try:
        r.until(lambda: any(isinstance(e, SnapshotEnd) for e in r.events))
        full = r.events[0]
        assert isinstance(full, FullResync) and full.replid == server.replid()
        assert r.snapshot.verify() >= 10
        stream_workload(server, "live")
        target = server.master_repl_offset()
        r.until(lambda: r.proto.offset >= target)
        chunks = [e for e in r.events if isinstance(e, StreamData)]
        assert any(c.getack for c in chunks) and chunks[-1].db == 5 and not chunks[-1].in_multi

        # ACK <offset of the last byte>, as the protocol counts it, is what the primary expects
        # (a PING of the primary may move the offset meanwhile: compare live values).
        def acked() -> bool:
            master = server.master_repl_offset()
            return r.proto.offset == master and server.replica_offsets() == [master]

        r.until(acked, timeout=5)
    finally:
        r.close()


def test_live_refusals(redis_factory: RedisFactory) -> None:
    server = redis_factory(
        requirepass="s3cret",
        acl_users=["nopsync on >pw +replconf +ping", "backup on >bpass +psync +replconf +ping"],
    )
    cases: list[tuple[dict[str, object], str]] = [
        ({"password": "wrong"}, "authentication failed"),
        ({}, "authentication failed"),
        ({"username": "nopsync", "password": "pw"}, "+psync"),
    ]
    for kwargs, needle in cases:
        r = LiveReplica(server, **kwargs)
        try:
            with pytest.raises(FatalReplicationError, match=needle.replace("+", r"\+")):
                r.until(lambda: False)
        finally:
            r.close()
    # The documented minimal ACL is enough.
    r = LiveReplica(server, username="backup", password="bpass")
    try:
        r.until(lambda: bool(r.events) and isinstance(r.events[-1], SnapshotEnd))
    finally:
        r.close()


def test_live_capture_matches_the_protocol(redis_factory: RedisFactory) -> None:
    """The capture script still works against this redis-server (so the data files can be remade),
    and what it records agrees with ReplicaProtocol whole and split."""
    server = redis_factory(extra_args=["--repl-diskless-sync-delay", "0"])
    server.client(1).set("snapshot-key", "x")
    cap = record(server, "live", pings=0)
    assert cap.snapshot == "eof" and cap.wait_acked == 1
    ref = Stream(cap.wire[cap.stream_start :])
    whole = feed(proto_for(cap), cap.wire, ref=ref)
    check_capture_run(cap, whole)
    rng = random.Random(0)
    for _ in range(5):
        assert (
            feed(proto_for(cap), cap.wire, random_pieces(len(cap.wire), rng, 512), ref).summary()
            == whole.summary()
        )
