"""Record, byte for byte, what a real Redis primary sends to a replica (test data for the sans-I/O core).

A raw socket does the replica's handshake by hand (PING, [AUTH], REPLCONF listening-port,
REPLCONF capa eof capa psync2, [REPLCONF rdb-only 1], then PSYNC) and keeps every byte the primary
sends: handshake replies, ``\\n`` keepalives, ``+FULLRESYNC``/``+CONTINUE``, the snapshot (diskless
``$EOF:<mark>`` or disk-based ``$<len>``) and, after ``REPLCONF ACK <offset>``, the command stream
produced by :func:`stream_workload` (SET, SELECT of other dbs, MULTI/EXEC, EVAL, XADD, a 100 KB
value, values holding CRLF, ``WAIT 1 100`` for a ``REPLCONF GETACK``, PINGs of the primary).

Nothing in here uses redis_backup: the framing is followed by the small independent reader below, so
the captures can check the code under test.

Regenerate the stored captures (tests/data/capture-*.bin and tests/data/captures.json) with::

    python -m tests.support.capture tests/data

They are not bit-for-bit reproducible (replids, EOF marks, timestamps in the RDB differ each run);
every test derives its expectations from captures.json and from the bytes themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support.fake_primary import resp_command
from tests.support.servers import RedisServer, wait_until

READ_TIMEOUT = 10.0
BIG_VALUE = 100 * 1024
ACK_INTERVAL = 0.1
_LUA = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('INCR', KEYS[2]); return redis.call('GET', KEYS[1])"


@dataclass
class Capture:
    """One recorded replication connection; ``wire`` is everything the primary sent, in order."""

    name: str
    wire: bytes = b""
    username: str | None = None
    password: str | None = None
    rdb_only: bool = False
    psync: tuple[str, int] | None = None  # what PSYNC asked for: (replid, last offset held)
    start_db: int = 0  # db selected where a +CONTINUE resumes
    replid: str = ""
    start_offset: int = 0  # FULLRESYNC offset, or the psync offset for +CONTINUE
    final_offset: int = 0  # master_repl_offset once the whole stream was received
    snapshot: str = ""  # "eof", "sized" or "" (+CONTINUE)
    snapshot_start: int = -1  # index in wire of the first snapshot byte
    snapshot_size: int = 0
    snapshot_sha256: str = ""
    stream_start: int = -1  # index in wire of the first stream byte
    keepalives_before_reply: int = 0  # "\n" before +FULLRESYNC/+CONTINUE
    keepalives_before_header: int = 0  # "\n" between +FULLRESYNC and the "$" line
    wait_acked: int = -1  # what WAIT 1 100 returned (1: our REPLCONF ACK was understood)
    digest: str = ""  # DEBUG DIGEST of the primary at the end
    notes: list[str] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        del d["wire"]
        d["wire_size"] = len(self.wire)
        d["wire_sha256"] = hashlib.sha256(self.wire).hexdigest()
        return d

    @classmethod
    def load(cls, data_dir: Path, name: str) -> Capture:
        meta = json.loads((data_dir / "captures.json").read_text())[name]
        wire = (data_dir / f"capture-{name}.bin").read_bytes()
        assert hashlib.sha256(wire).hexdigest() == meta.pop("wire_sha256"), f"capture-{name}.bin changed"
        assert len(wire) == meta.pop("wire_size")
        if meta["psync"] is not None:
            meta["psync"] = (meta["psync"][0], meta["psync"][1])
        return cls(wire=wire, **meta)


class _Wire:
    """A blocking socket that records every byte received; ``pos`` is how far the reader got."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        self.buf = bytearray()
        self.pos = 0
        self.lock = threading.Lock()
        self.closed = False

    def recv_more(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            self.closed = True
            raise EOFError("primary closed the connection")
        with self.lock:
            self.buf += data

    def line(self) -> tuple[bytes, int]:
        """The next CRLF line (without CRLF) and the number of bare "\\n" skipped before it."""
        skipped = 0
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] == 10:
                self.pos += 1
                skipped += 1
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos : end])
                self.pos = end + 2
                return line, skipped
            self.recv_more()

    def exactly(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            self.recv_more()
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def until_mark(self, mark: bytes) -> bytes:
        while True:
            end = self.buf.find(mark, self.pos)
            if end >= 0:
                out = bytes(self.buf[self.pos : end])
                self.pos = end + len(mark)
                return out
            self.recv_more()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def _handshake(w: _Wire, cap: Capture, psync: tuple[str, int] | None) -> tuple[bytes, int]:
    """PING, then the rest pipelined after its reply (like syncWithMaster); returns the PSYNC reply."""
    w.send(resp_command("PING"))
    pong, _ = w.line()
    assert pong in (b"+PONG", b"-NOAUTH Authentication required."), pong
    cmds = []
    if cap.password is not None:
        cmds.append(resp_command("AUTH", *([cap.username] if cap.username else []), cap.password))
    cmds.append(resp_command("REPLCONF", "listening-port", 6399))
    cmds.append(resp_command("REPLCONF", "capa", "eof", "capa", "psync2"))
    if cap.rdb_only:
        cmds.append(resp_command("REPLCONF", "rdb-only", "1"))
    w.send(b"".join(cmds))
    for _ in cmds:
        reply, _ = w.line()
        assert reply == b"+OK", reply
    replid, offset = psync if psync else ("?", -2)
    w.send(resp_command("PSYNC", replid, offset + 1))
    return w.line()


def _seed_dataset(server: RedisServer, keys: int) -> None:
    """What the snapshot holds: a few keys of every type in dbs 0, 1 and 2."""
    rng = random.Random(1)
    c0, c1, c2 = server.client(0), server.client(1), server.client(2)
    c0.mset({f"seed:{i}": rng.randbytes(20) for i in range(keys)})
    c0.set("seed:crlf", b"line1\r\nline2\r\n*1\r\n$4\r\nPING\r\n")
    c0.set("seed:big", rng.randbytes(8 * 1024))
    c0.hset("seed:hash", mapping={"a": 1, "b": b"\x00\xff\r\n"})
    c0.set("seed:zeros", bytes(16))  # short strings are stored raw: a run of zero bytes in the RDB
    c1.rpush("seed:list", *[rng.randbytes(5) for _ in range(20)])
    c1.sadd("seed:set", *range(30))
    c2.zadd("seed:zset", {f"m{i}": i / 3 for i in range(20)})
    c2.xadd("seed:stream", {"f": "v"}, id="1-1")
    c2.set("seed:ttl", "x", ex=10 * 365 * 24 * 3600)


def stream_workload(server: RedisServer, tag: str) -> int:
    """The writes whose replication is captured; returns what ``WAIT 1 100`` answered.

    Small commands first and last, the 100 KB value in the middle, so that the interesting bytes
    are near the ends of the capture.
    """
    rng = random.Random(tag)
    c0, c1, c5 = server.client(0), server.client(1), server.client(5)
    c0.set(f"{tag}:a", "1")
    c0.set(f"{tag}:crlf", b"\r\n*3\r\n$3\r\nSET\r\n\n\r")
    c1.set(f"{tag}:other-db", "x")
    c5.incr(f"{tag}:counter")
    tx = c1.pipeline(transaction=True)
    tx.set(f"{tag}:tx1", b"a\r\nb")
    tx.incr(f"{tag}:tx2")
    tx.execute()
    c0.eval(_LUA, 2, f"{tag}:lua", f"{tag}:lua-n", b"lua\r\nvalue")
    c5.xadd(f"{tag}:stream", {"field": b"v\r\n", "n": 1}, id="5-1")
    c5.expire(f"{tag}:stream", 3600)
    c0.publish(f"{tag}:channel", b"message\r\n")
    c1.delete(f"{tag}:nothing", f"{tag}:other-db")
    c1.hset(f"{tag}:hash", mapping={"k": b"\x00\r\n", "n": 2})
    c0.set(f"{tag}:big", rng.randbytes(BIG_VALUE))
    c1.set(f"{tag}:after-big", "y")
    tx = c0.pipeline(transaction=True)
    tx.rpush(f"{tag}:list", b"\r\n", b"")
    tx.sadd(f"{tag}:set", "m")
    tx.execute()
    acked = c0.wait(1, 100)  # the primary sends REPLCONF GETACK; the capture's reader answers it
    c5.set(f"{tag}:last", "z")
    for c in (c0, c1, c5):
        c.close()
    return acked


class _StreamReader(threading.Thread):
    """Records the command stream; answers each REPLCONF GETACK with the offset received so far."""

    def __init__(self, w: _Wire, base_offset: int) -> None:
        super().__init__(name="capture-reader", daemon=True)
        self.w = w
        self.base = base_offset
        self.start_index = w.pos
        self.error: BaseException | None = None
        self._stop_reading = threading.Event()

    def stream_bytes(self) -> int:
        with self.w.lock:
            return len(self.w.buf) - self.start_index

    def run(self) -> None:
        seen = 0
        next_ack = 0.0
        try:
            self.w.sock.settimeout(0.05)
            while not self._stop_reading.is_set():
                with contextlib.suppress(TimeoutError):
                    self.w.recv_more()
                with self.w.lock:
                    count = self.w.buf.count(b"GETACK", self.start_index)
                    received = len(self.w.buf) - self.start_index
                # Like a replica's once-a-second ACK (faster here): the primary starts the stream on the
                # first ACK it gets after it has noted the end of the diskless transfer.
                if count > seen or time.monotonic() >= next_ack:
                    seen = count
                    next_ack = time.monotonic() + ACK_INTERVAL
                    self.w.send(resp_command("REPLCONF", "ACK", self.base + received))
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._stop_reading.set()
        self.join(10)
        assert not self.is_alive(), "capture reader did not stop"
        if self.error is not None:
            raise self.error


def record(
    server: RedisServer,
    name: str,
    *,
    username: str | None = None,
    password: str | None = None,
    rdb_only: bool = False,
    psync: tuple[str, int] | None = None,
    start_db: int = 0,
    workload: Callable[[RedisServer, str], int] | None = stream_workload,
    pings: int = 1,
) -> Capture:
    """Connect to ``server`` as a replica and record one replication connection.

    With a workload, it runs after the snapshot (and our REPLCONF ACK); recording ends once every byte
    up to ``master_repl_offset`` has arrived and at least ``pings`` PINGs of the primary were seen.
    """
    cap = Capture(
        name, username=username, password=password, rdb_only=rdb_only, psync=psync, start_db=start_db
    )
    w = _Wire(server.port)
    try:
        reply, cap.keepalives_before_reply = _handshake(w, cap, psync)
        parts = reply.split(b" ")
        if parts[0] == b"+FULLRESYNC":
            cap.replid, cap.start_offset = parts[1].decode(), int(parts[2])
            header, cap.keepalives_before_header = w.line()
            cap.snapshot_start = w.pos
            if header.startswith(b"$EOF:"):
                cap.snapshot = "eof"
                rdb = w.until_mark(header[5:])
            else:
                cap.snapshot = "sized"
                rdb = w.exactly(int(header[1:]))
            cap.snapshot_size = len(rdb)
            cap.snapshot_sha256 = hashlib.sha256(rdb).hexdigest()
            assert rdb.startswith(b"REDIS") and rdb[-9] == 0xFF, "not an RDB"
        else:
            assert parts[0] == b"+CONTINUE" and psync is not None, reply
            cap.replid = parts[1].decode() if len(parts) > 1 else psync[0]
            cap.start_offset = psync[1]
        if rdb_only:
            # The primary closes the connection after an rdb-only transfer: record whatever comes.
            deadline = time.monotonic() + READ_TIMEOUT
            while not w.closed and time.monotonic() < deadline:
                try:
                    w.recv_more()
                except (EOFError, ConnectionResetError):
                    break
                except TimeoutError:
                    continue
            assert w.closed, "primary kept an rdb-only connection open"
            cap.stream_start = w.pos
            cap.final_offset = cap.start_offset
        else:
            cap.stream_start = w.pos
            reader = _StreamReader(w, cap.start_offset)
            reader.start()
            try:
                if workload is not None:
                    cap.wait_acked = workload(server, name)

                def complete() -> int:
                    """len(buf) once every byte up to master_repl_offset is in (0: not yet)."""
                    target = server.master_repl_offset()
                    with w.lock:
                        pinged = w.buf[cap.stream_start :].lower().count(b"*1\r\n$4\r\nping\r\n")
                        received = len(w.buf) - cap.stream_start
                        if received == target - cap.start_offset and pinged >= pings:
                            cap.final_offset = target
                            return len(w.buf)
                    return 0

                end = wait_until(complete, timeout=15, message=f"{name}: the whole stream received")
            finally:
                reader.stop()
            del w.buf[end:]  # a PING of the primary may have come after: the capture ends at final_offset
        cap.wire = bytes(w.buf)
    finally:
        w.close()
    cap.digest = server.digest()
    return cap


def record_all(base: Path) -> dict[str, Capture]:
    """The stored captures: diskless with AUTH, disk-based with an ACL user, rdb-only, +CONTINUE."""
    caps: dict[str, Capture] = {}
    common = ["--repl-ping-replica-period", "1"]

    # Diskless (the 7.0 default), a password, repl-diskless-sync-delay 1 for "\n" before +FULLRESYNC;
    # then, on the same primary, a +CONTINUE after writes made while the replica was away.
    with RedisServer(
        base / "diskless", requirepass="s3cret", extra_args=[*common, "--repl-diskless-sync-delay", "1"]
    ) as server:
        _seed_dataset(server, 40)
        caps["diskless"] = cap = record(server, "diskless", password="s3cret")
        c3 = server.client(3)
        c3.set("away:1", b"while\r\naway")
        server.client(0).set("away:2", "x")
        caps["continue"] = record(
            server,
            "continue",
            password="s3cret",
            psync=(cap.replid, cap.final_offset),
            start_db=_last_select(cap),
        )

    # Disk-based: "$<len>" framing, with a slow BGSAVE so the primary sends "\n" before the "$" line.
    # The ACL user has exactly the permissions the docs ask for.
    with RedisServer(
        base / "disk",
        acl_users=["backup on >bpass +psync +replconf +ping"],
        extra_args=[*common, "--repl-diskless-sync", "no", "--rdb-key-save-delay", "30000"],
    ) as server:
        _seed_dataset(server, 60)
        caps["disk"] = record(server, "disk", username="backup", password="bpass")

    # rdb-only (as `redis-backup snapshot` asks): the snapshot and nothing else.
    with RedisServer(base / "rdb-only", extra_args=common) as server:
        _seed_dataset(server, 10)
        caps["rdb-only"] = record(server, "rdb-only", rdb_only=True, workload=None)
    return caps


def _last_select(cap: Capture) -> int:
    """The db of the last SELECT in a capture's stream (independent of the scanner under test)."""
    stream = cap.wire[cap.stream_start :]
    db, pos = 0, 0
    marker = b"*2\r\n$6\r\nSELECT\r\n$"
    while (pos := stream.find(marker, pos)) >= 0:
        line_end = stream.index(b"\r\n", pos + len(marker))
        n = int(stream[pos + len(marker) : line_end])
        db = int(stream[line_end + 2 : line_end + 2 + n])
        pos = line_end
    return db


def write_captures(caps: dict[str, Capture], data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, cap in caps.items():
        (data_dir / f"capture-{name}.bin").write_bytes(cap.wire)
    meta = {name: cap.meta() for name, cap in caps.items()}
    (data_dir / "captures.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def main(argv: list[str]) -> int:
    import tempfile

    data_dir = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "data"
    with tempfile.TemporaryDirectory(prefix="capture-") as tmp:
        caps = record_all(Path(tmp))
    write_captures(caps, data_dir)
    for name, cap in caps.items():
        print(
            f"{name}: {len(cap.wire)} bytes, snapshot {cap.snapshot or '-'} {cap.snapshot_size} bytes, "
            f"offsets {cap.start_offset}..{cap.final_offset}, WAIT -> {cap.wait_acked}"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except redis.RedisError as exc:
        sys.exit(f"capture failed: {exc}")
