"""The S3 backend of `Store`: an object is an S3 object under a key prefix of one bucket.

S3 makes a PUT and a completed multipart upload visible whole or not at all, which is the contract's
atomicity; a write that fails is aborted, so that no part lingers (billed and invisible). Every error
of botocore becomes a `StoreError` here, in `_error`, so that callers handle one kind of error and
know from `retryable` whether waiting can help. Credentials come from boto3's standard chain.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, Literal

import boto3
import botocore.exceptions
from botocore.config import Config

from redis_backup.store.base import (
    InvalidName,
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    StoreError,
    check_dir_prefix,
    check_name,
    check_prefix,
    is_component,
)

MIN_PART = 5 << 20  # S3 refuses smaller parts, except the last
DEFAULT_PART = MIN_PART  # the smallest S3 takes: the service's peak memory holds about three parts
MAX_PARTS = 10_000
_GROW_EVERY = 1000  # the part size doubles every so many parts, so that 10,000 parts reach 5 TiB

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestThrottled",
              "TooManyRequests", "TooManyRequestsException", "RequestLimitExceeded", "InternalError",
              "ServiceUnavailable", "503", "500", "429"}  # fmt: skip
_CREDENTIALS = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled"}  # fmt: skip
_CONNECTION = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
               botocore.exceptions.IncompleteReadError, botocore.exceptions.ResponseStreamingError)  # fmt: skip
_LIST_OPERATIONS = {"ListObjectsV2", "ListObjects", "ListMultipartUploads", "ListParts", "ListBuckets"}




@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = "redis-backup/"
    region: str = "us-east-1"
    endpoint_url: str | None = None
    sse: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: str | None = None
    connect_timeout: float = 10
    read_timeout: float = 60
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")
        if self.prefix:
            check_name(self.prefix[:-1])
        if self.sse not in (None, "AES256", "aws:kms"):
            raise ValueError(f"sse must be AES256 or aws:kms, not {self.sse!r}")
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise ValueError("sse_kms_key_id needs sse='aws:kms'")


def _code_and_status(e: botocore.exceptions.ClientError) -> tuple[str, int]:
    err = e.response.get("Error", {})
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(err.get("Code", "") or status), status


def _error(e: Exception, what: str, where: str, name: str) -> StoreError:
    """The one translation of botocore's exceptions: `what where: reason`, retryable when waiting
    (a connection, a timeout, a 5xx, throttling) may help and never for permissions or absence."""
    if isinstance(e, StoreError):
        return e
    if isinstance(e, botocore.exceptions.ClientError):
        code, status = _code_and_status(e)
        message = str(e.response.get("Error", {}).get("Message", "") or "")
        if code == str(status):  # a HEAD's error: no body, so no code but the status
            reason = f"{status} {message or 'error'}"
        else:
            reason = f"{status} {code}" + (f": {message}" if message and message != code else "")
        if code in _NOT_FOUND:
            return NotFound(f"{what} {where}: no such object", name=name, reason="no such object")
        if code == "NoSuchBucket":
            return StoreError(f"{what} {where}: no such bucket", name=name, reason="no such bucket")
        if code in _PRECONDITION or status == 412:
            return PreconditionFailed(f"{what} {where}: {reason}", name=name, reason=reason)
        if code in _CREDENTIALS:
            return StoreError(f"{what} {where}: {reason} (check AWS credentials and the bucket policy)",
                              name=name, reason=reason)  # fmt: skip
        retryable = status >= 500 or status == 429 or code in _THROTTLED
        return StoreError(f"{what} {where}: {reason}", name=name, retryable=retryable, reason=reason)
    if isinstance(e, botocore.exceptions.SSLError):
        reason = f"TLS failure: {e}"
        return StoreError(f"{what} {where}: {reason}", name=name, reason=reason)
    if isinstance(e, _CONNECTION):
        reason = f"connection failed: {e}"
        return StoreError(f"{what} {where}: {reason}", name=name, retryable=True, reason=reason)
    if isinstance(e, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        reason = "no usable AWS credentials (environment, profile, or instance role)"
        return StoreError(f"{what} {where}: {reason}", name=name, reason=reason)
    reason = f"{type(e).__name__}: {e}"
    return StoreError(f"{what} {where}: {reason}", name=name, reason=reason)


class _Body(io.RawIOBase):
    """A GetObject's body as a raw stream whose read errors are StoreErrors; closing it releases the
    connection (mid-body: drops it, since the rest would have to be read to reuse it)."""

    def __init__(self, body: Any, where: str, name: str) -> None:
        self._body, self._where, self._name = body, where, name

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        try:
            data = self._body.read(len(view))
        except Exception as e:
            raise _error(e, "cannot read", self._where, self._name) from e
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Store:
    def __init__(self, settings: S3Settings, *, client: Any = None, part_size: int = DEFAULT_PART) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"part_size must be at least {MIN_PART} bytes (S3's minimum), not {part_size}")
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.part_size = part_size
        self.requests: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        if client is None:
            config = Config(
                # total_max_attempts counts the first request too (Config's max_attempts would not)
                retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                # S3-compatible servers at an endpoint of their own rarely resolve bucket.host names
                s3={"addressing_style": "path"} if settings.endpoint_url else None,
            )
            client = boto3.session.Session().client(
                "s3", region_name=settings.region, endpoint_url=settings.endpoint_url, config=config
            )
        self.client = client
        client.meta.events.register("before-send.s3", self._count, unique_id=f"redis-backup-count-{id(self)}")
        # Once per API call (after botocore's retries): what the service's metrics count by result.
        self.on_request: Callable[[str, str], None] | None = None
        client.meta.events.register("after-call.s3", self._called, unique_id=f"redis-backup-call-{id(self)}")
        client.meta.events.register("after-call-error.s3", self._call_failed,
                                    unique_id=f"redis-backup-callerr-{id(self)}")  # fmt: skip

    # ------------------------------------------------------------------------------------ helpers

    def _count(self, request: Any = None, event_name: str = "", **_: Any) -> None:
        """Counted as sent, so that every retry counts: what S3 bills and what a benchmark wants."""
        operation = event_name.rsplit(".", 1)[-1]
        kind = "LIST" if operation in _LIST_OPERATIONS else str(getattr(request, "method", "?")).upper()
        with self._lock:
            self.requests[kind] += 1

    def _called(self, http_response: Any = None, parsed: Any = None, model: Any = None, **_: Any) -> None:
        if self.on_request is None:
            return
        status = getattr(http_response, "status_code", 0)
        error = parsed.get("Error", {}) if isinstance(parsed, dict) else {}
        code = error.get("Code") if isinstance(error, dict) else None
        ok = 200 <= status < 300 or (status == 304 and not code)
        self.on_request(getattr(model, "name", "?"), "ok" if ok else str(code or status or "error"))

    def _call_failed(self, event_name: str = "", **_: Any) -> None:
        if self.on_request is not None:  # no response at all: a connection error, a timeout
            self.on_request(event_name.rsplit(".", 1)[-1], "error")

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _sse(self) -> dict[str, str]:
        extra: dict[str, str] = {}
        if self.settings.sse:
            extra["ServerSideEncryption"] = self.settings.sse
        if self.settings.sse_kms_key_id:
            extra["SSEKMSKeyId"] = self.settings.sse_kms_key_id
        return extra

    def _name_of(self, key: str) -> str | None:
        """The logical name of a listed key, or None for one that is not ours to show."""
        name = key[len(self.prefix) :]
        try:
            return check_name(name)
        except InvalidName:
            return None

    # ------------------------------------------------------------------------------------- Store

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        where = self._where(self.prefix + prefix)
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                for obj in page.get("Contents", ()):
                    name = self._name_of(obj["Key"])
                    if name is not None:
                        yield ObjectInfo(name, int(obj["Size"]))
        except Exception as e:
            raise _error(e, "cannot list", where, prefix) from e

    def prefixes(self, prefix: str = "") -> Iterator[str]:
        check_dir_prefix(prefix)
        return self._prefixes(prefix)

    def _prefixes(self, prefix: str) -> Iterator[str]:
        where = self._where(self.prefix + prefix)
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", ()):
                    found = common["Prefix"][len(self.prefix) :]
                    if is_component(found[len(prefix) : -1]):
                        yield found
        except Exception as e:
            raise _error(e, "cannot list", where, prefix) from e

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as e:
            raise _error(e, "cannot read", self._where(key), name) from e
        return ObjectInfo(name, int(head["ContentLength"]))

    @contextlib.contextmanager
    def open(self, name: str, start: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        key = self._key(name)
        where = self._where(key)
        if start < 0 or (length is not None and length < 0):
            raise StoreError(f"bad range {start}+{length} of {where}", name=name)
        if length == 0:
            self.stat(name)  # an empty range of a missing object is still NotFound
            yield io.BytesIO()
            return
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or length is not None:
            args["Range"] = f"bytes={start}-" + ("" if length is None else str(start + length - 1))
        body: Any = None
        try:
            body = self.client.get_object(**args)["Body"]
        except botocore.exceptions.ClientError as e:
            if _code_and_status(e)[0] not in ("InvalidRange", "416"):  # 416: it exists, and ends before start
                raise _error(e, "cannot read", where, name) from e
        except Exception as e:
            raise _error(e, "cannot read", where, name) from e
        if body is None:
            yield io.BytesIO()
            return
        with io.BufferedReader(_Body(body, where, name), 1 << 20) as stream:
            yield stream

    def write(self, name: str, chunks: Iterable[bytes | memoryview]) -> ObjectInfo:
        key = self._key(name)
        where = self._where(key)
        buf = bytearray(self.part_size)
        filled = size = 0
        upload_id: str | None = None
        parts: builtins.list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                while view:
                    if filled == len(buf):  # a full part and more to come: it goes as a part
                        if upload_id is None:
                            upload_id = self._create_upload(key, name)
                        parts.append(self._upload_part(key, name, upload_id, len(parts) + 1, buf))
                        buf = bytearray(self._part_size(len(parts)))
                        filled = 0
                    take = min(len(buf) - filled, len(view))
                    buf[filled : filled + take] = view[:take]
                    filled += take
                    size += take
                    view = view[take:]
            if filled < len(buf):
                del buf[filled:]
            if upload_id is None:
                self._call("cannot write", where, name, "put_object", Key=key, Body=buf, **self._sse())
            else:
                parts.append(self._upload_part(key, name, upload_id, len(parts) + 1, buf))
                del buf
                self._call("cannot write", where, name, "complete_multipart_upload", Key=key,
                           UploadId=upload_id, MultipartUpload={"Parts": parts})  # fmt: skip
                upload_id = None
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        return ObjectInfo(name, size)

    def _part_size(self, done: int) -> int:
        return min(self.part_size << (done // _GROW_EVERY), 5 << 30)

    def _create_upload(self, key: str, name: str) -> str:
        out = self._call("cannot write", self._where(key), name, "create_multipart_upload", Key=key, **self._sse())
        return str(out["UploadId"])

    def _upload_part(self, key: str, name: str, upload_id: str, number: int, data: bytearray) -> dict[str, Any]:
        if number > MAX_PARTS:
            raise StoreError(f"cannot write {self._where(key)}: more than {MAX_PARTS} parts", name=name)
        out = self._call("cannot write", self._where(key), name, "upload_part", Key=key, UploadId=upload_id,
                         PartNumber=number, Body=data)  # fmt: skip
        return {"PartNumber": number, "ETag": out["ETag"]}

    def _call(self, what: str, where: str, name: str, operation: str, **args: Any) -> Any:
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **args)
        except Exception as e:
            raise _error(e, what, where, name) from e

    def delete(self, name: str) -> None:
        key = self._key(name)
        self._call("cannot delete", self._where(key), name, "delete_object", Key=key)

    def delete_many(self, names: Iterable[str]) -> None:
        """Remove many objects, a thousand per request (DeleteObjects; the s3:DeleteObject permission);
        missing ones are not an error. A key S3 could not delete is a StoreError naming it."""
        keys = [self._key(n) for n in names]
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            where = self._where(batch[0])
            out = self._call("cannot delete", where, batch[0][len(self.prefix) :], "delete_objects",
                             Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})  # fmt: skip
            errors = out.get("Errors") or []
            if errors:
                e = errors[0]
                key, code = str(e.get("Key", "")), str(e.get("Code", "?"))
                raise StoreError(f"{self._where(key)}: cannot delete ({code}: {e.get('Message', '')})",
                                 name=key[len(self.prefix) :], retryable=code in _THROTTLED,
                                 reason=f"cannot delete ({code})")  # fmt: skip

    # ----------------------------------------------------------------- beyond Store: the service's

    def put_small(self, name: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """One PUT, optionally conditional (create-only, or replace-this-version): the compare-and-set
        by which writers of a shared object (a lock, a catalog) do not overwrite each other."""
        key = self._key(name)
        args: dict[str, Any] = {"Key": key, "Body": bytes(data), **self._sse()}
        if if_none_match:
            args["IfNoneMatch"] = "*"
        if if_match is not None:
            args["IfMatch"] = if_match
        out = self._call("cannot write", self._where(key), name, "put_object", **args)
        return str(out["ETag"])

    def get_small(self, name: str, limit: int) -> tuple[bytes, str]:
        """A small object whole with its ETag, the version a later put_small(if_match=) names."""
        key = self._key(name)
        where = self._where(key)
        out = self._call("cannot read", where, name, "get_object", Key=key)
        body = out["Body"]
        try:
            if int(out.get("ContentLength", 0)) > limit:
                raise StoreError(f"{where} is larger than {limit} bytes", name=name)
            try:
                data = body.read(limit + 1)
            except Exception as e:
                raise _error(e, "cannot read", where, name) from e
        finally:
            body.close()
        if len(data) > limit:
            raise StoreError(f"{where} is larger than {limit} bytes", name=name)
        return bytes(data), str(out["ETag"])

    def check_access(self) -> None:
        """One listing under the prefix, at start-up: a wrong bucket, credentials or endpoint is said
        once, in one line with what to do, rather than as the first backup's failure."""
        where = self.describe()
        endpoint = self.settings.endpoint_url or str(self.client.meta.endpoint_url)
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except botocore.exceptions.ClientError as e:
            code, status = _code_and_status(e)
            if code == "NoSuchBucket" or (code == "404" and status == 404):
                raise StoreError(f"{where}: bucket {self.bucket!r} does not exist at {endpoint}: create it, or "
                                 "check the bucket name and region", reason="no such bucket") from e  # fmt: skip
            if code in _CREDENTIALS:
                raise StoreError(f"{where}: access denied ({code}): check AWS credentials (environment, profile, "
                                 "instance role) and that they may list and write this bucket",
                                 reason=f"access denied ({code})") from e  # fmt: skip
            raise _error(e, "cannot list", where, "") from e
        except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError) as e:
            raise StoreError(f"{where}: no AWS credentials found: set them (environment, profile, instance role)",
                             reason="no AWS credentials") from e  # fmt: skip
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as e:
            if isinstance(e, botocore.exceptions.SSLError):
                raise _error(e, "cannot list", where, "") from e
            raise StoreError(f"{where}: cannot reach the S3 endpoint {endpoint}: check the endpoint URL and the "
                             f"network ({type(e).__name__})", retryable=True,
                             reason=f"endpoint {endpoint} unreachable") from e  # fmt: skip
        except Exception as e:
            raise _error(e, "cannot list", where, "") from e

    def abort_stale_uploads(self, older_than_seconds: float = 0.0) -> int:
        """Abort the multipart uploads under the prefix begun longer ago than that (0: every one, whatever
        the server's clock says): what a process that died mid-write leaves, invisible but billed.
        Returns how many were aborted."""
        where = self.describe()
        now = time.time()
        aborted = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for upload in page.get("Uploads", ()):
                    initiated: datetime = upload["Initiated"]
                    if initiated.tzinfo is None:
                        initiated = initiated.replace(tzinfo=UTC)
                    if older_than_seconds <= 0 or now - initiated.timestamp() >= older_than_seconds:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])  # fmt: skip
                        aborted += 1
        except Exception as e:
            raise _error(e, "cannot abort uploads under", where, "") from e
        return aborted
