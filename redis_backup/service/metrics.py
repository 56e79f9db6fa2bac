"""The service's Prometheus metrics and the state /status and /readyz report, one object per shard.

Values are pushed by the code that already knows them (the shard's read, tick and watch tasks, the
writer's events, the uploader, the pruner, the supervisor) as plain attribute writes and counter
increments: cheap, and safe to read from the HTTP thread (endpoints.py), which only ever reads. What
depends on "now" (the age of the last write, the upload lag) or on files (the restorable window) is
computed at scrape time by the HTTP thread, never on the event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from redis_backup import __version__
from redis_backup.chain.events import ChainBegun, Event

# A stream that delivered nothing for this long is stalled: the primary pings its replicas every 10 s
# (repl-ping-replica-period), so a healthy link is never silent for this long.
STREAM_STALL_SECONDS = 30.0


def _families(registry: CollectorRegistry) -> tuple[dict[str, Gauge], dict[str, Counter]]:
    """(gauges, counters) by name without the prefix, every family of the contract (docs/OPERATIONS.md)."""
    s = ("shard",)
    g, c = "gauge", "counter"
    spec = [
        (g, "attached", "1 while streaming from the primary after a sync, else 0", s),
        (g, "primary_offset_bytes", "the primary's master_repl_offset as last seen (INFO)", s),
        (g, "received_offset_bytes", "stream offset received and written", s),
        (g, "acked_offset_bytes", "offset acknowledged to the primary (durable)", s),
        (c, "captured_bytes", "stream bytes received and written", s),
        (c, "captured_commands", "commands received and written (every command of the stream, PING included)", s),
        (g, "last_write_timestamp_seconds", "unix time a chunk holding a write command was last stored", s),
        (g, "last_write_age_seconds", "seconds since a chunk holding a write command was last stored", s),
        (g, "snapshot_duration_seconds", "how long the last snapshot took to receive", s),
        (g, "snapshot_size_bytes", "size of the last snapshot (RDB)", s),
        (c, "chains_started", "chains begun (a snapshot stored)", s),
        (c, "reconnects", "connections to the primary after the first", s),
        (c, "full_resyncs", "full resyncs (the primary sent a snapshot)", s),
        (g, "capture_gap_open", "1 while a gap in capture is not caught up (restores to it refused)", s),
        (g, "upload_backlog_objects", "files sealed locally (or the open file's new bytes) not yet in the bucket", s),
        (g, "upload_backlog_bytes", "bytes stored locally not yet in the bucket", s),
        (g, "upload_lag_seconds", "age of the oldest data not yet in the bucket (0: none)", s),
        (c, "s3_requests", "S3 API calls by operation and result (ok, or the error code)", (*s, "operation", "result")),
        (c, "retention_deleted_chains", "chains retention deleted, by place", (*s, "where")),
        (g, "verify_last_success", "1 if the last periodic deep verify passed, 0 if it failed", s),
        (g, "verify_last_timestamp_seconds", "unix time of the last periodic deep verify", s),
        (g, "restorable_first_timestamp_seconds", "first restorable second of the local backup", s),
        (g, "restorable_last_timestamp_seconds", "last restorable second of the local backup", s),
        (c, "task_restarts", "restarts of a service task after an unexpected error", ("task",)),
        (g, "build_info", "1, labelled with the version", ("version",)),
    ]
    gauges = {n: Gauge(f"redis_backup_{n}", h, labels, registry=registry) for k, n, h, labels in spec if k == g}
    counters = {n: Counter(f"redis_backup_{n}", h, labels, registry=registry) for k, n, h, labels in spec if k == c}
    return gauges, counters


class Metrics:
    """One registry per process (its own, with the process and platform collectors), shards within."""

    def __init__(self) -> None:
        # no `*_created` series beside each counter: twice the series for a start time nobody queries
        # (the process_start_time_seconds gauge says it once)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client has no annotation here
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.gauge, self.counter = _families(self.registry)
        self.gauge["build_info"].labels(__version__).set(1)
        self.shards: list[ShardMetrics] = []

    def shard(self, address: str) -> ShardMetrics:
        m = ShardMetrics(self, address)
        self.shards.append(m)
        return m

    def task_restarted(self, task: str) -> None:
        self.counter["task_restarts"].labels(task).inc()


def metric_names() -> set[str]:
    """Every family this service exposes (counters with _total), as Prometheus sees them."""
    names = set()
    gauges, counters = _families(CollectorRegistry())
    for f in [*gauges.values(), *counters.values()]:
        for fam in f.describe():
            names.add(fam.name + ("_total" if fam.type == "counter" else ""))
    return names


@dataclass(frozen=True)
class LastError:
    at: float
    message: str


class ShardMetrics:
    """One shard's metric children and the state behind /status and /readyz (plain values: written by
    the service's threads, read by the HTTP thread)."""

    def __init__(self, metrics: Metrics, address: str) -> None:
        self.address = address
        g, c = metrics.gauge, metrics.counter
        self._g = g
        self.attached = g["attached"].labels(address)
        self.primary_offset_g = g["primary_offset_bytes"].labels(address)
        self.received_offset = g["received_offset_bytes"].labels(address)
        self.acked_offset_g = g["acked_offset_bytes"].labels(address)
        self.captured_bytes = c["captured_bytes"].labels(address)
        self.captured_commands = c["captured_commands"].labels(address)
        self.last_write_ts = g["last_write_timestamp_seconds"].labels(address)
        self.snapshot_duration = g["snapshot_duration_seconds"].labels(address)
        self.snapshot_size = g["snapshot_size_bytes"].labels(address)
        self.chains_started = c["chains_started"].labels(address)
        self.reconnects = c["reconnects"].labels(address)
        self.full_resyncs = c["full_resyncs"].labels(address)
        self.gap_open = g["capture_gap_open"].labels(address)
        self.verify_success = g["verify_last_success"].labels(address)
        self.verify_ts = g["verify_last_timestamp_seconds"].labels(address)
        self._s3 = c["s3_requests"]
        self._deleted = c["retention_deleted_chains"]
        # state for /status and /readyz
        self.is_attached = False
        self.attached_since: float | None = None
        self.primary_offset: int | None = None
        self.acked_offset: int | None = None
        self.last_stream_at: float | None = None  # the last bytes from the primary (monotonic)
        self.last_write_at: float | None = None
        self.last_error: LastError | None = None
        self.last_verify: tuple[str, bool, float] | None = None
        self._lock = threading.Lock()
        g["last_write_age_seconds"].labels(address).set_function(self._write_age)

    def watch(self, name: str, fn: Callable[[], float]) -> None:
        """A gauge computed at scrape time (on the HTTP thread): fn must read only snapshot state."""
        self._g[name].labels(self.address).set_function(fn)

    # ------------------------------------------------------------------ written by the capture

    def set_attached(self, attached: bool) -> None:
        self.is_attached = attached
        self.attached_since = time.time() if attached else None
        self.attached.set(1 if attached else 0)
        if attached:
            self.last_stream_at = time.monotonic()

    def chunk(self, end_offset: int, size: int, commands: int, writes: bool, now: float) -> None:
        """One stream chunk stored: per chunk, never per command (the hot path)."""
        self.received_offset.set(end_offset)
        self.captured_bytes.inc(size)
        if commands:
            self.captured_commands.inc(commands)
        self.last_stream_at = time.monotonic()
        if writes:
            self.last_write_at = now
            self.last_write_ts.set(now)

    def acked(self, offset: int) -> None:
        self.acked_offset = offset
        self.acked_offset_g.set(offset)

    def primary_seen(self, offset: int) -> None:
        self.primary_offset = offset
        self.primary_offset_g.set(offset)

    def snapshot_received(self, seconds: float, size: int) -> None:
        self.snapshot_duration.set(seconds)
        self.snapshot_size.set(size)

    def event(self, event: Event) -> None:
        """A writer event (on the spool thread)."""
        if isinstance(event, ChainBegun):
            self.chains_started.inc()

    def error(self, message: str) -> None:
        self.last_error = LastError(time.time(), message)

    def s3_request(self, operation: str, result: str) -> None:
        self._s3.labels(self.address, operation, result).inc()

    def deleted(self, where: str, n: int = 1) -> None:
        self._deleted.labels(self.address, where).inc(n)

    def verified(self, chain: str, passed: bool) -> None:
        now = time.time()
        self.last_verify = (chain, passed, now)
        self.verify_success.set(1 if passed else 0)
        self.verify_ts.set(now)

    # ------------------------------------------------------------------ read at scrape time

    def _write_age(self) -> float:
        at = self.last_write_at
        return max(0.0, time.time() - at) if at is not None else float("nan")

    def stream_silence(self) -> float | None:
        at = self.last_stream_at
        return None if at is None else time.monotonic() - at


@dataclass(frozen=True)
class ReadyInputs:
    """What readiness is decided from: a snapshot of one shard's state."""

    attached: bool
    stream_silence_seconds: float | None  # since the last bytes from the primary; None: never
    bucket: bool
    upload_lag_seconds: float | None
    max_upload_lag_seconds: float
    stall_seconds: float = STREAM_STALL_SECONDS


def not_ready(s: ReadyInputs) -> list[str]:
    """Why the shard is not ready, one human line each; [] when it is."""
    reasons = []
    if not s.attached:
        reasons.append("not attached to the primary")
    elif s.stream_silence_seconds is None or s.stream_silence_seconds > s.stall_seconds:
        reasons.append(f"the stream from the primary is stalled (nothing received for more than {s.stall_seconds:g} s)")
    if s.bucket and s.upload_lag_seconds is not None and s.upload_lag_seconds > s.max_upload_lag_seconds:
        lag, most = s.upload_lag_seconds, s.max_upload_lag_seconds
        reasons.append(f"upload lag {lag:.0f} s is more than READY_MAX_UPLOAD_LAG_SECONDS={most:g}")
    return reasons
