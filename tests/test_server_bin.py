"""REDIS_SERVER_BIN: the scratch server of restore --format rdb / --into and verify --deep must read the
snapshot's RDB version. A Redis 7.4 primary (RDB 12) against Debian's 7.0 (reads up to 10): one clear line,
"not checked" rather than damaged; with the 7.4 binary: the primary's digest. list shows what wrote it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from redis_backup.restore.tempserver import ServerCannotRead, find_redis_server
from redis_backup.restore.verify import verify_chain_deep
from redis_backup.store.local import LocalStore
from tests.support.pristine import chain_names
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceProcess, run_cli, service_env

VERSIONS_DIR = Path(os.environ.get("REDIS_VERSIONS_DIR", "/work/shared/redis-versions"))
REDIS_74 = VERSIONS_DIR / "redis-7.4" / "redis-server"
VALKEY_80 = VERSIONS_DIR / "valkey-8.0" / "redis-server"


def _binary(path: Path) -> str:
    if not os.access(path, os.X_OK):
        pytest.skip(f"no {path} (the server builds of {VERSIONS_DIR}; REDIS_VERSIONS_DIR moves them)")
    return str(path)


def _backup_of(binary: str, base: Path) -> tuple[Path, str]:
    """BACKUP_DIR holding one chain of a primary started from `binary`, and the primary's DEBUG DIGEST."""
    bk = base / "backups"
    primary = RedisServer(base / "redis", binary=binary)
    try:
        c = primary.client()
        for i in range(20):
            c.set(f"k:{i}", f"v{i}")
        c.hset("h", mapping={"a": "1", "b": "2"})
        service = ServiceProcess(service_env(primary, bk), base / "service")
        try:
            primary.wait_replicas(1, timeout=20)
            wait_until(lambda: chain_names(bk), timeout=20, message="a chain")
            c.rpush("l", "x", "y")
            c.execute_command("SELECT", 3)
            c.set("in-db3", "1")
            primary.wait_replicas_caught_up(20)
            digest = primary.digest()
        finally:
            assert service.stop() == 0
    finally:
        primary.stop()
    return bk, digest


@pytest.fixture(scope="module")
def backup74(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    yield _backup_of(_binary(REDIS_74), tmp_path_factory.mktemp("r74"))


def cli(bk: Path, *args: str, **env: str) -> Any:
    return run_cli(list(args), {"BACKUP_DIR": str(bk), **env}, timeout=120)


def _error_line(r: Any) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("redis-backup: error: "), r.stderr
    return str(lines[0])


def test_default_scratch_server_too_old_for_74(backup74: tuple[Path, str], tmp_path: Path) -> None:
    old = find_redis_server()
    if old.max_rdb >= 12:
        pytest.skip(f"the redis-server on PATH ({old}) reads RDB 12")
    bk, _ = backup74
    out = tmp_path / "out"
    r = cli(bk, "restore", "--to", str(out), "--format", "rdb")
    assert r.returncode == 1
    line = _error_line(r)
    assert "RDB version 12" in line and "redis 7.4.1" in line and old.version_text in line, line
    assert "REDIS_SERVER_BIN" in line, line
    assert not out.exists(), "nothing is written at the target"
    (out / "x").parent.mkdir()  # an existing empty target stays empty
    r = cli(bk, "restore", "--to", str(out), "--format", "rdb")
    assert r.returncode == 1 and list(out.iterdir()) == []
    r = cli(bk, "restore", "--into", "redis://127.0.0.1:1")  # refused before the target is asked
    assert r.returncode == 1 and "REDIS_SERVER_BIN" in _error_line(r)

    r = cli(bk, "verify", "--deep")
    assert r.returncode == 3, r.stdout + r.stderr
    (chain,) = chain_names(bk)
    assert f"{chain}: not checked: needs a newer redis-server: " in r.stdout, r.stdout
    assert "REDIS_SERVER_BIN" in r.stdout and "damaged" not in r.stdout and "does not load" not in r.stdout
    summary = "1 chains deep-verified: 0 ok, 0 with problems, 1 not checked (REDIS_SERVER_BIN too old)"
    assert r.stdout.strip().endswith(summary), r.stdout
    doc = json.loads(cli(bk, "verify", "--deep", "--json").stdout)
    assert doc["ok"] is True and doc["checked"] is False
    assert doc["chains"][0]["not_checked"].startswith("not checked: needs a newer redis-server: ")
    assert cli(bk, "verify").returncode == 0  # without --deep nothing is left unchecked

    # the service's periodic deep verify goes through the same call
    with pytest.raises(ServerCannotRead):
        verify_chain_deep(LocalStore(bk), chain, server=old)


def test_scratch_server_74_restores_the_primary_digest(
    backup74: tuple[Path, str], tmp_path: Path, redis_factory: RedisFactory
) -> None:
    bk, digest = backup74
    bin74 = str(REDIS_74)
    out = tmp_path / "out"
    r = cli(bk, "restore", "--to", str(out), "--format", "rdb", REDIS_SERVER_BIN=bin74)
    assert r.returncode == 0, r.stderr
    loaded = RedisServer(tmp_path / "load", binary=bin74, extra_args=["--dbfilename", "dump.rdb", "--dir", str(out)])
    try:
        assert loaded.digest() == digest
    finally:
        loaded.stop()
    r = cli(bk, "verify", "--deep", REDIS_SERVER_BIN=bin74)
    assert r.returncode == 0, r.stdout + r.stderr
    target = RedisServer(tmp_path / "target", binary=bin74)
    try:
        r = cli(bk, "restore", "--into", f"redis://{target.host}:{target.port}", REDIS_SERVER_BIN=bin74)
        assert r.returncode == 0, r.stderr
        assert target.digest() == digest
    finally:
        target.stop()


@pytest.mark.parametrize(("path", "name", "version"), [(REDIS_74, "redis", "7.4.1"), (VALKEY_80, "valkey", "8.0.1")])
def test_list_shows_the_primarys_server(path: Path, name: str, version: str, tmp_path: Path) -> None:
    bk, _ = _backup_of(_binary(path), tmp_path)
    doc = json.loads(cli(bk, "list", "--json").stdout)
    (c,) = doc["chains"]
    assert (c["server_name"], c["server_version"], c["server"]) == (name, version, f"{name} {version}")
    text = cli(bk, "list").stdout
    assert f"{name} {version}" in text.splitlines()[1], text


@pytest.mark.parametrize("what", ["missing", "not-a-server", "not-executable"])
def test_a_bad_redis_server_bin_is_one_line(what: str, backup74: tuple[Path, str], tmp_path: Path) -> None:
    bk, _ = backup74
    specs = {"missing": "/nonexistent/redis-server", "not-a-server": "/bin/true", "not-executable": "/etc/hostname"}
    spec = specs[what]
    for args in (["restore", "--to", str(tmp_path / "out"), "--format", "rdb"], ["verify", "--deep"]):
        r = cli(bk, *args, REDIS_SERVER_BIN=spec)
        assert r.returncode == 1, r.stderr
        line = _error_line(r)
        assert f"REDIS_SERVER_BIN={spec}" in line, line
    assert not (tmp_path / "out").exists()


def test_scratch_server_with_a_relative_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`restore --to out --format rdb`: the scratch server runs in its own temporary directory, so a
    relative --dir would name a directory there (it exited at once: 'exited while loading: (no log)')."""
    from redis_backup.restore.tempserver import TempRedis

    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    with TempRedis(Path("out"), appendonly=False) as srv:
        srv.client().set("k", "v")
        srv.client().save()
    assert (tmp_path / "out" / "dump.rdb").is_file()


def test_relative_redis_server_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """REDIS_SERVER_BIN=./bin/redis-server (relative to where the command runs, as any path is): the
    scratch server is started from elsewhere (its temporary directory) and must still be found."""
    from redis_backup.restore.tempserver import TempRedis

    (tmp_path / "sub dir").mkdir()
    (tmp_path / "sub dir" / "redis-server").symlink_to(find_redis_server().path)
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    server = find_redis_server("sub dir/redis-server")
    with TempRedis(tmp_path / "data", appendonly=False, server=server) as srv:
        assert srv.client().ping()


def test_kill_all_stops_every_scratch_server_still_running(tmp_path: Path) -> None:
    """What the service calls before os._exit (the shutdown timeout, a second signal): a deep verify's
    scratch server runs in a session of its own and would outlive the process."""
    from redis_backup.restore.tempserver import TempRedis, kill_all

    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        srv = TempRedis(tmp_path / name, appendonly=False)
        srv.start()
        servers.append((srv, srv.socket.parent))
    assert all(srv.client().ping() for srv, _ in servers)
    pids = [srv._proc.pid for srv, _ in servers if srv._proc is not None]
    assert len(pids) == 2
    kill_all()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped, not a zombie
    assert not any(tmp.exists() for _, tmp in servers)
    kill_all()  # nothing left: a no-op
