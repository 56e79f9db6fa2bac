"""The service's HTTP endpoints on METRICS_HOST:METRICS_PORT: /metrics, /healthz, /readyz, /status.

A ThreadingHTTPServer on threads of its own: a scrape never waits for the event loop and the event loop
never waits for a scrape. The handlers only read (the shard's plain state, the metrics); what reads
files (the backup's summary for /status and the restorable-window gauges) is computed here, at most
every SUMMARY_SECONDS, never on the event loop.
"""

from __future__ import annotations

import errno
import functools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from redis_backup import __version__
from redis_backup.chain.catalog import load_catalog
from redis_backup.chain.summary import summarize
from redis_backup.errors import ConfigError
from redis_backup.service.metrics import Metrics, ReadyInputs, not_ready
from redis_backup.store.local import LocalStore
from redis_backup.times import iso

if TYPE_CHECKING:
    from redis_backup.service.shard import Shard
    from redis_backup.service.supervisor import Supervisor

SUMMARY_SECONDS = 5.0  # how stale /status's "backup" and the restorable gauges may be
HEARTBEAT_STALE_SECONDS = 30.0  # an event loop that has not ticked for this long is stuck: not healthy


class Summary:
    """summarize(load_catalog(BACKUP_DIR)), cached for SUMMARY_SECONDS (read on the HTTP threads)."""

    def __init__(self, backup_dir: str) -> None:
        self.store = LocalStore(backup_dir)
        self._lock = threading.Lock()
        self._at = -SUMMARY_SECONDS
        self._value: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        with self._lock:
            if time.monotonic() - self._at >= SUMMARY_SECONDS:
                try:
                    self._value = summarize(load_catalog(self.store))
                except Exception as e:  # a backup being written under it: reported, tried again next time
                    self._value = {"error": f"cannot read {self.store.root}: {e}"}
                self._at = time.monotonic()
            return self._value

    def restorable(self, key: str) -> float:
        v = self.get().get(key)
        return float(v) if isinstance(v, int | float) else float("nan")


def _when(at: float | None) -> dict[str, Any] | None:
    return None if at is None else {"at": iso(at), "at_unix": at}


class Service:
    """What the endpoints read: the metrics, the shards, the supervisor, the event loop's heartbeat."""

    def __init__(self, metrics: Metrics, shards: list[Shard], max_upload_lag: float) -> None:
        self.metrics = metrics
        self.shards = shards
        self.max_upload_lag = max_upload_lag
        self.supervisor: Supervisor | None = None
        self.heartbeat = time.monotonic()  # written by the event loop (see beat())
        self.summaries = {id(s): Summary(s.settings.backup_dir) for s in shards}
        for s in shards:
            summary = self.summaries[id(s)]
            for end in ("first", "last"):
                s.metrics.watch(f"restorable_{end}_timestamp_seconds",
                                functools.partial(summary.restorable, f"{end}_restorable_unix"))  # fmt: skip

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def health(self) -> list[str]:
        problems = list(self.supervisor.health()) if self.supervisor is not None else ["the service is starting"]
        stuck = time.monotonic() - self.heartbeat
        if stuck > HEARTBEAT_STALE_SECONDS:
            problems.append(f"the event loop has not run for {stuck:.0f} s")
        return problems

    def _upload(self, shard: Shard) -> tuple[int, int, float] | None:
        return shard.upload_backlog() if shard.uploader is not None else None

    def not_ready(self, shard: Shard) -> list[str]:
        m = shard.metrics
        upload = self._upload(shard)
        return not_ready(ReadyInputs(
            attached=m.is_attached, stream_silence_seconds=m.stream_silence(), bucket=upload is not None,
            upload_lag_seconds=upload[2] if upload is not None else None, max_upload_lag_seconds=self.max_upload_lag,
        ))  # fmt: skip

    def shard_status(self, shard: Shard) -> dict[str, Any]:
        m = shard.metrics
        upload = self._upload(shard)
        errors = [e for e in (m.last_error and (m.last_error.at, m.last_error.message),
                              shard.uploader.last_error if shard.uploader is not None else None) if e]  # fmt: skip
        last_error = max(errors, default=None)
        reasons = self.not_ready(shard)
        primary, acked = m.primary_offset, m.acked_offset
        verify = m.last_verify
        age = m._write_age()
        return {
            "shard": m.address,
            "backup_dir": shard.settings.backup_dir,
            "bucket": shard.bucket.describe() if shard.bucket is not None else None,
            "attached": m.is_attached,
            "attached_since": iso(m.attached_since) if m.attached_since is not None else None,
            "attached_since_unix": m.attached_since,
            "primary_offset": primary,
            "acked_offset": acked,
            "lag_bytes": max(0, primary - acked) if primary is not None and acked is not None else None,
            "last_write_age_seconds": None if age != age else round(age, 3),
            "upload": None if upload is None else {
                "objects": upload[0], "bytes": upload[1], "lag_seconds": round(upload[2], 3)},
            "last_error": None if last_error is None else {
                **(_when(last_error[0]) or {}), "message": last_error[1]},
            "last_verify": None if verify is None else {
                "chain": verify[0], "passed": verify[1], **(_when(verify[2]) or {})},
            "ready": not reasons,
            "not_ready": reasons,
            "backup": self.summaries[id(shard)].get(),
        }

    def status(self) -> dict[str, Any]:
        return {"source": "service", "version": __version__, "shards": [self.shard_status(s) for s in self.shards]}


CLIENT_TIMEOUT_SECONDS = 10.0  # a client that has not sent its request (or read the answer) by then is dropped
MAX_CLIENTS = 32  # connections served at once; more are closed at once (a scraper retries)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT_SECONDS  # idle or trickling clients would each hold a thread forever

    def do_GET(self) -> None:
        svc = self.server.service
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(svc.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            problems = svc.health()
            self._text(503 if problems else 200, "\n".join(problems) if problems else "ok")
        elif path == "/readyz":
            reasons = [f"{s.metrics.address}: {r}" for s in svc.shards for r in svc.not_ready(s)]
            self._text(503 if reasons else 200, "\n".join(reasons) if reasons else "ready")
        elif path == "/status":
            self._send(200, json.dumps(svc.status(), indent=2).encode() + b"\n", "application/json")
        else:
            self._text(404, "not found: /metrics, /healthz, /readyz, /status")

    def _text(self, code: int, body: str) -> None:
        self._send(code, (body + "\n").encode(), "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not worth a log line


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: Service) -> None:
        self.service = service
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # a thread per connection, but not without bound
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: nothing will release the slot
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Endpoints:
    """The HTTP server: bound at start (a port in use stops the service before it connects anywhere),
    served on a thread of its own, shut down at the end."""

    def __init__(self, host: str, port: int, service: Service) -> None:
        try:
            self.server = _Server((host, port), service)
        except OSError as e:
            what = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be used: {e.strerror or e}"
            where = ("metrics_host", "metrics_port")
            raise ConfigError(f"the metrics port {host}:{port} {what}", settings=where) from e
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
