"""Copy every key of a (temporary) Redis into a running one with DUMP/RESTORE, db by db, pipelined.

The remaining TTL (PTTL) goes with each key. Keys are deleted from the source once restored, so a key
SCAN returns twice is copied once, and the source is empty at the end (checked): nothing is missed.
Without ``replace`` a key that already exists on the target is reported and left alone.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # redis-py takes 40 ms to import: only a restore --into pays for it (_redis())
    import redis

from redis_backup.errors import BackupError, ConfigError
from redis_backup.progress import Progress

log = logging.getLogger(__name__)

BATCH_KEYS = 500
BATCH_BYTES = 16 << 20
SAMPLE = 10


class TargetError(BackupError):
    """The target server refused the connection or a key."""


class SourceGone(BackupError):
    """The scratch redis-server holding the restored state stopped answering: not the target's fault."""


@dataclass
class CopyResult:
    copied: int = 0
    existing: int = 0  # keys left alone because the target has them (without replace)
    existing_sample: list[str] = field(default_factory=list)
    bytes: int = 0
    dbs: list[int] = field(default_factory=list)
    functions: int = 0  # function libraries loaded on the target
    functions_existing: list[str] = field(default_factory=list)  # libraries left alone (without replace)


def check_target_url(url: str) -> str:
    """Validate redis://[user:password@]host:port (or rediss://); returns it without the password."""
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port
    except ValueError as e:
        raise ConfigError(f"invalid --into URL: {e}") from None
    if u.scheme not in ("redis", "rediss") or not u.hostname:
        raise ConfigError("invalid --into URL: expected redis://[user:password@]host:port or rediss://...")
    if u.path not in ("", "/"):
        raise ConfigError("invalid --into URL: no /db part, please: every db is restored into the same db number")
    shown = u.hostname if ":" not in u.hostname else f"[{u.hostname}]"
    return f"{u.scheme}://{shown}:{port or 6379}"


def _redis() -> Any:
    import redis

    return redis


def _target(url: str, db: int) -> redis.Redis:
    client: redis.Redis = _redis().Redis.from_url(url, db=db, socket_timeout=60, socket_connect_timeout=10)
    return client


def warn_if_insecure(url: str) -> None:
    """Turning certificate checks off in the URL deserves the warning REDIS_TLS_INSECURE gives."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    reqs = [v.lower() for v in query.get("ssl_cert_reqs", [])]
    hostname = [v.lower() for v in query.get("ssl_check_hostname", [])]
    if any(v in ("none", "cert_none") for v in reqs):
        log.warning("TLS server verification is off (ssl_cert_reqs=none in --into): the target is not authenticated")
    elif any(v in ("false", "0", "no", "off") for v in hostname):
        log.warning("TLS host name checking is off (ssl_check_hostname in --into): the target is not authenticated")


def ping_target(url: str) -> None:
    shown = check_target_url(url)
    warn_if_insecure(url)
    client = _target(url, 0)
    try:
        client.ping()
    except _redis().AuthenticationError as e:
        raise TargetError(f"{shown}: authentication failed: {e}") from None
    except _redis().RedisError as e:
        raise TargetError(f"cannot connect to {shown}: {e}") from None
    finally:
        client.close()


def _dbs(source: redis.Redis) -> list[int]:
    info: dict[str, Any] = source.info("keyspace")
    return sorted(int(k[2:]) for k in info if k.startswith("db") and k[2:].isdigit())


def _show(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def copy_keys(
    source_for: Callable[[int], redis.Redis], url: str, *, replace: bool, progress: Progress | None = None
) -> CopyResult:
    """``source_for(db)`` is a client of the source; every key goes to the same db on the target."""
    shown = check_target_url(url)
    result = CopyResult()
    first = source_for(0)
    try:
        result.dbs = _dbs(first)
    finally:
        first.close()
    # What can fail on the target fails before anything is written: a db it does not have, then the
    # function libraries (few and small: a missing permission or a clash shows before any key is copied)
    if result.dbs:
        _check_db(url, shown, max(result.dbs))
    src, dst = source_for(0), _target(url, 0)
    try:
        copy_functions(src, dst, replace=replace, result=result)
    except _redis().RedisError as e:
        _blame(source_for, result, shown, e)
        raise TargetError(f"{shown}: copying function libraries (no key was written yet): {e}") from None
    finally:
        src.close()
        dst.close()
    for db in result.dbs:
        src = source_for(db)
        dst = _target(url, db)
        try:
            _copy_db(src, dst, db, replace, result, progress)
        except _redis().RedisError as e:
            _blame(source_for, result, shown, e)
            raise TargetError(f"{shown} db {db}: {e} ({result.copied} keys were written before it)") from None
        finally:
            src.close()
            dst.close()
    return result


def _check_db(url: str, shown: str, db: int) -> None:
    client = _target(url, db)
    try:
        client.ping()  # the connection SELECTs db first
    except _redis().ResponseError as e:
        if "out of range" not in str(e):
            raise TargetError(f"{shown}: {e}") from None
        raise TargetError(
            f"{shown} has fewer databases than the backup uses (db {db}): restore into a server started with "
            f"--databases {db + 1} or more; nothing was written"
        ) from None
    except _redis().RedisError as e:
        raise TargetError(f"{shown}: {e}") from None
    finally:
        client.close()


def _blame(source_for: Callable[[int], redis.Redis], result: CopyResult, shown: str, e: Exception) -> None:
    """An error on the way: raise SourceGone when it is the scratch server that no longer answers."""
    probe = source_for(0)
    try:
        probe.ping()
    except _redis().RedisError:
        raise SourceGone(
            f"the scratch redis-server holding the restored data stopped answering ({e}); "
            f"{result.copied} keys had been copied into {shown}: run the restore again"
        ) from None
    finally:
        probe.close()


def _libraries(source: redis.Redis) -> list[tuple[str, bytes]]:
    """(name, code) of every function library, from FUNCTION LIST WITHCODE (redis-py gives each one as a
    dict or as a flat key/value list, depending on its version)."""
    out = []
    command: Callable[..., Any] = source.execute_command
    for entry in command("FUNCTION", "LIST", "WITHCODE"):
        fields = entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
        name, code = fields[b"library_name"], fields[b"library_code"]
        out.append((name.decode("utf-8", "backslashreplace"), code))
    return out


def copy_functions(source: redis.Redis, target: redis.Redis, *, replace: bool, result: CopyResult) -> None:
    """Functions live beside the keys, not in them: DUMP/RESTORE of keys misses them. Library by
    library, with the keys' policy: an existing library is left alone unless replace."""
    load: Callable[..., Any] = target.execute_command
    for name, code in _libraries(source):
        try:
            load("FUNCTION", "LOAD", *(["REPLACE"] if replace else []), code)
        except _redis().ResponseError as e:
            if str(e).startswith("Library ") and "already exists" in str(e):  # the library itself
                result.functions_existing.append(name)
                continue
            # e.g. "Function f1 already exists": another library of the target defines one of its names
            raise TargetError(f"FUNCTION LOAD of library {name!r} failed: {e} (no key was written yet)") from None
        result.functions += 1


def _copy_db(
    src: redis.Redis, dst: redis.Redis, db: int, replace: bool, result: CopyResult, progress: Progress | None
) -> None:
    batch: list[bytes] = []
    per_batch = BATCH_KEYS
    skipped: set[bytes] = set()  # existing on the target: kept on the source, so SCAN may return them again
    for key in src.scan_iter(count=1000):
        if key in skipped:
            continue
        batch.append(key)
        if len(batch) >= per_batch:
            size = _copy_batch(src, dst, db, batch, replace, result, skipped, progress)
            # big values: fewer keys per round trip, so a batch stays around BATCH_BYTES
            per_batch = max(1, min(BATCH_KEYS, BATCH_BYTES * len(batch) // max(size, 1)))
            batch = []
    if batch:
        _copy_batch(src, dst, db, batch, replace, result, skipped, progress)
    left = src.dbsize() - len(skipped)
    if left > 0:  # nothing but us writes to the source: this would be a bug, never a silent partial copy
        raise BackupError(f"db {db}: {left} keys were not copied")


def _copy_batch(
    src: redis.Redis,
    dst: redis.Redis,
    db: int,
    keys: list[bytes],
    replace: bool,
    result: CopyResult,
    skipped: set[bytes],
    progress: Progress | None,
) -> int:
    """Copy one batch; returns the bytes of DUMP payload it moved."""
    read = src.pipeline(transaction=False)
    for k in keys:
        read.dump(k)
        read.pttl(k)
    values = read.execute()
    write = dst.pipeline(transaction=False)
    sent: list[bytes] = []
    size = 0
    for i, k in enumerate(keys):
        payload, pttl = values[2 * i], values[2 * i + 1]
        if payload is None or pttl == -2:  # gone (expired) since SCAN returned it
            continue
        ttl = 0 if pttl < 0 else max(int(pttl), 1)
        write.restore(k, ttl, payload, replace=replace)
        sent.append(k)
        size += len(payload)
    answers = write.execute(raise_on_error=False) if sent else []
    done: list[bytes] = []
    for k, answer in zip(sent, answers, strict=True):
        if isinstance(answer, _redis().ResponseError):
            if str(answer).startswith("BUSYKEY"):
                result.existing += 1
                skipped.add(k)
                if len(result.existing_sample) < SAMPLE:
                    result.existing_sample.append(f"db{db}:{_show(k)}")
                continue
            raise TargetError(f"RESTORE of key {_show(k)!r} into db {db} failed: {answer}")
        done.append(k)
    if done:
        src.unlink(*done)
    result.copied += len(done)
    result.bytes += size
    if progress is not None:
        progress.add(size)
    return size
