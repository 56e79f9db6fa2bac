"""Deterministic write workloads for a Redis primary.

Everything a digest depends on is determined by ``seed``: values come from ``random.Random(seed)``,
stream ids are explicit and TTLs are long (DEBUG DIGEST only records *whether* a key has a TTL, so
absolute expiry times do not matter, and no key expires during a test).
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable
from typing import Any, cast

import redis

ClientFactory = Callable[[int], redis.Redis]

WORKLOAD_DBS = (0, 1, 3)
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
LONG_TTL = 10 * 365 * 24 * 3600

# Writes three keys and returns the new counter; replicated as its effects (MULTI/.../EXEC).
_LUA = """
local n = redis.call('INCRBY', KEYS[1], tonumber(ARGV[1]))
redis.call('HSET', KEYS[2], 'last', ARGV[2], 'n', n)
redis.call('RPUSH', KEYS[3], ARGV[2])
return n
"""


def _binary(rng: random.Random, size: int) -> bytes:
    """Random bytes that always contain CR, LF, NUL and a RESP-looking prefix."""
    body = rng.randbytes(max(size - 8, 0))
    return b"\r\n\x00*1\r\n$" + body[: max(size - 8, 0)]


def mixed_workload(client_factory: ClientFactory, rounds: int = 20, seed: int = 0) -> int:
    """Write a deterministic mixed workload to dbs 0, 1 and 3; returns the number of commands sent.

    ``client_factory(db)`` returns a client for db ``db`` (e.g. ``primary.client``).  Covers strings
    (SET/INCR/INCRBYFLOAT/APPEND/SETRANGE/GETDEL, binary keys and values with CR, LF and NUL), hashes,
    lists, sets, sorted sets, streams (XADD/XTRIM/XGROUP/XREADGROUP/XACK), long TTLs
    (EXPIRE/PEXPIREAT/SETEX/PERSIST), MULTI/EXEC transactions, EVAL of a Lua script writing three
    keys, COPY/MOVE/RENAME across keys and dbs, FLUSHDB of db 3 followed by more writes, one ~1 MB
    value and a pipelined batch of many small keys.
    """
    rng = random.Random(seed)
    clients = {db: client_factory(db) for db in WORKLOAD_DBS}
    c0, c1, c3 = clients[0], clients[1], clients[3]
    n = 0

    # One large value and many small ones.
    c0.set(b"big:1mb", rng.randbytes(1024 * 1024))
    c0.set(b"big:binary", _binary(rng, 200_000))
    n += 2
    pipe = c1.pipeline(transaction=False)
    for i in range(1000):
        pipe.set(f"small:{i}", f"v{i}:{rng.randrange(10**6)}")
    pipe.execute()
    n += 1000

    for r in range(rounds):
        for db, c in clients.items():
            p = f"s{seed}:r{r % 7}:"  # reuse key names across rounds so updates hit existing keys
            # strings
            c.set(p + "str", f"value-{db}-{r}")
            c.incr(p + "counter")
            c.incrby(p + "counter", rng.randrange(1, 100))
            c.incrbyfloat(p + "float", 1.5)
            c.append(p + "append", _binary(rng, 16))
            c.setrange(p + "range", rng.randrange(0, 64), b"\x00\r\n" + rng.randbytes(5))
            c.set(b"bin:\x00\r\nkey:" + bytes([r % 256]), _binary(rng, rng.randrange(8, 64)))
            c.mset({f"{p}m{i}": rng.randbytes(12) for i in range(5)})
            c.setnx(p + "nx", "first")
            c.getdel(p + "m0")
            n += 10
            # hashes
            c.hset(p + "hash", mapping={f"f{i}": rng.randbytes(8) for i in range(rng.randrange(1, 8))})
            c.hincrby(p + "hash", "hits", 3)
            c.hdel(p + "hash", "f0")
            c.hsetnx(p + "hash", "created", r)
            n += 4
            # lists
            c.rpush(p + "list", *[rng.randbytes(6) for _ in range(5)])
            c.lpush(p + "list", b"head\r\n")
            c.lpop(p + "list")
            c.rpop(p + "list")
            c.lset(p + "list", 0, "set\x00")
            c.linsert(p + "list", "BEFORE", "set\x00", "inserted")
            c.ltrim(p + "list", 0, 30)
            c.lmove(p + "list", p + "list2", "LEFT", "RIGHT")
            n += 8
            # sets
            c.sadd(p + "set", *[f"m{rng.randrange(40)}" for _ in range(6)])
            c.srem(p + "set", "m1", "m2")
            c.smove(p + "set", p + "set2", "m3")
            c.sadd(p + "intset", *range(r, r + 5))
            c.sunionstore(p + "union", [p + "set", p + "set2"])
            n += 5
            # sorted sets
            c.zadd(p + "zset", {f"z{rng.randrange(50)}": rng.random() * 100 for _ in range(5)})
            c.zincrby(p + "zset", 2.25, "z7")
            c.zrem(p + "zset", "z8")
            c.zremrangebyscore(p + "zset", 90, 95)
            c.zadd(p + "zlex", {f"lex{i}": 0 for i in range(r % 5 + 1)})
            n += 5
            # streams, explicit ids
            for j in range(3):
                c.xadd(p + "stream", {"i": r, "j": j, "data": rng.randbytes(10)}, id=f"{r + 1}-{j + 1}")
            n += 3
            if r == 0:
                c.xgroup_create(p + "stream", "grp", id="0")
                n += 1
            elif r % 7 == 0:
                # stream and group were created in round 0; ``p`` repeats every 7 rounds
                c.xreadgroup("grp", "consumer-a", {p + "stream": ">"}, count=2)
                c.xack(p + "stream", "grp", f"{r - 6}-1")
                n += 2
            if r % 5 == 4:
                c.xtrim(p + "stream", maxlen=10, approximate=False)
                n += 1
            # expiries (long only)
            c.expire(p + "str", LONG_TTL)
            c.pexpireat(p + "hash", FAR_FUTURE_MS)
            cast(Any, c).execute_command("SETEX", p + "ttl", LONG_TTL, b"expires\x00later")
            c.set(p + "persist", "x", ex=LONG_TTL)
            c.persist(p + "persist")
            n += 5
            # transaction
            tx = c.pipeline(transaction=True)
            tx.incr(p + "tx:counter")
            tx.set(p + "tx:value", _binary(rng, 20))
            tx.sadd(p + "tx:set", r)
            tx.hset(p + "tx:hash", "round", r)
            tx.execute()
            n += 6  # MULTI + 4 + EXEC
            # Lua
            c.eval(_LUA, 3, p + "lua:counter", p + "lua:hash", p + "lua:list", 7, f"round-{r}")
            n += 1
        # cross-key / cross-db
        c0.copy(f"s{seed}:r{r % 7}:hash", f"s{seed}:copy:{r}", destination_db="1", replace=True)
        c0.set(f"move:{r}", r)
        c0.move(f"move:{r}", 3)
        c1.rename(f"s{seed}:r{r % 7}:str", f"s{seed}:renamed:{r % 7}")
        c1.delete(f"s{seed}:r{r % 7}:nx")
        c3.unlink(f"s{seed}:r{r % 7}:list2")
        n += 6

    # FLUSHDB in one db, then more writes there.
    c3.flushdb()
    n += 1
    for i in range(50):
        c3.set(f"after-flush:{i}", rng.randbytes(16))
        c3.rpush("after-flush:list", i)
    c3.hset("after-flush:hash", mapping={"a": 1, "b": b"\x00\r\n"})
    n += 101
    for c in clients.values():
        c.close()
    return n


def bulk_load(
    client: redis.Redis,
    n_keys: int,
    value_size: int,
    *,
    use_debug_populate: bool = True,
    seed: int = 1,
) -> None:
    """A bigger dataset, quickly: ``n_keys`` strings of ``value_size`` bytes plus a few of each type.

    With ``use_debug_populate`` (fast) the strings come from ``DEBUG POPULATE``, which is NOT
    replicated: load before the backup attaches (snapshot tests).  Otherwise they are written with
    pipelined MSET, which replicates.
    """
    rng = random.Random(seed)
    if use_debug_populate:
        cast(Any, client).execute_command("DEBUG", "POPULATE", n_keys, "bulk", value_size)
    else:
        pipe = client.pipeline(transaction=False)
        batch: dict[str, bytes] = {}
        for i in range(n_keys):
            batch[f"bulk:{i}"] = rng.randbytes(value_size)
            if len(batch) == 100:
                pipe.mset(batch)
                batch = {}
        if batch:
            pipe.mset(batch)
        pipe.execute()
    pipe = client.pipeline(transaction=False)
    for k in range(10):
        pipe.hset(f"bulk:hash:{k}", mapping={f"f{i}": rng.randbytes(16) for i in range(200)})
        pipe.rpush(f"bulk:list:{k}", *[rng.randbytes(16) for _ in range(200)])
        pipe.sadd(f"bulk:set:{k}", *[f"m{i}" for i in range(200)])
        pipe.zadd(f"bulk:zset:{k}", {f"m{i}": float(i) for i in range(200)})
        for i in range(50):
            pipe.xadd(f"bulk:stream:{k}", {"i": i, "v": rng.randbytes(8)}, id=f"1-{i + 1}")
        pipe.expire(f"bulk:hash:{k}", LONG_TTL)
    pipe.set("bulk:big", rng.randbytes(2 * 1024 * 1024))
    pipe.execute()


class BackgroundWriter:
    """A thread that writes ``SET bg:<i> <i>`` (and INCR ``bg:count``) until stopped.

    For tests that kill or restart things while writes are flowing.  Connection errors end the
    thread quietly (``.error`` holds the exception); ``.written`` counts acknowledged SETs, so keys
    ``bg:0 .. bg:written-1`` are on the primary.  ``interval`` paces the writes: seconds to wait
    before each SET/INCR pipeline (0: as fast as the server answers).
    """

    def __init__(self, client: redis.Redis, prefix: str = "bg", *, interval: float = 0.0) -> None:
        self.client = client
        self.prefix = prefix
        self.interval = interval
        self.written = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="BackgroundWriter", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                i = self.written
                pipe = self.client.pipeline(transaction=False)
                pipe.set(f"{self.prefix}:{i}", i)
                pipe.incr(f"{self.prefix}:count")
                pipe.execute()
                self.written = i + 1
        except redis.RedisError as exc:
            self.error = exc

    def start(self) -> BackgroundWriter:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> int:
        """Stop writing; returns the number of SETs acknowledged."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("background writer did not stop")
        with contextlib.suppress(Exception):
            self.client.close()
        return self.written

    def __enter__(self) -> BackgroundWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


FUNCTION_LIBRARY = """#!lua name=matrixlib
redis.register_function('matrix_hello', function() return 'hello' end)
redis.register_function('matrix_incr', function(keys, args) return redis.call('INCRBY', keys[1], args[1]) end)
"""


def version_workload(
    client_factory: ClientFactory, *, hash_field_expiration: bool, seed: int = 0, replace: bool = False
) -> int:
    """The data types some servers have and others lack, on top of :func:`mixed_workload`: a Function library
    (FUNCTION LOAD, Redis 7.0+ and Valkey) called with FCALL, and with ``hash_field_expiration`` (Redis 7.4+)
    hashes with per-field TTLs (HEXPIRE, HPEXPIREAT, HPERSIST; long TTLs, so nothing expires during a test).
    ``replace``: FUNCTION LOAD REPLACE (a second call on the same server). Returns the number of commands."""
    rng = random.Random(seed)
    c0, c1 = client_factory(0), client_factory(1)
    n = 0
    args: list[Any] = ["FUNCTION", "LOAD", *(["REPLACE"] if replace else []), FUNCTION_LIBRARY]
    cast(Any, c0).execute_command(*args)
    cast(Any, c1).execute_command("FCALL", "matrix_incr", 1, f"fcall:{seed}", 5)
    n += 2
    if hash_field_expiration:
        for c in (c0, c1):
            for i in range(5):
                key = f"hfe:{seed}:{i}"
                c.hset(key, mapping={f"f{j}": rng.randbytes(8) for j in range(10)})
                cast(Any, c).execute_command("HEXPIRE", key, LONG_TTL, "FIELDS", 3, "f0", "f1", "f2")
                cast(Any, c).execute_command("HPEXPIREAT", key, FAR_FUTURE_MS, "FIELDS", 2, "f3", "f4")
                cast(Any, c).execute_command("HPERSIST", key, "FIELDS", 1, "f0")
                n += 4
            # a big hash (hashtable encoding, not listpack) with field TTLs
            pipe = c.pipeline(transaction=False)
            pipe.hset(f"hfe:{seed}:big", mapping={f"f{j}": rng.randbytes(16) for j in range(300)})
            cast(Any, pipe).execute_command("HEXPIRE", f"hfe:{seed}:big", LONG_TTL, "FIELDS", 2, "f10", "f20")
            pipe.execute()
            n += 2
    c0.close()
    c1.close()
    return n


def function_names(client: redis.Redis) -> set[bytes]:
    """The names of the functions loaded on the server of ``client`` (DEBUG DIGEST does not cover them)."""
    libs = cast(Any, client).execute_command("FUNCTION", "LIST")

    def as_dict(item: Any) -> dict[Any, Any]:  # redis-py may have parsed the reply into dicts already
        d = item if isinstance(item, dict) else dict(zip(item[0::2], item[1::2], strict=False))
        return {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}

    names: set[bytes] = set()
    for lib in libs:
        for fn in as_dict(lib)[b"functions"]:
            name = as_dict(fn)[b"name"]
            names.add(name.encode() if isinstance(name, str) else name)
    return names
