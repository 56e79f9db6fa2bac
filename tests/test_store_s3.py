"""What S3Store does beyond the storage contract (tests/test_store_contract.py runs that against it too):
conditional writes, access checks, clean-up of failed multipart uploads, request counting, SSE, and
the mapping of S3's errors onto StoreError."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from redis_backup.store.base import InvalidName, NotFound, StoreError
from redis_backup.store.s3 import MIN_PART, PreconditionFailed, S3Settings, S3Store, _error
from tests.support.s3server import MotoServer, admin_client, free_port


def make_store(bucket: str, endpoint: str, **settings: Any) -> S3Store:
    return S3Store(S3Settings(bucket=bucket, endpoint_url=endpoint, **settings), part_size=MIN_PART)


@pytest.fixture
def s3(s3_bucket: str, s3_endpoint: str) -> S3Store:
    return make_store(s3_bucket, s3_endpoint)


def pending_uploads(s3: S3Store) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = admin_client(s3.settings.endpoint_url).list_multipart_uploads(
        Bucket=s3.bucket).get("Uploads", [])  # fmt: skip
    return uploads


def test_settings_normalize_the_prefix_and_the_store_describes_itself() -> None:
    assert S3Settings(bucket="b", prefix="backups").prefix == "backups/"
    assert S3Settings(bucket="b", prefix="").prefix == ""
    assert S3Settings(bucket="b").prefix == "redis-backup/"
    assert S3Store(S3Settings(bucket="b", prefix="x/y", endpoint_url="http://127.0.0.1:1")).describe() == "s3://b/x/y/"
    with pytest.raises(InvalidName):
        S3Settings(bucket="b", prefix="../up")
    with pytest.raises(ValueError):
        S3Store(S3Settings(bucket="b", endpoint_url="http://127.0.0.1:1"), part_size=1 << 20)


def test_objects_live_under_the_prefix_and_foreign_keys_are_not_listed(s3: S3Store) -> None:
    s3.write("c/f", [b"data"])
    admin = admin_client(s3.settings.endpoint_url)
    assert [o["Key"] for o in admin.list_objects_v2(Bucket=s3.bucket)["Contents"]] == ["redis-backup/c/f"]
    for key in ["redis-backup/.lock", "redis-backup/c/a b", "redis-backup/c//x", "redis-backup/d e/f", "elsewhere/g"]:
        admin.put_object(Bucket=s3.bucket, Key=key, Body=b"x")
    assert [o.name for o in s3.list()] == ["c/f"]
    assert list(s3.prefixes()) == ["c/"]


def test_create_only_refuses_a_second_create(s3: S3Store) -> None:
    etag = s3.put_small("lock", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed) as refused:
        s3.put_small("lock", b"second", if_none_match=True)
    assert "s3://" in str(refused.value) and "/redis-backup/lock" in str(refused.value)
    assert not refused.value.retryable
    assert s3.get_small("lock", 100) == (b"first", etag)


def test_replace_if_match_takes_the_current_etag_and_refuses_a_stale_one(s3: S3Store) -> None:
    first = s3.put_small("catalog", b"v1")
    second = s3.put_small("catalog", b"v2", if_match=first)
    assert second != first
    with pytest.raises(PreconditionFailed):
        s3.put_small("catalog", b"v3 from a writer who read v1", if_match=first)
    assert s3.get_small("catalog", 100) == (b"v2", second)
    third = s3.put_small("catalog", b"v3", if_match=second)
    assert s3.get_small("catalog", 100) == (b"v3", third)


def test_get_small_refuses_what_is_larger_than_the_limit_and_a_missing_object_is_not_found(s3: S3Store) -> None:
    s3.put_small("m", b"12345")
    assert s3.get_small("m", 5)[0] == b"12345"
    with pytest.raises(StoreError, match="larger than 4 bytes"):
        s3.get_small("m", 4)
    with pytest.raises(NotFound):
        s3.get_small("absent", 10)
    with pytest.raises(InvalidName):
        s3.put_small("../x", b"")


def test_check_access_passes_on_a_bucket_that_is_there(s3: S3Store) -> None:
    s3.check_access()


def test_check_access_names_a_missing_bucket(s3_endpoint: str) -> None:
    store = make_store("no-such-bucket-here", s3_endpoint)
    with pytest.raises(StoreError) as e:
        store.check_access()
    assert "'no-such-bucket-here' does not exist" in str(e.value) and "create it" in str(e.value)
    assert not e.value.retryable and "\n" not in str(e.value)


def test_check_access_says_to_check_credentials_when_they_are_refused(tmp_path: Path) -> None:
    """moto checks signatures only with its IAM emulation on (INITIAL_NO_AUTH_ACTION_COUNT=0): then the
    test's fake key is an unknown one, as a wrong key is on AWS."""
    server = MotoServer(tmp_path / "moto-auth", env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}).start()
    try:
        store = make_store("any-bucket", server.endpoint)
        try:
            store.check_access()
        except StoreError as e:
            assert "check AWS credentials" in str(e) and "InvalidAccessKeyId" in str(e), str(e)
            assert not e.retryable
        else:
            pytest.skip("this moto server does not validate credentials: nothing to test against")
        with pytest.raises(StoreError, match="check AWS credentials") as other:
            store.stat("x")
        assert not other.value.retryable and not isinstance(other.value, NotFound)
    finally:
        server.stop()


def test_check_access_on_an_unreachable_endpoint_is_retryable_and_names_it() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = make_store("b-unreachable", endpoint, max_attempts=1, connect_timeout=1, read_timeout=1)
    with pytest.raises(StoreError) as e:
        store.check_access()
    assert e.value.retryable
    assert endpoint in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(StoreError) as other:
        store.stat("x")
    assert other.value.retryable and "s3://b-unreachable/redis-backup/x" in str(other.value)


def test_a_multipart_write_that_fails_midway_leaves_no_object_and_no_upload(s3: S3Store) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b"x" * MIN_PART  # two whole parts go up before the source breaks
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        s3.write("big", chunks())
    assert s3.requests["POST"] == 1, "the write never started a multipart upload"
    assert s3.requests["PUT"] >= 2 and s3.requests["DELETE"] == 1  # the parts, then the abort
    assert list(s3.list()) == []
    assert pending_uploads(s3) == []


def test_a_multipart_write_reads_back_whole(s3: S3Store) -> None:
    data = bytes(range(256)) * (MIN_PART // 256) * 2 + b"tail"
    info = s3.write("two-parts", [data[i : i + 100_000] for i in range(0, len(data), 100_000)])
    assert info.size == len(data) == s3.stat("two-parts").size
    with s3.open("two-parts") as f:
        assert f.read() == data
    assert s3.requests["POST"] == 2  # create and complete
    assert pending_uploads(s3) == []


def test_abort_stale_uploads_aborts_what_a_crash_left_under_the_prefix_only(s3: S3Store) -> None:
    admin = admin_client(s3.settings.endpoint_url)
    left = admin.create_multipart_upload(Bucket=s3.bucket, Key="redis-backup/c/half")["UploadId"]
    admin.upload_part(Bucket=s3.bucket, Key="redis-backup/c/half", UploadId=left, PartNumber=1, Body=b"x" * 100)
    foreign = admin.create_multipart_upload(Bucket=s3.bucket, Key="other-app/file")["UploadId"]
    # moto reports one fixed "Initiated" (2010-11-10) for every upload: the age is measured from what the
    # listing says, so that "younger than the threshold" is tested whatever the server's clock
    initiated = next(u["Initiated"] for u in pending_uploads(s3) if u["UploadId"] == left)
    age = time.time() - initiated.timestamp()
    assert s3.abort_stale_uploads(age + 3600) == 0  # young enough: perhaps another writer's, in progress
    assert len(pending_uploads(s3)) == 2
    assert s3.abort_stale_uploads(0) == 1
    assert [u["UploadId"] for u in pending_uploads(s3)] == [foreign]


def test_requests_are_counted_by_kind(s3: S3Store) -> None:
    s3.write("a", [b"1"])
    list(s3.list())
    s3.stat("a")
    with s3.open("a") as f:
        f.read()
    s3.delete("a")
    assert dict(s3.requests) == {"PUT": 1, "LIST": 1, "HEAD": 1, "GET": 1, "DELETE": 1}


class _SlowDown(http.server.BaseHTTPRequestHandler):
    """Every request throttled, as S3 does under load."""

    def do_GET(self) -> None:
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_throttling_is_retried_counted_per_attempt_and_retryable() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowDown)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store = make_store("busy-bucket", f"http://127.0.0.1:{server.server_address[1]}", max_attempts=2)
        with pytest.raises(StoreError) as e:
            list(store.list())
        assert e.value.retryable and "SlowDown" in e.value.reason
        assert "s3://busy-bucket/redis-backup/" in str(e.value)
        assert store.requests["LIST"] == 2  # the retry was a request too
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("sse", [{"sse": "AES256"}, {"sse": "aws:kms", "sse_kms_key_id": "alias/backups"}])
def test_server_side_encryption_is_asked_for_on_every_put(s3_bucket: str, s3_endpoint: str, sse: Any) -> None:
    store = make_store(s3_bucket, s3_endpoint, **sse)
    store.write("single", [b"small"])
    store.write("multi", [b"m" * MIN_PART, b"rest"])
    store.put_small("small", b"meta")
    admin = admin_client(s3_endpoint)
    for name in ["single", "multi", "small"]:
        head = admin.head_object(Bucket=s3_bucket, Key=f"redis-backup/{name}")
        assert head.get("ServerSideEncryption") == sse["sse"], name
        if "sse_kms_key_id" in sse:
            assert sse["sse_kms_key_id"] in head.get("SSEKMSKeyId", ""), name


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.mark.parametrize(
    ("error", "kind", "retryable"),
    [
        (_client_error("SlowDown", 503), StoreError, True),
        (_client_error("InternalError", 500), StoreError, True),
        (_client_error("AccessDenied", 403), StoreError, False),
        (_client_error("InvalidAccessKeyId", 403), StoreError, False),
        (_client_error("SignatureDoesNotMatch", 403), StoreError, False),
        (_client_error("NoSuchBucket", 404), StoreError, False),
        (_client_error("NoSuchKey", 404), NotFound, False),
        (_client_error("404", 404), NotFound, False),
        (_client_error("PreconditionFailed", 412), PreconditionFailed, False),
        (_client_error("ConditionalRequestConflict", 409), PreconditionFailed, False),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), StoreError, True),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), StoreError, True),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), StoreError, True),
        (botocore.exceptions.NoCredentialsError(), StoreError, False),
    ],
)  # fmt: skip
def test_errors_map_to_store_errors(error: Exception, kind: type[StoreError], retryable: bool) -> None:
    mapped = _error(error, "cannot read", "s3://b/k", "k")
    assert type(mapped) is kind
    assert mapped.retryable is retryable
    assert str(mapped).startswith("cannot read s3://b/k: ") and mapped.name == "k" and mapped.reason
