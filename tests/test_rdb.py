"""RdbDigest / crc64: the checks run on a snapshot while it streams by.

Real RDBs come from redis-server 7.0.15: the snapshots inside the recorded replication connections
(tests/data, cut out using the capture script's own framing, not redis_backup's) and fresh ones made
with ``redis-cli --rdb``.  tests.support.fake_primary.crc64 is an independent pure-Python CRC64.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redis_backup.chain.rdb import RdbDigest, RdbError, check_rdb_file, crc64
from tests.support import fake_primary
from tests.support.capture import Capture
from tests.support.servers import RedisFactory, RedisServer
from tests.support.workload import mixed_workload

DATA = Path(__file__).parent / "data"
SNAPSHOTS = ("diskless", "disk", "rdb-only")


def stored_snapshot(name: str) -> bytes:
    cap = Capture.load(DATA, name)
    return cap.wire[cap.snapshot_start : cap.snapshot_start + cap.snapshot_size]


def digest_of(*parts: bytes) -> RdbDigest:
    d = RdbDigest()
    for part in parts:
        d.update(part)
    return d


def outcome(d: RdbDigest) -> tuple[object, ...]:
    """Everything observable: the verdict (version or error text), SHA-256, size."""
    try:
        verdict: object = d.verify()
    except RdbError as e:
        verdict = str(e)
    return verdict, d.sha256.hexdigest(), d.size


# --------------------------------------------------------------------------------------------- crc64


def test_crc64_check_value() -> None:
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA
    assert crc64(b"") == 0
    assert crc64(memoryview(b"123456789")) == 0xE9C6D914C4B8D9CA


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.binary(max_size=300))
def test_crc64_matches_an_independent_implementation_and_chains(a: bytes, b: bytes) -> None:
    assert crc64(a) == fake_primary.crc64(a)
    assert crc64(b, crc64(a)) == crc64(a + b) == fake_primary.crc64(a + b)


# --------------------------------------------------------------------------------------------- real RDBs


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_stored_snapshot_verifies(name: str) -> None:
    rdb = stored_snapshot(name)
    assert rdb.startswith(b"REDIS0010") and rdb[-9] == 0xFF
    d = digest_of(rdb)
    assert d.verify() == 10 and d.version == 10
    assert d.sha256.hexdigest() == hashlib.sha256(rdb).hexdigest() == Capture.load(DATA, name).snapshot_sha256
    assert d.size == len(rdb)
    assert int.from_bytes(rdb[-8:], "little") == fake_primary.crc64(rdb[:-8])


def test_rdb_from_redis_cli_verifies(primary: RedisServer, tmp_path: Path) -> None:
    mixed_workload(primary.client, rounds=2, seed=4)
    path = primary.dump_rdb(tmp_path / "dump.rdb")
    raw = path.read_bytes()
    assert len(raw) > 1024 * 1024  # the workload's 1 MB value
    assert check_rdb_file(str(path), chunk=4096) == (10, hashlib.sha256(raw).hexdigest(), len(raw))
    assert check_rdb_file(str(path)) == (10, hashlib.sha256(raw).hexdigest(), len(raw))
    rng = random.Random(1)
    cuts = sorted(rng.randrange(len(raw)) for _ in range(50))
    parts = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert outcome(digest_of(*parts)) == (10, hashlib.sha256(raw).hexdigest(), len(raw))


def test_rdb_without_checksum_passes(redis_factory: RedisFactory, tmp_path: Path) -> None:
    """rdbchecksum no: the stored CRC is 0, which means "not computed"."""
    server = redis_factory(extra_args=["--rdbchecksum", "no"])
    server.client(0).set("k", "v")
    server.client(3).rpush("l", *range(100))
    raw = server.dump_rdb(tmp_path / "nocrc.rdb").read_bytes()
    assert raw[-9:] == b"\xff" + bytes(8)
    for cut in range(len(raw) + 1):
        assert outcome(digest_of(raw[:cut], raw[cut:]))[0] == 10


# --------------------------------------------------------------------------------------------- damage


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_every_flipped_byte_fails(name: str) -> None:
    rdb = bytearray(stored_snapshot(name))
    for i in range(len(rdb)):
        rdb[i] ^= 0x01 << (i % 8)
        with pytest.raises(RdbError, match=r"checksum mismatch|not an RDB|incomplete"):
            digest_of(bytes(rdb)).verify()
        rdb[i] ^= 0x01 << (i % 8)
    assert digest_of(bytes(rdb)).verify() == 10


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_every_truncation_fails(name: str) -> None:
    """A transfer cut short never looks like a whole RDB: not even when the last 8 bytes received
    happen to be zero (the captures hold a run of zero bytes) and so read as "no checksum"."""
    rdb = stored_snapshot(name)
    assert bytes(8) in rdb
    for cut in range(len(rdb)):
        with pytest.raises(RdbError):
            digest_of(rdb[:cut]).verify()


def test_truncated_rdb_without_checksum_fails() -> None:
    body = b"REDIS0010\xfa\x05ctime\xc2\x00\x00\x00\x00\x00\x00\x00\x00" + b"\x00" * 20
    rdb = body + b"\xff" + bytes(8)
    assert digest_of(rdb).verify() == 10
    for cut in range(len(rdb)):
        with pytest.raises(RdbError):
            digest_of(rdb[:cut]).verify()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not an RDB"),
        (b"REDIS", "not an RDB"),
        (b"REDIS001", "not an RDB"),
        (b"RDB0010" + bytes(20), "not an RDB"),
        (b"REDISx010" + bytes(20), "not an RDB"),
        (b"REDIS0010\xff" + bytes(7), "too short"),
        (fake_primary.empty_rdb()[:-1] + b"\x00", "checksum mismatch"),
    ],
)
def test_not_an_rdb(data: bytes, match: str) -> None:
    with pytest.raises(RdbError, match=match):
        digest_of(data).verify()


def test_minimal_rdbs() -> None:
    for version in (9, 10, 11, 12):
        assert digest_of(fake_primary.empty_rdb(version)).verify() == version


def test_check_rdb_file_refuses_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.rdb"
    rdb = bytearray(stored_snapshot("disk"))
    rdb[len(rdb) // 2] ^= 0xFF
    path.write_bytes(bytes(rdb))
    with pytest.raises(RdbError, match="checksum mismatch"):
        check_rdb_file(str(path), chunk=1000)


# --------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_split_at_every_position(name: str) -> None:
    rdb = stored_snapshot(name)
    whole = outcome(digest_of(rdb))
    assert whole[0] == 10
    for cut in range(len(rdb) + 1):
        assert outcome(digest_of(rdb[:cut], rdb[cut:])) == whole, cut
    assert outcome(digest_of(*(rdb[i : i + 1] for i in range(len(rdb))))) == whole
    # A damaged one is refused with the same message however it is split.
    bad = rdb[:100] + bytes([rdb[100] ^ 0x40]) + rdb[101:]
    whole_bad = outcome(digest_of(bad))
    assert "checksum mismatch" in str(whole_bad[0])
    for cut in range(0, len(bad) + 1, 7):
        assert outcome(digest_of(bad[:cut], bad[cut:])) == whole_bad


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SNAPSHOTS), st.lists(st.integers(0, 12000), max_size=30), st.integers(-1, 12000))
def test_split_into_random_pieces(name: str, cuts: list[int], damage: int) -> None:
    rdb = bytearray(stored_snapshot(name))
    if 0 <= damage < len(rdb):
        rdb[damage] ^= 0x10
    data = bytes(rdb)
    points = sorted(min(c, len(data)) for c in cuts)
    parts = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert outcome(digest_of(*parts)) == outcome(digest_of(data))
