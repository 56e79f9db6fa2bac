"""verify names each damaged file; restore refuses the chain instead of restoring wrong data.

One real chain (several incr files, the older ones closed with their SHA-256) is made once by the real
service; every test damages its own copy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from redis_backup.chain import naming
from redis_backup.wire.resp import encode_command
from tests.support.chains import read_meta
from tests.support.pristine import make_small_backup
from tests.support.servers import RedisFactory
from tests.support.service import run_cli

pytestmark = pytest.mark.slow

KEYS = 8


def cli(backup_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), {"BACKUP_DIR": str(backup_dir)}, timeout=120)



@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield make_small_backup(tmp_path_factory.mktemp("pristine"), KEYS)


@pytest.fixture
def backup(pristine: Path, tmp_path: Path) -> Path:
    bk = tmp_path / "backups"
    shutil.copytree(pristine, bk)
    return bk


def only_chain(bk: Path) -> Path:
    (chain,) = [p for p in bk.iterdir() if naming.is_chain_id(p.name)]
    return chain


def closed_incr_files(chain: Path) -> list[str]:
    meta = read_meta(chain)
    return [f["name"] for f in meta["files"] if f["type"] == "incr" and f["sha256"]]


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_pristine_chain_verifies_and_restores(backup: Path, redis_factory: RedisFactory, tmp_path: Path) -> None:
    chain = only_chain(backup)
    assert len(closed_incr_files(chain)) >= 2, "the fixture should have rotated incr files"
    r = cli(backup, "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "1 chains verified: 1 ok, 0 with problems"
    r = cli(backup, "verify", "--deep", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["chains"] == [{"chain": chain.name, "ok": True, "problems": []}]
    r = cli(backup, "restore", "--to", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert redis_factory.load_aof_dir(tmp_path / "out", strict=True).keyspace() == {0: KEYS}


def _flip_base(chain: Path) -> str:
    name = naming.base_file()
    flip(chain / name, (chain / name).stat().st_size // 2)
    return name


def _flip_value_in_closed_incr(chain: Path) -> str:
    name = closed_incr_files(chain)[1]
    data = (chain / name).read_bytes()
    flip(chain / name, data.index(b"value-") + 2)  # still well-formed RESP: only the checksum tells
    return name


def _truncate_closed_incr(chain: Path) -> str:
    name = closed_incr_files(chain)[0]
    path = chain / name
    path.write_bytes(path.read_bytes()[:-10])
    return name


def _garbage_in_open_incr(chain: Path) -> str:
    meta = read_meta(chain)
    name = str(meta["files"][-1]["name"])
    assert meta["files"][-1]["sha256"] is None
    with open(chain / name, "ab") as f:
        f.write(encode_command("SET", "late", "1") + b"not resp\r\n" + encode_command("SET", "later", "2"))
    return name


def _missing_incr(chain: Path) -> str:
    name = closed_incr_files(chain)[0]
    (chain / name).unlink()
    return name


DAMAGE: dict[str, Callable[[Path], str]] = {
    "base byte flipped": _flip_base,
    "closed incr byte flipped": _flip_value_in_closed_incr,
    "closed incr truncated": _truncate_closed_incr,
    "open incr garbage": _garbage_in_open_incr,
    "incr missing": _missing_incr,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_named_by_verify_and_refused_by_restore(
    damage: str, backup: Path, redis_factory: RedisFactory, tmp_path: Path
) -> None:
    chain = only_chain(backup)
    name = DAMAGE[damage](chain)
    r = cli(backup, "verify")
    assert r.returncode == 1
    assert f"{chain.name}/{name}: " in r.stdout, r.stdout
    assert "1 chains verified: 0 ok, 1 with problems" in r.stdout

    for fmt in ("aof", "rdb"):
        out = tmp_path / f"out-{fmt}"
        r = cli(backup, "restore", "--to", str(out), "--format", fmt)
        assert r.returncode == 1, r.stdout
        assert f"{chain.name}/{name}: " in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert not out.exists() or list(out.iterdir()) == []  # nothing that looks restorable

    target = redis_factory()
    r = cli(backup, "restore", "--into", f"redis://{target.host}:{target.port}")
    assert r.returncode == 1 and f"{chain.name}/{name}: " in r.stderr
    assert target.keyspace() == {}


def test_damaged_metadata(backup: Path, tmp_path: Path) -> None:
    chain = only_chain(backup)
    (chain / naming.METADATA).write_bytes(b'{"format": 1, "chain": ')
    r = cli(backup, "verify")
    assert r.returncode == 1 and f"{chain.name}/{naming.METADATA}: unreadable" in r.stdout
    r = cli(backup, "restore", "--to", str(tmp_path / "out"), "--chain", chain.name)
    assert r.returncode == 1 and f"chain {chain.name} cannot be read" in r.stderr
    r = cli(backup, "list")
    assert r.returncode == 0 and "DAMAGED" in r.stdout and "nothing restorable" in r.stdout


def test_manifest_and_stray_files(backup: Path) -> None:
    chain = only_chain(backup)
    manifest = chain / naming.MANIFEST
    manifest.write_bytes(b"".join(manifest.read_bytes().splitlines(keepends=True)[:-1]))
    (chain / "appendonly.aof.99.incr.aof").write_bytes(b"")
    r = cli(backup, "verify", "--json")
    assert r.returncode == 1
    problems = {p["file"]: p["what"] for p in json.loads(r.stdout)["chains"][0]["problems"]}
    assert set(problems) == {naming.MANIFEST, "appendonly.aof.99.incr.aof"}
    assert "the metadata lists" in problems[naming.MANIFEST]
    assert problems["appendonly.aof.99.incr.aof"] == "is not listed in the metadata"


def test_deep_verify_catches_what_only_redis_refuses(backup: Path) -> None:
    """Well-formed RESP with no checksum yet (the open file) that Redis will not replay."""
    chain = only_chain(backup)
    meta = read_meta(chain)
    name = meta["files"][-1]["name"]
    with open(chain / name, "ab") as f:
        f.write(encode_command("NO-SUCH-COMMAND", "x"))
    assert cli(backup, "verify").returncode == 0
    r = cli(backup, "verify", "--deep")
    assert r.returncode == 1
    assert f"{chain.name}/{name}: does not load in redis-server: " in r.stdout, r.stdout


def test_verify_unknown_chain(backup: Path) -> None:
    r = cli(backup, "verify", "--chain", "20200101T000000Z-00000000-0")
    assert r.returncode == 1 and "no chain 20200101T000000Z-00000000-0" in r.stderr


def test_deep_verify_of_a_chain_for_the_service(pristine: Path) -> None:
    from redis_backup.restore.verify import verify_chain_deep
    from redis_backup.store.local import LocalStore

    chain = only_chain(pristine)
    assert verify_chain_deep(LocalStore(chain.parent), chain.name) == []


@pytest.mark.parametrize(("next_seq", "accepted"), [(1, True), (2, False)])
def test_a_rotation_caught_half_done_is_not_damage(backup: Path, next_seq: int, accepted: bool) -> None:
    """A rotation writes the new file and the manifest a moment before the metadata: verify, which may
    run beside the service, accepts exactly that state of an open chain, and nothing further ahead."""
    chain = only_chain(backup)
    meta = read_meta(chain)
    assert meta["closed"] is False
    seq = meta["files"][-1]["seq"] + next_seq
    name = naming.incr_file(seq)
    (chain / name).write_bytes(b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n")
    manifest = chain / naming.MANIFEST
    manifest.write_bytes(manifest.read_bytes() + f"file {name} seq {seq} type i\n".encode())
    r = cli(backup, "verify")
    assert (r.returncode == 0) == accepted, r.stdout + r.stderr
