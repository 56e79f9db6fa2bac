"""The replica side of Redis replication as a sans-I/O state machine.

Feed it the bytes the primary sends (receive_data), take the bytes to send (data_to_send), and read
the events it produces (like h11). No sockets, no clocks: the asyncio driver in client.py owns those.

It takes bytes or a memoryview, and the data of its events are slices of what it was given: no snapshot
or stream byte is copied. When the driver hands it a view of a reused receive buffer, an event's data
is valid only until the driver receives again; the few bytes it keeps across calls (a split reply line,
a possible start of the end mark) it copies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto

from redis_backup.errors import FatalReplicationError, ProtocolError, RetryableError
from redis_backup.wire.resp import Bytes, StreamScanner, _describe, encode_command, find

EOF_MARK_LEN = 40
MAX_REPLY_LINE = 4096
_REPLID_RE = re.compile(rb"^[0-9a-f]{40}\Z")  # \Z: "$" would let a trailing "\n" in
_FATAL_PREFIXES = (b"-WRONGPASS", b"-NOAUTH", b"-NOPERM", b"-WRONGTYPE", b"-ERR invalid password")
_RETRY_PREFIXES = (b"-LOADING", b"-NOMASTERLINK", b"-MASTERDOWN", b"-BUSY", b"-TRYAGAIN")


@dataclass(frozen=True)
class FullResync:
    """The primary starts a new snapshot; the stream that follows it begins at offset."""

    replid: str
    offset: int


@dataclass(frozen=True)
class Continue:
    """Partial resync accepted: the stream resumes at offset (the replid may be new after a failover)."""

    replid: str
    offset: int


@dataclass(frozen=True)
class SnapshotStart:
    size: int | None  # None: diskless, length unknown until the end mark


@dataclass(frozen=True)
class SnapshotData:
    data: Bytes  # a memoryview from the driver: valid until the next event is asked for


@dataclass(frozen=True)
class SnapshotEnd:
    size: int


@dataclass(frozen=True)
class StreamData:
    """Stream bytes start_offset..end_offset, exactly as received; may end inside a command.

    Positions are indexes into data (see StreamScanner): -1 when there is none in this chunk. From the
    driver, data is a memoryview into its receive buffer: valid until the next event is asked for (copy
    it with bytes() to keep it).
    """

    data: Bytes
    start_offset: int
    end_offset: int
    first_safe: int
    last_safe: int
    last_safe_db: int
    last_boundary: int
    db: int
    in_multi: bool
    writes: bool
    getack: bool
    max_db: int = 0  # the highest db the stream selected so far (this connection's scanner)
    commands: int = 0  # commands that end in this chunk (the scanner's count: metrics, no extra work)


Event = FullResync | Continue | SnapshotStart | SnapshotData | SnapshotEnd | StreamData


class State(Enum):
    HANDSHAKE = auto()
    PSYNC_REPLY = auto()
    SNAPSHOT_HEADER = auto()
    SNAPSHOT_SIZED = auto()
    SNAPSHOT_EOF = auto()
    STREAMING = auto()
    DONE = auto()


class ReplicaProtocol:
    """One replication connection, from PING to the command stream.

    psync=(replid, offset) asks to continue after offset (the last stream byte stored); None asks for
    a full sync. rdb_only asks the primary for a snapshot and no stream (one-shot snapshot).
    """

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        listening_port: int = 0,
        psync: tuple[str, int] | None = None,
        db: int = 0,
        in_multi: bool = False,
        rdb_only: bool = False,
    ) -> None:
        self.state = State.HANDSHAKE
        self.offset = -1
        self.replid = ""
        self._psync = psync
        self._rdb_only = rdb_only
        self._scanner = StreamScanner(db=db, in_multi=in_multi)
        self._buf = b""
        self._out: list[bytes] = [encode_command("PING")]
        self._pending: list[tuple[str, bool]] = [("PING", False)]  # (what, errors are fatal)
        self._after_ping: list[tuple[bytes, str, bool]] = []
        if password is not None:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            self._after_ping.append((encode_command(*auth), "AUTH", True))
        self._after_ping.append((encode_command("REPLCONF", "listening-port", listening_port), "REPLCONF", False))
        self._after_ping.append((encode_command("REPLCONF", "capa", "eof", "capa", "psync2"), "REPLCONF", False))
        if rdb_only:
            self._after_ping.append((encode_command("REPLCONF", "rdb-only", "1"), "REPLCONF", False))
        self._snapshot_left = 0
        self._snapshot_size = 0
        self._eof_mark = b""
        self._tail = b""
        # Bare "\n" bytes skipped so far in the line-oriented states (a primary preparing a snapshot
        # sends one a second). They are not replies: the driver lets them keep the link alive only
        # while waiting_for_snapshot, and only for a bounded time. Inside the snapshot a "\n" is data.
        self.keepalive_bytes = 0

    # -- I/O boundary ---------------------------------------------------------------------------

    @property
    def waiting_for_snapshot(self) -> bool:
        """PSYNC sent, and neither the snapshot header nor +CONTINUE received yet: the time when a
        primary sends keepalive newlines (before +FULLRESYNC while a diskless sync waits for its delay,
        after it while a disk-based BGSAVE runs)."""
        return self.state is State.PSYNC_REPLY or self.state is State.SNAPSHOT_HEADER

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def ack(self, offset: int) -> None:
        """Queue a REPLCONF ACK for offset: that of the last stream byte durably stored (an end_offset)."""
        self._out.append(encode_command("REPLCONF", "ACK", offset))

    def receive_data(self, data: Bytes) -> list[Event]:
        events: list[Event] = []
        if self._buf:
            data = self._buf + data
            self._buf = b""
        while data and self.state is not State.DONE:
            data = self._step(data, events)
        return events

    # -- states ---------------------------------------------------------------------------------

    def _step(self, data: Bytes, events: list[Event]) -> Bytes:
        st = self.state
        if st is State.STREAMING:
            self._stream(data, events)
            return b""
        if st is State.SNAPSHOT_SIZED:
            return self._sized(data, events)
        if st is State.SNAPSHOT_EOF:
            self._eof(data, events)
            return b""
        # Line-oriented states (the handshake, a few reads per connection): bytes, for their methods.
        if type(data) is not bytes:
            data = bytes(data)
        # Skip keepalive newlines, then read one line.
        stripped = data.lstrip(b"\n")
        if len(stripped) != len(data):
            self.keepalive_bytes += len(data) - len(stripped)
        if not stripped:
            return b""
        nl = stripped.find(b"\r\n", 0, MAX_REPLY_LINE + 2)  # the same limit whether or not the line is split
        if nl < 0:
            if len(stripped) > MAX_REPLY_LINE + 1:  # + 1: a "\r" whose "\n" is still to come
                raise ProtocolError(f"reply line too long or no CRLF: {_describe(stripped)}")
            self._buf = stripped
            return b""
        line, rest = stripped[:nl], stripped[nl + 2 :]
        if st is State.HANDSHAKE:
            self._handshake_reply(line)
        elif st is State.PSYNC_REPLY:
            self._psync_reply(line, events)
        elif st is State.SNAPSHOT_HEADER:
            self._snapshot_header(line, events)
        return rest

    def _handshake_reply(self, line: bytes) -> None:
        what, fatal = self._pending.pop(0)
        if line.startswith(b"-"):
            if what == "PING" and (line.startswith(b"-NOAUTH") or b"operation not permitted" in line):
                pass  # authentication follows
            elif fatal or line.startswith(_FATAL_PREFIXES):
                raise _refused(what, line)
            elif line.startswith(_RETRY_PREFIXES):
                raise RetryableError(f"primary answered {what} with {_text(line)}")
            elif what != "REPLCONF":
                raise ProtocolError(f"primary answered {what} with {_text(line)}")
        elif not line.startswith(b"+"):
            raise ProtocolError(f"unexpected reply to {what}: {_describe(line)}")
        if what == "PING":
            for cmd, name, fatal in self._after_ping:
                self._out.append(cmd)
                self._pending.append((name, fatal))
        if not self._pending:
            replid, offset = self._psync if self._psync else ("?", -2)
            self._out.append(encode_command("PSYNC", replid, offset + 1))
            self.state = State.PSYNC_REPLY

    def _psync_reply(self, line: bytes, events: list[Event]) -> None:
        if line.startswith(b"+FULLRESYNC"):
            parts = line.split(b" ")
            if len(parts) != 3 or not _REPLID_RE.match(parts[1]) or not parts[2].isdigit():
                raise ProtocolError(f"malformed FULLRESYNC reply: {_describe(line)}")
            self.replid = parts[1].decode()
            self.offset = int(parts[2])
            self.state = State.SNAPSHOT_HEADER
            events.append(FullResync(self.replid, self.offset))
        elif line.startswith(b"+CONTINUE"):
            if self._psync is None:
                raise ProtocolError("primary answered CONTINUE to a full sync request")
            parts = line.split(b" ")
            if len(parts) > 2 or (len(parts) == 2 and not _REPLID_RE.match(parts[1])):
                raise ProtocolError(f"malformed CONTINUE reply: {_describe(line)}")
            self.replid = parts[1].decode() if len(parts) == 2 else self._psync[0]
            self.offset = self._psync[1]
            self.state = State.STREAMING
            events.append(Continue(self.replid, self.offset))
        elif line.startswith(_RETRY_PREFIXES):
            raise RetryableError(f"primary cannot serve a replica now: {_text(line)}")
        elif line.startswith(_FATAL_PREFIXES):
            raise _refused("PSYNC", line)
        elif line.startswith(b"-"):
            raise RetryableError(f"primary refused PSYNC: {_text(line)}")
        else:
            raise ProtocolError(f"unexpected PSYNC reply: {_describe(line)}")

    def _snapshot_header(self, line: bytes, events: list[Event]) -> None:
        if line.startswith(b"$EOF:"):
            mark = line[5:]
            if len(mark) != EOF_MARK_LEN:
                raise ProtocolError(f"malformed snapshot end mark: {_describe(line)}")
            self._eof_mark = mark
            self.state = State.SNAPSHOT_EOF
            events.append(SnapshotStart(None))
            return
        if line.startswith(b"$") and line[1:].isdigit():
            self._snapshot_left = int(line[1:])
            self.state = State.SNAPSHOT_SIZED
            events.append(SnapshotStart(self._snapshot_left))
            if self._snapshot_left == 0:
                self._end_snapshot(events)
            return
        if line.startswith(b"-"):
            raise RetryableError(f"primary failed to send the snapshot: {_text(line)}")
        raise ProtocolError(f"expected the snapshot header, got {_describe(line)}")

    def _sized(self, data: Bytes, events: list[Event]) -> Bytes:
        take = min(self._snapshot_left, len(data))
        chunk, rest = (data, b"") if take == len(data) else (data[:take], data[take:])
        self._snapshot_left -= take
        self._snapshot_size += take
        events.append(SnapshotData(chunk))
        if self._snapshot_left == 0:
            self._end_snapshot(events)
        return rest

    def _eof(self, data: Bytes, events: list[Event]) -> None:
        """A diskless snapshot: everything up to the 40-byte end mark.

        Only bytes that may be the start of the mark are held back (copied, at most 39), and only when
        the chunk ends with a prefix of it: so a chunk is passed on whole, as one slice, nearly always."""
        mark = self._eof_mark
        if self._tail:
            tail, self._tail = self._tail, b""
            if len(data) < EOF_MARK_LEN:  # too short to decide on its own: join the two (small) pieces
                data = tail + data
            else:
                # A mark that starts in the held-back bytes ends in the first 39 bytes of this chunk.
                joint = tail + data[: EOF_MARK_LEN - 1]
                at = joint.find(mark)
                if at >= 0:
                    self._mark_found(joint, at, data[at + EOF_MARK_LEN - len(tail) :], events)
                    return
                events.append(SnapshotData(tail))  # they were data after all (rare: see above)
                self._snapshot_size += len(tail)
        at = find(data, mark)
        if at >= 0:
            self._mark_found(data, at, data[at + EOF_MARK_LEN :], events)
            return
        keep = _mark_prefix_at_end(data, mark)
        if len(data) > keep:
            events.append(SnapshotData(data[: len(data) - keep] if keep else data))
            self._snapshot_size += len(data) - keep
        if keep:
            self._tail = bytes(data[len(data) - keep :])

    def _mark_found(self, data: Bytes, at: int, rest: Bytes, events: list[Event]) -> None:
        if at:
            events.append(SnapshotData(data[:at]))
        self._snapshot_size += at
        self._end_snapshot(events)
        if rest:
            self._step_after_snapshot(rest, events)

    def _step_after_snapshot(self, rest: Bytes, events: list[Event]) -> None:
        # rdb-only (DONE): what follows the snapshot is not ours, in this chunk as in later ones.
        if self.state is State.STREAMING:
            self._stream(rest, events)

    def _end_snapshot(self, events: list[Event]) -> None:
        events.append(SnapshotEnd(self._snapshot_size))
        self.state = State.DONE if self._rdb_only else State.STREAMING

    def _stream(self, data: Bytes, events: list[Event]) -> None:
        sc = self._scanner
        sc.feed(data)
        start = self.offset
        self.offset += len(data)
        events.append(
            StreamData(
                data=data,
                start_offset=start,
                end_offset=self.offset,
                first_safe=sc.first_safe,
                last_safe=sc.last_safe,
                last_safe_db=sc.last_safe_db,
                last_boundary=sc.last_boundary,
                db=sc.db,
                in_multi=sc.in_multi,
                writes=sc.writes,
                getack=sc.getack,
                max_db=sc.max_db,
                commands=sc.commands,
            )
        )


def _mark_prefix_at_end(data: Bytes, mark: bytes) -> int:
    """The length of the longest start of mark that data ends with (0 to 39): the bytes to hold back."""
    last = bytes(data[-(EOF_MARK_LEN - 1) :])
    first = mark[:1]
    at = last.find(first)
    while at >= 0:
        if mark.startswith(last[at:]):
            return len(last) - at
        at = last.find(first, at + 1)
    return 0


def _text(line: bytes) -> str:
    return line[1:].decode("utf-8", "replace")[:200]


def _refused(what: str, line: bytes) -> FatalReplicationError:
    text = _text(line)
    if what == "AUTH" or line.startswith((b"-WRONGPASS", b"-NOAUTH", b"-ERR invalid password")):
        return FatalReplicationError(f"authentication failed: {text}", settings=("redis_username", "redis_password"))
    return FatalReplicationError(
        f"the primary refused {what}: {text} (the backup user needs at least: +psync +replconf +ping)",
        settings=("redis_username",),
    )
