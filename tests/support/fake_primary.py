"""A scripted stand-in for a Redis primary, for bytes a real Redis never sends.

The server runs an asyncio loop in a background thread.  For every command a connection sends
(RESP arrays, or inline commands) it records the command as ``list[bytes]`` and replies:

* with the next matching ``steps`` entry of that connection, if any (see :class:`FakePrimary`);
* else with the ``script`` callable's result, if one was given;
* else by default: ``+PONG`` to PING, ``psync_reply`` to PSYNC/SYNC, ``+OK`` to anything else
  before PSYNC, and nothing at all after it (a primary never answers REPLCONF ACK).

Helpers at the bottom build replies: :func:`resp_command`, :func:`fullresync_reply`,
:func:`continue_reply`, :func:`empty_rdb` (a valid empty RDB with a correct CRC64).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from tests.support.loopserver import LoopServer
from tests.support.servers import wait_until

CLOSE: Final = b"\x00<close>\x00"  # as a reply: close the connection instead of answering
Reply = bytes | None
Script = Callable[["FakeConnection", list[bytes]], Reply]
PsyncReply = bytes | Callable[["FakeConnection"], bytes]


class _ProtocolViolation(Exception):
    pass


@dataclass
class FakeConnection:
    """One accepted connection.  ``send``/``close`` may be called from any thread."""

    index: int
    received: list[list[bytes]] = field(default_factory=list)
    psync_done: bool = False
    closed: bool = False
    _writer: asyncio.StreamWriter | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def _send_now(self, data: bytes) -> None:
        if self._writer is None or self.closed:
            return
        if data == CLOSE:
            self._close_now()
            return
        self._writer.write(data)

    def _close_now(self) -> None:
        if self._writer is not None and not self.closed:
            self.closed = True
            self._writer.close()

    def send(self, data: bytes) -> None:
        """Write ``data`` to the replica (thread-safe; CLOSE closes the connection)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._send_now, data)

    def close(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._close_now)

    def abort(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        assert self._loop is not None

        def do() -> None:
            if self._writer is not None and not self.closed:
                self.closed = True
                self._writer.transport.abort()

        self._loop.call_soon_threadsafe(do)


async def _read_command(reader: asyncio.StreamReader) -> list[bytes] | None:
    """One command (RESP array or inline); None at EOF."""
    line = await reader.readline()
    if not line:
        return None
    if not line.endswith(b"\r\n"):
        if reader.at_eof():
            return None
        raise _ProtocolViolation(f"line without CRLF: {line!r}")
    line = line[:-2]
    if not line.startswith(b"*"):
        return line.split()  # inline command (empty list for a bare CRLF)
    count = int(line[1:])
    args: list[bytes] = []
    for _ in range(count):
        header = await reader.readline()
        if not header.startswith(b"$") or not header.endswith(b"\r\n"):
            raise _ProtocolViolation(f"bad bulk header: {header!r}")
        size = int(header[1:-2])
        data = await reader.readexactly(size + 2)
        if data[-2:] != b"\r\n":
            raise _ProtocolViolation("bulk string not followed by CRLF")
        args.append(data[:-2])
    return args


class FakePrimary:
    """A fake primary on 127.0.0.1 (port chosen by the OS unless ``port`` is given).

    ``steps``: a list of ``(expect_prefix, reply)`` applied in order to each new connection (the
    list restarts for every connection).  A command matches when its arguments joined by spaces
    start with ``expect_prefix`` (case-insensitive), e.g. ``(b"REPLCONF capa", b"+OK\\r\\n")``.  A
    command that does not match the next step is recorded in ``mismatches`` and answered by the
    default rules.  ``reply`` may be bytes, ``None`` (no answer) or :data:`CLOSE`.

    ``script(conn, command)``: called for commands no step consumed; return bytes to send,
    :data:`CLOSE`, or ``None`` to fall through to the default rules.

    ``psync_reply``: bytes, or ``callable(conn) -> bytes`` (e.g. a FULLRESYNC for the first
    connection and +CONTINUE afterwards).  ``close_after_psync`` closes the connection right after.
    """

    def __init__(
        self,
        steps: Sequence[tuple[bytes, Reply]] = (),
        *,
        script: Script | None = None,
        psync_reply: PsyncReply = b"",
        close_after_psync: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        info_offset: Callable[[], int] | None = None,
    ) -> None:
        """``info_offset``: answer the service's INFO (its offset probe) with this master_repl_offset;
        without it INFO is refused, as for a least-privilege user."""
        self.info_offset = info_offset
        self.steps = list(steps)
        self.script = script
        self.psync_reply = psync_reply
        self.close_after_psync = close_after_psync
        self.host = host
        self.port = port
        self.received: list[list[bytes]] = []
        self.mismatches: list[tuple[int, bytes, list[bytes]]] = []
        self.errors: list[BaseException] = []
        self.conns: list[FakeConnection] = []
        self._loop_server: LoopServer | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------- lifecycle

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        return len(self.conns)

    def start(self) -> FakePrimary:
        self._loop_server = LoopServer(self._handle, self.host, self.port, "FakePrimary")
        self.port = self._loop_server.start()
        return self

    def stop(self) -> None:
        loop_server = self._loop_server
        if loop_server is None:
            return

        async def close_connections() -> None:
            for conn in self.conns:
                conn._close_now()
            if loop_server.server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(loop_server.server.wait_closed(), 5)

        loop_server.stop(on_close=close_connections)
        self._loop_server = None

    def __enter__(self) -> FakePrimary:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------- serving

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FakeConnection(index=-1, _writer=writer, _loop=asyncio.get_running_loop())
        steps = list(self.steps)
        try:
            while not conn.closed:
                command = await _read_command(reader)
                if command is None:
                    break
                if conn.index < 0 and command and command[0].upper() == b"INFO":
                    # the service's second connection asking for the offset (offsetprobe.py): not one of
                    # the replication connections
                    if self.info_offset is None:
                        conn._send_now(b"-NOPERM this user has no permissions to run the 'info' command\r\n")
                    else:
                        body = b"# Replication\r\nmaster_repl_offset:%d\r\n" % self.info_offset()
                        conn._send_now(b"$%d\r\n%s\r\n" % (len(body), body))
                    await writer.drain()
                    continue
                with self._lock:
                    if conn.index < 0:
                        conn.index = len(self.conns)
                        self.conns.append(conn)
                    conn.received.append(command)
                    self.received.append(command)
                reply = self._reply(conn, command, steps)
                if reply is not None:
                    conn._send_now(reply)
                    if not conn.closed:
                        await writer.drain()
                if conn.psync_done and self.close_after_psync and self._is_psync(command):
                    conn._close_now()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except _ProtocolViolation as exc:
            self.errors.append(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a script: keep it for the test to see
            self.errors.append(exc)
        finally:
            conn._close_now()

    @staticmethod
    def _is_psync(command: list[bytes]) -> bool:
        return bool(command) and command[0].upper() in (b"PSYNC", b"SYNC")

    def _reply(self, conn: FakeConnection, command: list[bytes], steps: list[tuple[bytes, Reply]]) -> Reply:
        if steps:
            prefix, reply = steps[0]
            joined = b" ".join(command)
            if joined.upper().startswith(prefix.upper()):
                steps.pop(0)
                if self._is_psync(command):
                    conn.psync_done = True
                return reply
            self.mismatches.append((conn.index, prefix, command))
        if self.script is not None:
            scripted = self.script(conn, command)
            if scripted is not None:
                if self._is_psync(command):
                    conn.psync_done = True
                return scripted
        if self._is_psync(command):
            conn.psync_done = True
            return self.psync_reply(conn) if callable(self.psync_reply) else self.psync_reply
        if conn.psync_done:
            return None
        if command and command[0].upper() == b"PING":
            return b"+PONG\r\n"
        return b"+OK\r\n"

    # ----------------------------------------------------------------------------------- inspection

    def connection(self, index: int = -1) -> FakeConnection:
        return self.conns[index]

    def send(self, data: bytes, conn: int = -1) -> None:
        """Send ``data`` on connection ``conn`` (default: the newest)."""
        self.conns[conn].send(data)

    def close_connections(self) -> None:
        for conn in list(self.conns):
            conn.close()

    def commands(self, name: bytes | None = None) -> list[list[bytes]]:
        """All commands received so far (optionally only those named ``name``)."""
        with self._lock:
            found = list(self.received)
        if name is None:
            return found
        return [c for c in found if c and c[0].upper() == name.upper()]

    def wait_for_command(self, prefix: bytes, timeout: float = 10.0, count: int = 1) -> list[list[bytes]]:
        """Wait until ``count`` commands starting with ``prefix`` (args joined by spaces) arrived."""

        def matching() -> list[list[bytes]] | None:
            found = [c for c in self.commands() if b" ".join(c).upper().startswith(prefix.upper())]
            return found if len(found) >= count else None

        return wait_until(
            matching,
            timeout=timeout,
            message=f"fake primary never got {count} x {prefix!r}; got {self.commands()!r}",
        )

    def wait_for_connections(self, count: int = 1, timeout: float = 10.0) -> None:
        wait_until(
            lambda: self.connections >= count,
            timeout=timeout,
            message=f"{count} connection(s) to the fake primary",
        )

    def wait_for_psync(self, timeout: float = 10.0, count: int = 1) -> list[list[bytes]]:
        return self.wait_for_command(b"PSYNC", timeout=timeout, count=count)


# --------------------------------------------------------------------------------------------- payloads


def resp_command(*args: bytes | str | int) -> bytes:
    """Encode a command as a RESP array of bulk strings (as a primary streams it)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _crc64_table() -> list[int]:
    poly = 0x95AC9329AC4BC9B5  # Jones polynomial (0xad93d23594c935a9), reflected
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC64_TABLE = _crc64_table()


def crc64(data: bytes, crc: int = 0) -> int:
    """Redis' CRC64 (Jones, reflected, no final xor), as stored at the end of an RDB file."""
    for byte in data:
        crc = _CRC64_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def empty_rdb(version: int = 10) -> bytes:
    """A minimal valid RDB file with no keys: header, EOF opcode, CRC64 (little endian)."""
    body = b"REDIS%04d" % version + b"\xff"
    return body + crc64(body).to_bytes(8, "little")


def fullresync_reply(rdb: bytes, replid: str = "0123456789abcdef" * 2 + "01234567", offset: int = 0) -> bytes:
    """``+FULLRESYNC <replid> <offset>`` followed by the RDB as a ``$<len>`` payload."""
    return b"+FULLRESYNC %s %d\r\n$%d\r\n" % (replid.encode(), offset, len(rdb)) + rdb


def fullresync_eof_reply(
    rdb: bytes, replid: str = "0123456789abcdef" * 2 + "01234567", offset: int = 0, mark: bytes = b"M" * 40
) -> bytes:
    """Diskless form: ``$EOF:<40-byte mark>``, the RDB, then the mark again."""
    assert len(mark) == 40
    return b"+FULLRESYNC %s %d\r\n$EOF:%s\r\n" % (replid.encode(), offset, mark) + rdb + mark


def continue_reply(replid: str | None = None) -> bytes:
    return b"+CONTINUE\r\n" if replid is None else b"+CONTINUE %s\r\n" % replid.encode()
