"""Watching a primary's one replica during a load: acknowledged lag and output buffer, every 50 ms."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import redis

from tests.support.servers import RedisServer

INTERVAL = 0.05
# What the primary logs when it drops a replica whose output buffer grew past its limits.
OUTPUT_BUFFER_DROP = "scheduled to be closed ASAP for overcoming of output buffer limits"


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    master: int  # master_repl_offset
    replica: int | None  # the offset the replica acknowledged (None: no replica online)
    omem: int  # the primary's output buffer for the replica, bytes

    @property
    def lag(self) -> int | None:
        return None if self.replica is None else self.master - self.replica


class LagMonitor:
    """Polls ``INFO replication`` and ``CLIENT LIST TYPE replica`` on its own connection, in a thread.

    The lag is master_repl_offset minus the offset the replica acknowledged: what the primary knows.
    Redis replicas acknowledge once a second; redis-backup once a second after its fsync (and at
    once on REPLCONF GETACK), so the lag seen includes up to a second of stream for both.
    """

    def __init__(self, server: RedisServer, interval: float = INTERVAL) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[Sample] = []
        self._client = cast(Any, server.client(track=False, socket_timeout=10.0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-monitor", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> LagMonitor:
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self._client.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.samples.append(self._sample())
                self._stop.wait(self.interval)
        except (redis.RedisError, OSError) as e:  # reported by the reader of the samples
            self.error = e

    def _sample(self) -> Sample:
        info = self._client.info("replication")
        replica = info.get("slave0")
        acked = None
        if isinstance(replica, dict) and replica.get("state") == "online":
            acked = int(replica["offset"])
        clients = self._client.client_list(_type="replica")
        omem = max((int(c.get("omem", 0)) for c in clients), default=0)
        return Sample(time.monotonic(), int(info["master_repl_offset"]), acked, omem)

    # -- results ------------------------------------------------------------------------------

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"monitoring the primary failed: {self.error}")

    def max_lag(self) -> int:
        self._check()
        return max((s.lag for s in self.samples if s.lag is not None), default=0)

    def max_omem(self) -> int:
        self._check()
        return max((s.omem for s in self.samples), default=0)

    def offline_samples(self) -> int:
        """Samples in which the primary had no online replica (it was dropped, or resyncing)."""
        return sum(1 for s in self.samples if s.replica is None)

    def caught_up_after(self, since: float) -> Sample | None:
        """The first sample taken after ``since`` in which the replica had acknowledged everything."""
        return next((s for s in self.samples if s.t >= since and s.lag == 0), None)

    def wait_caught_up(self, since: float, timeout: float) -> Sample | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check()
            found = self.caught_up_after(since)
            if found is not None:
                return found
            time.sleep(self.interval / 2)
        return None


def output_buffer_drops(server: RedisServer) -> int:
    """How many times the primary dropped a replica for its output-buffer limits (from its log)."""
    return server.log_text().count(OUTPUT_BUFFER_DROP)
