"""The cheapest replica there is: copy the replication stream byte for byte to a file.

A context contender for the ingestion benchmark (``python -m bench.copier --port P --out FILE``): the
handshake, the snapshot skipped, then every stream byte written as received, fsync'd and acknowledged
(REPLCONF ACK) about once a second. No command is looked at, so its CPU is the floor for any replica
that stores the stream: socket reads and file writes.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from types import FrameType

READ_SIZE = 1 << 18
TICK = 1.0
EOF_MARK_LEN = 40


def command(*args: str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class Link:
    """A blocking socket with a small read-ahead buffer for the handshake's lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise ConnectionError("connection closed by the primary")
        self.buf += data

    def line(self) -> bytes:
        """The next non-empty line (the primary sends bare newlines as keepalives)."""
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                self._fill()
                continue
            line = bytes(self.buf[:nl]).rstrip(b"\r")
            del self.buf[: nl + 1]
            if line:
                return line

    def call(self, *args: str) -> bytes:
        self.sock.sendall(command(*args))
        reply = self.line()
        if reply.startswith(b"-"):
            raise ConnectionError(f"{args[0]}: {reply.decode(errors='replace')}")
        return reply

    def skip(self, size: int) -> None:
        while len(self.buf) < size:
            self._fill()
        del self.buf[:size]

    def skip_until(self, mark: bytes) -> None:
        while (at := self.buf.find(mark)) < 0:
            keep = len(mark) - 1
            if len(self.buf) > keep:
                del self.buf[: len(self.buf) - keep]
            self._fill()
        del self.buf[: at + len(mark)]


def handshake(link: Link) -> int:
    """PSYNC for a full resync, skip the snapshot; returns the stream offset that follows it."""
    link.call("PING")
    link.call("REPLCONF", "capa", "eof", "capa", "psync2")
    reply = link.call("PSYNC", "?", "-1")
    if not reply.startswith(b"+FULLRESYNC "):
        raise ConnectionError(f"PSYNC: {reply.decode(errors='replace')}")
    offset = int(reply.split()[2])
    header = link.line()
    if header.startswith(b"$EOF:"):
        link.skip_until(header[5 : 5 + EOF_MARK_LEN])
    else:
        link.skip(int(header[1:]))
    return offset


def copy_stream(link: Link, fd: int, offset: int) -> None:
    """Write every received byte to fd; fsync and ACK once a second (and once at the start)."""
    sock = link.sock
    if link.buf:
        os.write(fd, link.buf)
        offset += len(link.buf)
        link.buf.clear()
    sock.sendall(command("REPLCONF", "ACK", str(offset)))
    sock.settimeout(TICK)
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    next_tick = time.monotonic() + TICK
    while True:
        try:
            n = sock.recv_into(buf)
        except TimeoutError:
            n = -1
        if n == 0:
            raise ConnectionError("connection closed by the primary")
        if n > 0:
            written = 0
            while written < n:
                written += os.write(fd, view[written:n])
            offset += n
        if time.monotonic() >= next_tick:
            os.fsync(fd)
            sock.sendall(command("REPLCONF", "ACK", str(offset)))
            next_tick = time.monotonic() + TICK


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.copier", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True, help="file the stream is appended to")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    sock = socket.create_connection((args.host, args.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        link = Link(sock)
        offset = handshake(link)
        copy_stream(link, fd, offset)
    except ConnectionError as e:
        print(f"bench.copier: {e}", file=sys.stderr)
        return 1
    finally:
        os.close(fd)
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
