"""A TCP proxy between the service and a primary, for network faults on loopback.

The proxy runs an asyncio loop in a background thread; every method may be called from the test's
thread.  Each accepted connection gets its own connection to the current target, and two pumps copy
bytes: *down* (primary -> service) and *up* (service -> primary).  Faults:

* :meth:`stall` / :meth:`stall_for` / :meth:`resume`: stop forwarding in both directions (nothing is
  read from either side, so TCP buffers fill and the primary's output buffer grows), as a network
  partition would; new connections are accepted but stalled too.
* :meth:`cut`: close every connection now (FIN, or RST with ``abort=True``).
* :meth:`cut_after`: forward exactly ``n`` more bytes down, then close both sides.
* :meth:`cut_after_marker`: forward down up to the first occurrence of ``marker`` plus ``extra``
  bytes, then close both sides (to cut in the middle of a chosen command).
* :meth:`stall_after_up`: forward up (service -> target) to the first chunk holding ``marker``, then
  stall as :meth:`stall` does: the target has the request, its answer never arrives (to stop a client
  right after a chosen request, e.g. an S3 call).
* :meth:`refuse`: close new connections at once (the primary is "unreachable").
* :meth:`throttle`: limit the down direction to ``rate`` bytes/s, with a small receive buffer toward
  the primary, so the primary's output buffer for this client grows.
* :meth:`retarget`: send new connections to another server (a failover).

Nothing here sleeps for a fixed time except the throttle's pacing and a requested stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tests.support.loopserver import LoopServer
from tests.support.servers import wait_until

T = TypeVar("T")
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
CHUNK = 64 * 1024
THROTTLED_RCVBUF = 16 * 1024


@dataclass
class _Cut:
    """A pending cut of the down direction: after ``left`` bytes, or at ``marker`` + ``extra``."""

    left: int | None = None
    marker: bytes | None = None
    extra: int = 0
    window: bytes = b""  # the tail of what was forwarded, to find a marker split across chunks
    refuse_after: bool = False
    fired: threading.Event = field(default_factory=threading.Event)


@dataclass
class ProxiedConnection:
    index: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    down_bytes: int = 0
    up_bytes: int = 0
    closed: bool = False

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for w in (self.client, self.upstream):
            if w is None:
                continue
            with contextlib.suppress(Exception):
                if abort:
                    w.transport.abort()
                else:
                    w.close()


class TcpProxy:
    """``TcpProxy(target_host, target_port).start()``; listens on 127.0.0.1:``port``."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        self.conns: list[ProxiedConnection] = []
        self.errors: list[BaseException] = []
        self._loop_server: LoopServer | None = None
        self._open: asyncio.Event | None = None  # set: forwarding; clear: stalled
        self._rate: float | None = None
        self._refuse = False
        self._cut: _Cut | None = None
        self._up_stall: _Cut | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------- lifecycle

    def start(self) -> TcpProxy:
        self._open = asyncio.Event()
        self._open.set()
        self._loop_server = LoopServer(self._handle, self.host, self.port, "TcpProxy")
        self.port = self._loop_server.start()
        return self

    def stop(self) -> None:
        if self._loop_server is None:
            return

        async def release_connections() -> None:
            assert self._open is not None
            self._open.set()
            for conn in list(self.conns):
                conn.close(abort=True)

        self._loop_server.stop(on_close=release_connections)
        self._loop_server = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the proxy's loop and return its result."""
        assert self._loop_server is not None, "proxy not started"
        return self._loop_server.call(fn)

    # ----------------------------------------------------------------------------------- faults

    def stall(self) -> None:
        """Stop forwarding both ways (until :meth:`resume`)."""

        def do() -> None:
            assert self._open is not None
            self._open.clear()

        self._call(do)

    def resume(self) -> None:
        def do() -> None:
            assert self._open is not None
            self._open.set()

        self._call(do)

    def stall_for(self, seconds: float) -> None:
        """Stall now and resume after ``seconds`` (returns at once)."""

        def do() -> None:
            assert self._open is not None
            self._open.clear()
            asyncio.get_running_loop().call_later(seconds, self._open.set)

        self._call(do)

    @property
    def stalled(self) -> bool:
        return self._call(lambda: self._open is not None and not self._open.is_set())

    def cut(self, *, abort: bool = False) -> int:
        """Close every open connection now; returns how many were open."""

        def do() -> int:
            live = [c for c in self.conns if not c.closed]
            for c in live:
                c.close(abort=abort)
            return len(live)

        return self._call(do)

    def cut_after(self, n: int, *, refuse_after: bool = False) -> threading.Event:
        """Forward ``n`` more bytes from the primary, then close both sides.  The event is set when
        the cut happened; with ``refuse_after`` the proxy then refuses connections (:meth:`refuse`)."""
        cut = _Cut(left=n, refuse_after=refuse_after)
        self._call(lambda: setattr(self, "_cut", cut))
        return cut.fired

    def cut_after_marker(self, marker: bytes, extra: int = 0, *, refuse_after: bool = False) -> threading.Event:
        """Forward from the primary up to the start of ``marker`` plus ``extra`` bytes, then close both
        sides.  The event is set when the cut happened."""
        assert marker
        cut = _Cut(marker=marker, extra=extra, refuse_after=refuse_after)
        self._call(lambda: setattr(self, "_cut", cut))
        return cut.fired

    def stall_after_up(self, marker: bytes) -> threading.Event:
        """Forward up to (and with) the chunk that completes ``marker``, then stall both directions until
        :meth:`resume`. The event is set when the stall began."""
        assert marker
        stall = _Cut(marker=marker)
        self._call(lambda: setattr(self, "_up_stall", stall))
        return stall.fired

    def refuse(self, refuse: bool = True) -> None:
        """While set, new connections are closed at once, without reaching the target."""
        self._call(lambda: setattr(self, "_refuse", refuse))

    def throttle(self, rate: float | None) -> None:
        """Limit primary -> service to ``rate`` bytes/s (None: no limit).  Connections opened while a
        limit is set use a small receive buffer toward the primary."""
        self._call(lambda: setattr(self, "_rate", rate))

    def retarget(self, host: str, port: int) -> None:
        """New connections go to ``host:port`` (open ones are left alone; :meth:`cut` them)."""
        self._call(lambda: setattr(self, "target", (host, port)))

    # ----------------------------------------------------------------------------------- inspection

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return len(self.conns)

    def live_connections(self) -> int:
        return self._call(lambda: len([c for c in self.conns if not c.closed]))

    def wait_for_connections(self, count: int, timeout: float = 20.0) -> None:
        wait_until(
            lambda: self.connections >= count, timeout=timeout, message=f"{count} proxied connection(s)"
        )

    def down_bytes(self) -> int:
        """Bytes forwarded primary -> service, over every connection."""
        return self._call(lambda: sum(c.down_bytes for c in self.conns))

    # ----------------------------------------------------------------------------------- pumping

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio's start_server callback calls task.exception(), which raises on a cancelled task
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            conn = ProxiedConnection(index=len(self.conns), client=writer)
            self.conns.append(conn)
        if self._refuse:
            conn.close(abort=True)
            return
        assert self._open is not None
        try:
            await self._open.wait()
            up_reader, up_writer = await self._connect(self.target)
        except OSError:
            conn.close(abort=True)
            return
        conn.upstream = up_writer
        if conn.closed:  # cut while connecting
            up_writer.close()
            return
        await asyncio.gather(
            self._pump(conn, self._down(conn, up_reader, writer)),
            self._pump(conn, self._up(conn, reader, up_writer)),
        )

    async def _pump(self, conn: ProxiedConnection, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except (ConnectionError, OSError):
            pass
        except Exception as exc:  # a bug in the proxy: keep it for the test to see
            self.errors.append(exc)
        finally:
            conn.close()

    async def _connect(self, target: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = target
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self._rate is not None:
            # a small window toward the primary: what the service does not take stays in the primary
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, THROTTLED_RCVBUF)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=CHUNK * 4)

    async def _down(self, conn: ProxiedConnection, src: Reader, dst: Writer) -> None:
        """Primary -> service: stall, throttle and cuts apply here."""
        assert self._open is not None
        while not conn.closed:
            await self._open.wait()
            size = CHUNK
            rate = self._rate
            if rate is not None:
                size = max(1, min(CHUNK, int(rate / 20)))
            data = await src.read(size)
            if not data:
                break
            await self._open.wait()
            if conn.closed:
                break
            data, fire = self._apply_cut(data)
            if data:
                dst.write(data)
                conn.down_bytes += len(data)
                await dst.drain()
            if fire is not None:
                if fire.refuse_after:
                    self._refuse = True
                conn.close()
                fire.fired.set()
                break
            if rate is not None:
                await asyncio.sleep(len(data) / rate)
        conn.close()

    def _apply_cut(self, data: bytes) -> tuple[bytes, _Cut | None]:
        cut = self._cut
        if cut is None:
            return data, None
        if cut.left is not None:
            if len(data) < cut.left:
                cut.left -= len(data)
                return data, None
            self._cut = None
            return data[: cut.left], cut
        assert cut.marker is not None
        window = cut.window + data
        at = window.find(cut.marker)
        if at < 0:
            cut.window = window[-(len(cut.marker) - 1) :] if len(cut.marker) > 1 else b""
            return data, None
        # the marker starts at ``at`` in window, i.e. at at - len(old window) in data (maybe negative)
        end = at - len(cut.window) + cut.extra
        if end > len(data):  # the cut point is in a later chunk
            self._cut = _Cut(left=end - len(data), fired=cut.fired, refuse_after=cut.refuse_after)
            return data, None
        self._cut = None
        return data[: max(end, 0)], cut

    async def _up(self, conn: ProxiedConnection, src: Reader, dst: Writer) -> None:
        """Service -> primary: only stalls apply (and stall_after_up's marker)."""
        assert self._open is not None
        while not conn.closed:
            await self._open.wait()
            data = await src.read(CHUNK)
            if not data:
                break
            await self._open.wait()
            if conn.closed:
                break
            dst.write(data)
            conn.up_bytes += len(data)
            await dst.drain()
            stall = self._up_stall
            if stall is not None and stall.marker is not None:
                window = stall.window + data
                if stall.marker in window:
                    self._up_stall = None
                    self._open.clear()
                    stall.fired.set()
                else:
                    stall.window = window[-(len(stall.marker) - 1) :] if len(stall.marker) > 1 else b""
        conn.close()


def proxied_env(proxy: TcpProxy) -> dict[str, Any]:
    """Overrides for service_env: connect through the proxy."""
    return {"REDIS_HOST": proxy.host, "REDIS_PORT": proxy.port}
