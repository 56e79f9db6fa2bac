"""RESP encoding and the replication stream scanner (sans-I/O).

The scanner is the hot path: it walks RESP headers to find command boundaries and only looks at the
few commands that change the backup's state (SELECT, MULTI, EXEC, REPLCONF GETACK) or reach a database
without selecting it (MOVE, COPY ... DB, SWAPDB: they count in max_db). Command bytes are never copied
or turned into Python objects; a bulk of any size costs one length check. It reads bytes or a memoryview
(a slice of the driver's receive buffer) alike; only the short header lines and the few arguments it
looks at become bytes.
"""

from __future__ import annotations

from redis_backup.errors import ProtocolError

try:  # the optional C fast path (setup.py); the Python code below is the reference
    from redis_backup.wire._scan import find as _fast_find
    from redis_backup.wire._scan import scan as _fast_scan
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _fast_find = None
    _fast_scan = None

# What the wire hands around: bytes, or a memoryview into the driver's reused receive buffer (valid only
# until the next receive: see client.py).
Bytes = bytes | memoryview

MAX_LINE = 64  # "*<argc>\r\n" and "$<len>\r\n" lines are short; more is garbage
MAX_ANNOTATION = 1024
MAX_ARGS = 1 << 20
MAX_BULK = 512 << 20  # Redis strings are at most 512 MiB (proto-max-bulk-len); more is garbage
_CAPTURE = 20  # command names we look at are at most 8 bytes, a db index at most 20 digits


def accelerated() -> bool:
    """Whether the C fast path was built (it is optional: no compiler, no fast path)."""
    return _fast_scan is not None


def find(data: Bytes, needle: bytes, start: int = 0, end: int | None = None) -> int:
    """bytes.find for a memoryview too (it has none), without copying it when the C module is built."""
    if type(data) is bytes:
        return data.find(needle, start, end)
    stop = len(data) if end is None else end
    if _fast_find is not None:
        return int(_fast_find(data, needle, start, stop))
    at = bytes(data[start:stop]).find(needle)  # pragma: no cover - no compiler: copy the window
    return at + start if at >= 0 else -1  # pragma: no cover


def encode_command(*args: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _describe(data: bytes | bytearray | memoryview) -> str:
    """A short, safe rendering of received bytes for error messages."""
    raw = bytes(data[:40])
    return repr(raw) + ("..." if len(data) > 40 else "")


class StreamScanner:
    """Finds command boundaries in the replication stream, resumable at any byte.

    After each feed() the per-chunk attributes describe that chunk: positions are indexes into it,
    -1 when the chunk holds no such point. A *safe* boundary is one outside MULTI/EXEC, where a file
    may be cut or a timestamp inserted.
    """

    def __init__(
        self, db: int = 0, in_multi: bool = False, *, annotations: bool = False, accelerate: bool = True
    ) -> None:
        self._fast = _fast_scan if accelerate else None
        self.db = db
        # The highest db selected, or named by MOVE, COPY ... DB or SWAPDB, so far: a scratch server
        # needs that many databases.
        self.max_db = db
        self.in_multi = in_multi
        self.annotations = annotations  # accept "#..." lines at boundaries (files, not the wire)
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.ts_out_of_order = False
        # Per-chunk results.
        self.first_safe = -1
        self.last_safe = -1
        self.last_safe_db = db
        self.last_boundary = -1
        self.getack = False
        self.writes = False
        self.commands = 0
        self.annotation_bytes = 0  # bytes of "#" lines in this chunk (they are not stream bytes)
        # Resumable state inside a command.
        self._args_left = 0  # 0: at a boundary
        self._argi = 0
        self._name = b""
        self._looks = _LOOKS_AT_NONE  # (first, last) argument index captured for this command's name
        self._copy_db_at = -1  # COPY: the index of the argument after a DB keyword
        self._getack_pending = False
        self._skip = 0  # bulk bytes still to skip
        self._crlf = 0  # bytes of the bulk's trailing CRLF still to check
        self._line = b""  # partial header or annotation line
        self._cap: bytearray | None = None  # bytes of a small argument split across chunks

    @property
    def at_boundary(self) -> bool:
        return self._args_left == 0 and not self._line

    def feed(self, data: Bytes) -> None:
        if self._fast is None and type(data) is not bytes:
            data = bytes(data)  # the reference path: one copy, then every bytes method works
        self.first_safe = self.last_safe = self.last_boundary = -1
        self.getack = self.writes = False
        self.commands = self.annotation_bytes = 0
        if self._args_left == 0 and not self._line and not self.in_multi:
            self.first_safe = self.last_safe = 0
            self.last_safe_db = self.db
        pos = 0
        n = len(data)
        fast = self._fast
        while pos < n:
            if self._skip or self._crlf:
                pos = self._continue_bulk(data, pos, n)
                continue
            if fast is not None and self._args_left == 0 and not self._line:
                # Whole, plainly formed commands go through C; it stops where Python must look.
                r = fast(data, pos, self.db, self.in_multi)
                if r[0] != pos:
                    pos = self._merge_fast(r)
                    continue
            nl = find(data, b"\n", pos, min(n, pos + MAX_ANNOTATION + 1))
            if nl < 0:
                self._stash(data[pos:])
                break
            line = bytes(data[pos : nl + 1])
            if self._line:
                line = self._line + line
                self._line = b""
                if len(line) > MAX_ANNOTATION + 1:  # the longest line a single chunk may hold
                    raise ProtocolError(f"line too long or no CRLF: {_describe(line)}")
            pos = nl + 1
            if len(line) < 3 or line[-2] != 13:
                raise ProtocolError(f"malformed line: {_describe(line)}")
            if self._args_left == 0:
                self._header(line, pos)
                continue
            if line[0] != 36 or len(line) > MAX_LINE:  # '$'
                raise ProtocolError(f"expected a bulk string, got {_describe(line)}")
            try:
                blen = int(line[1:-2])
            except ValueError:
                raise ProtocolError(f"bad bulk length: {_describe(line)}") from None
            if blen < 0 or blen > MAX_BULK:
                raise ProtocolError(f"bad bulk length: {_describe(line)}")
            end = pos + blen
            argi = self._argi
            wanted = (argi == 0 and blen <= 8) or (
                blen <= _CAPTURE and self._looks[0] <= argi <= self._looks[1]
            )
            if end + 2 <= n:  # the whole bulk is in this chunk
                if data[end] != 13 or data[end + 1] != 10:
                    raise ProtocolError(f"bulk not followed by CRLF: {_describe(data[end:])}")
                pos = end + 2
                self._arg_done(bytes(data[end - blen : end]) if wanted else None, pos)
            else:
                self._cap = bytearray() if wanted else None
                self._skip = blen
                self._crlf = 2
        self._check_line_limit()

    def _merge_fast(self, r: tuple[int, int, int, int, int, int, int, int, int, int, int]) -> int:
        pos, first_safe, last_safe, last_safe_db, last_boundary, db, in_multi, getack, writes, commands, max_db = r
        if max_db > self.max_db:
            self.max_db = max_db
        if first_safe >= 0 and self.first_safe < 0:
            self.first_safe = first_safe
        if last_safe >= 0:
            self.last_safe = last_safe
            self.last_safe_db = last_safe_db
        self.last_boundary = last_boundary
        self.db = db
        self.in_multi = bool(in_multi)
        self.getack = self.getack or bool(getack)
        self.writes = self.writes or bool(writes)
        self.commands += commands
        return pos

    def _header(self, line: bytes, pos: int) -> None:
        kind = line[0]
        if kind == 35 and self.annotations:  # '#'
            self.annotation_bytes += len(line)
            self._on_annotation(line)
            self._boundary(pos)
            return
        if kind != 42 or len(line) > MAX_LINE:  # '*'
            raise ProtocolError(f"expected a command array, got {_describe(line)}")
        try:
            argc = int(line[1:-2])
        except ValueError:
            raise ProtocolError(f"bad array length: {_describe(line)}") from None
        if argc < 1 or argc > MAX_ARGS:
            raise ProtocolError(f"bad array length: {_describe(line)}")
        self._args_left = argc
        self._argi = 0
        self._name = b""
        self._looks = _LOOKS_AT_NONE
        self._copy_db_at = -1
        self._getack_pending = False

    def _continue_bulk(self, data: Bytes, pos: int, n: int) -> int:
        if self._skip:
            take = min(self._skip, n - pos)
            if self._cap is not None:
                self._cap += data[pos : pos + take]
            self._skip -= take
            pos += take
            if self._skip:
                return pos
        while self._crlf and pos < n:
            if data[pos] != (13 if self._crlf == 2 else 10):
                raise ProtocolError(f"bulk not followed by CRLF: {_describe(data[pos:])}")
            self._crlf -= 1
            pos += 1
        if not self._crlf:
            cap, self._cap = self._cap, None
            self._arg_done(bytes(cap) if cap is not None else None, pos)
        return pos

    def _arg_done(self, value: bytes | None, pos: int) -> None:
        if value is not None:
            if self._argi == 0:
                self._name = value.upper()
                self._looks = _LOOKS_AT.get(self._name, _LOOKS_AT_NONE)
            else:
                self._on_arg(value)
        self._argi += 1
        self._args_left -= 1
        if self._args_left:
            return
        self.commands += 1
        name = self._name
        if name == b"MULTI":
            self.in_multi = True
        elif name == b"EXEC":
            self.in_multi = False
        elif name not in _NOT_WRITES:
            self.writes = True
        if self._getack_pending:
            self.getack = True
            self._getack_pending = False
        self._boundary(pos)

    def _boundary(self, pos: int) -> None:
        self.last_boundary = pos
        if not self.in_multi:
            self.last_safe = pos
            self.last_safe_db = self.db
            if self.first_safe < 0:
                self.first_safe = pos

    def _stash(self, rest: Bytes) -> None:
        self._line += rest
        self._check_line_limit()

    def _check_line_limit(self) -> None:
        if not self._line:
            return
        limit = MAX_ANNOTATION if self._line[:1] == b"#" and self._args_left == 0 else MAX_LINE
        if len(self._line) > limit:
            raise ProtocolError(f"line too long or no CRLF: {_describe(self._line)}")

    def _on_arg(self, value: bytes) -> None:
        name = self._name
        if name == b"SELECT":
            try:
                self.db = int(value)
            except ValueError:
                raise ProtocolError(f"bad SELECT argument: {_describe(value)}") from None
            if self.db > self.max_db:
                self.max_db = self.db
        elif name == b"REPLCONF":
            if value.upper() == b"GETACK":
                self._getack_pending = True
        elif name != b"COPY" or self._argi == self._copy_db_at:
            # MOVE key db, SWAPDB db1 db2 (_LOOKS_AT says which arguments); COPY src dst [DB db] [REPLACE]
            # (the options in any order from argument 3): the argument after a DB keyword.
            self._named_db(value)
        elif value.upper() == b"DB":
            self._copy_db_at = self._argi + 1

    def _named_db(self, value: bytes) -> None:
        """A db that a command reaches without selecting it: it counts in max_db, db is unchanged."""
        try:
            n = int(value)
        except ValueError:  # the primary would have refused the command: nothing was propagated
            return
        if n > self.max_db:
            self.max_db = n

    def _on_annotation(self, line: bytes) -> None:
        if not line.startswith(b"#TS:"):
            return
        try:
            ts = int(line[4:-2])
        except ValueError:
            raise ProtocolError(f"bad timestamp annotation: {_describe(line)}") from None
        if self.last_ts is not None and ts < self.last_ts:
            self.ts_out_of_order = True
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts


# The arguments looked at, by command name: (first, last) index; they are captured when at most
# _CAPTURE bytes long (a longer one is not a db index: it is skipped, as the C fast path does).
_LOOKS_AT_NONE = (MAX_ARGS + 1, 0)  # an empty range; its first comparison already fails
_LOOKS_AT = {
    b"SELECT": (1, 1),
    b"REPLCONF": (1, 1),
    b"MOVE": (2, 2),
    b"SWAPDB": (1, 2),
    b"COPY": (3, MAX_ARGS),
}
_NOT_WRITES = (b"PING", b"SELECT", b"REPLCONF")
