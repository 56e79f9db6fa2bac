"""8. S3: the uploader against the stream, the bucket's lag, requests per hour, sizes, restore --source s3.

One moto server on loopback holds the bucket; the service reaches it through a counting HTTP proxy
(:class:`HttpCounter`), so every request the service sends is classified (method, query, object kind)
and its body bytes counted; the benchmark's own listings and downloads go to moto directly. A primary
holds a dataset (bench/datasets.py); per run a fresh service backs it up under its own S3_PREFIX while a
Python pipeline writer (:class:`Writer`) writes at a fixed rate. During the writes the primary's
master_repl_offset is polled at 20 Hz and the bucket's newest head (`h-<end_offset:020d>-...`, from a
ListObjectsV2 of the chain prefix) every 0.5 s: the lag is how long ago the primary had the offset the
bucket now has. Runs alternate (sync 10 zstd, sync 1 zstd, sync 10 none, then again). At the end the
chain of the last COMPRESSION=none run is restored from the bucket (`restore --source s3`) against a
plain 8-thread boto3 download of the same objects followed by `restore --source local` (A B A B).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.support.s3server import MotoServer, isolated_aws_env, s3_env
from tests.support.servers import RedisServer, wait_until
from tests.support.service import service_env

from .datasets import populate
from .lab import SERVICE, Attached, Lab, command_env, service_command, wait_in_sync
from .measure import MIB, Stopwatch, cpu_seconds, median, peak_rss, percentile, run_measured
from .report import Metric, Section, Target
from .settings import Settings

BUCKET = "bench-s3"
SAMPLE_PRIMARY = 0.05  # seconds between master_repl_offset samples
SAMPLE_BUCKET = 0.5  # seconds between listings of the bucket
DOWNLOAD_THREADS = 8
VALUE_SIZE = 1000
WRITER_KEYS = 20_000
TICK = 0.1
CATCH_UP_MARGIN = 30.0
RSS_LIMIT_MIB = 64  # the same target as the stream's and the snapshot's


@dataclass(frozen=True)
class Plan:
    dataset: int  # RDB bytes of the primary's dataset
    rate: int  # stream bytes per second the writer aims at
    duration: float  # seconds of writes per run
    runs: tuple[tuple[int, str], ...]  # (S3_SYNC_SECONDS, COMPRESSION), in order, every round

    @classmethod
    def of(cls, settings: Settings) -> Plan:
        if settings.quick:
            return cls(1 << 20, 1 << 20, 3.0, ((1, "zstd"), (1, "none")))
        return cls(64 << 20, 4 << 20, 40.0, ((10, "zstd"), (1, "zstd"), (10, "none")))


# ------------------------------------------------------------------------------------------ counting proxy


@dataclass(frozen=True)
class Request:
    t: float  # monotonic, when its body had been forwarded
    op: str  # PutObject, UploadPart, CreateMultipartUpload, CompleteMultipartUpload, GetObject, List, ...
    obj: str  # head, part, sealed, lease, other
    body: int  # bytes of payload (decoded length for aws-chunked)


def classify(method: str, target: str) -> tuple[str, str]:
    url = urlsplit(target)
    query = url.query
    name = unquote(url.path.rsplit("/", 1)[-1])
    obj = {"h-": "head", "p-": "part", "f-": "sealed"}.get(name[:2], "lease" if name.startswith("lease") else "other")
    if method == "GET" and ("list-type" in query or "prefix=" in query or "delimiter" in query):
        return "List", "-"
    if method == "POST":
        if "uploads" in query.split("&"):
            return "CreateMultipartUpload", obj
        if "uploadId" in query:
            return "CompleteMultipartUpload", obj
        if "delete" in query:
            return "DeleteObjects", "-"
    if method == "PUT":
        return ("UploadPart" if "partNumber" in query else "PutObject"), obj
    op = {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method, method)
    if op == "DeleteObject" and "uploadId" in query:
        op = "AbortMultipartUpload"
    return op, obj


class HttpCounter:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of one server that records every request passing up
    (request line, and the body length read from Content-Length or chunked framing)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http-counter", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HttpCounter:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def since(self, t0: float, t1: float = float("inf")) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if t0 <= r.t < t1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        down = asyncio.ensure_future(self._copy(up_reader, writer))
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                up_writer.write(head)
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                body = await self._body(reader, up_writer, headers)
                decoded = headers.get("x-amz-decoded-content-length")
                op, obj = classify(method, target)
                with self._lock:
                    self.requests.append(Request(time.monotonic(), op, obj, int(decoded) if decoded else body))
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await down
            writer.close()

    @staticmethod
    async def _body(reader: asyncio.StreamReader, up: asyncio.StreamWriter, headers: dict[str, str]) -> int:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            total = 0
            while True:
                line = await reader.readuntil(b"\r\n")
                up.write(line)
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                        up.write(trailer)
                    up.write(b"\r\n")
                    return total
                up.write(await reader.readexactly(size + 2))
                total += size
                await up.drain()
        left = int(headers.get("content-length", "0") or 0)
        length = left
        while left > 0:
            data = await reader.read(min(left, 1 << 20))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            up.write(data)
            left -= len(data)
            await up.drain()
        return length

    @staticmethod
    async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await src.read(1 << 16):
                dst.write(data)
                await dst.drain()
        dst.close()


# ------------------------------------------------------------------------------------------ writer


class Writer(threading.Thread):
    """SETs of fresh VALUE_SIZE-byte values (hex of random bytes: zstd can only halve them) over
    WRITER_KEYS keys, one pipeline every TICK seconds, so that the stream grows by ``rate`` bytes/s."""

    def __init__(self, primary: RedisServer, rate: int) -> None:
        super().__init__(name="s3-writer", daemon=True)
        self.primary = primary
        self.per_tick = max(1, int(rate * TICK / (VALUE_SIZE + 60)))
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.behind = 0  # ticks that started late by more than a tick

    def run(self) -> None:
        client = self.primary.client(socket_timeout=30.0)
        try:
            i = 0
            due = time.monotonic()
            while not self.done.is_set():
                pipe = client.pipeline(transaction=False)
                for _ in range(self.per_tick):
                    pipe.set(f"w:{i % WRITER_KEYS}", os.urandom(VALUE_SIZE // 2).hex())
                    i += 1
                pipe.execute()
                due += TICK
                pause = due - time.monotonic()
                if pause > 0:
                    self.done.wait(pause)
                elif pause < -TICK:
                    self.behind += 1
                    due = time.monotonic()
        except BaseException as e:  # reported by stop()
            self.error = e
        finally:
            client.close()

    def stop(self) -> None:
        self.done.set()
        self.join(30)
        if self.error is not None:
            raise RuntimeError(f"the writer failed: {self.error}") from self.error


# ------------------------------------------------------------------------------------------ bucket


def _client(endpoint: str) -> Any:
    import boto3  # type: ignore[import-untyped,unused-ignore]
    from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing", config=Config(max_pool_connections=DOWNLOAD_THREADS * 2),
    )  # fmt: skip


def _objects(client: Any, prefix: str) -> Iterator[dict[str, Any]]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        yield from page.get("Contents", [])


def head_offset(client: Any, prefix: str) -> int:
    """The newest head's end offset under ``prefix`` (every chain), -1 without one."""
    best = -1
    for o in _objects(client, prefix):
        name = o["Key"].rsplit("/", 1)[-1]
        if name.startswith("h-") and name[2:22].isdigit():
            best = max(best, int(name[2:22]))
    return best


def bucket_bytes(client: Any, prefix: str) -> int:
    return sum(int(o["Size"]) for o in _objects(client, prefix) if not o["Key"].endswith("lease.json"))


def delete_prefix(client: Any, prefix: str) -> None:
    keys = [{"Key": o["Key"]} for o in _objects(client, prefix)]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys[i : i + 1000]})


def local_bytes(backup_dir: Path) -> int:
    total = 0
    for d in backup_dir.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            total += sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    return total


# ------------------------------------------------------------------------------------------ one run


@dataclass
class Run:
    sync: int
    compression: str
    window: float = 0.0  # seconds of writes measured
    stream_rate: float = 0.0  # bytes/s of master_repl_offset
    shipped_rate: float = 0.0  # bytes/s of PUT bodies (PutObject + UploadPart) the service sent
    shipped_by_kind: dict[str, int] = field(default_factory=dict)  # body bytes per object kind
    bucket_advance_rate: float = 0.0  # bytes/s the bucket's head offset moved over the window
    lag_samples: int = 0
    lag_p50: float = 0.0
    lag_p99: float = 0.0
    lag_max: float = 0.0
    caught_up_after: float = 0.0  # seconds from the last write until the bucket had it
    per_hour: dict[str, float] = field(default_factory=dict)  # "op obj" -> requests per hour
    heads_per_hour: float = 0.0
    lists_per_hour: float = 0.0
    requests_per_hour: float = 0.0
    rotations: int = 0  # sealed incr objects written in the window
    bucket_bytes: int = 0
    local_bytes: int = 0
    writer_behind: int = 0
    service_cpu: float = 0.0  # user+sys seconds over the window, per second of it (1.0 = a core)
    moto_cpu: float = 0.0
    service_peak_rss: int = 0  # bytes: VmHWM once the bucket caught up (sync, shipping, catch-up)


def _lag(history: list[tuple[float, int]], t: float, offset: int) -> float:
    """Seconds between ``t`` and when the primary first had ``offset`` (interpolated between samples)."""
    if offset >= history[-1][1]:
        return 0.0
    prev_t, prev_o = history[0]
    if offset <= prev_o:
        return t - prev_t  # older than the history: at least this
    for ht, ho in history:
        if ho >= offset:
            when = prev_t + (ht - prev_t) * (offset - prev_o) / max(1, ho - prev_o)
            return max(0.0, t - when)
        prev_t, prev_o = ht, ho
    return 0.0


class S3Lab:
    """The moto server, the counting proxy in front of it, the bucket, and the primary."""

    def __init__(self, lab: Lab, plan: Plan) -> None:
        self.lab = lab
        self.plan = plan
        self.home = lab.subdir("aws")
        self.moto = MotoServer(lab.subdir("moto"))
        self.counter: HttpCounter | None = None
        self.primary: RedisServer | None = None
        self.runs = 0

    def __enter__(self) -> S3Lab:
        self.moto.start()
        self.counter = HttpCounter(self.moto.port).start()
        self.client = _client(self.moto.endpoint)
        self.client.create_bucket(Bucket=BUCKET)
        self.primary = self.lab.primary()
        populate(self.primary, self.plan.dataset)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.primary is not None:
                self.primary.stop()
        finally:
            if self.counter is not None:
                self.counter.stop()
            self.moto.stop()

    def env(self, endpoint: str, prefix: str, **extra: str) -> dict[str, str]:
        return {**isolated_aws_env(self.home), **s3_env(endpoint), "S3_BUCKET": BUCKET, "S3_PREFIX": prefix, **extra}

    def run(self, sync: int, compression: str) -> tuple[Run, Path, str]:
        assert self.primary is not None and self.counter is not None
        primary, counter = self.primary, self.counter
        self.runs += 1
        prefix = f"run-{self.runs}/"
        backup_dir = self.lab.subdir("backup")
        env = service_env(primary, backup_dir, LOG_LEVEL="warning", S3_SYNC_SECONDS=str(sync),
                          COMPRESSION=compression, **self.env(counter.endpoint, prefix))  # fmt: skip
        service = self.lab.services(env)
        rep = Attached(SERVICE, service.pid, backup_dir, service.alive, lambda: service.stop(timeout=30),
                       service.output_text)  # fmt: skip
        try:
            wait_in_sync(primary, rep)
            start = primary.master_repl_offset()
            wait_until(lambda: head_offset(self.client, prefix) >= start, timeout=sync + CATCH_UP_MARGIN,
                       interval=0.1, message="the chain in the bucket")  # fmt: skip
            r = Run(sync, compression)
            self._measure(r, prefix, service.pid)
            r.bucket_bytes = bucket_bytes(self.client, prefix)
            r.local_bytes = local_bytes(backup_dir)
            if not service.alive():
                raise RuntimeError(f"the service exited: {service.output_text()[-2000:]}")
        finally:
            with contextlib.suppress(Exception):
                service.stop(timeout=30)
        return r, backup_dir, prefix

    def _measure(self, r: Run, prefix: str, service_pid: int) -> None:
        assert self.primary is not None and self.counter is not None and self.moto.proc is not None
        primary, plan, moto_pid = self.primary, self.plan, self.moto.proc.pid
        writer = Writer(primary, plan.rate)
        history: list[tuple[float, int]] = [(time.monotonic(), primary.master_repl_offset())]
        lags: list[float] = []
        writer.start()
        cpu0 = (cpu_seconds(service_pid), cpu_seconds(moto_pid))
        try:
            began = time.monotonic()
            settle = began + min(r.sync, plan.duration / 4)  # the first period: the bucket had nothing to ship
            end = began + plan.duration
            next_list = began
            first: tuple[float, int] | None = None
            last: tuple[float, int] = (began, -1)
            while (now := time.monotonic()) < end:
                history.append((now, primary.master_repl_offset()))
                if now >= next_list:
                    t0 = time.monotonic()
                    offset = head_offset(self.client, prefix)
                    t = (t0 + time.monotonic()) / 2
                    history.append((time.monotonic(), primary.master_repl_offset()))
                    if t >= settle:
                        lags.append(_lag(history, t, offset))
                        first = first or (t, offset)
                        last = (t, offset)
                    next_list += SAMPLE_BUCKET
                time.sleep(SAMPLE_PRIMARY)
        finally:
            writer.stop()
        stopped = time.monotonic()
        final = primary.master_repl_offset()
        r.service_cpu = (cpu_seconds(service_pid) - cpu0[0]) / (stopped - began)
        r.moto_cpu = (cpu_seconds(moto_pid) - cpu0[1]) / (stopped - began)
        wait_until(lambda: head_offset(self.client, prefix) >= final, timeout=r.sync + CATCH_UP_MARGIN,
                   interval=0.05, message="the bucket catches up after the writes")  # fmt: skip
        r.caught_up_after = time.monotonic() - stopped
        r.service_peak_rss = peak_rss(service_pid)
        r.writer_behind = writer.behind
        # the window: from the first lag sample on (requests of the service's start are outside it)
        w0 = settle
        in_window = [(t, o) for t, o in history if t >= w0]
        r.window = stopped - w0
        r.stream_rate = (final - in_window[0][1]) / r.window
        reqs = self.counter.since(w0, stopped)
        shipped = [q for q in reqs if q.op in ("PutObject", "UploadPart")]
        r.shipped_rate = sum(q.body for q in shipped) / r.window
        r.shipped_by_kind = dict(collections.Counter({q.obj: 0 for q in shipped}))
        for q in shipped:
            r.shipped_by_kind[q.obj] += q.body
        if first is not None and last[0] > first[0]:
            r.bucket_advance_rate = (last[1] - first[1]) / (last[0] - first[0])
        hour = 3600 / r.window
        kinds = collections.Counter(f"{q.op} {q.obj}" for q in reqs)
        r.per_hour = {k: round(v * hour, 1) for k, v in sorted(kinds.items())}
        written = [q for q in reqs if q.op in ("PutObject", "CompleteMultipartUpload")]  # one per object
        r.heads_per_hour = sum(1 for q in written if q.obj == "head") * hour
        r.lists_per_hour = kinds.get("List -", 0) * hour
        r.requests_per_hour = len(reqs) * hour
        r.rotations = sum(1 for q in written if q.obj == "sealed")
        r.lag_samples = len(lags)
        if lags:
            r.lag_p50, r.lag_p99, r.lag_max = percentile(lags, 50), percentile(lags, 99), max(lags)


# ------------------------------------------------------------------------------------------ restore


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:16]


def download_all(client: Any, prefix: str, into: Path) -> int:
    """Every object under ``prefix`` into files under ``into``, DOWNLOAD_THREADS at a time; bytes."""
    keys = [(o["Key"], int(o["Size"])) for o in _objects(client, prefix)]

    def one(key: str) -> None:
        path = into / key
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(path))

    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        list(pool.map(one, [k for k, _ in keys]))
    return sum(s for _, s in keys)


def restore_rounds(s3: S3Lab, rounds: int, backup_dir: Path, prefix: str) -> dict[str, Any]:
    lab = s3.lab
    env = command_env(LOG_LEVEL="warning", **s3.env(s3.moto.endpoint, prefix))
    a: list[float] = []
    b: list[float] = []
    b_download: list[float] = []
    digests: set[str] = set()
    downloaded = 0
    for _ in range(rounds):
        out = lab.subdir("restored-s3")
        argv = service_command("restore", "--source", "s3", "--to", str(out / "data"),
                               "--backup-dir", str(out / "absent"))  # fmt: skip
        done = run_measured(argv, out / "restore.log", env=env).check()
        a.append(done.wall)
        digests.add(_tree_digest(out / "data"))
        shutil.rmtree(out)

        out = lab.subdir("restored-local")
        clock = Stopwatch()
        downloaded = download_all(s3.client, prefix, out / "objects")
        b_download.append(clock.elapsed())
        argv = service_command("restore", "--source", "local", "--to", str(out / "data"),
                               "--backup-dir", str(backup_dir))  # fmt: skip
        done = run_measured(argv, out / "restore.log", env=command_env(LOG_LEVEL="warning")).check()
        b.append(b_download[-1] + done.wall)
        digests.add(_tree_digest(out / "data"))
        shutil.rmtree(out)
    return {"s3": a, "download+local": b, "download": b_download, "downloaded_bytes": downloaded,
            "outputs_identical": len(digests) == 1}  # fmt: skip


# ------------------------------------------------------------------------------------------ section


def _label(sync: int, compression: str) -> str:
    return f"S3_SYNC_SECONDS={sync}, COMPRESSION={compression}"


def _metrics(plan: Plan, runs: dict[tuple[int, str], list[Run]], restore: dict[str, Any]) -> list[Metric]:
    out: list[Metric] = []
    for (sync, comp), rs in runs.items():
        label = _label(sync, comp)
        period = [float(sync)] * len(rs)
        out += [
            Metric(f"bytes shipped (PUT bodies) vs stream, {label}", "MiB/s", "uploader",
                   [r.shipped_rate / MIB for r in rs], "primary's stream", [r.stream_rate / MIB for r in rs],
                   note="parts of the open file, then the sealed file whole again at rotation"),
            Metric(f"bucket head advance vs stream, {label}", "MiB/s", "bucket",
                   [r.bucket_advance_rate / MIB for r in rs], "primary's stream", [r.stream_rate / MIB for r in rs],
                   Target("ratio", "±", 0.1)),
            Metric(f"bucket lag p50, {label}", "s", "bucket", [r.lag_p50 for r in rs], "S3_SYNC_SECONDS", period),
            Metric(f"bucket lag p99, {label}", "s", "bucket", [r.lag_p99 for r in rs], "S3_SYNC_SECONDS", period,
                   Target("ratio", "<=", 1.0), note="README: at most S3_SYNC_SECONDS behind under steady writes"),
            Metric(f"caught up after the writes stop, {label}", "s", "bucket", [r.caught_up_after for r in rs],
                   "S3_SYNC_SECONDS", period, Target("ratio", "<=", 1.2)),
            Metric(f"head PUTs per hour, {label}", "1/h", "service", [r.heads_per_hour for r in rs],
                   "3600 / S3_SYNC_SECONDS", [3600.0 / sync] * len(rs), Target("ratio", "±", 0.2)),
            Metric(f"LIST requests per hour, {label}", "1/h", "service", [r.lists_per_hour for r in rs],
                   target=Target("a", "==", 0)),
            Metric(f"all requests per hour, {label}", "1/h", "service", [r.requests_per_hour for r in rs]),
            Metric(f"service peak RSS (VmHWM), {label}", "MiB", "service", [r.service_peak_rss / MIB for r in rs],
                   target=Target("a", "<", RSS_LIMIT_MIB), note="deploy/ sizes the container's memory from it"),
            Metric(f"service CPU while shipping, {label}", "cores", "service", [r.service_cpu for r in rs]),
            Metric(f"bucket bytes vs local chain bytes, {label}", "MiB", "bucket", [r.bucket_bytes / MIB for r in rs],
                   "local chain dir", [r.local_bytes / MIB for r in rs],
                   Target("ratio", "±", 0.05) if comp == "none" else None),
        ]  # fmt: skip
    out.append(Metric(
        "restore --source s3 vs 8-thread boto3 download + restore --source local", "s", "restore --source s3",
        restore["s3"], "download + restore --source local", restore["download+local"], Target("ratio", "<=", 1.2),
        note="" if restore["outputs_identical"] else "OUTPUTS DIFFER between the two restores",
    ))  # fmt: skip
    return out


def run(lab: Lab, settings: Settings) -> list[Section]:
    plan = Plan.of(settings)
    runs: dict[tuple[int, str], list[Run]] = {key: [] for key in plan.runs}
    with S3Lab(lab, plan) as s3:
        keep: tuple[Path, str] | None = None
        for i in range(settings.rounds):
            for sync, comp in plan.runs:
                r, backup_dir, prefix = s3.run(sync, comp)
                runs[(sync, comp)].append(r)
                print(
                    f"  s3 round {i + 1} {_label(sync, comp)}: stream {r.stream_rate / MIB:.2f} MiB/s, shipped "
                    f"{r.shipped_rate / MIB:.2f} MiB/s, lag p50 {r.lag_p50:.2f}s p99 {r.lag_p99:.2f}s, "
                    f"{r.requests_per_hour:,.0f} req/h, bucket {r.bucket_bytes / MIB:.1f} / local "
                    f"{r.local_bytes / MIB:.1f} MiB, cpu service {r.service_cpu:.2f} moto {r.moto_cpu:.2f}, "
                    f"service peak RSS {r.service_peak_rss / MIB:.1f} MiB",
                    flush=True,
                )
                if comp == "none":
                    if keep is not None:
                        delete_prefix(s3.client, keep[1])
                        shutil.rmtree(keep[0], ignore_errors=True)
                    keep = (backup_dir, prefix)
                else:  # moto keeps every object in memory
                    delete_prefix(s3.client, prefix)
                    shutil.rmtree(backup_dir, ignore_errors=True)
        assert keep is not None, "a COMPRESSION=none run is needed for the restore comparison"
        restore = restore_rounds(s3, settings.rounds, *keep)
    section = Section("s3", rounds=settings.rounds)
    section.metrics += _metrics(plan, runs, restore)
    section.details = {
        "plan": asdict(plan),
        "writer": {"value_size": VALUE_SIZE, "keys": WRITER_KEYS, "tick_seconds": TICK,
                   "values": "hex of fresh random bytes per SET (zstd can only halve it)"},
        "sampling": {"primary_seconds": SAMPLE_PRIMARY, "bucket_seconds": SAMPLE_BUCKET},
        "runs": {_label(*key): [asdict(r) for r in rs] for key, rs in runs.items()},
        "restore": restore,
        "medians": {_label(*key): {"lag_p50": median([r.lag_p50 for r in rs]),
                                   "lag_p99": median([r.lag_p99 for r in rs])} for key, rs in runs.items()},
    }  # fmt: skip
    return [section]
