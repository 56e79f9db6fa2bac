"""`redis-backup demo` on a machine with only the package and a redis-server: PATH holds nothing but a
redis-server (each server of the version matrix in turn), the user's settings point at things the demo
must not touch, and the digests it prints are compared here, not taken from its verdict."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from redis_backup.cli import cmd_demo
from redis_backup.cli.cmd_demo import DemoError
from redis_backup.restore.tempserver import find_redis_server
from tests.support.servers import RedisServer, free_port
from tests.support.versions import ServerVersion

ROW = re.compile(r"^(at \S+|latest)\s+([0-9a-f]{16})\s+(db0:\d+ db1:\d+ db2:\d+)\s+([0-9a-f]{16})\s+"
                 r"(db0:\d+ db1:\d+ db2:\d+)\s+(match|DIFFER)$", re.M)  # fmt: skip


def _demo(tmp_path: Path, path: str, *args: str, tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    tmp = tmp or tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {
        "PATH": path, "HOME": str(tmp_path), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
        # a user's settings, every one of which would be wrong for the demo to use
        "REDIS_HOST": "192.0.2.1", "REDIS_PORT": "1", "REDIS_PASSWORD": "not-this",
        "BACKUP_DIR": str(tmp_path / "users-backups"), "S3_BUCKET": "users-real-bucket",
        "S3_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "AKIAUSER", "METRICS_PORT": "1",
    }  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "redis_backup", "demo", *args], env=env, cwd=tmp_path, capture_output=True,
        text=True, stdin=subprocess.DEVNULL, timeout=300, check=False,
    )  # fmt: skip


def test_demo_restores_both_seconds_with_only_redis_server_on_path(
    tmp_path: Path, server_version: ServerVersion
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "redis-server").symlink_to(server_version.binary)
    r = _demo(tmp_path, str(bindir))
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    rows = ROW.findall(r.stdout)
    assert [row[0].split()[0] for row in rows] == ["at", "latest"], r.stdout
    for label, want_digest, want_keys, got_digest, got_keys, verdict in rows:
        assert (want_digest, want_keys) == (got_digest, got_keys) and verdict == "match", label
    (middle, latest) = rows
    assert middle[1] != latest[1], "the two seconds hold different data: the middle restore is a real cut"
    assert f"redis-backup restore --{middle[0]} --to " in r.stdout
    assert "redis-backup status --url http://127.0.0.1:" in r.stdout
    assert "exited with status 0" in r.stdout and "demo passed" in r.stdout
    assert not (tmp_path / "users-backups").exists()
    assert os.listdir(tmp_path / "tmp") == [], "the demo removes what it wrote"


def test_demo_keep_leaves_a_backup_redis_server_loads(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    from tests.support.servers import REDIS_SERVER

    (bindir / "redis-server").symlink_to(REDIS_SERVER)
    r = _demo(tmp_path, str(bindir), "--keep")
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    (kept,) = (tmp_path / "tmp").iterdir()
    assert f"kept {kept}" in r.stdout
    chains = [p for p in (kept / "backup").iterdir() if p.is_dir()]
    assert len(chains) == 1 and (chains[0] / "appendonly.aof.manifest").is_file()
    assert (kept / "restore-at" / "appendonlydir").is_dir() and (kept / "service.log").is_file()


def test_demo_without_redis_server_says_what_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _demo(tmp_path, str(empty))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "redis-server is not installed" in lines[0] and "apt-get install" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and os.listdir(tmp_path / "tmp") == []


def test_demo_with_a_redis_server_older_than_7_refuses_before_starting(tmp_path: Path) -> None:
    from tests.support.servers import REDIS_SERVER

    bindir = tmp_path / "bin"
    bindir.mkdir()
    old = bindir / "redis-server"  # a 6.2 as far as --version goes, the real server otherwise
    old.write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec echo "Redis server v=6.2.14 sha=0:0 bits=64"\n'
                   f'exec {REDIS_SERVER} "$@"\n')  # fmt: skip
    old.chmod(0o755)
    r = _demo(tmp_path, f"{bindir}:/bin:/usr/bin")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs redis-server 7.0 or newer" in lines[0] and "redis 6.2.14" in lines[0], r.stderr
    assert "$ redis-server" not in r.stdout and os.listdir(tmp_path / "tmp") == []


def test_demo_on_a_full_disk_says_why_the_service_is_stuck(tmp_path: Path, small_fs: Callable[[str], Path]) -> None:
    from tests.support.servers import REDIS_SERVER

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "redis-server").symlink_to(REDIS_SERVER)
    tmp = small_fs("64k")  # room for the logs, not for the snapshot: the service retries, the demo gives up
    r = _demo(tmp_path, str(bindir), tmp=tmp)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not within" in lines[0] and "the disk is full" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and os.listdir(tmp) == []


def test_demo_never_writes_to_a_redis_server_that_took_its_port(
    primary: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The primary's port is chosen free, then bound by the demo's redis-server: another server may take
    it in between. The demo's server then fails to bind, and the demo must not write to the other one."""
    monkeypatch.setattr(cmd_demo, "_free_ports", lambda n: [primary.port, free_port()])
    (tmp_path / "demo").mkdir()
    with pytest.raises(DemoError) as e:
        cmd_demo._run(tmp_path / "demo", find_redis_server())
    assert primary.client().info("keyspace") == {}, "the demo wrote to a server that is not its own"
    assert str(e.value).startswith("starting the primary: "), e.value


def _processes_in(root: Path) -> list[int]:
    """Processes whose working directory is under root (redis-server rewrites its environment as its
    process title, so its cwd is what still says where it came from)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cwd = os.readlink(entry / "cwd").removesuffix(" (deleted)")
            except OSError:
                continue
            if cwd.startswith(str(root)):
                found.append(int(entry.name))
    return found


def test_a_demo_killed_outright_takes_its_redis_server_and_service_along(tmp_path: Path) -> None:
    """kill -9 (or the OOM killer) runs no cleanup: the children must still not outlive the demo."""
    from tests.support.servers import REDIS_SERVER, wait_until

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"PATH": str(Path(REDIS_SERVER).parent), "HOME": str(tmp_path), "TMPDIR": str(tmp)}
    demo = subprocess.Popen([sys.executable, "-m", "redis_backup", "demo"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if line.strip().startswith("attached:"):
                break
        else:
            pytest.fail("the demo ended before the service attached")
        assert len(_processes_in(tmp)) >= 2  # the primary and the service
        demo.kill()
        demo.wait()
        wait_until(lambda: not _processes_in(tmp), timeout=30, message="the demo's children outlived it")
    finally:
        demo.kill()
        demo.wait()


def test_a_reader_that_goes_away_stops_the_demo_quietly(tmp_path: Path) -> None:
    """`redis-backup demo | head -1`: the broken pipe ends it with 141, like any Unix tool, without an
    'internal error' line, and what it started is stopped and removed on the way out."""
    from tests.support.servers import REDIS_SERVER

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"PATH": f"{Path(REDIS_SERVER).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp)}
    script = f"{sys.executable} -m redis_backup demo | head -1; echo rc=${{PIPESTATUS[0]}}"
    r = subprocess.run(["/bin/bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300, check=False)  # fmt: skip
    assert r.stdout.startswith("redis-backup demo:") and "rc=141" in r.stdout, (r.stdout, r.stderr)
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert os.listdir(tmp) == [] and not _processes_in(tmp)
