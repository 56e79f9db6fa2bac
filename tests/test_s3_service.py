"""The service shipping to a real S3 endpoint (moto's server on loopback) from real redis-servers: the
bucket alone restores the primary's DEBUG DIGEST, per db, with and without compression and encryption;
the open file is shipped while the service runs; ACK_AFTER=s3 makes WAIT mean "in the bucket"; a second
service on the same prefix is refused."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.s3server import s3_env
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, ServiceProcess, ok, run_cli, service_env
from tests.support.workload import bulk_load, mixed_workload

pytestmark = pytest.mark.slow
CAUGHT_UP = 60.0


@pytest.fixture
def bucket_env(s3_endpoint: str, s3_bucket: str) -> dict[str, str]:
    """What the service and the commands need for a fresh bucket on the session's moto server."""
    return {**s3_env(s3_endpoint), "S3_BUCKET": s3_bucket, "S3_PREFIX": "bk/"}


def _remote(bucket_env: dict[str, str], backup_dir: Path, *args: str, extra: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    env = {**bucket_env, "BACKUP_DIR": str(backup_dir), **(extra or {})}
    return run_cli(list(args), env, timeout=180)


def _remote_offset(bucket_env: dict[str, str], backup_dir: Path, extra: dict[str, str] | None = None) -> int:
    r = _remote(bucket_env, backup_dir, "list", "--source", "s3", "--json", extra=extra)
    if r.returncode != 0:
        return -1
    chains = json.loads(r.stdout)["chains"]
    return int(chains[-1]["end_offset"]) if chains else -1


def _start(service_factory: ServiceFactory, primary: RedisServer, bk: Path, bucket_env: dict[str, str],
           **env: str | int) -> ServiceProcess:  # fmt: skip
    svc = service_factory(service_env(primary, bk, **bucket_env, **env))
    primary.wait_replicas(1, timeout=CAUGHT_UP)
    return svc


def _restore_from_bucket_only(
    bucket_env: dict[str, str], bk: Path, tmp_path: Path, redis_factory: RedisFactory, primary: RedisServer,
    extra: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """The local backup gone, the bucket restores the primary exactly (digest, and keys per db)."""
    shutil.rmtree(bk)
    out = tmp_path / "restored"
    ok(_remote(bucket_env, bk, "restore", "--source", "s3", "--to", str(out), extra=extra))
    srv = redis_factory.load_aof_dir(out, strict=True)
    assert srv.keyspace() == primary.keyspace()
    assert srv.digest() == primary.digest()


@pytest.mark.parametrize("codec", ["zstd", "none", "zstd+key"])
def test_the_bucket_alone_restores_the_primary(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str],
    codec: str,
) -> None:  # fmt: skip
    extra: dict[str, str] = {"COMPRESSION": "none" if codec == "none" else "zstd"}
    if codec == "zstd+key":
        key = tmp_path / "key"
        key.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
        extra["ENCRYPTION_KEY_FILE"] = str(key)
    primary = redis_factory()
    for db in (0, 3, 15):
        bulk_load(primary.client(db=db), 500, 100)
    bk = tmp_path / "bk"
    svc = _start(service_factory, primary, bk, bucket_env, S3_SYNC_SECONDS=1, SEGMENT_MAX_SECONDS=1, **extra)
    mixed_workload(primary.client, rounds=4)
    for db in (1, 7):
        primary.client(db=db).set(f"only-in-{db}", "x" * 5000)
    offset = primary.wait_replicas_caught_up(CAUGHT_UP)
    # quiet now: within S3_SYNC_SECONDS the open file and a head as of the last write are in the bucket
    wait_until(lambda: _remote_offset(bucket_env, bk, extra) >= offset, timeout=CAUGHT_UP,
               message="the bucket catches up with the primary")  # fmt: skip
    assert svc.alive()
    svc.stop()
    _restore_from_bucket_only(bucket_env, bk, tmp_path, redis_factory, primary, extra)
    if codec == "zstd+key":  # a wrong key: one line, nothing written
        other = tmp_path / "other-key"
        other.write_bytes(os.urandom(32))
        out = tmp_path / "wrong"
        r = _remote(bucket_env, bk, "restore", "--source", "s3", "--to", str(out),
                    extra={**extra, "ENCRYPTION_KEY_FILE": str(other)})  # fmt: skip
        assert r.returncode != 0
        assert "encrypted with key" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not out.exists() or not any(out.iterdir())


def test_ack_after_s3_makes_wait_mean_in_the_bucket(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str]
) -> None:
    primary = redis_factory()
    bk = tmp_path / "bk"
    svc = _start(service_factory, primary, bk, bucket_env, ACK_AFTER="s3", S3_SYNC_SECONDS=60)
    wait_until(lambda: _remote_offset(bucket_env, bk) >= 0, timeout=CAUGHT_UP, message="the chain in the bucket")
    c = primary.client()
    c.set("acked", "in-s3")
    assert c.execute_command("WAIT", 1, 5000) == 1  # S3_SYNC_SECONDS is 60: only the WAIT made it ship
    out = tmp_path / "restored"
    ok(_remote(bucket_env, tmp_path / "absent", "restore", "--source", "s3", "--to", str(out)))
    assert redis_factory.load_aof_dir(out).client().get("acked") == b"in-s3"
    assert svc.alive()


def test_a_second_service_on_the_same_prefix_is_refused(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str]
) -> None:
    primary = redis_factory()
    first = _start(service_factory, primary, tmp_path / "a", bucket_env)
    wait_until(lambda: _remote_offset(bucket_env, tmp_path / "a") >= 0, timeout=CAUGHT_UP, message="first uploads")
    second = service_factory(service_env(primary, tmp_path / "b", **bucket_env))
    assert second.wait(timeout=60) == 2
    err = second.stderr_text()
    assert "written by another service" in err and "S3_PREFIX" in err, err
    assert first.alive()


def test_an_unreachable_endpoint_is_one_line(tmp_path: Path) -> None:
    env = {**s3_env("http://127.0.0.1:9"), "S3_BUCKET": "nowhere"}
    r = run_cli(["list", "--source", "s3"], {**env, "BACKUP_DIR": str(tmp_path)}, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "127.0.0.1:9" in r.stderr, r.stderr
    assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1, r.stderr


@pytest.mark.slow
def test_a_bucket_that_hangs_at_the_start_does_not_hold_the_capture(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    """The start's check of the bucket is one attempt with short timeouts: a bucket that accepts and never
    answers (read timeout 60 s, 5 attempts otherwise) lets the capture begin within START_TIMEOUT, well
    before a liveness probe gives up on a service that says it is starting; the lease and the uploads
    follow once the bucket answers."""
    from tests.support.proxy import TcpProxy

    primary, bk = redis_factory(), tmp_path / "bk"
    with TcpProxy("127.0.0.1", int(s3_endpoint.rsplit(":", 1)[1])) as proxy:
        proxy.stall()
        bucket_env = {**s3_env(s3_endpoint), "S3_BUCKET": s3_bucket, "S3_PREFIX": "bk/"}
        svc = service_factory(
            service_env(primary, bk, **{**bucket_env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"})
        )
        primary.wait_replicas(1, timeout=30)  # attached while the bucket still does not answer
        assert proxy.stalled
        assert "the bucket does not answer" in svc.stderr_text()
        c = primary.client()
        for i in range(100):
            c.set(f"k:{i}", i)
        offset = primary.wait_replicas_caught_up(CAUGHT_UP)
        proxy.resume()
        wait_until(lambda: _remote_offset(bucket_env, bk) >= offset, timeout=120,
                   message="the uploads never followed")  # fmt: skip
        assert svc.alive()
