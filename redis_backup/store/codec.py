"""How an object is encoded on its way to a store: zstd-compressed, optionally encrypted, in bounded memory.

The encoding is told by the object's name: the logical name (what the chain calls the file) plus a
suffix, `""`, `.zst`, `.enc` or `.zst.enc`, so that a listing shows what each object needs to be read
and nothing has to be looked up elsewhere. A `.zst` object is a standard zstd stream (one frame, with
its content checksum): `zstd -d` reads it. A `.enc` object is the plain bytes (the zstd stream when
compressed) sealed with AES-256-GCM in the STREAM construction, chunk by chunk, so that it is written
and read with a chunk in memory, never the object; docs/FORMAT-encoding.md states the bytes.

Reading back never gives wrong bytes silently: a wrong or missing key is refused before the first plain
byte, and damage, truncation, reordering or an object renamed or swapped for another is refused when it
is reached; the bytes returned before that are a prefix of the true content (callers keep their output
only after a clean end of the stream).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from redis_backup.errors import ConfigError
from redis_backup.store.base import StoreError, check_name

Compression = Literal["zstd", "none"]

KEY_SIZE = 32
KEY_ID_CONTEXT = b"redis-backup key id\0"
OBJECT_KEY_INFO = b"redis-backup object key\0"
MAGIC = b"RBENC\x01"
SALT_SIZE = 16
PREFIX_SIZE = 7
HEADER_SIZE = len(MAGIC) + 8 + SALT_SIZE + PREFIX_SIZE + 4  # 41
TAG_SIZE = 16
CHUNK_SIZE = 1 << 20  # plain bytes per encrypted chunk (and per piece yielded by encode)
MAX_CHUNK_SIZE = 4 << 20  # the largest chunk a reader accepts: what it may hold in memory at once
MAX_CHUNKS = 1 << 32  # the nonce's counter is 4 bytes

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_MAX_BLOCK = 128 << 10  # RFC 8878 Block_Maximum_Size: what one block may decompress to
READ_SIZE = 256 << 10
SUFFIXES: dict[str, tuple[Compression, bool]] = {
    ".zst.enc": ("zstd", True), ".enc": ("none", True), ".zst": ("zstd", False),
}  # fmt: skip

KEY_HINT = "make one with: head -c 32 /dev/urandom | base64 > key"


class KeyFileError(ConfigError):
    """The key file cannot be used; the message says why and how to make one."""

    settings = ("encryption_key_file",)


class WrongKey(StoreError):
    """The object was encrypted with another key than the configured one, or no key is configured."""


class Tampered(StoreError):
    """The object is not what was written under this name: damaged, truncated, extended, reordered,
    renamed or swapped. Never retryable: reading it again gives the same bytes."""


DamagedObject = Tampered


def key_id(secret: bytes) -> str:
    """The id recorded with an encrypted object: a hash of the secret, which reveals nothing of it but
    tells which key an object needs."""
    return hashlib.sha256(KEY_ID_CONTEXT + secret).digest()[:8].hex()


@dataclass(frozen=True, repr=False)
class Key:
    id: str
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_SIZE:
            raise ValueError(f"an encryption key is {KEY_SIZE} bytes, not {len(self.secret)}")
        if self.id != key_id(self.secret):
            raise ValueError("Key.id is not the id of Key.secret (make keys with Key.from_secret)")

    @classmethod
    def from_secret(cls, secret: bytes) -> Key:
        return cls(key_id(secret), bytes(secret))

    def __repr__(self) -> str:
        return f"Key(id={self.id!r})"  # never the secret: keys end up in logs and tracebacks


def load_key(path: str | Path) -> Key:
    """The key in a file of 32 raw bytes or their base64 (standard or urlsafe, whitespace around)."""
    where = f"ENCRYPTION_KEY_FILE {path}"
    try:
        with open(path, "rb") as f:
            data = f.read(4097)  # a key file is small; /dev/urandom by mistake must not read forever
    except FileNotFoundError:
        raise KeyFileError(f"{where}: no such file; {KEY_HINT}") from None
    except OSError as e:
        raise KeyFileError(f"{where}: cannot read it: {e.strerror or e}") from None
    if len(data) > 4096:
        raise KeyFileError(f"{where} holds more than 4096 bytes; it needs 32 raw bytes or their base64; {KEY_HINT}")
    decoded = _base64(data)
    if decoded is not None:
        secret = decoded
        if len(secret) != KEY_SIZE:  # a 32-byte text of base64 (24 bytes) is refused here, not taken raw
            raise KeyFileError(f"{where} holds the base64 of {len(secret)} bytes; it needs 32 raw bytes or their "
                               f"base64; {KEY_HINT}")  # fmt: skip
    elif len(data) == KEY_SIZE:
        secret = data
    else:
        raise KeyFileError(f"{where} holds {len(data)} bytes; it needs 32 raw bytes or their base64; {KEY_HINT}")
    return Key.from_secret(secret)


def _base64(data: bytes) -> bytes | None:
    """data as base64 text (either alphabet, padding optional), or None if it is not that. Random raw
    bytes are all base64 characters with a chance of 2**-64, so raw keys are not mistaken for it."""
    text = data.strip()
    if not text:
        return None
    alt = b"-_" if (b"-" in text or b"_" in text) else None
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        return None


def split_suffix(physical_name: str) -> tuple[str, Compression, bool]:
    """(logical name, compression, encrypted) of an object name as a store lists it."""
    for suffix, (compression, encrypted) in SUFFIXES.items():
        if physical_name.endswith(suffix) and len(physical_name) > len(suffix):
            return physical_name[: -len(suffix)], compression, encrypted
    return physical_name, "none", False


@dataclass(frozen=True)
class Codec:
    compression: Compression = "zstd"
    level: int = 3
    key: Key | None = None
    chunk_size: int = field(default=CHUNK_SIZE, kw_only=True)  # tests use small ones

    def __post_init__(self) -> None:
        if self.compression not in ("zstd", "none"):
            raise ValueError(f"compression is 'zstd' or 'none', not {self.compression!r}")
        if not 1 <= self.level <= 22:
            raise ValueError(f"zstd level is 1 to 22, not {self.level}")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size is 1 to {MAX_CHUNK_SIZE}, not {self.chunk_size}")

    @property
    def suffix(self) -> str:
        return (".zst" if self.compression == "zstd" else "") + (".enc" if self.key else "")

    def encode(self, chunks: Iterable[bytes | memoryview], name: str) -> Iterator[bytes]:
        """The object stored as `name + self.suffix`, as pieces of at most chunk_size + 16 bytes (an
        encrypted chunk; its 4-byte length and the 41-byte header come as pieces of their own).
        `name` is sealed into every encrypted chunk, so that the object is refused under any other
        name. A logical name that ends in a suffix is refused: it would be read back wrongly."""
        check_name(name)
        if split_suffix(name)[0] != name:
            raise ValueError(f"logical object name {name!r} ends in an encoding suffix")
        plain = _pieces(chunks, self.chunk_size)
        if self.compression == "zstd":
            plain = _compress(plain, self.level, self.chunk_size)
        if self.key is None:
            return (bytes(p) for p in plain if len(p))
        return _encrypt(plain, self.key, name, self.chunk_size)


def _pieces(chunks: Iterable[bytes | memoryview], size: int) -> Iterator[memoryview]:
    """The input cut into views of at most size bytes: a caller's 1 GiB buffer is never copied whole."""
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        for i in range(0, len(view), size):
            yield view[i : i + size]


def _compress(plain: Iterator[memoryview], level: int, size: int) -> Iterator[memoryview]:
    chunker = zstandard.ZstdCompressor(level=level, write_checksum=True).chunker(chunk_size=size)
    for piece in plain:
        for out in chunker.compress(piece):
            yield memoryview(out)
    for out in chunker.finish():  # type: ignore[no-untyped-call]
        yield memoryview(out)


def _object_key(secret: bytes, salt: bytes) -> AESGCM:
    """A key of this object alone, so that random 7-byte nonce prefixes never repeat under one AES key
    however many objects the secret seals (what Tink's AES-GCM-HKDF streaming does)."""
    hkdf = HKDF(algorithm=SHA256(), length=KEY_SIZE, salt=salt, info=OBJECT_KEY_INFO)
    return AESGCM(hkdf.derive(secret))


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _rechunk(plain: Iterator[memoryview], size: int) -> Iterator[bytes]:
    """The plaintext in pieces of exactly size bytes, then the rest (0 to size bytes, maybe empty).
    A piece that is already a chunk (zstd's chunker makes them) is passed on without a copy."""
    buf = bytearray()
    for piece in plain:
        if not buf and len(piece) == size:
            whole = piece.obj
            yield whole if isinstance(whole, bytes) and len(whole) == size else bytes(piece)
            continue
        buf += piece
        while len(buf) >= size:
            with memoryview(buf) as view:
                chunk = bytes(view[:size])
            del buf[:size]
            yield chunk
            del chunk  # not alive beside the next one (here and below: memory is a chunk or two)
    yield bytes(buf)


def _encrypt(plain: Iterator[memoryview], key: Key, name: str, size: int) -> Iterator[bytes]:
    salt, prefix = os.urandom(SALT_SIZE), os.urandom(PREFIX_SIZE)
    header = MAGIC + bytes.fromhex(key.id) + salt + prefix + size.to_bytes(4, "big")
    aead, ad = _object_key(key.secret, salt), header + name.encode()
    yield header
    pending, counter = b"", 0  # a chunk is sealed once it is known whether another follows
    for chunk in _rechunk(plain, size):
        if not chunk:
            continue  # the empty rest after whole chunks: the last whole one is the final chunk
        if pending:
            if counter + 1 >= MAX_CHUNKS:
                raise ValueError(f"object {name} is too large: more than {MAX_CHUNKS} chunks")
            sealed = aead.encrypt(_nonce(prefix, counter, False), pending, ad)
            yield len(sealed).to_bytes(4, "big")
            yield sealed
            del sealed
            counter += 1
        pending = chunk
    sealed = aead.encrypt(_nonce(prefix, counter, True), pending, ad)  # empty only if the object is
    yield len(sealed).to_bytes(4, "big")
    yield sealed


class _Source:
    """Bytes pulled from an iterator of pieces, read by exact counts (short only at the end)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces, self._cur, self._pos = pieces, b"", 0

    def read(self, n: int) -> bytes:
        out: list[bytes] = []
        while n > 0:
            if self._pos >= len(self._cur):
                nxt = next(self._pieces, None)
                if nxt is None:
                    break
                self._cur, self._pos = nxt, 0
                continue
            take = self._cur[self._pos : self._pos + n]  # the whole piece is not copied (CPython)
            self._pos += len(take)
            n -= len(take)
            out.append(take)
        return out[0] if len(out) == 1 else b"".join(out)

    def at_end(self) -> bool:
        while self._pos >= len(self._cur):
            nxt = next(self._pieces, None)
            if nxt is None:
                return True
            self._cur, self._pos = nxt, 0
        return False


def _stream_pieces(stream: BinaryIO) -> Iterator[bytes]:
    while piece := stream.read(READ_SIZE):
        yield piece


class _Exact:
    """A stream read by exact counts (short only at its end), with one allocation for each."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def read(self, n: int) -> bytes:
        data = self._stream.read(n)
        if len(data) in (0, n):
            return data
        parts = [data]
        while n > (got := sum(map(len, parts))) and (more := self._stream.read(n - got)):
            parts.append(more)
        return b"".join(parts)


def _decrypt(src: _Exact, key: Key | None, name: str, physical: str) -> Iterator[bytes]:
    def tampered(why: str) -> Tampered:
        return Tampered(f"backup object {physical} is damaged or not the one written: {why}", name=physical,
                        reason=why)  # fmt: skip

    header = src.read(HEADER_SIZE)
    if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
        raise tampered("it does not start with an encryption header (RBENC, version 1)")
    their = header[6:14].hex()
    if key is None:
        raise WrongKey(f"backup object {physical} is encrypted (key {their}): set ENCRYPTION_KEY_FILE",
                       name=physical, reason=f"encrypted (key {their}), no key configured")  # fmt: skip
    if their != key.id:
        raise WrongKey(f"backup object {physical} was encrypted with key {their}, ENCRYPTION_KEY_FILE holds key "
                       f"{key.id}: use the key the backup was made with", name=physical,
                       reason=f"encrypted with key {their}, not {key.id}")  # fmt: skip
    salt, prefix = header[14 : 14 + SALT_SIZE], header[14 + SALT_SIZE : 14 + SALT_SIZE + PREFIX_SIZE]
    size = int.from_bytes(header[-4:], "big")
    if not 1 <= size <= MAX_CHUNK_SIZE:
        raise tampered(f"its header gives a chunk size of {size}")
    aead, ad = _object_key(key.secret, salt), header + name.encode()

    def length() -> int | None:
        b = src.read(4)
        if not b:
            return None
        if len(b) < 4:
            raise tampered("it ends inside a chunk (truncated)")
        n = int.from_bytes(b, "big")
        if not TAG_SIZE <= n <= size + TAG_SIZE:
            raise tampered(f"a chunk length of {n} bytes, the chunk size being {size}")
        return n

    def opened(sealed: bytes, counter: int, last: bool) -> bytes | None:
        try:
            return aead.decrypt(_nonce(prefix, counter, last), sealed, ad)
        except InvalidTag:
            return None

    n, counter = length(), 0
    while True:
        if n is None:
            raise tampered(f"it ends after chunk {counter} without its final chunk (truncated)")
        sealed = src.read(n)
        if len(sealed) < n:
            raise tampered("it ends inside a chunk (truncated)")
        n = length()
        last = n is None
        plain = opened(sealed, counter, last)
        if plain is None:
            if last and opened(sealed, counter, False) is not None:
                raise tampered(f"it ends after chunk {counter} without its final chunk (truncated)")
            if not last and opened(sealed, counter, True) is not None:
                raise tampered(f"it has bytes after its final chunk {counter}")
            raise tampered(f"chunk {counter} fails authentication (damaged, reordered, or the object of "
                           f"another name than {name})")  # fmt: skip
        del sealed
        if not last and len(plain) != size:
            raise tampered(f"chunk {counter} holds {len(plain)} bytes, not the chunk size {size}")
        if plain:
            yield plain
        del plain
        if last:
            return
        counter += 1


def _decompress(src: _Source, physical: str) -> Iterator[bytes]:
    """One zstd frame, fed to the decompressor a block at a time: a block decompresses to at most
    128 KiB, so memory is bounded whatever the ratio (a run of zeros), and an end before the frame's
    last block and checksum, which zstandard's readers let pass, is seen here."""

    def damaged(why: str) -> Tampered:
        return Tampered(f"backup object {physical} is damaged: {why}", name=physical, reason=why)

    d = zstandard.ZstdDecompressor().decompressobj()

    def feed(data: bytes) -> bytes:
        try:
            return d.decompress(data)
        except zstandard.ZstdError as e:
            raise damaged(f"its zstd stream is corrupt ({e})") from None

    head = src.read(5)
    if len(head) < 5 or head[:4] != ZSTD_MAGIC:
        raise damaged("it is not a zstd stream")
    fhd = head[4]
    fcs, single, dict_id, checksum = fhd >> 6, (fhd >> 5) & 1, fhd & 3, (fhd >> 2) & 1
    rest = (0 if single else 1) + (0, 1, 2, 4)[dict_id] + ((1 if single else 0), 2, 4, 8)[fcs]
    if not checksum:
        raise damaged("its zstd frame has no content checksum")
    more = src.read(rest)
    if len(more) < rest:
        raise damaged("its zstd stream is truncated")
    feed(head + more)
    while True:
        block = src.read(3)
        if len(block) < 3:
            raise damaged("its zstd stream is truncated")
        v = int.from_bytes(block, "little")
        kind, size = (v >> 1) & 3, v >> 3
        if kind == 3 or size > ZSTD_MAX_BLOCK:
            raise damaged("its zstd stream is corrupt (bad block header)")
        content = src.read(1 if kind == 1 else size)
        if len(content) < (1 if kind == 1 else size):
            raise damaged("its zstd stream is truncated")
        if out := feed(block + content):
            yield out
        if v & 1:
            break
    tail = src.read(4)
    if len(tail) < 4:
        raise damaged("its zstd stream is truncated")
    if feed(tail) or not d.eof:
        raise damaged("its zstd stream is corrupt (no end after the last block)")
    if not src.at_end():
        raise damaged("it has bytes after the end of its zstd stream")


class _Reader(io.RawIOBase):
    """The decoded bytes as a stream. An error is raised again by every later read: a caller that
    caught one must never see the end of the stream as if it were clean."""

    def __init__(self, pieces: Iterator[bytes], stream: BinaryIO) -> None:
        self._pieces, self._stream = pieces, stream
        self._cur, self._pos = b"", 0
        self._error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._error is not None:
            raise self._error
        while self._pos >= len(self._cur):
            self._cur = b""  # released before the next piece is made
            try:
                nxt = next(self._pieces, None)
            except Exception as e:
                self._error = e
                raise
            if nxt is None:
                return 0
            self._cur, self._pos = nxt, 0
        view = memoryview(b).cast("B")
        n = min(len(view), len(self._cur) - self._pos)
        view[:n] = self._cur[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._stream.close()


def decode(stream: BinaryIO, physical_name: str, key: Key | None, *, name: str | None = None) -> BinaryIO:
    """The plain bytes of an object read from stream, decoded as they are read; nothing is read before
    the first read (which raises WrongKey if the key is not the object's). Closing it closes stream.
    The encoding is the suffix of physical_name; `name` is the logical name the object must have been
    encoded under (default: physical_name without its suffix)."""
    logical, compression, encrypted = split_suffix(physical_name)
    name = logical if name is None else name
    check_name(name)
    if compression == "none" and not encrypted:
        return stream
    plain = _decrypt(_Exact(stream), key, name, physical_name) if encrypted else _stream_pieces(stream)
    pieces = _decompress(_Source(plain), physical_name) if compression == "zstd" else plain
    return io.BufferedReader(_Reader(pieces, stream), buffer_size=64 << 10)
