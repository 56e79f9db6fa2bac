"""An asyncio TCP server on its own event loop in a background thread, for the test doubles
(:class:`~tests.support.fake_primary.FakePrimary`, :class:`~tests.support.proxy.TcpProxy`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class LoopServer:
    """``asyncio.start_server(handler, host, port)`` on a new event loop in a daemon thread ``name``.

    :meth:`start` returns the bound port (``port=0``: chosen by the OS) or re-raises a startup
    failure; :meth:`call` runs a function on the loop from any thread; :meth:`stop` closes the
    server, cancels every task and ends the thread.
    """

    def __init__(self, handler: Handler, host: str, port: int, name: str) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            asyncio.set_event_loop(loop)
            try:
                self.server = loop.run_until_complete(asyncio.start_server(self.handler, self.host, self.port))
                self.port = self.server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.name} did not start")
        if failure:
            raise failure[0]
        return self.port

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the loop and return its result."""
        assert self.loop is not None, f"{self.name} not started"

        async def wrapper() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def stop(self, on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        """Close the server, await ``on_close()`` on the loop (e.g. to close connections; at most
        10 s), then cancel the remaining tasks and stop the loop and the thread.  Idempotent."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self.server is not None:
                self.server.close()
            if on_close is not None:
                await on_close()

        if not loop.is_closed():
            with contextlib.suppress(RuntimeError, TimeoutError):
                asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self.loop = None
