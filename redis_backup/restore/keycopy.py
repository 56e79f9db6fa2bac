"""Copy every key of a (temporary) Redis into a running one, db by db, in batches.

The source builds each batch itself (a Lua script: SCAN, GET or DUMP, PTTL) as the target's commands,
SET for strings and RESTORE for other types, with the remaining TTL; Python only forwards those bytes and
counts the replies, and the source works on the next batch while the target runs this one. SCAN returns
a key twice only if the source's key table shrinks during the scan: when it cannot (_scan_once), the
batches only read and the counts are checked at the end; else keys are deleted from the source once
taken, so a key SCAN returns twice is copied once, and the source is empty at the end (checked). Without
``replace`` a key that already exists on the target is reported and left alone (SET NX, RESTORE without
REPLACE: decided by the target, key by key).
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # redis-py takes 40 ms to import: only a restore --into pays for it (_redis())
    import redis

from redis_backup.errors import BackupError, ConfigError
from redis_backup.progress import Progress, silent
from redis_backup.wire.resp import encode_command

log = logging.getLogger(__name__)

BATCH_KEYS = 10_000  # per round trip: on a busy machine each one costs a wakeup of three processes
BATCH_BYTES = 8 << 20  # of DUMP payload per batch (the scratch server builds it, Python forwards it)
BIG_VALUE = 1 << 20  # a payload larger than this is streamed on its own
CHUNK = 1 << 20
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


def _dbs(source: redis.Redis) -> tuple[dict[int, bool], int]:
    """The dbs that hold keys, and whether any key of each has a TTL (none can get one later: only we
    touch the source, so a db without one is copied without asking each key for its PTTL); and how many
    keys they hold (for the progress shown)."""
    info: dict[str, Any] = source.info("keyspace")
    dbs = {}
    keys = 0
    for name, fields in info.items():
        if name.startswith("db") and name[2:].isdigit():
            expires = fields.get("expires", 1) if isinstance(fields, dict) else 1
            keys += int(fields.get("keys", 0)) if isinstance(fields, dict) else 0
            dbs[int(name[2:])] = int(expires) > 0
    return dict(sorted(dbs.items())), keys


def _show(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def copy_keys(
    source_for: Callable[[int], redis.Redis], url: str, *, replace: bool, progress: Progress | None = None
) -> CopyResult:
    """``source_for(db)`` is a client of the source; every key goes to the same db on the target.
    progress: keys (and their bytes) copied."""
    shown = check_target_url(url)
    progress = progress or silent()
    result = CopyResult()
    first = source_for(0)
    try:
        ttls, keys = _dbs(first)
        result.dbs = list(ttls)
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
    with progress.phase(f"copying keys into {shown}", items=keys, unit="keys"):
        for db in result.dbs:
            src = source_for(db)
            dst = _target(url, db)
            try:
                _copy_db(src, dst, db, replace, ttls[db], result, progress)
            except (_redis().RedisError, _Lost, _Refused) as e:
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


class _Lost(Exception):
    """A raw connection broke (closed, timed out, or answered something we did not ask for)."""


# One batch, run by the scratch server itself: SCAN, read each key (MGET for strings, DUMP for any
# other type) and its PTTL, UNLINK what was taken if ARGV[7] is 1 (so a key SCAN returns twice is copied
# once, when the table may shrink: _scan_once), and
# return the commands for the target ready to be sent as they are: SET [NX] [PX ttl] for a string
# (cheaper than DUMP/RESTORE on both servers), RESTORE [REPLACE] for the rest. Python touches no key: it
# forwards the bytes and counts the "+OK" replies. Keys whose value is larger than ARGV[6], and any past
# the batch's byte budget ARGV[5], are returned by name: they go one by one, streamed (so no big payload
# is ever held whole in Python).
# Returns {cursor, commands, value bytes, keys left for streaming, the commands, keys found gone (expired)}.
_BATCH_SCRIPT = r"""
local r = redis.call('SCAN', ARGV[1], 'COUNT', ARGV[2])
local ttls, replace = ARGV[3] == '1', ARGV[4] == '1'
local budget, big = tonumber(ARGV[5]), tonumber(ARGV[6])
local restore = replace and '*5\r\n$7\r\nRESTORE\r\n$' or '*4\r\n$7\r\nRESTORE\r\n$'
local restore_tail = replace and '\r\n$7\r\nREPLACE\r\n' or '\r\n'
local nx = replace and '' or '$2\r\nNX\r\n'
local set = replace and '*3\r\n$3\r\nSET\r\n$' or '*4\r\n$3\r\nSET\r\n$'
local set_px = replace and '*5\r\n$3\r\nSET\r\n$' or '*6\r\n$3\r\nSET\r\n$'
local unlink = ARGV[7] == '1'
local parts, done, rest, size, gone = {}, {}, {}, 0, 0
local digits = {}  -- tostring of the lengths seen: Lua's number formatting is a tenth of the work
local function n(x)
  local s = digits[x]
  if not s then
    s = tostring(x)
    digits[x] = s
  end
  return s
end
local keys = r[2]
local values = {}  -- one MGET for the batch's strings rather than a GET each
for i = 1, #keys, 1000 do
  local got = redis.call('MGET', unpack(keys, i, math.min(i + 999, #keys)))
  for j = 1, #got do values[i + j - 1] = got[j] end
end
for i, k in ipairs(keys) do
  if size >= budget then
    rest[#rest + 1] = k
  else
    local v = values[i]
    local p = nil
    if not v then  -- not a string (or gone since SCAN)
      p = redis.call('DUMP', k)
    end
    if (v and #v > big) or (p and #p > big) then
      rest[#rest + 1] = k
    elseif v or p then
      local t = -1
      if ttls then t = redis.call('PTTL', k) end
      if t ~= -2 then
        local px = nil
        if t >= 0 then px = string.format('%d', math.max(t, 1)) end
        if v then
          if px then
            parts[#parts + 1] = set_px .. n(#k) .. '\r\n' .. k .. '\r\n$' .. n(#v)
              .. '\r\n' .. v .. '\r\n' .. nx .. '$2\r\nPX\r\n$' .. n(#px) .. '\r\n' .. px .. '\r\n'
          else
            parts[#parts + 1] = set .. n(#k) .. '\r\n' .. k .. '\r\n$' .. n(#v) .. '\r\n' .. v .. '\r\n' .. nx
          end
          size = size + #v
        else
          px = px or '0'
          parts[#parts + 1] = restore .. n(#k) .. '\r\n' .. k .. '\r\n$' .. n(#px) .. '\r\n' .. px .. '\r\n$' .. n(#p)
            .. '\r\n' .. p .. restore_tail
          size = size + #p
        end
        done[#done + 1] = k
      else
        gone = gone + 1
      end
    else
      gone = gone + 1
    end
  end
end
if unlink then
  for i = 1, #done, 1000 do redis.call('UNLINK', unpack(done, i, math.min(i + 999, #done))) end
end
return {r[1], #done, size, rest, table.concat(parts), gone}
"""


class _Raw:
    """A connection redis-py opened (TLS, AUTH, SELECT done), then used as a byte pipe: a batch of
    commands is sent as the scratch server built it and its replies are counted, not parsed."""

    def __init__(self, client: redis.Redis, what: str) -> None:
        self.what = what
        pool: Any = client.connection_pool
        self.conn: Any = pool.make_connection()
        self.conn.connect()
        sock = self.conn._sock
        if sock is None:  # pragma: no cover - redis-py keeps its socket there in every version we support
            raise _Lost(f"{what}: no socket")
        self.sock: Any = sock
        self.reader: Any = sock.makefile("rb", buffering=1 << 16)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise _Lost(f"{self.what}: {e.strerror or e}") from None

    def _io(self, read: Callable[[], bytes]) -> bytes:
        try:
            data: bytes = read()
        except (OSError, ValueError) as e:  # ValueError: the stream of a timed-out socket
            raise _Lost(f"{self.what}: {getattr(e, 'strerror', None) or e or 'timed out'}") from None
        if not data:
            raise _Lost(f"{self.what}: connection closed")
        return data

    def line(self) -> bytes:
        data = self._io(self.reader.readline)
        if not data.endswith(b"\r\n"):
            raise _Lost(f"{self.what}: connection closed")
        return data[:-2]

    def some(self) -> bytes:
        return self._io(lambda: self.reader.read1(1 << 16))

    def exact(self, n: int) -> bytes:
        data = self._io(lambda: self.reader.read(n))
        if len(data) != n:
            raise _Lost(f"{self.what}: connection closed")
        return data

    def integer(self) -> int:
        line = self.line()
        if line[:1] != b":":
            raise self.unexpected(line)
        return int(line[1:])

    def bulk_len(self) -> int:
        line = self.line()
        if line[:1] != b"$":
            raise self.unexpected(line)
        return int(line[1:])

    def bulk(self) -> bytes:
        n = self.bulk_len()
        return b"" if n < 0 else self.exact(n + 2)[:-2]

    def unexpected(self, line: bytes) -> Exception:
        if line[:1] == b"-":
            return _Refused(f"{self.what}: {line[1:].decode('utf-8', 'replace')}")
        return _Lost(f"{self.what}: unexpected reply {line[:80]!r}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.reader.close()
        with contextlib.suppress(Exception):
            self.conn.disconnect()


class _Refused(Exception):
    """An error reply where none was expected."""


@dataclass
class _Batch:
    commands: bytes  # the SET and RESTORE commands sent
    keys: int
    size: int  # value (string) and DUMP payload (other types) bytes


# What the guard below reads, in one script call so that the three agree: the key count, the count of
# keys with a TTL (INFO keyspace) and the key table's memory (MEMORY STATS), from which its size follows.
_TABLE_SCRIPT = r"""
return {redis.call('DBSIZE'), redis.call('INFO', 'keyspace'), redis.call('MEMORY', 'STATS')}
"""
# Redis 7.0, 64-bit: MEMORY STATS "overhead.hashtable.main" of a db is keys * (dictEntry 24 + robj 16)
# plus 8 bytes per slot of its table(s) (object.c, getMemoryOverheadData)
_PER_KEY, _PER_SLOT = 40, 8
STABLE_WAIT = 2.0  # seconds to wait for a rehash in progress to finish before copying with UNLINK instead
FILL = 4  # the keys that cannot go away (no TTL) must fill at least 1/FILL of the table


REHASHING = -1  # _table(): two tables (a rehash under way): wait for it to finish


def _table(src: redis.Redis, db: int) -> tuple[int, int, int | None]:
    """(keys, keys with a TTL, slots of the db's key table): REHASHING while a rehash is under way,
    None when the figures are not understood (another Redis version, a 32-bit build...)."""
    run: Callable[..., Any] = src.eval
    keys, keyspace, stats = run(_TABLE_SCRIPT, 0)
    keys = int(keys)
    expires = None
    for line in bytes(keyspace).decode("ascii", "replace").splitlines():
        if line.startswith(f"db{db}:"):
            fields = dict(f.split("=", 1) for f in line.split(":", 1)[1].split(",") if "=" in f)
            if int(fields.get("keys", -1)) == keys and fields.get("expires", "").isdigit():
                expires = int(fields["expires"])
    flat = dict(zip(stats[::2], stats[1::2], strict=False))
    entry = flat.get(b"db.%d" % db)
    main = dict(zip(entry[::2], entry[1::2], strict=False)).get(b"overhead.hashtable.main") if entry else None
    if expires is None or not isinstance(main, int):
        return keys, keys, None
    slots, odd = divmod(main - _PER_KEY * keys, _PER_SLOT)
    if odd or slots < 4:
        return keys, expires, None
    if slots & (slots - 1):  # not a power of two: two tables, or not understood
        return keys, expires, REHASHING if bin(slots).count("1") == 2 else None
    return keys, expires, slots


def _scan_once(src: redis.Redis, db: int) -> bool:
    """True when a SCAN of the db returns each key at most once without deleting what it took.

    SCAN (dictScan, reverse-binary cursor) returns a key twice only if the key table shrinks while the
    scan is under way: the cursor then points into the middle of a bucket of the smaller table whose
    other half was already returned. A growing table, or a rehash that started before the scan, cannot
    do it (each step returns whole buckets of the smaller table, wherever their keys are). A table only
    grows when keys are added, and nothing but the copy uses the scratch server; it only shrinks
    (serverCron's tryResizeHashTables) once the keys fill under 10% of it (Redis 6.0 to 7.2, the only
    versions this trusts; 1/8 in later ones),
    and only keys with a TTL can go away during the copy (they expire; maxmemory is off, so nothing is
    evicted). So: one table, not rehashing, and the keys without a TTL alone fill 1/FILL of it; else we
    delete what we take (UNLINK, as before), which makes a repeat harmless. Figures not understood
    also mean UNLINK.
    """
    if src.config_get("maxmemory").get("maxmemory") != "0":  # eviction could delete any key
        return False
    server: dict[str, Any] = src.info("server")
    version = str(server.get("redis_version", "")).split(".")[:2]
    if server.get("server_name", "redis") != "redis" or version not in (["6", "0"], ["6", "2"], ["7", "0"], ["7", "2"]):
        return False  # the dict, MEMORY STATS and shrink rule read here are those of Redis 6.0 to 7.2
    deadline = time.monotonic() + STABLE_WAIT
    while True:
        keys, expires, slots = _table(src, db)
        if slots is None:
            return False
        if slots != REHASHING:
            return (keys - expires) * FILL >= slots
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _copy_db(
    src: redis.Redis,
    dst: redis.Redis,
    db: int,
    replace: bool,
    ttls: bool,
    result: CopyResult,
    progress: Progress,
) -> None:
    """Batches built by the scratch server (_BATCH_SCRIPT) go to the target while it builds the next."""
    once = _scan_once(src, db)
    before = src.dbsize()
    sha = src.script_load(_BATCH_SCRIPT)
    source = _Raw(src, "the scratch redis-server")
    try:
        target = _Raw(dst, "the target")
    except BaseException:
        source.close()
        raise
    returned = 0  # keys SCAN returned
    try:
        count, pending = BATCH_KEYS, None

        def ask(cursor: bytes) -> None:
            flags = (int(ttls), int(replace), BATCH_BYTES, BIG_VALUE, int(not once))
            source.send(encode_command(b"EVALSHA", sha, 0, cursor, count, *flags))

        ask(b"0")
        while True:
            cursor, batch, rest, gone = _read_batch(source)
            returned += batch.keys + len(rest) + gone
            if rest:
                count = max(1, count // 2)  # big values: fewer keys per batch
            elif batch.size:
                count = max(1, min(BATCH_KEYS, BATCH_BYTES * batch.keys // batch.size))
            asked = not rest and cursor != b"0"
            if asked:  # the scratch server builds the next batch while the target runs this one
                ask(cursor)
            if pending is not None:  # at most one batch waits for the target
                _settle(target, pending, db, result, progress)
                pending = None
            if batch.keys:
                target.send(batch.commands)
                pending = batch
            if rest:  # one by one over the same connection: no batch may be under way
                if pending is not None:
                    _settle(target, pending, db, result, progress)
                    pending = None
                for key in rest:
                    _stream_key(source, target, key, db, replace, result, progress, unlink=not once)
            if cursor == b"0":
                break
            if not asked:
                ask(cursor)
        if pending is not None:
            _settle(target, pending, db, result, progress)
    finally:
        source.close()
        target.close()
    left = src.dbsize()
    # nothing but us uses the source: a mismatch would be a bug, never a silent partial or double copy
    if not once and left > 0:
        raise BackupError(f"db {db}: {left} keys were not copied")
    if once and not left <= returned <= before:  # only keys with a TTL may have gone (expired) meanwhile
        raise BackupError(f"db {db}: the scan returned {returned} keys where {before} were (and {left} still are)")


def _read_batch(source: _Raw) -> tuple[bytes, _Batch, list[bytes], int]:
    line = source.line()
    if line != b"*6":
        if line[:1] == b"-":
            raise BackupError(f"the scratch redis-server refused to list its keys: {line[1:].decode(errors='replace')}")
        raise source.unexpected(line)
    cursor = source.bulk()
    keys, size = source.integer(), source.integer()
    line = source.line()
    if line[:1] != b"*":
        raise source.unexpected(line)
    rest = [source.bulk() for _ in range(int(line[1:]))]
    commands = source.bulk()
    gone = source.integer()  # returned by SCAN but expired before it was read
    return cursor, _Batch(commands, keys, size), rest, gone


def _settle(target: _Raw, batch: _Batch, db: int, result: CopyResult, progress: Progress) -> None:
    """Read the target's one-line reply to each command of the batch."""
    buf = bytearray()
    lines = 0
    while lines < batch.keys:
        chunk = target.some()
        lines += chunk.count(b"\r\n") + (buf[-1:] == b"\r" and chunk[:1] == b"\n")
        buf += chunk
    if lines != batch.keys or not buf.endswith(b"\r\n"):
        raise _Lost(f"the target: {lines - batch.keys} replies more than commands sent")
    if buf.count(b"+OK\r\n") == batch.keys:
        result.copied += batch.keys
    else:
        for key, reply in zip(_keys_of(batch.commands), bytes(buf).split(b"\r\n"), strict=False):
            _count_reply(key, reply, db, result)
    result.bytes += batch.size
    progress.add(batch.size, items=batch.keys)


def _count_reply(key: bytes, reply: bytes, db: int, result: CopyResult) -> None:
    if reply == b"+OK":
        result.copied += 1
    elif reply.startswith(b"-BUSYKEY") or reply in (b"$-1", b"_"):  # RESTORE, or SET NX (RESP2 or 3), found it there
        result.existing += 1
        if len(result.existing_sample) < SAMPLE:
            result.existing_sample.append(f"db{db}:{_show(key)}")
    else:
        shown = reply[1:].decode("utf-8", "replace") if reply[:1] == b"-" else repr(reply[:80])
        raise TargetError(f"copying key {_show(key)!r} into db {db} failed: {shown}")


def _keys_of(commands: bytes) -> list[bytes]:
    """The key of each command of a batch (only read when a reply was not +OK)."""
    keys = []
    pos = 0
    while pos < len(commands):
        end = commands.index(b"\r\n", pos)
        argc = int(commands[pos + 1 : end])
        pos = end + 2
        args = []
        for _ in range(argc):
            end = commands.index(b"\r\n", pos)
            n = int(commands[pos + 1 : end])
            args.append(commands[end + 2 : end + 2 + n])
            pos = end + 2 + n + 2
        keys.append(args[1])
    return keys


def _stream_key(
    source: _Raw,
    target: _Raw,
    key: bytes,
    db: int,
    replace: bool,
    result: CopyResult,
    progress: Progress,
    *,
    unlink: bool,
) -> None:
    """One key, its payload passed through in chunks: a 200 MB value never sits whole in Python."""
    source.send(encode_command(b"PTTL", key) + encode_command(b"DUMP", key))
    pttl = source.integer()
    n = source.bulk_len()
    if n >= 0 and pttl != -2:
        ttl = b"0" if pttl < 0 else b"%d" % max(pttl, 1)
        argc = 5 if replace else 4
        head = b"*%d\r\n$7\r\nRESTORE\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n" % (argc, len(key), key, len(ttl), ttl, n)
        target.send(head)
        left = n + 2  # the payload and its CRLF
        while left:
            chunk = source.exact(min(CHUNK, left))
            target.send(chunk)
            left -= len(chunk)
        if replace:
            target.send(b"$7\r\nREPLACE\r\n")
        _count_reply(key, target.line(), db, result)
        result.bytes += n
        progress.add(n, items=1)
    elif n >= 0:
        source.exact(n + 2)
    if unlink:
        source.send(encode_command(b"UNLINK", key))
        source.integer()
