"""A streaming walk over an RDB file's structure: which databases it uses, how many keys and functions.

A restore loads the snapshot into a scratch ``redis-server``, which refuses (exits on) an RDB that selects a
db at or beyond its ``--databases`` setting; the walk tells how many it needs.  It runs on every snapshot as
it arrives, so it is fed the bytes in chunks cut anywhere, keeps constant memory (a value is skipped by
counting bytes, however large) and does as little per key as it can: the layouts are walked, not decoded.

The layouts are those that Redis 7.0-7.4 and Valkey 8.0 write and load (RDB versions 10-12, and what they
still accept from older versions); see ``rdbLoadObject()`` and ``rdbLoadRio()`` in their ``src/rdb.c``.
"""

from __future__ import annotations

import os

from redis_backup.store.fsutil import open_read

__all__ = ["RdbScan", "scan_rdb_file"]


class _Bad(Exception):
    """Bytes that no RDB writer produces, at index ``at`` of the buffer: the walk stops there."""

    def __init__(self, message: str, at: int) -> None:
        super().__init__(message)
        self.at = at


# ------------------------------------------------------------------------------------------------ programs
#
# Every opcode and value type is a small program of "units"; a unit is an int.  Repetitions (a length n,
# then n times a sub-program) are the units >= _REP, indexes into _REPS.  The walker keeps a stack of
# frames (program, index of the next unit, repetitions left); the state between two chunks is that stack,
# a count of bytes still to skip (the tail of a value) and at most one unit's worth of carried-over bytes.

_T = 0  # top level: an opcode or a value type (never finishes)
_S = 1  # a string: length or special encoding, then its payload (skipped)
_L = 2  # a length (ignored)
_F1 = 3  # fixed-size fields: 1, 4, 8, 16, 24 bytes (skipped)
_F4 = 4
_F8 = 5
_F16 = 6
_F24 = 7
_D = 8  # an old-style double: 1 length byte (253-255: NaN, +inf, -inf) and that many bytes
_KEY = 9  # a key/value pair is complete
_AUXK = 10  # the key of an AUX field (kept when short)
_AUXV = 11  # its value
_DB = 12  # the SELECTDB index
_FUNC = 13  # a function library is complete
_WHEN = 14  # MODULE_AUX: the opcode before 'when', which must be UINT (2)
_DESC = 15  # FUNCTION_PRE_GA: a has-description flag, then the description if set
_MOD = 16  # a module value: opcode, item, ... up to the EOF opcode (0)
_N16 = 17  # a length n, then n 16-byte stream IDs (a consumer's PEL)
_REP = 32

_REPS: list[tuple[tuple[int, ...], int]] = []


def _rep(sub: tuple[int, ...], mult: int = 1) -> int:
    _REPS.append((sub, mult))
    return _REP + len(_REPS) - 1


_STR1 = (_S,)  # the repetition the walker loops over fastest: n strings
_R_STR = _rep(_STR1)  # list, set, quicklist nodes
_R_PAIR = _rep(_STR1, 2)  # hash fields and values, stream node IDs and listpacks
_R_ZSET = _rep((_S, _D))  # member, old-style double score
_ZSET2 = (_S, _F8)  # looped over like _STR1
_R_ZSET2 = _rep(_ZSET2)  # member, binary double score
_R_QL2 = _rep((_L, _S))  # quicklist 2 node: container (plain/packed), then the node
_R_HMETA = _rep((_L, _S, _S))  # hash field with TTL: TTL, field, value
_R_PEL = _rep((_F24, _L))  # group PEL entry: 16-byte ID, 8-byte delivery time, delivery count
_R_CONS1 = _rep((_S, _F8, _N16))  # consumer: name, seen time, its PEL (IDs only)
_R_CONS3 = _rep((_S, _F16, _N16))  # consumer: name, seen time, active time, its PEL
_R_CG1 = _rep((_S, _L, _L, _R_PEL, _R_CONS1))  # group: name, last ID (ms, seq), PEL, consumers
_R_CG2 = _rep((_S, _L, _L, _L, _R_PEL, _R_CONS1))  # ... and the entries-read counter
_R_CG3 = _rep((_S, _L, _L, _L, _R_PEL, _R_CONS3))

# Stream: its listpacks (master ID, listpack), length, last ID; from v2 on also the first ID, the largest
# deleted ID and the entries-added counter; then the consumer groups.
_STREAM1 = (_R_PAIR, _L, _L, _L, _R_CG1)
_STREAM2 = (_R_PAIR, _L, _L, _L, _L, _L, _L, _L, _L, _R_CG2)
_STREAM3 = (_R_PAIR, _L, _L, _L, _L, _L, _L, _L, _L, _R_CG3)

_VALUES: dict[int, tuple[int, ...]] = {
    0: (_S,),  # string
    1: (_R_STR,),  # list (linked list, before 3.2)
    2: (_R_STR,),  # set (hash table)
    3: (_R_ZSET,),  # zset with string scores (before 4.0)
    4: (_R_PAIR,),  # hash (hash table)
    5: (_R_ZSET2,),  # zset (skiplist)
    7: (_L, _MOD),  # module value: module id, then opcodes up to EOF
    9: (_S,),  # hash zipmap
    10: (_S,),  # list ziplist
    11: (_S,),  # set intset
    12: (_S,),  # zset ziplist
    13: (_S,),  # hash ziplist
    14: (_R_STR,),  # list quicklist of ziplists
    15: _STREAM1,
    16: (_S,),  # hash listpack
    17: (_S,),  # zset listpack
    18: (_R_QL2,),  # list quicklist of listpacks (or plain nodes)
    19: _STREAM2,
    20: (_S,),  # set listpack
    21: _STREAM3,
    22: (_R_HMETA,),  # hash with field TTLs, 7.4 release candidates (absolute TTLs)
    23: (_S,),  # hash listpack with TTLs, 7.4 release candidates
    24: (_F8, _R_HMETA),  # hash with field TTLs: minimum expire time, then relative TTLs
    25: (_F8, _S),  # hash listpack with TTLs: minimum expire time, listpack
}

_OPCODES: dict[int, tuple[int, ...]] = {
    0xF4: (_L, _L, _L),  # SLOT_INFO: slot, its keys, its expires (7.4+ in cluster mode)
    0xF5: (_S, _FUNC),  # FUNCTION2: the library code
    0xF6: (_S, _S, _DESC, _S, _FUNC),  # FUNCTION_PRE_GA (7.0 rc1/rc2): name, engine, [description], code
    0xF7: (_L, _WHEN, _L, _MOD),  # MODULE_AUX: module id, UINT opcode, when, then module opcodes up to EOF
    0xF8: (_L,),  # IDLE: LRU idle seconds
    0xF9: (_F1,),  # FREQ: LFU counter
    0xFA: (_AUXK, _AUXV),  # AUX: key, value
    0xFB: (_L, _L),  # RESIZEDB: keys, expires
    0xFC: (_F8,),  # EXPIRETIME_MS
    0xFD: (_F4,),  # EXPIRETIME (seconds)
    0xFE: (_DB,),  # SELECTDB
}

# What the top level does with each byte: a fast path for the common value layouts, or the program.
_K_BAD = 0
_K_SIMPLE = 1  # key, then one string (string, listpack, intset, ziplist...)
_K_STRS = 2  # key, then n strings
_K_PAIRS = 3  # key, then 2n strings
_K_QL2 = 4  # key, then n (container, node)
_K_ZSET2 = 5  # key, then n (member, 8-byte score)
_K_PROG = 6  # anything else: walk the program
_K_EXPMS = 7  # EXPIRETIME_MS: 8 bytes
_K_EOF = 8
_K_MODULE1 = 9  # module value of the 4.0 release candidates: no way to walk it
_K_IDLE = 10  # IDLE: a length
_K_FREQ = 11  # FREQ: 1 byte

_FAST_MAX = 512  # elements a fast path walks before it leaves a collection to the resumable loop

_kind = [_K_BAD] * 256
_progs: list[tuple[int, ...] | None] = [None] * 256
for _t, _body in _VALUES.items():
    _progs[_t] = (_S, *_body, _KEY)
    _kind[_t] = _K_PROG
for _t in (0, 9, 10, 11, 12, 13, 16, 17, 20, 23):
    _kind[_t] = _K_SIMPLE
for _t in (1, 2, 14):
    _kind[_t] = _K_STRS
_kind[4] = _K_PAIRS
_kind[5] = _K_ZSET2
_kind[18] = _K_QL2
_kind[6] = _K_MODULE1
for _t, _body in _OPCODES.items():
    _progs[_t] = _body
    _kind[_t] = _K_PROG
_kind[0xFC] = _K_EXPMS
_kind[0xF8] = _K_IDLE
_kind[0xF9] = _K_FREQ
_kind[0xFF] = _K_EOF
_KIND = tuple(_kind)
_PROGS = tuple(_progs)
del _kind, _progs, _t, _body

# Bytes taken by a length whose value does not matter, by its first byte; 0: not a length.  A first byte
# 11xxxxxx (a string's special encoding) is read by Redis as a 6-bit length where a length is expected.
_LSIZE = tuple(
    1 if b < 0x40 or b >= 0xC0 else 2 if b < 0x80 else 5 if b == 0x80 else 9 if b == 0x81 else 0 for b in range(256)
)

_TOP = (_T,)
_CAPTURE_MAX = 256  # AUX keys and values longer than this are skipped, not kept
_CARRY_MAX = 4096  # more than one unit's worth of carried-over bytes would be a bug: refuse it
_DBS_MAX = 1 << 16  # distinct SELECTDB indexes kept (Redis writes each non-empty db once)
_DB_LIMIT = (1 << 31) - 1  # the largest 'databases' setting is INT_MAX: an index at or above it is corrupt
_VER_KEYS = {b"redis-ver": "redis", b"valkey-ver": "valkey"}  # Valkey 8 writes valkey-ver instead of redis-ver


def _length(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """(length, position after it); IndexError when it does not fit in ``buf``."""
    b = buf[pos]
    if b < 0x40:
        return b, pos + 1
    if b < 0x80:
        return ((b & 0x3F) << 8) | buf[pos + 1], pos + 2
    if b == 0x80:
        if pos + 5 > end:
            raise IndexError
        return int.from_bytes(buf[pos + 1 : pos + 5], "big"), pos + 5
    if b == 0x81:
        if pos + 9 > end:
            raise IndexError
        return int.from_bytes(buf[pos + 1 : pos + 9], "big"), pos + 9
    if b >= 0xC0:
        return b & 0x3F, pos + 1
    raise _Bad(f"bad length encoding 0x{b:02x}", pos)


def _skip_string(buf: bytes, pos: int, end: int) -> int:
    """Position after the string at ``pos`` (beyond ``end`` when its payload goes on in later chunks)."""
    b = buf[pos]
    if b == 0xC3:  # LZF (compressed listpacks are common): compressed length, uncompressed length, data
        c = buf[pos + 1]
        if c < 0x40:
            clen = c
            p = pos + 2
        elif c < 0x80:
            clen = ((c & 0x3F) << 8) | buf[pos + 2]
            p = pos + 3
        else:
            clen, p = _length(buf, pos + 1, end)
        size = _LSIZE[buf[p]]
        if not size:
            raise _Bad(f"bad length encoding 0x{buf[p]:02x}", p)
        return p + size + clen
    if b < 0xC0:
        n, p = _length(buf, pos, end)
        return p + n
    if b == 0xC0:  # int8, int16, int32
        return pos + 2
    if b == 0xC1:
        return pos + 3
    if b == 0xC2:
        return pos + 5
    raise _Bad(f"unknown string encoding 0x{b:02x}", pos)


def _capture(buf: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
    """Like _skip_string, but also the string itself when it is short and not compressed."""
    b = buf[pos]
    if b < 0xC0:
        n, p = _length(buf, pos, end)
        if n > _CAPTURE_MAX:
            return None, p + n
        if p + n > end:
            raise IndexError
        return bytes(buf[p : p + n]), p + n
    if 0xC0 <= b <= 0xC2:
        size = 1 << (b - 0xC0)
        if pos + 1 + size > end:
            raise IndexError
        value = int.from_bytes(buf[pos + 1 : pos + 1 + size], "little", signed=True)
        return str(value).encode(), pos + 1 + size
    return None, _skip_string(buf, pos, end)


class RdbScan:
    """Feed it an RDB as it arrives; afterwards it knows the databases, keys and functions it held.

    It walks the structure without building anything, so that a restore can size ``--databases`` before
    it starts a server, and so that a snapshot which does not walk to its EOF opcode is noticed.
    """

    max_db: int | None
    dbs: set[int]
    keys: int
    functions: int
    redis_ver: str | None  # the server's version: valkey-ver where the file has it, else redis-ver
    server_name: str | None  # "valkey" (the file has valkey-ver) or "redis" (only redis-ver)
    version: int | None
    error: str | None

    def __init__(self) -> None:
        self.max_db = None
        self.dbs = set()
        self.keys = 0
        self.functions = 0
        self.redis_ver = None
        self.server_name = None
        self.version = None
        self.error = None
        self._done = False  # the EOF opcode was walked
        self._finished = False
        self._fed = 0  # bytes fed so far (offsets in error messages)
        self._skip = 0  # bytes of a payload still to come
        self._carry = b""  # the start of a unit that did not fit in the last chunk
        self._stack: list[tuple[tuple[int, ...], int, int]] = [(_TOP, 0, -1)]
        self._auxkey: bytes | None = None
        self._valkey_ver_seen = False

    @property
    def complete(self) -> bool:
        """Only a walk that reached the EOF opcode vouches for the file: anything less was cut short."""
        return self._done and self.error is None

    def feed(self, data: bytes | memoryview) -> None:
        """Never raises on bad input: on anything it cannot walk it stops and sets .error."""
        if self._done or self._finished or self.error is not None:
            return
        try:
            self._feed(data)
        except Exception as exc:  # a bug must not break the snapshot it runs beside
            self.error = f"internal error walking the RDB at about offset {self._fed}: {exc!r}"

    def finish(self) -> None:
        """Call after the last byte: sets .error if the walk did not end at the EOF opcode (0xFF)."""
        if self._finished:
            return
        self._finished = True
        if self._done or self.error is not None:
            return
        if self.version is None:
            self.error = f"truncated: {self._fed} bytes, not even the 9-byte RDB header"
            return
        if self._skip:
            where = f"inside a value, {self._skip} more bytes expected"
        elif self._carry:
            where = "inside a length or string header"
        elif len(self._stack) > 1:
            where = "inside a key or opcode"
        else:
            where = "before the EOF opcode"
        self.error = f"truncated at offset {self._fed} ({where}) after {self.keys} keys"

    # -------------------------------------------------------------------------------------------- feeding

    def _feed(self, data: bytes | memoryview) -> None:
        n = len(data)
        if not n:
            return
        self._fed += n
        start = 0
        skip = self._skip
        if skip:
            if n < skip:
                self._skip = skip - n
                return
            start = skip  # if that is all of it, the walk still takes what needs no byte (a key's end)
            self._skip = 0
        pos = 0
        if self._carry:
            buf = self._carry + data[start:]
            self._carry = b""
        elif type(data) is bytes:
            buf = data
            pos = start
        else:
            # A view of the receive buffer is copied: ~0.06 s per GiB, next to a walk that costs seconds
            # per GiB in Python, for the bytes indexing and slicing the walk is written for.
            buf = bytes(data[start:])
        if self.version is None:
            head = buf[pos : pos + 9]
            if not (b"REDIS".startswith(head[:5]) and (len(head) <= 5 or head[5:].isdigit())):
                self.error = f"not an RDB file: it starts with {bytes(head)!r}"
                return
            if len(head) < 9:
                self._carry = bytes(head)
                return
            self.version = int(head[5:])
            pos += 9
        self._walk(buf, pos)

    def _walk(self, buf: bytes, pos: int) -> None:
        """Walk ``buf`` from ``pos`` as far as it goes; leave the state for the next chunk."""
        end = len(buf)
        stack = self._stack
        prog, idx, reps = stack.pop()
        plen = len(prog)
        keys = self.keys
        kind = _KIND
        try:
            while True:
                if idx == plen:
                    reps -= 1
                    if reps:
                        idx = 0
                    else:
                        prog, idx, reps = stack.pop()
                        plen = len(prog)
                    continue
                u = prog[idx]

                if u == _T:
                    # Keys one after the other; a fast path reads a whole key speculatively and only
                    # moves on when it fit in this chunk, else the program walks it resumably.
                    while True:
                        t = buf[pos]
                        k = kind[t]
                        if k == _K_SIMPLE:
                            try:
                                p = pos + 1
                                b = buf[p]
                                if b < 0x40:
                                    p += b + 1
                                elif b < 0x80:
                                    p += (((b & 0x3F) << 8) | buf[p + 1]) + 2
                                else:
                                    p = _skip_string(buf, p, end)
                                b = buf[p]
                                if b < 0x40:
                                    p += b + 1
                                elif b < 0x80:
                                    p += (((b & 0x3F) << 8) | buf[p + 1]) + 2
                                else:
                                    p = _skip_string(buf, p, end)
                                if p <= end:
                                    pos = p
                                    keys += 1
                                    continue
                            except IndexError:
                                pass
                        elif k == _K_EXPMS:
                            pos += 9
                            continue
                        elif k == _K_FREQ:
                            pos += 2
                            continue
                        elif k == _K_IDLE:
                            size = _LSIZE[buf[pos + 1]]
                            if size:
                                pos += 1 + size
                                continue
                        elif _K_STRS <= k <= _K_ZSET2:  # n strings, pairs, quicklist nodes, zset members
                            try:
                                p = pos + 1
                                b = buf[p]
                                if b < 0x40:
                                    p += b + 1
                                elif b < 0x80:
                                    p += (((b & 0x3F) << 8) | buf[p + 1]) + 2
                                else:
                                    p = _skip_string(buf, p, end)
                                b = buf[p]
                                if b < 0x40:
                                    n = b
                                    p += 1
                                elif b < 0x80:
                                    n = ((b & 0x3F) << 8) | buf[p + 1]
                                    p += 2
                                else:
                                    n, p = _length(buf, p, end)
                                if k == _K_PAIRS:
                                    n *= 2
                                if n <= _FAST_MAX:
                                    while n:
                                        if k == _K_QL2:
                                            size = _LSIZE[buf[p]]
                                            if not size:
                                                break  # let the program report it
                                            p += size
                                        b = buf[p]
                                        if b < 0x40:
                                            p += b + 1
                                        elif b < 0x80:
                                            p += (((b & 0x3F) << 8) | buf[p + 1]) + 2
                                        else:
                                            p = _skip_string(buf, p, end)
                                        if k == _K_ZSET2:
                                            p += 8
                                        n -= 1
                                    if not n and p <= end:
                                        pos = p
                                        keys += 1
                                        continue
                            except IndexError:
                                pass
                        break
                    # Not walked by a fast path: the EOF, an error, or the resumable program.
                    if k == _K_EOF:
                        self._done = True
                        return
                    tprog = _PROGS[t]
                    if tprog is None:
                        if k == _K_MODULE1:
                            raise _Bad("module value in the 4.0 release-candidate format (type 6)", pos)
                        raise _Bad(f"unknown opcode or value type {t} (0x{t:02x})", pos)
                    stack.append((prog, idx, reps))
                    prog = tprog
                    plen = len(tprog)
                    idx = 0
                    reps = 1
                    pos += 1

                elif u == _S:
                    if prog is _STR1:  # n strings in a row: the whole frame in one loop
                        while True:
                            b = buf[pos]
                            if b < 0x40:
                                pos += b + 1
                            elif b < 0x80:
                                pos += (((b & 0x3F) << 8) | buf[pos + 1]) + 2
                            else:
                                pos = _skip_string(buf, pos, end)
                            reps -= 1
                            if not reps:
                                break
                        prog, idx, reps = stack.pop()
                        plen = len(prog)
                    elif prog is _ZSET2 and idx == 0:  # n (member, score) in a row
                        while True:
                            b = buf[pos]
                            if b < 0x40:
                                pos += b + 9
                            elif b < 0x80:
                                pos += (((b & 0x3F) << 8) | buf[pos + 1]) + 10
                            else:
                                pos = _skip_string(buf, pos, end) + 8
                            reps -= 1
                            if not reps:
                                break
                        prog, idx, reps = stack.pop()
                        plen = len(prog)
                    else:
                        b = buf[pos]
                        if b < 0x40:
                            pos += b + 1
                        elif b < 0x80:
                            pos += (((b & 0x3F) << 8) | buf[pos + 1]) + 2
                        else:
                            pos = _skip_string(buf, pos, end)
                        idx += 1

                elif u == _L:
                    size = _LSIZE[buf[pos]]
                    if not size:
                        raise _Bad(f"bad length encoding 0x{buf[pos]:02x}", pos)
                    pos += size
                    idx += 1

                elif u >= _REP:
                    b = buf[pos]
                    if b < 0x40:
                        n = b
                        p = pos + 1
                    else:
                        n, p = _length(buf, pos, end)
                    pos = p
                    idx += 1
                    if n:
                        sub, mult = _REPS[u - _REP]
                        stack.append((prog, idx, reps))
                        prog = sub
                        plen = len(sub)
                        idx = 0
                        reps = n * mult

                elif u == _F8:
                    pos += 8
                    idx += 1
                elif u == _KEY:
                    if pos > end:  # the value's last bytes are still to come
                        raise IndexError
                    keys += 1
                    idx += 1
                elif u == _D:
                    b = buf[pos]
                    pos += 1 if b >= 253 else b + 1
                    idx += 1
                elif u == _F16:
                    pos += 16
                    idx += 1
                elif u == _F24:
                    pos += 24
                    idx += 1
                elif u == _F4:
                    pos += 4
                    idx += 1
                elif u == _F1:
                    pos += 1
                    idx += 1
                elif u == _N16:
                    n, p = _length(buf, pos, end)
                    pos = p + 16 * n
                    idx += 1
                elif u == _MOD:
                    # Module values and module AUX data are a sequence of (opcode, item) up to EOF (0):
                    # 1 signed and 2 unsigned integers (lengths), 3 float, 4 double, 5 string.
                    op, p = _length(buf, pos, end)
                    if op == 0:
                        idx += 1
                    elif op == 1 or op == 2:
                        size = _LSIZE[buf[p]]
                        if not size:
                            raise _Bad(f"bad length encoding 0x{buf[p]:02x}", p)
                        p += size
                    elif op == 3:
                        p += 4
                    elif op == 4:
                        p += 8
                    elif op == 5:
                        p = _skip_string(buf, p, end)
                    else:
                        raise _Bad(f"unknown module value opcode {op}", pos)
                    pos = p
                elif u == _AUXK:
                    value, pos = _capture(buf, pos, end)
                    self._auxkey = value
                    idx += 1
                elif u == _AUXV:
                    value, pos = _capture(buf, pos, end)
                    if value is not None and self._auxkey in _VER_KEYS and not self._valkey_ver_seen:
                        # a Valkey that also writes redis-ver gives there the Redis version it is
                        # compatible with: its own is valkey-ver's
                        self._valkey_ver_seen = self._auxkey == b"valkey-ver"
                        self.server_name = _VER_KEYS[self._auxkey]
                        self.redis_ver = value.decode("utf-8", "replace")
                    self._auxkey = None
                    idx += 1
                elif u == _DB:
                    n, p = _length(buf, pos, end)
                    if n >= _DB_LIMIT:
                        raise _Bad(f"SELECTDB {n}: no server has that many databases", pos)
                    if n not in self.dbs:
                        if len(self.dbs) >= _DBS_MAX:
                            raise _Bad(f"more than {_DBS_MAX} different SELECTDB indexes", pos)
                        self.dbs.add(n)
                        if self.max_db is None or n > self.max_db:
                            self.max_db = n
                    pos = p
                    idx += 1
                elif u == _FUNC:
                    if pos > end:
                        raise IndexError
                    self.functions += 1
                    idx += 1
                elif u == _WHEN:
                    n, p = _length(buf, pos, end)
                    if n != 2:
                        raise _Bad(f"module AUX data without the UINT opcode before 'when' (got {n})", pos)
                    pos = p
                    idx += 1
                elif u == _DESC:
                    n, p = _length(buf, pos, end)
                    pos = p
                    idx += 1
                    if n:
                        stack.append((prog, idx, reps))
                        prog = _STR1
                        plen = 1
                        idx = 0
                        reps = 1
                else:  # pragma: no cover - every unit is handled above
                    raise _Bad(f"internal: unit {u}", pos)
        except IndexError:
            # The chunk ended: either inside a payload (skip the rest of it in the next chunks) or in
            # the middle of a unit's header (carry those few bytes over).
            stack.append((prog, idx, reps))
            if pos > end:
                self._skip = pos - end
            elif pos < end:
                if end - pos > _CARRY_MAX:
                    raise RuntimeError(f"{end - pos} bytes left over") from None
                self._carry = bytes(buf[pos:end])
        except _Bad as exc:
            stack.append((prog, idx, reps))
            self.error = f"{exc} at offset {self._fed - end + exc.at}"
        finally:
            self.keys = keys


def scan_rdb_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> RdbScan:
    """Walk an RDB file on disk; read errors propagate, bad contents end up in ``.error``."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 byte, not {chunk}")
    scan = RdbScan()
    with open_read(path) as f:
        while True:
            data = f.read(chunk)
            if not data:
                break
            scan.feed(data)
            if scan.error is not None or scan.complete:
                break
    scan.finish()
    return scan
