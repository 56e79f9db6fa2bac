"""The bucket's layout end to end on any Store: a real chain shipped (sealed files, the open file's parts,
heads) and read back through the view that list, restore and verify use; a changed, missing or
swapped object, or a wrong key, is refused by name, never restored.

The bucket here is a LocalStore, so that what is tested is the layout and the uploader's order; the
same steps against a real S3 endpoint are in test_s3_service.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from redis_backup.chain import metadata as md
from redis_backup.chain import naming
from redis_backup.chain.backlog import LocalChain, backlog
from redis_backup.chain.remoteview import Piece, RemoteChains, physical_objects
from redis_backup.cli import cmd_list, cmd_restore, cmd_verify
from redis_backup.cli.main import build_parser
from redis_backup.errors import BackupError, ConfigError
from redis_backup.service.uploader import Shipper
from redis_backup.store.codec import Codec, Key, Tampered
from redis_backup.store.local import LocalStore
from tests.support.pristine import make_small_backup
from tests.support.servers import RedisFactory
from tests.support.stores import RecordingStore

pytestmark = pytest.mark.slow
KEYS = 6
KEY = Key.from_secret(bytes(range(32)))
CODECS = {
    "plain": Codec("none"),
    "zstd": Codec("zstd"),
    "zstd+key": Codec("zstd", key=KEY),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield make_small_backup(tmp_path_factory.mktemp("pristine"), KEYS)


@pytest.fixture
def chain(pristine: Path) -> str:
    (name,) = [p.name for p in pristine.iterdir() if naming.is_chain_id(p.name)]
    return name


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def ship(local: Path, bucket: Path, codec: Codec) -> Shipper:
    shipper = Shipper(local, LocalStore(bucket), codec)
    shipper.run_steps(shipper.plan())
    return shipper


@pytest.mark.parametrize("codec", CODECS, ids=list(CODECS))
def test_a_shipped_chain_reads_back_as_the_local_one_and_restores(
    pristine: Path, chain: str, tmp_path: Path, redis_factory: RedisFactory, codec: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    ship(pristine, tmp_path / "bucket", CODECS[codec])
    view = RemoteChains(LocalStore(tmp_path / "bucket"), CODECS[codec].key)
    assert md.read(view, chain) == md.load(pristine / chain)  # every field, every file
    assert cmd_verify.run_on(view, _args("verify")) == 0, capsys.readouterr().out
    capsys.readouterr()
    assert cmd_list.run_on(view, _args("list", "--json")) == 0
    remote = json.loads(capsys.readouterr().out)
    assert cmd_list.run_on(LocalStore(pristine), _args("list", "--json")) == 0
    local = json.loads(capsys.readouterr().out)
    assert {**remote, "backup_dir": None} == {**local, "backup_dir": None}
    assert cmd_restore.run_on(view, _args("restore", "--to", str(tmp_path / "out"))) == 0
    assert redis_factory.load_aof_dir(tmp_path / "out", strict=True).keyspace() == {0: KEYS}
    if codec == "zstd+key":  # and straight into a running server
        target = redis_factory()
        assert cmd_restore.run_on(view, _args("restore", "--into", f"redis://{target.host}:{target.port}")) == 0
        assert target.keyspace() == {0: KEYS}


def test_the_backlog_is_empty_once_shipped_and_names_what_is_missing(
    pristine: Path, chain: str, tmp_path: Path
) -> None:
    shipper = ship(pristine, tmp_path / "bucket", CODECS["zstd"])
    again = shipper.plan()
    assert [s.action for s in again] == ["ship"] and again[0].from_pos > 0  # the open file, all there
    bucket = LocalStore(tmp_path / "bucket")
    objs = sorted(o.name for o in bucket.list(f"{chain}/"))
    sealed = [n for n in objs if n.split("/")[1].startswith("f-") and "-incr-" in n]
    bucket.delete(sealed[1])
    steps = Shipper(pristine, bucket, CODECS["zstd"]).plan()
    assert [(s.action, s.what) for s in steps if s.action == "upload"] == [("upload", "appendonly.aof.2.incr.aof")]
    # and the view refuses the chain by name until it is uploaded again
    view = RemoteChains(bucket, None)
    with pytest.raises(md.MetadataError, match=r"appendonly\.aof\.2\.incr\.aof is missing"):
        md.read(view, chain)
    Shipper(pristine, bucket, CODECS["zstd"]).run_steps(steps)
    assert md.read(RemoteChains(bucket, None), chain) == md.load(pristine / chain)


def test_backlog_is_a_pure_function_of_metadata_and_listing(pristine: Path, chain: str, tmp_path: Path) -> None:
    meta = md.load(pristine / chain)
    local = [LocalChain(chain, meta.closed, meta.end_offset, tuple(meta.files))]
    steps = backlog(local, {})
    sealed = [f.name for f in meta.files if f.closed]
    assert [s.what for s in steps if s.action == "upload"] == sealed
    assert [s.action for s in steps][-1] == "ship"  # data before the head that commits it
    ship(pristine, tmp_path / "bucket", CODECS["plain"])
    listing = {chain: physical_objects(LocalStore(tmp_path / "bucket"), chain)}
    assert [s.action for s in backlog(local, listing)] == ["ship"]


@pytest.mark.parametrize("what", ["sealed", "part", "head"])
def test_a_changed_object_is_refused_by_name_and_nothing_is_restored(
    pristine: Path, chain: str, tmp_path: Path, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    codec = CODECS["zstd+key"] if what == "head" else CODECS["plain"]
    ship(pristine, tmp_path / "bucket", codec)
    prefix = {"sealed": "f-", "part": "p-", "head": "h-"}[what]
    (victim,) = [p for p in sorted((tmp_path / "bucket" / chain).iterdir()) if p.name.startswith(prefix)][-1:]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    view = RemoteChains(LocalStore(tmp_path / "bucket"), codec.key)
    out = tmp_path / "out"
    with pytest.raises(BackupError, match=victim.name[:30] if what == "head" else "SHA-256|authentication"):
        cmd_restore.run_on(view, _args("restore", "--to", str(out)))
    assert not out.exists() or not any(out.rglob("*.aof"))
    capsys.readouterr()
    assert cmd_verify.run_on(RemoteChains(LocalStore(tmp_path / "bucket"), codec.key), _args("verify")) == 1
    assert victim.name in capsys.readouterr().out


def test_a_wrong_key_is_one_line_and_writes_nothing(pristine: Path, chain: str, tmp_path: Path) -> None:
    ship(pristine, tmp_path / "bucket", CODECS["zstd+key"])
    out = tmp_path / "out"
    other = Key.from_secret(b"\x07" * 32)
    view = RemoteChains(LocalStore(tmp_path / "bucket"), other)
    # the command's configuration, not a damaged chain: one line for the whole command
    with pytest.raises(ConfigError, match=f"encrypted with key {KEY.id}.*{other.id}"):
        md.read(view, chain)
    with pytest.raises(ConfigError, match="is encrypted"):
        cmd_restore.run_on(RemoteChains(LocalStore(tmp_path / "bucket"), None), _args("restore", "--to", str(out)))
    assert not out.exists()


def test_an_object_swapped_for_another_of_the_chain_is_refused(pristine: Path, chain: str, tmp_path: Path) -> None:
    ship(pristine, tmp_path / "bucket", CODECS["zstd+key"])
    d = tmp_path / "bucket" / chain
    incr = sorted(p for p in d.iterdir() if p.name.startswith("f-") and "-incr-" in p.name)
    shutil.copyfile(incr[0], incr[1])  # right size for neither: the name and the AEAD both bind it
    view = RemoteChains(LocalStore(tmp_path / "bucket"), KEY)
    out = tmp_path / "out"
    with pytest.raises(BackupError, match="authentication"):
        cmd_restore.run_on(view, _args("restore", "--to", str(out)))
    assert not out.exists() or not any(out.rglob("*.aof"))


def test_the_open_file_ships_only_its_new_bytes_and_old_heads_and_parts_go(
    pristine: Path, chain: str, tmp_path: Path
) -> None:
    work = tmp_path / "local"
    shutil.copytree(pristine, work)
    shipper = ship(work, tmp_path / "bucket", CODECS["plain"])
    meta = md.load(work / chain)
    open_file = work / chain / meta.files[-1].name
    with open_file.open("ab") as f:
        f.write(b"*3\r\n$3\r\nSET\r\n$3\r\nnew\r\n$1\r\n1\r\n")
    shipper.run_steps(shipper.plan())
    names = sorted(p.name for p in (tmp_path / "bucket" / chain).iterdir())
    parts = [n for n in names if n.startswith("p-")]
    heads = [n for n in names if n.startswith("h-")]
    assert len(parts) == 2 and len(heads) == 1, names  # the first part and the tail; one head
    view = RemoteChains(LocalStore(tmp_path / "bucket"), None)
    with view.open(f"{chain}/{meta.files[-1].name}") as f:
        assert f.read() == open_file.read_bytes()


def test_downloads_run_ahead_and_fetch_each_object_once(
    pristine: Path, chain: str, tmp_path: Path, redis_factory: RedisFactory
) -> None:
    ship(pristine, tmp_path / "bucket", CODECS["zstd+key"])
    bucket = RecordingStore(LocalStore(tmp_path / "bucket"))
    view = RemoteChains(bucket, KEY, parallelism=4)
    try:
        assert cmd_restore.run_on(view, _args("restore", "--to", str(tmp_path / "out"))) == 0
        spool = view._spool
        assert spool is not None  # the files after the base were fetched ahead
    finally:
        view.close()
    opened = bucket.opened()
    # each sealed file downloaded once: the copy fetched ahead was used (the open file's parts are also
    # read by the listing of the chain, which indexes the open file)
    data = [n for n in opened if n.split("/")[1].startswith("f-")]
    assert sorted(data) == sorted(set(data)), opened
    assert len(data) == len([o for o in bucket.inner.list(f"{chain}/") if o.name.split("/")[1].startswith("f-")])
    assert not Path(spool.name).exists()
    assert redis_factory.load_aof_dir(tmp_path / "out", strict=True).keyspace() == {0: KEYS}


def test_a_stray_copy_of_a_file_from_another_chain_is_refused_or_passed_over(
    pristine: Path, chain: str, tmp_path: Path, redis_factory: RedisFactory
) -> None:
    """An object copied in from another chain (same key) under a name that sorts first: its offsets do
    not connect, so the chain's own file is taken; and the copy itself would not authenticate."""
    ship(pristine, tmp_path / "bucket", CODECS["zstd+key"])
    d = tmp_path / "bucket" / chain
    (base,) = [p for p in d.iterdir() if p.name.startswith("f-00000001-base-")]
    fields = base.name.split("-")
    fields[3] = "0" * 19 + "1"  # another start offset: a base of another chain
    stray = d / "-".join(fields)
    shutil.copyfile(base, stray)
    view = RemoteChains(LocalStore(tmp_path / "bucket"), KEY)
    assert cmd_restore.run_on(view, _args("restore", "--to", str(tmp_path / "out"))) == 0
    assert redis_factory.load_aof_dir(tmp_path / "out", strict=True).keyspace() == {0: KEYS}
    with pytest.raises(Tampered), contextlib.ExitStack() as stack:  # read itself, the copy fails authentication
        view.open_piece(chain, "x", Piece(stray.name, 0, "0" * 64), stack).read()
