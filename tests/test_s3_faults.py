"""The service shipping to S3 under faults, end to end (real redis-server, moto's S3 server, the service
as a subprocess): an endpoint unreachable for a while during writes costs capture nothing and the bucket
catches up; a kill -9 in the middle of an upload is taken over by the restarted service at once, which
finishes the backlog and leaves no multipart upload behind; a snapshot larger than 500 MB is uploaded
in bounded memory."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.proxy import TcpProxy
from tests.support.s3server import FAKE_CREDENTIALS, MotoServer, make_bucket, s3_env
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, service_env
from tests.test_s3_service import _remote_offset, _restore_from_bucket_only, _start

pytestmark = pytest.mark.slow
CAUGHT_UP = 60.0
OUTAGE_SECONDS = 6.0
# what deploy/statefulset.yaml requests (128Mi): a quarter of the 520 MiB snapshot the test uploads, so
# holding it is caught; 92 MiB measured before the metrics (prometheus-client), 96-100 MiB since, on a loaded box
RSS_LIMIT = 128 << 20


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def bucket_env(moto: MotoServer) -> dict[str, str]:
    return {**s3_env(moto.endpoint), "S3_BUCKET": make_bucket(moto.endpoint), "S3_PREFIX": "bk/"}


def _s3(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


def _open_uploads(s3: Any, bucket: str, prefix: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]


class _Writer:
    """Steady writes to the primary on a thread (small values, a few dbs) until stopped."""

    def __init__(self, primary: RedisServer) -> None:
        self.primary = primary
        self.count = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        clients = {db: self.primary.client(db=db) for db in (0, 2, 5)}
        try:
            while not self._stop.is_set():
                for db, c in clients.items():
                    pipe = c.pipeline(transaction=False)
                    for i in range(20):
                        pipe.set(f"w:{self.count % 500}:{i}", os.urandom(64))
                    pipe.incr(f"counter:{db}")
                    pipe.execute()
                self.count += 1
                self._stop.wait(0.01)
        except BaseException as e:  # seen by the test
            self.errors.append(e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self.errors, self.errors


def _acked_past(primary: RedisServer) -> int:
    """Wait until the replica (the service) has acknowledged the primary's offset as of now, while writes
    go on (wait_replicas_caught_up wants them equal, which steady writes rarely allow); returns it."""
    offset = primary.master_repl_offset()
    wait_until(lambda: any(r.state == "online" and r.offset >= offset for r in primary.replicas()),
               timeout=CAUGHT_UP, message=f"the service ACKs offset {offset}")  # fmt: skip
    return offset


@pytest.mark.parametrize("fault", ["refuse", "stall"])
def test_an_unreachable_endpoint_during_writes_costs_capture_nothing(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str],
    moto: MotoServer, fault: str,
) -> None:  # fmt: skip
    primary = redis_factory()
    primary.client(db=1).set("before", "x" * 10_000)
    bk = tmp_path / "bk"
    with TcpProxy("127.0.0.1", moto.port) as proxy:
        svc = _start(service_factory, primary, bk, {**bucket_env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"},
                     S3_SYNC_SECONDS=1, SEGMENT_MAX_SECONDS=1)  # fmt: skip
        wait_until(lambda: _remote_offset(bucket_env, bk) >= 0, timeout=CAUGHT_UP, message="the base in the bucket")
        with _Writer(primary) as writer:
            if fault == "refuse":
                proxy.refuse()
                proxy.cut(abort=True)
            else:
                proxy.stall()
            try:
                ends = time.monotonic() + OUTAGE_SECONDS
                acked = 0
                while time.monotonic() < ends or acked < 3:  # capture goes on: ACKs keep up with the primary
                    _acked_past(primary)
                    acked += 1
                during = _acked_past(primary)
                # the proxy really was the only way to the bucket: nothing of the outage's writes is there
                assert _remote_offset(bucket_env, bk) < during
            finally:
                proxy.refuse(False)
                proxy.resume()
            written = writer.count
            wait_until(lambda: writer.count >= written + 20, timeout=CAUGHT_UP, message="writes after the outage")
        offset = primary.wait_replicas_caught_up(CAUGHT_UP)
        wait_until(lambda: _remote_offset(bucket_env, bk) >= offset, timeout=CAUGHT_UP,
                   message="the bucket catches up after the outage")  # fmt: skip
        assert svc.alive()
        if fault == "refuse":
            assert "upload failed; local capture goes on" in svc.stderr_text()
        svc.stop()
    assert "Traceback" not in svc.stderr_text(), svc.stderr_text()[-3000:]
    _restore_from_bucket_only(bucket_env, bk, tmp_path, redis_factory, primary)


def test_kill9_during_an_upload_is_taken_over_and_finished(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str],
    moto: MotoServer,
) -> None:  # fmt: skip
    primary = redis_factory()
    c = primary.client()
    for i in range(80):  # 80 MB that neither the RDB nor zstd makes smaller
        c.set(f"big:{i}", os.urandom(1 << 20))
    s3 = _s3(moto.endpoint)
    bucket, prefix = bucket_env["S3_BUCKET"], bucket_env["S3_PREFIX"]
    bk = tmp_path / "bk"
    env = {"S3_SYNC_SECONDS": 1, "SEGMENT_MAX_SECONDS": 1, "COMPRESSION": "none"}
    with _Writer(primary):
        first = _start(service_factory, primary, bk, bucket_env, **env)
        # the base's multipart upload under way: killed in the middle of it
        wait_until(lambda: _open_uploads(s3, bucket, prefix), timeout=CAUGHT_UP, interval=0.005,
                   message="a multipart upload under way")  # fmt: skip
        first.kill9()
        assert _open_uploads(s3, bucket, prefix), "the kill came after the upload completed"
        assert _remote_offset(bucket_env, bk) < 0  # no head yet: the base was not in the bucket
        second = service_factory(service_env(primary, bk, **bucket_env, **env))
        primary.wait_replicas(1, timeout=CAUGHT_UP)
        wait_until(lambda: _remote_offset(bucket_env, bk) >= 0, timeout=CAUGHT_UP, message="the base in the bucket")
        assert second.alive(), second.stderr_text()[-3000:]
        assert "took over the bucket's lease" in second.stderr_text()
    offset = primary.wait_replicas_caught_up(CAUGHT_UP)
    wait_until(lambda: _remote_offset(bucket_env, bk) >= offset, timeout=CAUGHT_UP, message="the bucket catches up")
    assert second.alive()
    second.stop()
    assert _open_uploads(s3, bucket, prefix) == []  # the killed one's upload was aborted
    assert "Traceback" not in second.stderr_text(), second.stderr_text()[-3000:]
    _restore_from_bucket_only(bucket_env, bk, tmp_path, redis_factory, primary)


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_a_snapshot_over_500_mb_is_uploaded_in_bounded_memory(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    """Measured on a 2-core box: ~40 s, the service's peak RSS 92 MiB (75 MiB with a 1 MB dataset, 91 MiB
    with 100 MB: it does not grow with the snapshot). moto keeps objects in memory (its peak RSS was
    2.2 GiB here), so this test has a moto server of its own, stopped at the end to give that back."""
    primary = redis_factory()
    pipe = primary.client().pipeline(transaction=False)
    for i in range(520):  # 520 MiB of incompressible values, 8 MiB in the test's hands at a time
        pipe.set(f"big:{i}", os.urandom(1 << 20))
        if i % 8 == 7:
            pipe.execute()
    pipe.execute()
    moto = MotoServer(tmp_path / "moto").start()
    try:
        bucket_env = {**s3_env(moto.endpoint), "S3_BUCKET": make_bucket(moto.endpoint), "S3_PREFIX": "bk/"}
        bk = tmp_path / "bk"
        svc = _start(service_factory, primary, bk, bucket_env, COMPRESSION_LEVEL=1)
        wait_until(lambda: _remote_offset(bucket_env, bk) >= 0, timeout=300, interval=0.5,
                   message="the base in the bucket")  # fmt: skip
        assert svc.alive()
        sizes = [o["Size"] for o in _s3(moto.endpoint).list_objects_v2(
            Bucket=bucket_env["S3_BUCKET"], Prefix=bucket_env["S3_PREFIX"]).get("Contents", [])]  # fmt: skip
        assert max(sizes) > 500 << 20  # the snapshot really went up, as one object
        peak = _peak_rss(svc.pid)
        assert peak < RSS_LIMIT, f"the service's peak RSS was {peak / (1 << 20):.1f} MiB"
        svc.stop()
    finally:
        moto.stop()


def test_at_start_every_open_upload_under_the_prefix_is_aborted_however_recent(tmp_path: Path) -> None:
    """What the service calls at start (abort_stale_uploads() with no age). moto reports every upload as
    begun in 2010, so the end-to-end test above cannot see an age threshold: here S3 says the killed
    service's upload began just now (by a server clock a few seconds ahead of ours), as AWS would after
    an immediate restart, and it is aborted all the same."""
    from datetime import UTC, datetime, timedelta

    from botocore.stub import Stubber

    from redis_backup.store.s3 import S3Settings, S3Store

    client = boto3.session.Session().client("s3", region_name="us-east-1", aws_access_key_id="x",
                                             aws_secret_access_key="x", endpoint_url="http://127.0.0.1:9")  # fmt: skip
    store = S3Store(S3Settings(bucket="b", prefix="bk/"), client=client)
    recent = datetime.now(UTC) + timedelta(seconds=5)
    with Stubber(client) as stub:
        stub.add_response("list_multipart_uploads", {"Uploads": [{"Key": "bk/c/base", "UploadId": "u1",
                          "Initiated": recent}]}, {"Bucket": "b", "Prefix": "bk/"})  # fmt: skip
        stub.add_response("abort_multipart_upload", {}, {"Bucket": "b", "Key": "bk/c/base", "UploadId": "u1"})
        assert store.abort_stale_uploads() == 1
        stub.assert_no_pending_responses()
