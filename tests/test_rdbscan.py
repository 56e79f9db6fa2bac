"""RdbScan against the RDB files that real servers write: the system's Redis 7.0 and the Redis 7.2, 7.4 and
Valkey 8.0 builds in /work/shared/redis-versions (a missing one is skipped).

Each server gets every data type in every encoding it has, in several dbs of 32, plus functions, TTLs,
LRU/LFU metadata, a module type (a small module compiled here, when gcc is there) and cluster mode; the
walk must agree with what the server says it holds (DBSIZE, FUNCTION LIST, INFO), however the file is cut.
Hand-written bytes appear only for malformed input and for layouts that none of these servers writes.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from redis_backup.chain.rdbscan import RdbScan, scan_rdb_file
from tests.support.servers import REDIS_CLI, RedisServer

VERSIONS_DIR = Path(os.environ.get("REDIS_VERSIONS_DIR", "/work/shared/redis-versions"))
SERVERS: dict[str, str | None] = {
    "redis-7.0": shutil.which("redis-server"),  # Debian's
    "redis-7.2": str(VERSIONS_DIR / "redis-7.2" / "redis-server"),
    "redis-7.4": str(VERSIONS_DIR / "redis-7.4" / "redis-server"),
    "valkey-8.0": str(VERSIONS_DIR / "valkey-8.0" / "redis-server"),
}
NAMES = list(SERVERS)
DBS = (0, 3, 17, 31)

LIBRARIES = (
    "#!lua name=scanlib1\nredis.register_function('scan_one', function(keys, args) return 1 end)",
    "#!lua name=scanlib2\n"
    "redis.register_function('scan_two', function(keys, args) return 2 end)\n"
    "redis.register_function{function_name='scan_three', callback=function(keys, args) return 3 end,"
    " flags={'no-writes'}}",
)


class VersionedServer(RedisServer):
    """A RedisServer started from another binary (the base command line is the same for all of them)."""

    def __init__(self, binary: str, dir: Path, **kwargs: Any) -> None:
        self.binary = binary
        super().__init__(dir, **kwargs)

    def argv(self) -> list[str]:
        args = super().argv()
        args[0] = self.binary
        return args

    def db_client(self, db: int) -> redis.Redis:
        """One connection per db, reused (client() opens a new one each time)."""
        cache: dict[int, redis.Redis] = self.__dict__.setdefault("_db_clients", {})
        if db not in cache or cache[db] not in self._clients:  # stop() closes them
            cache[db] = self.client(db)
        return cache[db]

    def server_version(self) -> str:
        info = self.info("server")
        return info.get("valkey_version") or info["redis_version"]

    def save_rdb(self) -> bytes:
        self.execute("SAVE")
        return (self.dir / "dump.rdb").read_bytes()


def binary_of(name: str) -> str:
    path = SERVERS[name]
    if path is None or not os.access(path, os.X_OK):
        pytest.skip(f"{name}: no redis-server binary ({path or 'none on PATH'})")
    return path


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., VersionedServer]]:
    """``launch(name, *extra_args)``: a running server of that version; all are stopped at the end."""
    started: list[VersionedServer] = []

    def start(name: str, *extra: str) -> VersionedServer:
        binary = binary_of(name)
        server = VersionedServer(binary, tmp_path_factory.mktemp(name), extra_args=list(extra))
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()


# --------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Expected:
    dbs: frozenset[int]
    keys: int
    functions: int
    redis_ver: str


@dataclass(frozen=True)
class Snapshot:
    name: str
    data: bytes
    expected: Expected


def expected_of(server: VersionedServer, databases: int = 32) -> Expected:
    sizes = {db: int(server.db_client(db).dbsize()) for db in range(databases)}
    libraries = server.execute("FUNCTION", "LIST")
    return Expected(
        dbs=frozenset(db for db, n in sizes.items() if n),
        keys=sum(sizes.values()),
        functions=len(libraries),
        redis_ver=server.server_version(),
    )


def scan_pieces(pieces: Iterable[bytes | memoryview]) -> RdbScan:
    scan = RdbScan()
    for piece in pieces:
        scan.feed(piece)
    scan.finish()
    return scan


def summary(scan: RdbScan) -> tuple[Any, ...]:
    return (
        scan.complete,
        scan.error,
        scan.max_db,
        sorted(scan.dbs),
        scan.keys,
        scan.functions,
        scan.redis_ver,
        scan.version,
    )


def assert_matches(scan: RdbScan, snap: Snapshot, what: str = "") -> None:
    label = f"{snap.name}{' ' + what if what else ''}"
    exp = snap.expected
    assert scan.error is None, f"{label}: {scan.error}"
    assert scan.complete, label
    assert set(scan.dbs) == exp.dbs, label
    assert scan.max_db == (max(exp.dbs) if exp.dbs else None), label
    assert scan.keys == exp.keys, label
    assert scan.functions == exp.functions, label
    assert scan.version == int(snap.data[5:9]), label
    assert scan.redis_ver == exp.redis_ver, label


def supported(client: redis.Redis, *command: Any) -> bool:
    try:
        client.execute_command(*command)
    except redis.ResponseError as exc:
        if "unknown" in str(exc).lower():
            return False
        raise
    return True


def random_pieces(data: bytes, rng: random.Random, sizes: tuple[int, ...]) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        n = rng.choice(sizes)
        yield data[pos : pos + n]
        pos += n


# --------------------------------------------------------------------------------------------- datasets


def write_every_type(server: VersionedServer, db: int, rng: random.Random) -> dict[str, set[str]]:
    """Every type and encoding this server has, in ``db``; returns key -> encodings it may have."""
    r = server.client(db)
    p = r.pipeline(transaction=False)
    p.set("str:small", "hello")
    p.set("str:empty", "")
    p.set("str:int8", "-7")
    p.set("str:int16", "1000")
    p.set("str:int32", "-2000000000")
    p.set("str:int64", str(2**40))  # not an RDB integer encoding: a plain string
    p.set("str:14bit", rng.randbytes(300))
    p.set("str:32bit", rng.randbytes(40_000))
    p.set("str:lzf", b"abcdefgh" * 12_000)  # compresses: LZF with long lengths
    p.set("str:lzf-short", b"z" * 80)  # LZF with 6-bit lengths
    p.set("ttl:ex", "v", ex=10**6)
    p.set("ttl:px", "w" * 50, px=10**9)
    p.rpush("list:small", "a", "b", "1", "-2", "x" * 100)
    p.rpush("list:big", *(f"element-{i:06d}" * 3 for i in range(3000)))  # many listpack nodes
    p.sadd("set:intset", 1, 2, 3, -5, 100000, 2**40)
    p.sadd("set:small", "a", "b", "c")
    p.sadd("set:big", *(f"member-{i}" for i in range(300)))
    p.sadd("set:bigint", *range(1000))
    p.zadd("zset:small", {"a": 1, "b": 2.5, "c": -3})
    p.zadd("zset:big", {f"m{i}": i / 7 for i in range(300)})
    p.zadd("zset:big", {"a-member-longer-than-63-bytes " * 3: 0.5, 10**9: 1, 1000: 2})  # 14-bit and int
    p.zadd("zset:intmembers", {i: -i for i in range(200)})  # members that are integers
    p.zadd("zset:inf", {"pos": math.inf, "neg": -math.inf, **{f"f{i}": i for i in range(200)}})
    p.hset("hash:small", mapping={"f1": "v1", "f2": "2"})
    p.hset("hash:big", mapping={f"field-{i}": f"value-{i}" for i in range(600)})
    p.hset("hash:longval", mapping={"f": "x" * 100})
    p.pexpire("hash:small", 10**9)
    for i in range(250):
        p.xadd("stream", {"n": i, "s": "v" * (i % 5)})
    p.execute()

    # Lists with LZF-compressed inner nodes, and with plain (not listpack) nodes.
    server.execute("CONFIG", "SET", "list-compress-depth", "1")
    r.rpush("list:compressed", *(f"compressible-{i % 10}" * 20 for i in range(2000)))
    server.execute("CONFIG", "SET", "list-compress-depth", "0")
    server.execute("DEBUG", "QUICKLIST-PACKED-THRESHOLD", "100")
    r.rpush("list:plain", *(f"{i:0100d}" for i in range(200)))  # a quicklist already (from 7.2 on)
    r.rpush("list:plain", "p" * 500, "small", "q" * 300)
    server.execute("DEBUG", "QUICKLIST-PACKED-THRESHOLD", str(1 << 30))

    # Stream consumer groups: pending entries, acknowledged ones, an idle consumer, a deleted entry.
    ids = [entry[0] for entry in r.xrange("stream", count=20)]
    r.xgroup_create("stream", "g1", id="0")
    r.xgroup_create("stream", "g2", id="$")
    r.xreadgroup("g1", "alice", {"stream": ">"}, count=10)
    r.xreadgroup("g1", "bob", {"stream": ">"}, count=5)
    r.xack("stream", "g1", ids[0], ids[3])
    r.xgroup_createconsumer("stream", "g2", "carol")
    r.xdel("stream", ids[15])
    r.xgroup_create("stream:empty", "g", id="$", mkstream=True)

    encodings = {
        "str:small": {"embstr"},
        "str:int8": {"int"},
        "str:lzf": {"raw"},
        "list:big": {"quicklist"},
        "list:compressed": {"quicklist"},
        "list:plain": {"quicklist"},
        "set:intset": {"intset"},
        "set:small": {"listpack", "hashtable"},  # listpack from 7.2 on
        "set:big": {"hashtable"},
        "set:bigint": {"hashtable"},
        "zset:small": {"listpack"},
        "zset:big": {"skiplist"},
        "zset:intmembers": {"skiplist"},
        "hash:small": {"listpack"},
        "hash:big": {"hashtable"},
        "hash:longval": {"hashtable"},
        "stream": {"stream"},
    }
    # Hash fields with TTLs (Redis 7.4+): a listpack with TTLs, a hash table with TTL metadata.
    r.hset("hfe:small", mapping={"a": "1", "b": "2", "c": "3"})
    r.hset("hfe:big", mapping={f"f{i}": "v" for i in range(600)})
    if supported(r, "HEXPIRE", "hfe:small", 10**6, "FIELDS", 1, "a"):
        r.execute_command("HPEXPIRE", "hfe:big", 10**9, "FIELDS", 2, "f1", "f2")
        encodings["hfe:small"] = {"listpackex"}
        encodings["hfe:big"] = {"hashtable"}
    r.execute_command("DEBUG", "POPULATE", 300, f"pop{db}:", 10)
    return encodings


@pytest.fixture(scope="module", params=NAMES)
def full(request: pytest.FixtureRequest, launch: Callable[..., VersionedServer]) -> list[Snapshot]:
    """Per version: the whole dataset saved plain, with LRU and with LFU metadata, and as a replica gets it."""
    name: str = request.param
    server = launch(name, "--databases", "32")
    rng = random.Random(7)
    for db in DBS:
        encodings = write_every_type(server, db, rng)
        if db == 0:
            client = server.client(0)
            for key, allowed in encodings.items():
                enc = client.object("encoding", key)
                assert isinstance(enc, bytes)
                assert enc.decode() in allowed, f"{name}: {key} is {enc!r}, expected one of {allowed}"
    for lib in LIBRARIES:
        server.execute("FUNCTION", "LOAD", lib)
    snaps = [Snapshot(f"{name} SAVE", server.save_rdb(), expected_of(server))]
    server.execute("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")  # an IDLE opcode before every key
    snaps.append(Snapshot(f"{name} SAVE+LRU", server.save_rdb(), expected_of(server)))
    server.execute("CONFIG", "SET", "maxmemory-policy", "allkeys-lfu")  # a FREQ opcode before every key
    snaps.append(Snapshot(f"{name} SAVE+LFU", server.save_rdb(), expected_of(server)))
    assert len(snaps[1].data) > len(snaps[0].data) + snaps[0].expected.keys  # the opcodes are there
    assert len(snaps[2].data) > len(snaps[0].data) + snaps[0].expected.keys
    if shutil.which(REDIS_CLI):
        path = server.dump_rdb(server.dir / "replica.rdb")
        snaps.append(Snapshot(f"{name} replica", path.read_bytes(), expected_of(server)))
    server.stop()
    return snaps


@pytest.fixture(scope="module", params=NAMES)
def small(request: pytest.FixtureRequest, launch: Callable[..., VersionedServer]) -> Snapshot:
    """Per version: a small RDB with a bit of everything, to be cut at every byte."""
    name: str = request.param
    server = launch(name, "--databases", "20")
    r0, r9 = server.client(0), server.client(9)
    r0.set("s", "v")
    r0.set("n", "12345")
    r0.set("t", "x" * 40, ex=10**6)
    r0.set("lzf", "y" * 200)
    r0.rpush("l", "a", "b", "300")
    r9.sadd("si", 1, 2, 3)
    r9.sadd("ss", "a", "b")
    r9.hset("h", mapping={"f": "v", "g": "1"})
    r9.zadd("z", {"a": 1.5, "b": 2})
    r9.zadd("zbig", {f"m{i}": i for i in range(130)})
    r9.hset("hbig", mapping={f"f{i}": i for i in range(130)})
    r9.xadd("x", {"a": "1"})
    r9.xadd("x", {"b": "2"})
    r9.xgroup_create("x", "g", id="0")
    r9.xreadgroup("g", "c", {"x": ">"}, count=1)
    r9.hset("he", mapping={"f1": "1", "f2": "2"})
    supported(r9, "HEXPIRE", "he", 10**6, "FIELDS", 1, "f1")
    server.execute("FUNCTION", "LOAD", LIBRARIES[0])
    snap = Snapshot(f"{name} small", server.save_rdb(), expected_of(server, 20))
    server.stop()
    return snap


# --------------------------------------------------------------------------------------------- real files


def test_walks_what_each_server_saves(full: list[Snapshot]) -> None:
    for snap in full:
        assert_matches(scan_pieces([snap.data]), snap)
        assert snap.expected.dbs == frozenset(DBS)
        assert snap.expected.functions == len(LIBRARIES)


def test_rdb_versions_of_the_servers(full: list[Snapshot]) -> None:
    """What the servers write (documents the matrix; the walk reads the header in any case)."""
    snap = full[0]
    release = ".".join(snap.expected.redis_ver.split(".")[:2])
    want = {"redis-7.0": 10, "redis-7.2": 11, "redis-7.4": 12, "valkey-8.0": 11}
    name = snap.name.split()[0]
    if name.endswith("-" + release):  # (the system's redis-server may not be 7.0 everywhere)
        assert snap.data[:9] == b"REDIS%04d" % want[name]
    assert scan_pieces([snap.data]).version == int(snap.data[5:9])


def test_any_split_of_a_big_file_gives_the_same_walk(full: list[Snapshot]) -> None:
    snap = full[1]  # with IDLE opcodes
    whole = summary(scan_pieces([snap.data]))
    assert whole[0], whole
    rng = random.Random(12345)
    fine = (1, 1, 2, 3, 5, 8, 9, 13, 19, 40, 64)
    coarse = (1, 2, 7, 9, 100, 4096, 65536, 300_000)
    assert summary(scan_pieces(random_pieces(snap.data, rng, fine))) == whole
    assert summary(scan_pieces(random_pieces(snap.data, rng, coarse))) == whole
    views = (memoryview(piece) for piece in random_pieces(snap.data, rng, coarse))
    assert summary(scan_pieces(views)) == whole
    lfu = full[2]
    assert summary(scan_pieces(random_pieces(lfu.data, rng, coarse))) == summary(scan_pieces([lfu.data]))


def test_split_into_two_at_every_byte(small: Snapshot) -> None:
    data = small.data
    whole = scan_pieces([data])
    assert_matches(whole, small)
    expected = summary(whole)
    for cut in range(len(data) + 1):
        assert summary(scan_pieces([data[:cut], data[cut:]])) == expected, f"cut at {cut}"
    assert summary(scan_pieces(data[i : i + 1] for i in range(len(data)))) == expected
    mv = memoryview(data)
    assert summary(scan_pieces(mv[i : i + 3] for i in range(0, len(data), 3))) == expected


def test_truncated_at_every_byte(small: Snapshot) -> None:
    data = small.data
    eof = len(data) - 9  # the EOF opcode, then the CRC64
    assert data[eof] == 0xFF
    # Keys walked after each byte, fed one at a time (no fast path can take a whole key at once).
    keys = [0]
    bytewise = RdbScan()
    for i in range(len(data)):
        bytewise.feed(data[i : i + 1])
        keys.append(bytewise.keys)
    assert keys == sorted(keys) and keys[-1] == small.expected.keys
    for cut in range(len(data)):
        scan = RdbScan()
        scan.feed(data[:cut])
        assert scan.keys == keys[cut], f"cut at {cut}"  # only whole keys count, whichever path walked them
        assert scan.error is None and scan.complete == (cut > eof), f"cut at {cut}: {scan.error}"
        scan.finish()
        if cut <= eof:
            assert scan.error is not None and "truncated" in scan.error, f"cut at {cut}: {scan.error}"
            assert not scan.complete
        else:  # only the CRC (checked elsewhere) is missing
            assert scan.complete, f"cut at {cut}: {scan.error}"
    # the last key before EOF: its last byte missing, it does not count; there, it does
    assert keys[eof] == small.expected.keys and keys[eof - 1] == small.expected.keys - 1


def test_scan_rdb_file(full: list[Snapshot], tmp_path: Path) -> None:
    snap = full[0]
    path = tmp_path / "dump.rdb"
    path.write_bytes(snap.data)
    assert_matches(scan_rdb_file(path), snap)
    assert_matches(scan_rdb_file(str(path), chunk=7), snap, "7-byte chunks")
    assert summary(scan_rdb_file(path, chunk=4096)) == summary(scan_pieces([snap.data]))


@pytest.mark.parametrize("name", NAMES)
def test_cluster_mode(name: str, launch: Callable[..., VersionedServer]) -> None:
    """In cluster mode Redis 7.4 writes a SLOT_INFO opcode before the keys of each slot."""
    server = launch(name, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    server.execute("DEBUG", "POPULATE", "2000", "k", "5")  # DEBUG has no keys: no slot redirection
    server.execute("FUNCTION", "LOAD", LIBRARIES[1])
    snap = Snapshot(f"{name} cluster", server.save_rdb(), expected_of(server, 1))
    server.stop()
    assert snap.expected.keys == 2000
    assert_matches(scan_pieces([snap.data]), snap)
    rng = random.Random(5)
    assert summary(scan_pieces(random_pieces(snap.data, rng, (1, 2, 3, 5, 11, 200)))) == summary(
        scan_pieces([snap.data])
    )


# --------------------------------------------------------------------------------------------- modules

MODULE_C = r"""
/* A module type saved with every module opcode, and AUX data saved before and after the keyspace.
 * It declares the few API functions it uses instead of including redismodule.h (not installed). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct Ctx Ctx;
typedef struct Str Str;
typedef struct IO IO;
typedef struct Key Key;
typedef struct MType MType;
typedef struct {
    uint64_t version;
    void *(*rdb_load)(IO *, int);
    void (*rdb_save)(IO *, void *);
    void (*aof_rewrite)(void *, Str *, void *);
    size_t (*mem_usage)(const void *);
    void (*digest)(void *, void *);
    void (*free)(void *);
    int (*aux_load)(IO *, int, int);
    void (*aux_save)(IO *, int);
    int aux_save_triggers;
} Methods;
typedef struct { size_t len; char *data; } Value;

static int (*GetApi)(const char *, void *);
static int (*SetModuleAttribs)(Ctx *, const char *, int, int);
static MType *(*CreateDataType)(Ctx *, const char *, int, Methods *);
static int (*CreateCommand)(Ctx *, const char *, int (*)(Ctx *, Str **, int), const char *, int, int, int);
static Key *(*OpenKey)(Ctx *, Str *, int);
static int (*ModuleTypeSetValue)(Key *, MType *, void *);
static void (*CloseKey)(Key *);
static int (*ReplyWithSimpleString)(Ctx *, const char *);
static int (*WrongArity)(Ctx *);
static const char *(*StringPtrLen)(const Str *, size_t *);
static void (*SaveUnsigned)(IO *, uint64_t);
static void (*SaveSigned)(IO *, int64_t);
static void (*SaveDouble)(IO *, double);
static void (*SaveFloat)(IO *, float);
static void (*SaveStringBuffer)(IO *, const char *, size_t);
static uint64_t (*LoadUnsigned)(IO *);
static int64_t (*LoadSigned)(IO *);
static double (*LoadDouble)(IO *);
static float (*LoadFloat)(IO *);
static char *(*LoadStringBuffer)(IO *, size_t *);
static void (*Free)(void *);
static MType *type;

static void *value_load(IO *io, int encver) {
    (void)encver;
    Value *v = malloc(sizeof(*v));
    LoadUnsigned(io); LoadSigned(io); LoadDouble(io); LoadFloat(io);
    size_t len;
    char *s = LoadStringBuffer(io, &len);
    v->data = malloc(len + 1);
    memcpy(v->data, s, len);
    v->len = len;
    Free(s);
    return v;
}

static void value_save(IO *io, void *value) {
    Value *v = value;
    SaveUnsigned(io, (uint64_t)v->len * 1000003u);
    SaveSigned(io, -(int64_t)v->len);
    SaveDouble(io, 3.25);
    SaveFloat(io, -1.5f);
    SaveStringBuffer(io, v->data, v->len);
}

static void value_free(void *value) {
    Value *v = value;
    free(v->data);
    free(v);
}

static int aux_load(IO *io, int encver, int when) {
    (void)encver; (void)when;
    size_t len;
    LoadUnsigned(io);
    Free(LoadStringBuffer(io, &len));
    return 0;
}

static void aux_save(IO *io, int when) {
    SaveUnsigned(io, (uint64_t)when);
    SaveStringBuffer(io, "scan-aux", 8);
}

/* SCANMOD.SET key size: a module value of size bytes */
static int set_command(Ctx *ctx, Str **argv, int argc) {
    if (argc != 3) return WrongArity(ctx);
    size_t n;
    size_t size = (size_t)strtoull(StringPtrLen(argv[2], &n), NULL, 10);
    Value *v = malloc(sizeof(*v));
    v->len = size;
    v->data = malloc(size + 1);
    for (size_t i = 0; i < size; i++) v->data[i] = (char)('a' + (i * 7 + i / 13) % 26);
    Key *key = OpenKey(ctx, argv[1], 1 | 2);
    ModuleTypeSetValue(key, type, v);
    CloseKey(key);
    return ReplyWithSimpleString(ctx, "OK");
}

#define API(name) if (GetApi("RedisModule_" #name, (void *)&name)) return 1
int RedisModule_OnLoad(Ctx *ctx, Str **argv, int argc) {
    (void)argv; (void)argc;
    GetApi = (int (*)(const char *, void *))(unsigned long)((void **)ctx)[0];
    API(SetModuleAttribs); API(CreateDataType); API(CreateCommand); API(OpenKey); API(ModuleTypeSetValue);
    API(CloseKey); API(ReplyWithSimpleString); API(WrongArity); API(StringPtrLen); API(SaveUnsigned);
    API(SaveSigned); API(SaveDouble); API(SaveFloat); API(SaveStringBuffer); API(LoadUnsigned);
    API(LoadSigned); API(LoadDouble); API(LoadFloat); API(LoadStringBuffer); API(Free);
    SetModuleAttribs(ctx, "scanmod", 1, 1);
    Methods m = {2, value_load, value_save, NULL, NULL, NULL, value_free, aux_load, aux_save, 3};
    type = CreateDataType(ctx, "scanmod-1", 1, &m);
    if (type == NULL) return 1;
    return CreateCommand(ctx, "scanmod.set", set_command, "write", 1, 1, 1);
}
"""


@pytest.fixture(scope="module")
def scan_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build the test module")
    work = tmp_path_factory.mktemp("module")
    (work / "scanmod.c").write_text(MODULE_C)
    out = work / "scanmod.so"
    done = subprocess.run(
        [gcc, "-O1", "-shared", "-fPIC", "-o", str(out), str(work / "scanmod.c")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("name", NAMES)
def test_module_values_and_module_aux(name: str, launch: Callable[..., VersionedServer], scan_module: Path) -> None:
    """MODULE_2 values (every module opcode) and MODULE_AUX before and after the keyspace."""
    server = launch(name, "--databases", "24", "--loadmodule", str(scan_module))
    server.client(5).execute_command("SCANMOD.SET", "m1", "10")
    server.client(20).execute_command("SCANMOD.SET", "m2", "0")
    server.client(20).set("plain", "x")
    small = Snapshot(f"{name} module", server.save_rdb(), expected_of(server, 24))
    server.client(20).execute_command("SCANMOD.SET", "m3", "30000")  # a long string item
    server.client(0).execute_command("SCANMOD.SET", "m4", "300")
    big = Snapshot(f"{name} module big", server.save_rdb(), expected_of(server, 24))
    server.stop()

    assert small.expected.dbs == {5, 20} and small.expected.keys == 3
    assert_matches(scan_pieces([small.data]), small)
    expected = summary(scan_pieces([small.data]))
    data = small.data
    for cut in range(len(data) + 1):
        assert summary(scan_pieces([data[:cut], data[cut:]])) == expected, f"cut at {cut}"
    assert_matches(scan_pieces([big.data]), big)
    rng = random.Random(3)
    assert summary(scan_pieces(random_pieces(big.data, rng, (1, 2, 3, 4, 9, 17, 1000)))) == summary(
        scan_pieces([big.data])
    )


# --------------------------------------------------------------------------------------------- bad input

HEADER = b"REDIS0011"
AUX = b"\xfa\x09redis-ver\x057.2.6"


def walk(*pieces: bytes) -> RdbScan:
    return scan_pieces(pieces)


def test_unknown_opcodes_and_types() -> None:
    for byte in (0x08, 0x1A, 0x40, 0xF0, 0xF3):
        scan = RdbScan()
        scan.feed(HEADER + AUX + b"\xfe\x00" + bytes([byte]) + b"\x01k\x01v\xff" + bytes(8))
        assert scan.error is not None and "unknown" in scan.error and "offset 28" in scan.error, scan.error
        assert scan.redis_ver == "7.2.6" and scan.dbs == {0}
        scan.finish()
        assert not scan.complete and "unknown" in scan.error
    scan = walk(HEADER, b"\xfe\x00\x06\x01k", bytes(20))  # module value, 4.0 release candidates
    assert scan.error is not None and "type 6" in scan.error
    scan = walk(HEADER, b"\xfe\x00\x07\x01k\x02\x07", bytes(8))  # module value with opcode 7
    assert scan.error is not None and "module value opcode 7" in scan.error


def test_bad_encodings() -> None:
    scan = walk(HEADER, b"\xfe\x00\x02\x01k\x82", bytes(10))  # set with a length of kind 0x82
    assert scan.error is not None and "bad length encoding 0x82" in scan.error
    scan = walk(HEADER, b"\xfe\x00\x00\x01k\xc4abcd\xff")  # string with encoding 4
    assert scan.error is not None and "unknown string encoding 0xc4" in scan.error
    scan = walk(HEADER, b"\xfe\x81" + (1 << 40).to_bytes(8, "big") + b"\xff")
    assert scan.error is not None and "SELECTDB" in scan.error and scan.max_db is None
    scan = walk(HEADER, b"\xf7\x01\x03\x02\x00\xff")  # MODULE_AUX whose 'when' has no UINT opcode
    assert scan.error is not None and "when" in scan.error


def test_absurd_lengths_are_skipped_not_allocated() -> None:
    tracemalloc.start()
    try:
        scan = RdbScan()
        scan.feed(HEADER + b"\xfe\x00\x00\x01k\x81" + (1 << 62).to_bytes(8, "big"))
        for _ in range(100):
            scan.feed(b"x" * 100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # the 100 kB pieces themselves; nothing sized by the length
    assert scan.error is None and not scan.complete
    scan.finish()
    assert scan.error is not None and "truncated" in scan.error and "more bytes expected" in scan.error
    assert scan.keys == 0 and scan.dbs == {0}

    # 2**62 elements in a list, 2**62 consumers of a stream group: counted down, never materialised
    scan = walk(HEADER, b"\xfe\x00\x01\x01k\x81" + (1 << 62).to_bytes(8, "big") + b"\x01a" * 1000)
    assert scan.error is not None and "truncated" in scan.error
    stream = b"\x15\x01s\x00" + b"\x00" * 8 + b"\x01" + b"\x01g\x00\x00\x00\x00\x81" + (1 << 62).to_bytes(8, "big")
    scan = walk(HEADER, b"\xfe\x00" + stream + b"\x01c" + bytes(8) + b"\x00" * 1000)
    assert scan.error is not None and "truncated" in scan.error
    scan = walk(HEADER, b"\xfe\x00\x00\x01k\xc3\x81" + (1 << 62).to_bytes(8, "big") + b"\x05" + bytes(100))
    assert scan.error is not None and "truncated" in scan.error  # an LZF string of 2**62 compressed bytes


def test_not_an_rdb() -> None:
    for data in (b"GARBAGE!!" + bytes(100), b"REDIS00x1" + bytes(10), b"XY", b"REDIX", b"\xff" * 20):
        scan = RdbScan()
        scan.feed(data)
        assert scan.error is not None and "not an RDB file" in scan.error, data
        scan.finish()
        assert not scan.complete
    for data in (b"", b"RE", b"REDIS00"):
        scan = walk(data)
        assert scan.error is not None and "header" in scan.error and scan.version is None
    scan = walk(b"RED", b"IS0", b"010", b"\xff")
    assert scan.complete and scan.version == 10 and scan.max_db is None and scan.dbs == set()


def test_bytes_after_eof_and_calls_after_the_end_are_ignored(small: Snapshot) -> None:
    scan = RdbScan()
    scan.feed(small.data + b"trailing junk \x00\xfe\x42")
    scan.feed(b"more junk")
    scan.finish()
    assert_matches(scan, small)
    scan.feed(b"\x00")
    scan.finish()
    assert scan.complete
    broken = walk(HEADER, b"\x08")
    broken.feed(b"anything")
    broken.finish()
    assert broken.error is not None and "unknown" in broken.error


def test_damaged_files_never_raise(small: Snapshot) -> None:
    rng = random.Random(99)
    data = small.data
    for i in range(400):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(9, len(damaged))] = rng.randrange(256)
        if i % 3 == 0:
            damaged = damaged[: rng.randrange(len(damaged))]
        pieces = list(random_pieces(bytes(damaged), rng, (1, 5, 64, 4096)))
        scan = scan_pieces(pieces)
        assert scan.complete == (scan.error is None)
        assert summary(scan) == summary(scan_pieces([bytes(damaged)]))
    for _ in range(200):
        scan = walk(HEADER + rng.randbytes(rng.randrange(1, 3000)))
        assert scan.complete == (scan.error is None)


def test_layouts_no_server_here_writes() -> None:
    """Older layouts these servers still load (hand-written, since no server in the matrix writes them)."""
    pre_ga_function = b"\xf6\x03lib\x03LUA\x01\x04desc\x04code" + b"\xf6\x03lib\x03LUA\x00\x04code"
    expire_seconds = b"\xfd" + bytes(4) + b"\x00\x01a\x01b"
    old_zset = b"\x03\x01z\x03\x01a\xfd\x01b\xfe\x01c\x031.5"  # scores NaN, +inf, "1.5"
    old_list = b"\x01\x01l\x02\x01a\xc0\x07"
    quicklist1 = b"\x0e\x01q\x02\x03zl1\x03zl2"
    zset2 = b"\x05\x02zz\x01\x01a" + bytes(8)
    zipmap = b"\x09\x01m\x02zm"
    hash_ttl_pre_ga = b"\x16\x01h\x02\x00\x01f\x01v\x81" + bytes(8) + b"\x01g\x01w"  # absolute TTLs
    listpack_ttl_pre_ga = b"\x17\x01p\x03abc"
    slot_info = b"\xf4\x00\x01\x00"
    data = (
        HEADER
        + pre_ga_function
        + b"\xfe\x02\xfb\x05\x01"
        + slot_info
        + expire_seconds
        + old_zset
        + old_list
        + quicklist1
        + zset2
        + zipmap
        + hash_ttl_pre_ga
        + listpack_ttl_pre_ga
        + b"\xff"
    )
    scan = walk(data)
    assert scan.complete, scan.error
    assert (scan.functions, scan.keys, scan.dbs, scan.max_db) == (2, 8, {2}, 2)
    for cut in range(len(data) + 1):
        assert summary(walk(data[:cut], data[cut:])) == summary(scan)
