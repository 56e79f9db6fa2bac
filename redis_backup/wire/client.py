"""The asyncio driver: owns the socket, the timeouts and the wire; the protocol logic is in protocol.py.

Usable on its own::

    async with ReplicaClient(ConnectionOptions(host="localhost", port=6379)) as rc:
        print(rc.sync)                       # FullResync(replid, offset) or Continue(replid, offset)
        async for chunk in rc.snapshot():    # the RDB, in chunks (full resync only)
            ...
        async for data in rc.stream():       # StreamData: raw command bytes with their offsets
            ...
            rc.ack(data.end_offset)          # tell the primary what is safely stored

The socket is read into one reused buffer (asyncio's BufferedProtocol), and the chunks and StreamData
handed out are memoryviews into it: valid until the next one is asked for. Write or hash them at once,
or copy them (bytes(chunk)) to keep them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from redis_backup.errors import ProtocolError, RetryableError
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
from redis_backup.wire.resp import Bytes

log = logging.getLogger(__name__)
READ_SIZE = 1 << 18
# The reused receive buffer: each receive fills what is free of it; reading pauses when less than
# RECEIVE_MIN_FREE is left, until the consumer has taken everything (so memory stays bounded).
RECEIVE_BUFFER = 1 << 20
RECEIVE_MIN_FREE = 1 << 16
# While a snapshot streams in, a receive of less than PACE_BELOW bytes means the primary is the slow side
# (it writes 16 KiB at a time, and each write woke the consumer up): the next receive() returns only after
# PACE_SECONDS, or as soon as the buffer is nearly full, with what arrived meanwhile. The transport goes on
# reading into the buffer, so the primary is never held up by the wait; the consumer (event, write, CRC)
# runs once per wait instead of once per 16 KiB. Never used for the stream (WAIT latency).
PACE_BELOW = 1 << 18
PACE_SECONDS = 0.004
_T = TypeVar("_T")
ACK_INTERVAL = 1.0
# How long a primary may take from the connection to the start of the snapshot (its header) or to
# +CONTINUE. Keepalive newlines keep the link alive meanwhile but do not extend this. A real primary
# needs repl-diskless-sync-delay (5 s) for a diskless sync, or a whole BGSAVE for a disk-based one,
# twice if one was already running that the replica cannot join: minutes for a large dataset.
SNAPSHOT_START_TIMEOUT = 600.0
_TLS_FILES = ("redis_tls_ca_cert", "redis_tls_cert", "redis_tls_key")


@dataclass(frozen=True)
class ConnectionOptions:
    host: str = "localhost"
    port: int = 6379
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca_cert: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    snapshot_start_timeout: float = SNAPSHOT_START_TIMEOUT

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca_cert)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_insecure:
            log.warning("TLS server verification is off: the primary is not authenticated")
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


async def _connect(opts: ConnectionOptions, connect: Callable[[ssl.SSLContext | None], Awaitable[_T]]) -> _T:
    """Connect (TCP or TLS, IPv4/IPv6/host name) and turn every failure into one clear RetryableError."""
    where = opts.address
    try:
        ctx = opts.ssl_context()
    except (OSError, ssl.SSLError) as e:
        raise RetryableError(f"cannot load TLS files: {e}", settings=_TLS_FILES) from e
    try:
        async with asyncio.timeout(opts.connect_timeout):
            return await connect(ctx)
    except ssl.SSLCertVerificationError as e:
        raise RetryableError(
            f"TLS: the certificate of {where} is not trusted: {e.verify_message} (check the CA certificate "
            "and the server's certificate)", settings=("redis_tls_ca_cert",),
        ) from e
    except ssl.SSLError as e:
        raise RetryableError(f"TLS handshake with {where} failed: {e.reason or e} (is TLS enabled there?)") from e
    except TimeoutError as e:
        raise RetryableError(f"cannot connect to {where}: timed out after {opts.connect_timeout:g}s") from e
    except socket.gaierror as e:
        raise RetryableError(f"cannot resolve {opts.host!r}: {e.strerror}", settings=("redis_host",)) from e
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise RetryableError(
            f"cannot connect to {where}: {reason} (is the primary running?)", settings=("redis_host", "redis_port")
        ) from e


def _no_delay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def open_stream(opts: ConnectionOptions) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A StreamReader/StreamWriter pair, for request/reply use (offsetprobe); errors as in _connect."""

    async def connect(ctx: ssl.SSLContext | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            opts.host, opts.port, ssl=ctx, limit=READ_SIZE * 4, server_hostname=opts.host if ctx else None
        )

    reader, writer = await _connect(opts, connect)
    _no_delay(writer.transport)
    return reader, writer


class Receiver(asyncio.BufferedProtocol):
    """The receiving side of the replication link: the transport reads into one reused buffer.

    A bytes object per read (StreamReader) cost more CPU than anything done with the bytes: allocation,
    copies into and out of the StreamReader's buffer, fresh pages. Here the kernel (or the TLS layer)
    writes into the free part of a buffer allocated once, and receive() hands out what arrived as a
    memoryview. Bytes handed out are never overwritten before the next receive() call, which is how
    the consumer says it is done with them; only then does the buffer start over from its beginning.
    """

    def __init__(self, size: int = RECEIVE_BUFFER) -> None:
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._filled = 0  # bytes received into the buffer
        self._taken = 0  # of which handed out by receive()
        self._paused = False
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.pacing = False  # set by the driver while a snapshot is received (see PACE_BELOW)
        self._holding = False  # a paced wait is on: only a nearly full buffer ends it early
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        full = len(self._buf) - self._filled < RECEIVE_MIN_FREE
        if full and not self._paused and self.transport is not None:
            self._paused = True  # back-pressure: the consumer has not taken what is here yet
            self.transport.pause_reading()
        if full or not self._holding:
            self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()
        if not self.closed.done():
            self.closed.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def receive(self) -> memoryview:
        """What arrived since the last call (empty: the connection is closed); releases what that call
        returned, which the buffer may now reuse."""
        loop = asyncio.get_running_loop()
        if self._taken == self._filled:
            got = self._filled
            self._taken = self._filled = 0
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            if self.pacing and got < PACE_BELOW and not self._eof:
                self._holding = True
                self._waiter = loop.create_future()
                timer = loop.call_later(PACE_SECONDS, self._wake)
                try:
                    await self._waiter
                finally:
                    timer.cancel()
                    self._waiter = None
                    self._holding = False
            while not self._filled:
                if self._error is not None:
                    raise self._error
                if self._eof:
                    return self._view[:0]
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        data = self._view[self._taken : self._filled]
        self._taken = self._filled
        return data


async def open_receiver(opts: ConnectionOptions) -> Receiver:
    """Connect a Receiver (see _connect for the errors)."""
    loop = asyncio.get_running_loop()

    async def connect(ctx: ssl.SSLContext | None) -> Receiver:
        _, proto = await loop.create_connection(
            Receiver, opts.host, opts.port, ssl=ctx, server_hostname=opts.host if ctx else None
        )
        return proto

    receiver = await _connect(opts, connect)
    assert receiver.transport is not None
    _no_delay(receiver.transport)
    return receiver


class ReplicaClient:
    """One replication session with a primary, as an async context manager."""

    def __init__(
        self,
        opts: ConnectionOptions,
        *,
        psync: tuple[str, int] | None = None,
        db: int = 0,
        in_multi: bool = False,
        rdb_only: bool = False,
        listening_port: int = 0,
    ) -> None:
        self.opts = opts
        self.proto = ReplicaProtocol(
            username=opts.username,
            password=opts.password,
            listening_port=listening_port,
            psync=psync,
            db=db,
            in_multi=in_multi,
            rdb_only=rdb_only,
        )
        self.sync: FullResync | Continue | None = None
        self._pending: deque[Event] = deque()
        self._link: Receiver | None = None
        self._transport: asyncio.Transport | None = None
        self._last_ack: int | None = None
        self._last_ack_at = 0.0
        self._keepalive: asyncio.Task[None] | None = None
        # Loop time of the last read that was worth waiting for: any read, except one of nothing but
        # keepalive newlines before PSYNC (a primary sends those only to a replica).
        self._last_data = 0.0
        self._start_deadline = 0.0  # loop time by which the snapshot (or +CONTINUE) must have begun
        self._dead: RetryableError | None = None  # why the watchdog cut the link

    async def __aenter__(self) -> ReplicaClient:
        self._link = await open_receiver(self.opts)
        self._transport = self._link.transport
        self._last_data = asyncio.get_running_loop().time()
        self._start_deadline = self._last_data + self.opts.snapshot_start_timeout
        try:
            await self._handshake()
        except BaseException:
            await self.aclose()
            raise
        self._last_data = asyncio.get_running_loop().time()
        self._keepalive = asyncio.create_task(self._every_second())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._transport is not None:
            assert self._link is not None
            self._transport.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._link.closed), 2)
            self._transport = None

    async def _handshake(self) -> None:
        self._flush()
        while self.sync is None:
            for ev in await self._read_events():
                if self.sync is None and isinstance(ev, FullResync | Continue):
                    self.sync = ev
                else:
                    self._pending.append(ev)

    def _flush(self) -> None:
        out = self.proto.data_to_send()
        if out and self._transport is not None:
            self._transport.write(out)

    def ack(self, offset: int) -> None:
        """Send REPLCONF ACK offset now (offset: the last stream byte durably stored).

        The last offset is repeated every second, as a Redis replica does: the primary drops a replica
        that stays silent for repl-timeout, and only starts the stream after a diskless snapshot once
        an ACK arrives after it has finished sending."""
        self._last_ack = offset
        self._last_ack_at = asyncio.get_running_loop().time()
        self.proto.ack(offset)
        self._flush()

    async def _every_second(self) -> None:
        """Repeat the last ACK, and be the read timeout and the snapshot start timeout: a watchdog costs
        nothing per read, where a timeout around every read costs a timer each (most reads are small when
        the service keeps up)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(ACK_INTERVAL)
            now = loop.time()
            if self._transport is not None:
                if self.proto.waiting_for_snapshot and now >= self._start_deadline:
                    self._dead = self._not_started()
                elif now - self._last_data > self.opts.read_timeout:
                    self._dead = self._silent()
                if self._dead is not None:
                    self._transport.abort()
                    return
            if self._last_ack is not None and now - self._last_ack_at >= ACK_INTERVAL * 0.9:
                self.ack(self._last_ack)

    def _silent(self) -> RetryableError:
        return RetryableError(
            f"no data from {self.opts.address} for {self.opts.read_timeout:g}s: link considered dead",
            settings=("read_timeout_seconds",),
        )

    def _not_started(self) -> RetryableError:
        st = self.proto.state
        what = (
            "no snapshot after +FULLRESYNC" if st is State.SNAPSHOT_HEADER
            else "no reply to PSYNC" if st is State.PSYNC_REPLY
            else "the handshake did not finish"
        )  # fmt: skip
        t = self.opts.snapshot_start_timeout
        return RetryableError(
            f"{what} from {self.opts.address} within {t:g}s of connecting "
            f"({self.proto.keepalive_bytes} keepalive newlines received): giving up this attempt "
            "(raise the snapshot start timeout if the primary's BGSAVE takes longer, see "
            "rdb_last_bgsave_time_sec in its INFO persistence)",
            settings=("snapshot_start_timeout_seconds",),
        )

    def _handshake_deadline(self) -> tuple[float, bool]:
        """(loop time, whether it is the snapshot start deadline) for the next handshake read."""
        silent = self._last_data + self.opts.read_timeout
        return (self._start_deadline, True) if self._start_deadline <= silent else (silent, False)

    async def _read_events(self) -> list[Event]:
        """The events of the next receive. It reuses the buffer that earlier events' data point into:
        only call it once those are consumed (events() asks for more only when they have been)."""
        assert self._link is not None
        loop = asyncio.get_running_loop()
        try:
            if self._keepalive is None:  # handshake: no watchdog yet
                deadline, starting = self._handshake_deadline()
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await self._link.receive()
                except TimeoutError:
                    raise (self._not_started() if starting else self._silent()) from None
            else:
                data = await self._link.receive()
        except (ConnectionError, OSError, ssl.SSLError) as e:
            if self._dead is not None:
                raise self._dead from None
            raise RetryableError(f"connection to {self.opts.address} lost: {e}") from e
        if self._dead is not None:
            raise self._dead
        if not data:
            raise RetryableError(f"connection to {self.opts.address} closed by the primary")
        proto = self.proto
        waiting, keepalives = proto.waiting_for_snapshot, proto.keepalive_bytes
        events = proto.receive_data(data)
        self._link.pacing = proto.state is State.SNAPSHOT_SIZED or proto.state is State.SNAPSHOT_EOF
        # Keepalive newlines keep the link alive only while the snapshot is awaited (and that wait has
        # its own deadline); a read with anything else in it always does.
        if waiting or proto.keepalive_bytes - keepalives < len(data):
            self._last_data = loop.time()
        self._flush()
        return events

    async def events(self) -> AsyncIterator[Event]:
        """Every event after the PSYNC reply: snapshot events, then StreamData, until the link drops."""
        while True:
            # One at a time, so that a consumer that stops early leaves the rest for the next one.
            while self._pending:
                yield self._pending.popleft()
            self._pending.extend(await self._read_events())

    async def snapshot(self) -> AsyncIterator[Bytes]:
        """The snapshot's bytes in chunks (memoryviews, valid until the next); ends after the last one
        (full resync only)."""
        if not isinstance(self.sync, FullResync):
            raise ProtocolError("no snapshot: the primary continued the stream")
        async for ev in self.events():
            if isinstance(ev, SnapshotData):
                yield ev.data
            elif isinstance(ev, SnapshotEnd):
                return
            elif not isinstance(ev, SnapshotStart):
                raise ProtocolError(f"unexpected {type(ev).__name__} during the snapshot")
        # events() only ends by raising

    async def stream(self) -> AsyncIterator[StreamData]:
        """The command stream. Unless the caller acknowledged something already, the sync offset is
        acknowledged here: a diskless primary sends nothing after the snapshot until an ACK arrives, and
        a caller that reaches the stream has consumed the snapshot (its later acks take over)."""
        if self._last_ack is None and self.sync is not None:
            self.ack(self.sync.offset)
        async for ev in self.events():
            if isinstance(ev, StreamData):
                yield ev
            else:
                raise ProtocolError(f"unexpected {type(ev).__name__} in the command stream")
