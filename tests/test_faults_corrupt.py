"""Corrupt backups, beyond tests/test_verify_corrupt.py (flipped bytes, truncated and missing files,
unreadable metadata, a shortened manifest): a missing manifest or metadata, metadata edited into
valid JSON that lies, and `../` names in the manifest or the metadata. verify names the file and the
fault, restore refuses (or restores exactly, from what still checks out), nothing is written outside
the target, and the service never follows a tampered name."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from redis_backup.chain import naming
from tests.support.chains import read_meta, write_meta
from tests.support.faults import wait_for_chain
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, ServiceProcess, run_cli, service_env

KEYS = 12


def cli(backup_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), {"BACKUP_DIR": str(backup_dir)}, timeout=120)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(backup dir, the primary's digest): one chain with several closed incr files."""
    base = tmp_path_factory.mktemp("corrupt-pristine")
    bk = base / "backups"
    primary = RedisServer(base / "redis")
    try:
        service = ServiceProcess(service_env(primary, bk, SEGMENT_MAX_BYTES=1024), base / "service")
        try:
            primary.wait_replicas(1, timeout=20)
            client = primary.client()
            for i in range(KEYS):
                client.set(f"key:{i}", f"value-{i:04d}-" + "x" * 300)
                assert cast(Any, client).execute_command("WAIT", 1, 5000) == 1
            wait_until(lambda: len(list(bk.glob("*/*.incr.aof"))) >= 3, timeout=10, message="rotations")
            digest = primary.digest()
        finally:
            assert service.stop() == 0
    finally:
        primary.stop()
    yield bk, digest


@pytest.fixture
def site(pristine: tuple[Path, str], tmp_path: Path) -> dict[str, Any]:
    """A private copy of the backups next to an 'outside' directory that nothing may touch."""
    src, digest = pristine
    bk = tmp_path / "site" / "backups"
    shutil.copytree(src, bk)
    outside = tmp_path / "site" / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"do not touch")
    (chain,) = [p for p in bk.iterdir() if naming.is_chain_id(p.name)]
    return {"bk": bk, "chain": chain, "digest": digest, "outside": outside, "root": tmp_path / "site"}


def snapshot_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_meta(chain: Path) -> dict[str, Any]:
    return read_meta(chain)


def save_meta(chain: Path, meta: dict[str, Any]) -> None:
    write_meta(chain, meta)


def closed_incr(meta: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in meta["files"] if f["type"] == "incr" and f["sha256"]]


# Each damage returns (the file verify must name, words of the fault it must say).
def _metadata_missing(chain: Path) -> tuple[str, str]:
    (chain / naming.METADATA).unlink()
    return naming.METADATA, "missing"


def _sha_edited(chain: Path) -> tuple[str, str]:
    meta = load_meta(chain)
    f = closed_incr(meta)[0]
    f["sha256"] = hashlib.sha256(b"something else").hexdigest()
    save_meta(chain, meta)
    return f["name"], "SHA-256"


def _offsets_edited(chain: Path) -> tuple[str, str]:
    meta = load_meta(chain)
    files = closed_incr(meta)
    files[0]["end_offset"] += 7  # and the next file starts 7 bytes later: still contiguous
    files[1]["start_offset"] += 7
    save_meta(chain, meta)
    return files[0]["name"], "offset"


def _metadata_names_parent_path(chain: Path) -> tuple[str, str]:
    meta = load_meta(chain)
    meta["files"][1]["name"] = "../../outside/precious"
    save_meta(chain, meta)
    return naming.METADATA, "bad file name"


def _manifest_missing(chain: Path) -> tuple[str, str]:
    (chain / naming.MANIFEST).unlink()
    return naming.MANIFEST, "missing"


def _manifest_names_parent_path(chain: Path) -> tuple[str, str]:
    manifest = chain / naming.MANIFEST
    lines = manifest.read_bytes().splitlines(keepends=True)
    lines[1] = b"file ../../outside/precious seq 1 type i\n"
    manifest.write_bytes(b"".join(lines))
    return naming.MANIFEST, ""


# damage -> (how, whether restore must refuse: False means "refuse, or restore exactly the primary's
# data", for damage to what restore does not use (the manifest is derived from the metadata) or what
# its checksums prove harmless)
DAMAGE: dict[str, tuple[Callable[[Path], tuple[str, str]], bool]] = {
    "metadata missing": (_metadata_missing, True),
    "closed file checksum edited in the metadata": (_sha_edited, True),
    "metadata names ../ paths": (_metadata_names_parent_path, True),
    "offsets edited in the metadata": (_offsets_edited, False),
    "manifest missing": (_manifest_missing, False),
    "manifest names ../ paths": (_manifest_names_parent_path, False),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_verify_names_the_file_and_fault_restore_never_writes_wrong_data_or_outside(
    site: dict[str, Any], redis_factory: RedisFactory, damage: str
) -> None:
    chain, bk, root = site["chain"], site["bk"], site["root"]
    how, must_refuse = DAMAGE[damage]
    name, fault = how(chain)
    before = snapshot_tree(site["outside"])

    r = cli(bk, "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    problem = [line for line in r.stdout.splitlines() if line.startswith(f"{chain.name}/{name}: ")]
    assert problem and fault.lower() in problem[0].lower(), r.stdout

    for fmt in ("aof", "rdb"):
        out = root / f"out-{fmt}"
        r = cli(bk, "restore", "--to", str(out), "--format", fmt)
        if r.returncode == 0 and not must_refuse:
            restored = (
                redis_factory.load_aof_dir(out, strict=True)
                if fmt == "aof"
                else redis_factory.load_rdb(out / "dump.rdb")
            )
            assert restored.digest() == site["digest"], f"{fmt}: restored data differs"
            continue
        assert r.returncode == 1, (fmt, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists() or list(out.iterdir()) == []
        named = cli(bk, "restore", "--to", str(out), "--format", fmt, "--chain", chain.name)
        assert named.returncode == 1 and chain.name in named.stderr, named.stderr
    if must_refuse:
        target = redis_factory()
        r = cli(bk, "restore", "--into", f"redis://{target.host}:{target.port}")
        assert r.returncode == 1, r.stdout + r.stderr
        assert target.keyspace() == {}
    assert snapshot_tree(site["outside"]) == before
    assert {p.name for p in root.iterdir()} <= {"backups", "outside", "out-aof", "out-rdb"}


def test_the_service_never_follows_a_tampered_name(
    site: dict[str, Any], redis_factory: RedisFactory, service_factory: ServiceFactory
) -> None:
    """Metadata naming ../ files: the service does not open, truncate or delete anything outside its
    chain; it reports the chain and begins a new one."""
    chain, bk = site["chain"], site["bk"]
    _metadata_names_parent_path(chain)
    before_outside = snapshot_tree(site["outside"])
    before_chain = snapshot_tree(chain)
    primary = redis_factory()
    primary.client().set("after", "tamper")
    svc = service_factory(service_env(primary, bk))
    new = wait_for_chain(svc, bk, count=2)
    primary.wait_replicas_caught_up(30)
    assert "cannot continue the latest chain" in svc.stderr_text() and "bad file name" in svc.stderr_text()
    assert snapshot_tree(site["outside"]) == before_outside
    assert snapshot_tree(chain) == before_chain, "the tampered chain is left as evidence, untouched"
    assert new != chain
    assert redis_factory.load_chain(new).digest() == primary.digest()
