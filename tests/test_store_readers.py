"""list, restore (every output) and verify read a backup only through a `Store`.

A real chain, made by the real service, is copied somewhere else and served by a store that is not a
LocalStore (so no local-only check applies) and records every call: the commands see nothing but that
store. A store failing mid-read ends a restore with one line naming the chain and the file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from redis_backup.chain import naming
from redis_backup.cli import cmd_list, cmd_restore, cmd_verify, stores
from redis_backup.cli.main import build_parser, main
from redis_backup.store.local import LocalStore
from tests.support.chains import read_meta
from tests.support.pristine import make_small_backup
from tests.support.servers import RedisFactory
from tests.support.stores import FailingStore, RecordingStore

pytestmark = pytest.mark.slow

KEYS = 6



@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """BACKUP_DIR with one chain of several incr files (the older closed, the newest open)."""
    yield make_small_backup(tmp_path_factory.mktemp("pristine"), KEYS)


@pytest.fixture
def relocated(pristine: Path, tmp_path: Path) -> RecordingStore:
    """The backup's objects, copied to another place, behind a store the readers cannot see into."""
    where = tmp_path / "elsewhere" / "objects"
    shutil.copytree(pristine, where)
    return RecordingStore(LocalStore(where))


@pytest.fixture
def chain(pristine: Path) -> str:
    (name,) = [p.name for p in pristine.iterdir() if naming.is_chain_id(p.name)]
    return name


@pytest.fixture
def signals() -> Iterator[None]:
    """main() installs its own SIGINT/SIGTERM handlers: put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _listings(store: RecordingStore) -> list[tuple[str, str]]:
    return [c for c in store.calls if c[0] in ("list", "prefixes")]


def _only_reads_of(store: RecordingStore, chain: str) -> None:
    assert not [c for c in store.calls if c[0] in ("write", "delete")], store.calls
    for name in store.opened():
        head, _, file = name.partition("/")
        assert head == chain and (naming.is_data_file(file) or file in naming.METADATA_FILES), name


def test_list_is_one_listing_of_the_store(
    relocated: RecordingStore, pristine: Path, chain: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_list.run_on(relocated, _args("list", "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert _listings(relocated) == [("prefixes", "")]  # one listing, of the chains: nothing per file
    _only_reads_of(relocated, chain)
    assert doc["backup_dir"] == "test://relocated" and [c["chain"] for c in doc["chains"]] == [chain]
    assert cmd_list.run_on(LocalStore(pristine), _args("list", "--json")) == 0
    local = json.loads(capsys.readouterr().out)
    assert {**doc, "backup_dir": None} == {**local, "backup_dir": None}


def test_restore_in_every_output_reads_only_the_store(
    relocated: RecordingStore, chain: str, redis_factory: RedisFactory, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert cmd_restore.run_on(relocated, _args("restore", "--dry-run", "--json")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["chain"] == chain and len(plan["files"]) > 2
    _only_reads_of(relocated, chain)
    assert _listings(relocated) == [("prefixes", "")]

    relocated.calls.clear()
    assert cmd_restore.run_on(relocated, _args("restore", "--to", str(tmp_path / "aof"))) == 0
    _only_reads_of(relocated, chain)
    assert {f"{chain}/{f['name']}" for f in plan["files"]} <= set(relocated.opened())
    assert redis_factory.load_aof_dir(tmp_path / "aof", strict=True).keyspace() == {0: KEYS}

    args = _args("restore", "--to", str(tmp_path / "rdb"), "--format", "rdb")
    assert cmd_restore.run_on(relocated, args) == 0
    assert redis_factory.load_rdb(tmp_path / "rdb" / "dump.rdb").keyspace() == {0: KEYS}

    target = redis_factory()
    args = _args("restore", "--into", f"redis://{target.host}:{target.port}")
    assert cmd_restore.run_on(relocated, args) == 0
    assert target.keyspace() == {0: KEYS}
    _only_reads_of(relocated, chain)


def test_verify_and_deep_verify_read_only_the_store(
    relocated: RecordingStore, chain: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_verify.run_on(relocated, _args("verify")) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.strip() == "1 chains verified: 1 ok, 0 with problems"
    assert _listings(relocated) == [("list", "")]  # sizes and strays: one listing of every object
    _only_reads_of(relocated, chain)
    assert cmd_verify.run_on(relocated, _args("verify", "--deep")) == 0
    assert "1 chains deep-verified: 1 ok" in capsys.readouterr().out
    _only_reads_of(relocated, chain)


def _first_closed_incr(pristine: Path, chain: str) -> str:
    meta = read_meta(pristine / chain)
    return str(next(f["name"] for f in meta["files"] if f["type"] == "incr" and f["sha256"]))


@pytest.mark.parametrize("retryable", [True, False], ids=["retryable", "permanent"])
@pytest.mark.parametrize("good_bytes", [None, 100], ids=["at-open", "mid-read"])
def test_a_storage_error_during_restore_is_one_line_naming_chain_and_file(
    pristine: Path, chain: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signals: None,
    capsys: pytest.CaptureFixture[str], retryable: bool, good_bytes: int | None,
) -> None:  # fmt: skip
    file = _first_closed_incr(pristine, chain)
    store = FailingStore(LocalStore(pristine), fail_on=f"{chain}/{file}", retryable=retryable, good_bytes=good_bytes)
    monkeypatch.setattr(stores, "open_store", lambda cfg, source=None: store)
    monkeypatch.setenv("BACKUP_DIR", str(pristine))
    out = tmp_path / "out"
    assert main(["restore", "--to", str(out)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("restoring ")]
    assert len(err) == 1, err
    reason = "503 Slow Down" if retryable else "403 Access Denied"
    assert err[0].startswith(f"redis-backup: error: {chain}/{file}: cannot read ({reason}"), err
    assert ("try again" in err[0]) == retryable, err
    assert not out.exists() or list(out.iterdir()) == []


def test_a_storage_error_during_verify_names_chain_and_file(
    pristine: Path, chain: str, capsys: pytest.CaptureFixture[str]
) -> None:
    file = _first_closed_incr(pristine, chain)
    store = FailingStore(LocalStore(pristine), fail_on=f"{chain}/{file}", retryable=True, good_bytes=10)
    assert cmd_verify.run_on(store, _args("verify")) == 1
    out = capsys.readouterr().out
    assert f"{chain}/{file}: cannot read (503 Slow Down; a temporary storage failure: try again)" in out, out


def test_verify_finds_objects_the_metadata_does_not_list_from_the_listing(
    relocated: RecordingStore, chain: str, capsys: pytest.CaptureFixture[str]
) -> None:
    relocated.inner.write(f"{chain}/appendonly.aof.99.incr.aof", [b""])
    relocated.inner.write(f"{chain}/notes/readme", [b"x"])
    assert cmd_verify.run_on(relocated, _args("verify", "--json")) == 1
    problems = {p["file"]: p["what"] for p in json.loads(capsys.readouterr().out)["chains"][0]["problems"]}
    unlisted = "is not listed in the metadata"
    assert problems == {"appendonly.aof.99.incr.aof": unlisted, "notes": unlisted}
