"""store.codec: every encoding reads back exactly, in bounded memory, and an object that is not the one
written under its name (other key, damaged, cut, extended, reordered, renamed) is refused, never read
as garbage."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import os
import random
import re
import stat
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from cryptography.exceptions import InvalidTag
from hypothesis import given, settings
from hypothesis import strategies as st

from redis_backup.errors import ConfigError
from redis_backup.store.base import InvalidName, StoreError
from redis_backup.store.codec import (
    CHUNK_SIZE,
    HEADER_SIZE,
    Codec,
    Key,
    KeyFileError,
    Tampered,
    WrongKey,
    decode,
    load_key,
    split_suffix,
)

KEY = Key.from_secret(bytes(range(32)))
OTHER = Key.from_secret(bytes(range(1, 33)))
NAME = "20261125T190811Z-c2abd784-0/appendonly.aof.1.incr.aof"
SMALL = 64  # a chunk size that makes many chunks of a few KiB
COMBOS = [("zstd", KEY), ("none", KEY), ("zstd", None), ("none", None)]


def data_of(n: int, seed: int = 0) -> bytes:
    """Half compressible (RESP commands), half not, so that both paths of zstd are taken."""
    rnd = random.Random(seed)
    text = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\nkey:%d\r\n$5\r\nvalue\r\n" % (len(str(i)) + 4, i) for i in range(n))
    noise = rnd.randbytes(n)
    return b"".join(text[i : i + 1024] + noise[i + 1024 : i + 2048] for i in range(0, n, 2048))[:n]


def split_randomly(data: bytes, seed: int) -> list[bytes | memoryview]:
    rnd, i = random.Random(seed), 0
    pieces: list[bytes | memoryview] = []
    while i < len(data):
        n = rnd.choice([0, 1, 7, 63, 64, 65, 1000, 5000])
        pieces.append(data[i : i + n] if rnd.random() < 0.5 else memoryview(data)[i : i + n])
        i += n
    return pieces


def encoded(codec: Codec, data: bytes, name: str = NAME) -> bytes:
    return b"".join(codec.encode(split_randomly(data, 1), name))


def decoded(blob: bytes, codec: Codec, key: Key | None, name: str = NAME, *, physical: str | None = None) -> bytes:
    with decode(io.BytesIO(blob), physical or name + codec.suffix, key) as f:
        return f.read()


def chunks_of(blob: bytes) -> tuple[bytes, list[bytes]]:
    """An encrypted object as its header and its chunks (each with its length field)."""
    header, rest, out = blob[:HEADER_SIZE], blob[HEADER_SIZE:], []
    while rest:
        n = 4 + int.from_bytes(rest[:4], "big")
        out.append(rest[:n])
        rest = rest[n:]
    return header, out


def refused(blob: bytes, codec: Codec, key: Key | None = KEY, **kw: str) -> StoreError:
    with pytest.raises((Tampered, WrongKey)) as e:
        decoded(blob, codec, key, **kw)
    assert "\n" not in str(e.value) and (kw.get("physical") or NAME) in str(e.value)
    assert not e.value.retryable
    return e.value


# -- round trips -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("compression", "key"), COMBOS, ids=["zstd+enc", "enc", "zstd", "plain"])
@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL, 50 * SMALL + 7, 20000])
def test_every_encoding_reads_back_exactly(compression: str, key: Key | None, size: int) -> None:
    codec = Codec(compression, 3, key, chunk_size=SMALL)  # type: ignore[arg-type]
    data = data_of(size, seed=size)
    blob = encoded(codec, data)
    assert decoded(blob, codec, key) == data
    with decode(io.BytesIO(blob), NAME + codec.suffix, key) as f:  # small reads give the same bytes
        rnd, got = random.Random(size), bytearray()
        while piece := f.read(rnd.choice([1, 3, 64, 100, 4096])):
            got += piece
    assert got == data


@pytest.mark.parametrize(("compression", "key"), COMBOS, ids=["zstd+enc", "enc", "zstd", "plain"])
@pytest.mark.parametrize("size", [CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5])
def test_default_chunk_size_boundaries(compression: str, key: Key | None, size: int) -> None:
    codec = Codec(compression, 3, key)  # type: ignore[arg-type]
    data = os.urandom(size)  # incompressible: the zstd stream crosses the chunk boundaries too
    pieces = list(codec.encode([data], NAME))
    assert max(len(p) for p in pieces) <= CHUNK_SIZE + 16  # a chunk and its tag
    assert decoded(b"".join(pieces), codec, key) == data


def test_encrypted_chunk_layout() -> None:
    """What docs/FORMAT.md says: full chunks of chunk size, a final one of 1..chunk size, or
    0 for an empty object."""
    codec = Codec("none", key=KEY, chunk_size=SMALL)
    for size, sizes in [(0, [16]), (1, [17]), (SMALL, [SMALL + 16]), (2 * SMALL + 1, [SMALL + 16] * 2 + [17])]:
        header, chunks = chunks_of(encoded(codec, bytes(size)))
        assert header[:6] == b"RBENC\x01" and header[6:14] == bytes.fromhex(KEY.id)
        assert int.from_bytes(header[37:41], "big") == SMALL
        assert [len(c) - 4 for c in chunks] == sizes


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(0, 3000), max_size=8),
    compression=st.sampled_from(["zstd", "none"]),
    encrypted=st.booleans(),
    chunk_size=st.integers(1, 300),
)
def test_round_trip_property(data: bytes, cuts: list[int], compression: str, encrypted: bool, chunk_size: int) -> None:
    codec = Codec(compression, 1, KEY if encrypted else None, chunk_size=chunk_size)  # type: ignore[arg-type]
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    blob = b"".join(codec.encode(pieces, NAME))
    assert split_suffix(NAME + codec.suffix) == (NAME, compression, encrypted)
    assert decoded(blob, codec, codec.key) == data


def test_zstd_object_is_a_standard_zstd_stream() -> None:
    data = data_of(300_000)
    blob = encoded(Codec("zstd", 3), data)
    params = zstandard.get_frame_parameters(blob)
    assert params.has_checksum
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read() == data  # not our reader
    assert encoded(Codec("none"), data) == data


def test_a_long_run_of_zeros_decodes_in_bounded_pieces() -> None:
    """64 MiB of zeros is a few KiB of zstd: a reader that fed it whole to the decompressor would hold
    it all; the decoder gives it a block (128 KiB of output at most) at a time."""
    codec = Codec("zstd", 3)
    blob = b"".join(codec.encode((bytes(1 << 20) for _ in range(64)), NAME))
    assert len(blob) < 64 << 10
    tracemalloc.start()
    try:
        with decode(io.BytesIO(blob), NAME + ".zst", None) as f:
            total = 0
            while piece := f.read(1 << 20):
                assert piece == bytes(len(piece))
                total += len(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 64 << 20
    assert peak < 4 << 20, peak


class _Pipe(io.RawIOBase):
    """The pieces of an iterator as a stream: encode's output read by decode with nothing held."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces, self._cur, self._pos = pieces, memoryview(b""), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while self._pos >= len(self._cur):
            self._cur, self._pos = memoryview(b""), 0
            nxt = next(self._pieces, None)
            if nxt is None:
                return 0
            self._cur = memoryview(nxt)
        n = min(len(b), len(self._cur) - self._pos)
        b[:n] = self._cur[self._pos : self._pos + n]
        self._pos += n
        return n


def redis_like(total: int, seed: int = 5) -> Iterator[bytes]:
    """RESP SET commands, a quarter of them with incompressible values, in pieces of about 1 MiB."""
    rnd, i, made = random.Random(seed), 0, 0
    while made < total:
        lines = []
        for _ in range(8000):
            value = rnd.randbytes(16).hex().encode() if i % 4 == 0 else b"value-%d" % (i % 1000)
            key = b"key:%d" % i
            lines.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
            i += 1
        piece = b"".join(lines)[: total - made]
        made += len(piece)
        yield piece


@pytest.mark.parametrize(("compression", "key"), COMBOS[:3], ids=["zstd+enc", "enc", "zstd"])
def test_64_mib_stream_in_bounded_memory(compression: str, key: Key | None) -> None:
    total = 64 << 20
    codec = Codec(compression, 3, key)  # type: ignore[arg-type]
    want, got = hashlib.sha256(), hashlib.sha256()
    blocks = list(redis_like(5 << 20))  # made before tracing (making them is slow under it), held by it

    def source() -> Iterator[bytes]:  # 64 MiB, never held: the same blocks over and over
        made = 0
        for i in itertools.count():
            piece = blocks[i % len(blocks)][: total - made]
            if not piece:
                return
            want.update(piece)
            made += len(piece)
            yield piece

    tracemalloc.start()
    try:
        stream = _Pipe(codec.encode(source(), NAME))
        n = 0
        with decode(stream, NAME + codec.suffix, key) as f:  # type: ignore[arg-type]
            while piece := f.read(64 << 10):
                got.update(piece)
                n += len(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == total and got.digest() == want.digest()
    # encoder and decoder at once, each holding about three 1 MiB chunks: the 64 MiB never
    assert peak < 10 << 20, f"peak {peak / 2**20:.1f} MiB"


# -- keys ------------------------------------------------------------------------------------------------


def test_wrong_key_is_refused_before_any_byte() -> None:
    codec = Codec("zstd", key=KEY, chunk_size=SMALL)
    blob = encoded(codec, data_of(5000))
    reads: list[int] = []

    class Recording(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            reads.append(-1 if n is None else n)
            return super().read(n)

    f = decode(Recording(blob), NAME + codec.suffix, OTHER)
    assert reads == []  # nothing read until the first read
    with pytest.raises(WrongKey) as e:
        f.read(1)
    assert str(e.value) == (f"backup object {NAME}.zst.enc was encrypted with key {KEY.id}, ENCRYPTION_KEY_FILE "
                            f"holds key {OTHER.id}: use the key the backup was made with")  # fmt: skip
    with pytest.raises(WrongKey):  # and again: an error is never followed by a clean end
        f.read()


def test_no_key_for_an_encrypted_object() -> None:
    codec = Codec("none", key=KEY)
    with pytest.raises(WrongKey) as e:
        decoded(encoded(codec, b"secret"), codec, None)
    assert str(e.value) == f"backup object {NAME}.enc is encrypted (key {KEY.id}): set ENCRYPTION_KEY_FILE"


def test_key_id_and_repr() -> None:
    secret = os.urandom(32)
    key = Key.from_secret(secret)
    assert key.id == hashlib.sha256(b"redis-backup key id\0" + secret).digest()[:8].hex()
    assert secret.hex() not in repr(key) and repr(secret) not in repr(key) and key.id in repr(key)
    assert secret.hex() not in str(key)
    with pytest.raises(ValueError):
        Key(OTHER.id, secret)
    with pytest.raises(ValueError):
        Key.from_secret(secret[:31])


# -- damage ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_truncation_anywhere_is_refused(compression: str) -> None:
    codec = Codec(compression, key=KEY, chunk_size=SMALL)  # type: ignore[arg-type]
    data = os.urandom(20 * SMALL + 5)
    blob = encoded(codec, data)
    _, chunks = chunks_of(blob)
    assert len(chunks) > 10
    boundaries = [HEADER_SIZE + sum(len(c) for c in chunks[:i]) for i in range(len(chunks))]
    inside = [b + d for b in boundaries for d in (1, 3, 4, 5, 40)] + [len(blob) - 1, 0, 1, 6, 14, HEADER_SIZE - 1]
    for cut in sorted({c for c in boundaries + inside if c < len(blob)}):
        err = refused(blob[:cut], codec)
        assert isinstance(err, Tampered), (cut, err)
    assert "truncated" in str(refused(blob[: boundaries[-1]], codec))


def test_a_truncated_object_gives_a_prefix_first() -> None:
    codec = Codec("none", key=KEY, chunk_size=SMALL)
    data = os.urandom(10 * SMALL)
    blob = encoded(codec, data)
    with decode(io.BytesIO(blob[: len(blob) - 30]), NAME + ".enc", KEY) as f:
        got = bytearray()
        with pytest.raises(Tampered):
            while piece := f.read(7):
                got += piece
        assert data.startswith(got) and len(got) < len(data)
        with pytest.raises(Tampered):
            f.read()


def test_dropped_duplicated_swapped_chunks_are_refused() -> None:
    codec = Codec("none", key=KEY, chunk_size=SMALL)
    header, chunks = chunks_of(encoded(codec, os.urandom(8 * SMALL + 3)))
    m = len(chunks) // 2
    variants = {
        "dropped": chunks[:m] + chunks[m + 1 :],
        "duplicated": chunks[: m + 1] + chunks[m:],
        "swapped": [*chunks[: m - 1], chunks[m], chunks[m - 1], *chunks[m + 1 :]],
        "final dropped": chunks[:-1],
        "final repeated": [*chunks, chunks[-1]],
        "first dropped": chunks[1:],
    }
    for what, cs in variants.items():
        assert isinstance(refused(header + b"".join(cs), codec), Tampered), what
    assert decoded(header + b"".join(chunks), codec, KEY)  # the pieces themselves are fine


def test_trailing_bytes_after_the_final_chunk_are_refused() -> None:
    codec = Codec("zstd", key=KEY, chunk_size=SMALL)
    blob = encoded(codec, data_of(3000))
    for extra in (b"\0", b"\0\0\0\0", b"garbage after the end", (16).to_bytes(4, "big") + bytes(16)):
        err = refused(blob + extra, codec)
        assert isinstance(err, Tampered)
    assert "after its final chunk" in str(refused(blob + (16).to_bytes(4, "big") + bytes(16), codec))


def test_a_flipped_bit_anywhere_is_refused() -> None:
    codec = Codec("zstd", key=KEY, chunk_size=SMALL)
    blob = encoded(codec, data_of(4000))
    rnd = random.Random(3)
    positions = list(range(HEADER_SIZE + 4)) + rnd.sample(range(len(blob)), 300) + [len(blob) - 1]
    for pos in positions:
        bad = bytearray(blob)
        bad[pos] ^= 1 << rnd.randrange(8)
        err = refused(bytes(bad), codec)
        assert isinstance(err, WrongKey) == (6 <= pos < 14), pos  # the key id, and only it, says WrongKey


def test_renamed_or_swapped_objects_are_refused() -> None:
    codec = Codec("zstd", key=KEY, chunk_size=SMALL)
    a = encoded(codec, data_of(3000), NAME)
    other = NAME.replace("incr", "base")
    b = encoded(codec, data_of(3000), other)
    assert "another name" in str(refused(a, codec, physical=other + codec.suffix))
    refused(b, codec, physical=NAME + codec.suffix)
    with pytest.raises(Tampered):
        decoded(a, codec, KEY, physical=f"copy/{NAME}{codec.suffix}")
    with decode(io.BytesIO(a), f"copy/{NAME}{codec.suffix}", KEY, name=NAME) as f:  # name= says what it was
        assert f.read() == data_of(3000)


def test_damaged_zstd_only_objects_are_refused() -> None:
    codec = Codec("zstd", 3)
    data = data_of(20000) + os.urandom(3000)
    blob = encoded(codec, data)
    for cut in [0, 3, 4, 5, 6, 10, len(blob) // 2, *range(len(blob) - 8, len(blob))]:
        assert isinstance(refused(blob[:cut], codec, None), Tampered), cut
    harmless = 0
    for pos in range(len(blob)):  # every byte: never other bytes than the true ones
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        try:
            got = decoded(bytes(bad), codec, None)
        except Tampered as e:
            assert NAME in str(e) and "\n" not in str(e)
            continue
        # zstd has bits that change no content (the window size, an unused header bit, some entropy
        # table bits): the checksum, over the content, rightly passes them
        assert got == data, pos
        harmless += 1
    assert harmless < len(blob) // 100, harmless
    refused(blob + b"x", codec, None)
    refused(blob + blob, codec, None)  # a second frame is not what was written
    nochecksum = zstandard.ZstdCompressor(write_checksum=False).compress(b"hello")
    assert "checksum" in str(refused(nochecksum, codec, None))


def test_plain_objects_are_the_file() -> None:
    f = io.BytesIO(b"abc")
    assert decode(f, NAME, None) is f


# -- names -----------------------------------------------------------------------------------------------


def test_suffixes() -> None:
    assert Codec("none").suffix == ""
    assert Codec("zstd").suffix == ".zst"
    assert Codec("none", key=KEY).suffix == ".enc"
    assert Codec("zstd", key=KEY).suffix == ".zst.enc"
    assert split_suffix("a/b.aof.zst.enc") == ("a/b.aof", "zstd", True)
    assert split_suffix("a/b.aof.enc") == ("a/b.aof", "none", True)
    assert split_suffix("a/b.aof.zst") == ("a/b.aof", "zstd", False)
    assert split_suffix("a/b.aof") == ("a/b.aof", "none", False)
    assert split_suffix("a/b.enc.zst") == ("a/b.enc", "zstd", False)


def test_encode_refuses_names_that_would_read_back_wrongly() -> None:
    for name in ("x.zst", "x.enc", "a/b.zst.enc"):
        with pytest.raises(ValueError):
            Codec().encode([b""], name)
    for name in ("", "../x", "a//b", ".hidden"):
        with pytest.raises(InvalidName):
            Codec().encode([b""], name)
    with pytest.raises(ValueError):
        Codec("gzip")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Codec(level=0)


# -- key files -------------------------------------------------------------------------------------------

SECRET = bytes([0xFB, 0xFF, 0xBF] * 10 + [0xFE, 0xEF])  # its base64 has + and /, its urlsafe - and _


@pytest.mark.parametrize(
    "content",
    [
        SECRET,
        base64.b64encode(SECRET) + b"\n",
        b"  " + base64.b64encode(SECRET) + b"\r\n\n",
        base64.urlsafe_b64encode(SECRET) + b"\n",
        base64.urlsafe_b64encode(SECRET).rstrip(b"="),
    ],
    ids=["raw", "base64", "base64-spaces", "urlsafe", "urlsafe-unpadded"],
)
def test_load_key(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    assert b"-" in base64.urlsafe_b64encode(SECRET) and b"+" in base64.b64encode(SECRET)
    key = load_key(path)
    assert key.secret == SECRET and key == Key.from_secret(SECRET)
    assert load_key(str(path)) == key


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "holds 0 bytes"),
        (os.urandom(16), "holds 16 bytes"),
        (os.urandom(31), "holds 31 bytes"),
        (os.urandom(33), "holds 33 bytes"),
        (base64.b64encode(os.urandom(16)) + b"\n", "holds the base64 of 16 bytes"),
        (base64.b64encode(os.urandom(24)), "holds the base64 of 24 bytes"),  # 32 characters: not a raw key
        (base64.b64encode(os.urandom(33)), "holds the base64 of 33 bytes"),
        (b"not a key at all!\n", "holds 18 bytes"),
        (os.urandom(5000), "holds more than 4096 bytes"),
    ],
)
def test_unusable_key_files(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as e:
        load_key(path)
    assert isinstance(e.value, ConfigError)
    assert str(e.value) == (f"ENCRYPTION_KEY_FILE {path} {says}; it needs 32 raw bytes or their base64; make one "
                            "with: head -c 32 /dev/urandom | base64 > key")  # fmt: skip


def test_missing_and_unreadable_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as e:
        load_key(tmp_path / "nope")
    assert str(e.value).startswith(f"ENCRYPTION_KEY_FILE {tmp_path / 'nope'}: no such file")
    assert "\n" not in str(e.value) and e.value.settings == ("encryption_key_file",)
    with pytest.raises(KeyFileError) as e:
        load_key(tmp_path)
    assert str(e.value) == f"ENCRYPTION_KEY_FILE {tmp_path}: cannot read it: Is a directory"
    path = tmp_path / "key"
    path.write_bytes(SECRET)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: permissions do not stop reading")
        with pytest.raises(KeyFileError) as e:
            load_key(path)
        assert str(e.value) == f"ENCRYPTION_KEY_FILE {path}: cannot read it: Permission denied"
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


# -- the documentation -----------------------------------------------------------------------------------


def test_the_documented_snippet_decodes_an_object() -> None:
    """docs/FORMAT.md's decoder, run as written, reads what encode writes."""
    doc = (Path(__file__).parent.parent / "docs" / "FORMAT.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    scope: dict[str, object] = {}
    exec(compile(snippet, "FORMAT.md", "exec"), scope)
    data = data_of(10_000) + os.urandom(2000)
    for codec in (Codec("zstd", key=KEY, chunk_size=SMALL), Codec("none", key=KEY), Codec("zstd", key=KEY)):
        blob = encoded(codec, data)
        out = io.BytesIO()
        scope["decrypt"](io.BytesIO(blob), out, NAME, KEY.secret)  # type: ignore[operator]
        if codec.compression == "zstd":
            plain = io.BytesIO()
            scope["decompress"](io.BytesIO(out.getvalue()), plain)  # type: ignore[operator]
            out = plain
        assert out.getvalue() == data
        with pytest.raises(InvalidTag):
            scope["decrypt"](io.BytesIO(blob[:-1]), io.BytesIO(), NAME, KEY.secret)  # type: ignore[operator]
        with pytest.raises(InvalidTag):
            scope["decrypt"](io.BytesIO(blob), io.BytesIO(), NAME + "x", KEY.secret)  # type: ignore[operator]

