"""Hostile files: someone who can write into BACKUP_DIR (or a copy of it), or into a restore's target
directory, plants symbolic links and tampered metadata. Nothing is ever written, truncated or deleted
through a link; one bad chain is reported by name and every other chain keeps working; a command
stopped by a signal stops its scratch redis-server and removes what it made."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from redis_backup.chain import naming
from tests.support.chains import read_meta, write_meta
from tests.support.faults import CAUGHT_UP, error_lines, wait_for_chain
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import REPO_ROOT, ServiceFactory, ServiceProcess, base_env, run_cli, service_env

pytestmark = pytest.mark.slow


def cli(backup_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), {"BACKUP_DIR": str(backup_dir), **env}, timeout=180)


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under root (links not followed): content hash (or link target) and mode."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[str(p.relative_to(root))] = ("-> " + os.readlink(p), st.st_mode)
        elif stat.S_ISREG(st.st_mode):
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode)
        else:
            out[str(p.relative_to(root))] = ("dir", st.st_mode)
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(backup dir with one chain of several incr files, the primary's digest)."""
    base = tmp_path_factory.mktemp("hostile-pristine")
    bk = base / "backups"
    primary = RedisServer(base / "redis")
    try:
        svc = ServiceProcess(service_env(primary, bk, SEGMENT_MAX_BYTES=1024), base / "service")
        try:
            wait_for_chain(svc, bk)
            c = primary.client()
            for i in range(12):
                c.set(f"key:{i}", "v" * 300)
                c.execute_command("WAIT", 1, 5000)  # type: ignore[no-untyped-call]
            wait_until(lambda: len(list(bk.glob("*/*.incr.aof"))) >= 3, timeout=10, message="rotations")
            digest = primary.digest()
        finally:
            assert svc.stop() == 0
    finally:
        primary.stop()
    yield bk, digest


@pytest.fixture
def site(pristine: tuple[Path, str], tmp_path: Path) -> dict[str, Any]:
    src, digest = pristine
    bk = tmp_path / "backups"
    shutil.copytree(src, bk)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"do not touch")
    (chain,) = [p for p in bk.iterdir() if naming.is_chain_id(p.name)]
    return {"bk": bk, "chain": chain, "digest": digest, "outside": outside}


# --------------------------------------------------------------------------------------------- links


def test_a_link_at_the_restore_temporary_name_is_refused_not_followed(site: dict[str, Any], tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "unrelated").write_text("x")
    (dest / ".appendonlydir.partial").symlink_to(site["outside"])
    before = tree(site["outside"])
    r = cli(site["bk"], "restore", "--to", str(dest), "--force")
    assert r.returncode == 1, r.stderr
    (line,) = error_lines(r.stderr)
    assert ".appendonlydir.partial exists and is a symbolic link" in line, line
    assert tree(site["outside"]) == before
    assert not (dest / "appendonlydir").exists()
    # a leftover of ours (a crash of an earlier restore) is simply replaced
    (dest / ".appendonlydir.partial").unlink()
    (dest / ".appendonlydir.partial").mkdir()
    (dest / ".appendonlydir.partial" / "junk").write_text("left by a crash")
    assert cli(site["bk"], "restore", "--to", str(dest), "--force").returncode == 0
    assert not (dest / "appendonlydir").is_symlink() and not (dest / ".appendonlydir.partial").exists()
    # a link where --force would swap the old directory out
    (dest / ".appendonlydir.old").symlink_to(site["outside"])
    r = cli(site["bk"], "restore", "--to", str(dest), "--force")
    assert r.returncode == 1 and ".appendonlydir.old exists and is a symbolic link" in r.stderr, r.stderr
    assert tree(site["outside"]) == before


def test_a_link_at_the_snapshot_temporary_name_is_refused(primary: RedisServer, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"someone else's file")
    os.chmod(target, 0o644)
    out = tmp_path / "dump.rdb"
    (tmp_path / ".dump.rdb.partial").symlink_to(target)
    r = run_cli(["snapshot", "--out", str(out)], service_env(primary, None))
    assert r.returncode == 1 and "is a symbolic link" in r.stderr, r.stderr
    assert target.read_bytes() == b"someone else's file" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not out.exists()
    (tmp_path / ".dump.rdb.partial").unlink()
    (tmp_path / ".dump.rdb.partial").write_bytes(b"left by a crash")
    os.chmod(tmp_path / ".dump.rdb.partial", 0o644)
    r = run_cli(["snapshot", "--out", str(out)], service_env(primary, None))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().startswith(b"REDIS") and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_links_under_backup_dir_are_reported_never_followed_or_deleted_through(
    site: dict[str, Any], primary: RedisServer, service_factory: ServiceFactory, redis_factory: RedisFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    bk, outside = site["bk"], site["outside"]
    # a copy of a real chain outside, plus an unlisted file the service would "clean up"
    shutil.copytree(site["chain"], outside / "chain-copy")
    (outside / "chain-copy" / "unlisted").write_text("precious too")
    shutil.rmtree(site["chain"])
    linked = bk / "29991231T000000Z-aaaaaaaa-0"  # sorts last: the one the service would continue
    linked.symlink_to(outside / "chain-copy")
    (bk / ".partial-29991231T000000Z-bbbbbbbb-0").symlink_to(outside)
    before = tree(outside)

    listed = cli(bk, "list")
    assert listed.returncode == 0 and f"{linked.name}  DAMAGED: is a symbolic link" in listed.stdout, listed.stdout
    r = cli(bk, "verify")
    assert r.returncode == 1 and f"{linked.name}: is a symbolic link" in r.stdout, r.stdout

    svc = service_factory(service_env(primary, bk, ALLOW_OTHER_PRIMARY="true"))
    wait_until(lambda: any(p.is_dir() and not p.is_symlink() and naming.is_chain_id(p.name) for p in bk.iterdir()),
               timeout=CAUGHT_UP, message="a new chain of its own")  # fmt: skip
    primary.client().set("after", "1")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.stop() == 0
    assert tree(outside) == before, "nothing outside BACKUP_DIR was written or deleted"
    assert "not a directory of ours: ignored" in svc.stderr_text()
    # the real chain restores; the link is named as skipped
    r = cli(bk, "restore", "--to", str(tmp_path / "r"))
    assert r.returncode == 0 and f"skipping damaged chain {linked.name}: is a symbolic link" in r.stderr, r.stderr
    assert redis_factory.load_aof_dir(tmp_path / "r").digest() == primary.digest()


def test_a_linked_file_inside_a_chain_is_never_written_through(
    site: dict[str, Any], primary: RedisServer, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    bk, chain, outside = site["bk"], site["chain"], site["outside"]
    newest = sorted(chain.glob("*.incr.aof"))[-1]
    shutil.copyfile(newest, outside / newest.name)
    with (outside / newest.name).open("ab") as f:
        f.write(b"*3\r\n$3\r\nSET")  # an incomplete tail the service would cut, through the link
    newest.unlink()
    newest.symlink_to(outside / newest.name)
    before = tree(outside)
    r = cli(bk, "verify")
    assert r.returncode == 1 and f"{chain.name}/{newest.name}: is a symbolic link, not followed" in r.stdout, r.stdout
    r = cli(bk, "restore", "--to", str(tmp_path / "r"))
    assert r.returncode == 1 and "symbolic link" in r.stderr, r.stderr
    svc = service_factory(service_env(primary, bk, ALLOW_OTHER_PRIMARY="true"))
    svc.wait_for_output("is a symbolic link: not followed, the chain is not continued", timeout=CAUGHT_UP)
    wait_until(lambda: len([p for p in bk.iterdir() if naming.is_chain_id(p.name)]) == 2, timeout=CAUGHT_UP,
               message="a new chain begins")  # fmt: skip
    assert svc.stop() == 0
    assert tree(outside) == before


# --------------------------------------------------------------------------------------------- metadata


def _meta(chain: Path) -> dict[str, Any]:
    return read_meta(chain)


def _save(chain: Path, meta: dict[str, Any] | str) -> None:
    write_meta(chain, meta)


def _tampered_copy(site: dict[str, Any], name: str) -> Path:
    """A second chain, a copy of the good one under another id, to tamper with."""
    bad = site["bk"] / name
    shutil.copytree(site["chain"], bad)
    meta = _meta(bad)
    meta["chain"] = name
    _save(bad, meta)
    return bad


def _edit_file(field: str, value: Any) -> Any:
    def edit(meta: dict[str, Any]) -> dict[str, Any]:
        meta["files"][1][field] = value
        return meta

    return edit


TAMPERED = {
    "deeply nested JSON": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "header_size 10**15": (_edit_file("header_size", 10**15), "files[1].header_size: expected an integer 0..64"),
    "header_size -5": (_edit_file("header_size", -5), "files[1].header_size: expected an integer 0..64"),
    "header_size 'abc'": (_edit_file("header_size", "abc"), "files[1].header_size: expected an integer"),
    "a name ending in a newline": (_edit_file("name", "appendonly.aof.1.incr.aof\n"), "bad file name"),
    "an unknown field": (lambda m: {**m, "surprise": 1}, "surprise: unknown field"),
    "a list of files that is a string": (lambda m: {**m, "files": "x"}, "files: expected a list"),
}


@pytest.mark.parametrize("case", TAMPERED, ids=list(TAMPERED))
def test_tampered_metadata_is_one_damaged_chain_and_the_others_work(
    site: dict[str, Any], tmp_path: Path, case: str
) -> None:
    edit, expected = TAMPERED[case]
    bad = _tampered_copy(site, "29991231T000000Z-cccccccc-0")
    _save(bad, edit if isinstance(edit, str) else edit(_meta(bad)))
    r = cli(site["bk"], "list")
    assert r.returncode == 0, r.stderr
    assert f"{bad.name}  DAMAGED: " in r.stdout and expected in r.stdout, r.stdout
    assert site["chain"].name in r.stdout  # the good chain is still listed
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    r = cli(site["bk"], "verify")
    assert r.returncode == 1 and f"{bad.name}/redis-backup.json: " in r.stdout and expected in r.stdout, r.stdout
    assert f"{site['chain'].name}" not in r.stdout.split("chains verified")[0].replace(bad.name, "")
    r = cli(site["bk"], "restore", "--to", str(tmp_path / "r"))
    assert r.returncode == 0 and f"skipping damaged chain {bad.name}: " in r.stderr and expected in r.stderr


def test_the_service_begins_a_new_chain_after_a_tampered_one(
    site: dict[str, Any], primary: RedisServer, service_factory: ServiceFactory, redis_factory: RedisFactory
) -> None:
    bad = _tampered_copy(site, "29991231T000000Z-dddddddd-0")
    _save(bad, "[" * 100_000 + "]" * 100_000)
    svc = service_factory(service_env(primary, site["bk"], ALLOW_OTHER_PRIMARY="true"))
    svc.wait_for_output("cannot continue the latest chain; a new one will begin", timeout=CAUGHT_UP)
    primary.client().set("k", "v")
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert svc.alive()
    assert svc.stop() == 0
    assert (bad / naming.METADATA).read_text().startswith("[[[")  # left as it was


def test_a_huge_metadata_file_is_refused_in_bounded_memory(site: dict[str, Any], tmp_path: Path) -> None:
    bad = _tampered_copy(site, "29991231T000000Z-eeeeeeee-0")
    with (bad / naming.METADATA).open("wb") as f:
        f.truncate(1 << 30)  # 1 GB (sparse)
    # VmHWM, not ru_maxrss: a child started from pytest reports its parent's peak as its own ru_maxrss
    code = (
        "import sys\nfrom redis_backup.cli.main import main\nrc = main(['list'])\n"
        "hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0]\n"
        "print('maxrss', hwm, file=sys.stderr)\nsys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], env={**base_env(), "BACKUP_DIR": str(site["bk"])}, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert r.returncode == 0 and f"{bad.name}  DAMAGED: " in r.stdout and "larger than" in r.stdout, r.stdout
    maxrss_kib = int(r.stderr.split("maxrss ")[1].split()[0])
    assert maxrss_kib < 200 * 1024, f"peak RSS {maxrss_kib} KiB for a 1 GB metadata file"


# --------------------------------------------------------------------------------------------- signals


def _servers(pid: int) -> list[int]:
    """The children of pid that are a running scratch server (not the `redis-server --version` asked first)."""
    out = []
    for child in _children(pid):
        try:
            argv = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0] and b"--version" not in argv:  # (a zombie's command line is empty)
            out.append(child)
    return out


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def big_backup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A chain big enough that loading it in a scratch server takes a while (400,000 keys)."""
    base = tmp_path_factory.mktemp("hostile-big")
    bk = base / "backups"
    primary = RedisServer(base / "redis")
    try:
        primary.execute("DEBUG", "POPULATE", 400_000, "k", 64)
        svc = ServiceProcess(service_env(primary, bk), base / "service")
        try:
            wait_for_chain(svc, bk, timeout=60)
            primary.wait_replicas_caught_up(CAUGHT_UP)
        finally:
            assert svc.stop() == 0
    finally:
        primary.stop()
    yield bk


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("how", ["rdb", "verify-deep", "into"])
def test_a_signal_stops_the_scratch_server_and_removes_its_files(
    big_backup: Path, redis_factory: RedisFactory, tmp_path: Path, how: str, signum: int
) -> None:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    dest = tmp_path / "dest"
    args = {
        "rdb": ["restore", "--to", str(dest), "--format", "rdb"],
        "verify-deep": ["verify", "--deep"],
        "into": ["restore", "--into", "redis://127.0.0.1:1"],
    }[how]
    if how == "into":
        target = redis_factory()
        args[2] = f"redis://{target.host}:{target.port}"
    env = {**base_env(), "BACKUP_DIR": str(big_backup), "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "redis_backup", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    scratch: list[int] = []
    try:
        scratch = wait_until(lambda: _children(proc.pid), timeout=60, interval=0.005,
                             message="the scratch redis-server starts")  # fmt: skip
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signum, err
        assert f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err, err
        wait_until(lambda: not any(_alive(p) for p in scratch), timeout=10, message="the scratch server is gone")
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in scratch:  # what a failing version leaves behind (it is in a session of its own)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert list(tmp.iterdir()) == [], "temporary files left in TMPDIR"
    if dest.exists():
        assert list(dest.iterdir()) == [], "temporary files left in the destination"
    if how == "rdb":  # a rerun is not refused as "not empty"
        r = run_cli(args, {"BACKUP_DIR": str(big_backup), "TMPDIR": str(tmp)}, timeout=180)
        assert r.returncode == 0, r.stderr


def test_when_the_scratch_server_dies_the_error_names_it(
    big_backup: Path, redis_factory: RedisFactory, tmp_path: Path
) -> None:
    target = redis_factory()
    url = f"redis://{target.host}:{target.port}"
    env = {**base_env(), "BACKUP_DIR": str(big_backup)}
    proc = subprocess.Popen([sys.executable, "-m", "redis_backup", "restore", "--into", url], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        (scratch,) = wait_until(lambda: _servers(proc.pid), timeout=60, interval=0.005, message="scratch server")
        # once it has loaded and the copy runs, kill it
        wait_until(lambda: target.client().dbsize() > 0, timeout=60, interval=0.005, message="copy begins")
        os.kill(scratch, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    (line,) = error_lines(err)
    assert "scratch redis-server" in line and "stopped answering" in line, line


def test_insecure_tls_in_the_into_url_warns(site: dict[str, Any]) -> None:
    r = cli(site["bk"], "restore", "--into", "rediss://127.0.0.1:1?ssl_cert_reqs=none")
    assert "TLS server verification is off (ssl_cert_reqs=none in --into)" in r.stderr, r.stderr
    assert r.returncode == 1  # and nothing listens there


@pytest.mark.parametrize("level", ["debug", "info"])
def test_an_internal_error_is_one_line_and_debug_shows_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, level: str
) -> None:
    from redis_backup.cli import cmd_list as listing
    from redis_backup.cli import main as cli_main

    def broken(args: object, cfg: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(listing, "run", broken)
    monkeypatch.setenv("LOG_LEVEL", level)
    assert cli_main.main(["list", "--backup-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "redis-backup: internal error: RuntimeError: a bug (LOG_LEVEL=debug shows more)" in err
    assert ("Traceback" in err) == (level == "debug"), err


# --------------------------------------------------------------------------------------------- special files


@pytest.mark.parametrize("name", [naming.METADATA, naming.JOURNAL, "appendonly.aof.1.incr.aof", naming.MANIFEST])
def test_a_fifo_in_place_of_a_chain_file_is_reported_not_waited_on(
    site: dict[str, Any], tmp_path: Path, name: str
) -> None:
    """Opening a FIFO to read blocks until someone writes to it: list, verify and restore must not hang on
    one planted in a chain (run_cli raises TimeoutExpired if they do)."""
    path = site["chain"] / name
    path.unlink()
    os.mkfifo(path)
    for args in (["list"], ["verify"], ["restore", "--to", str(tmp_path / "r")]):
        r = run_cli(args, {"BACKUP_DIR": str(site["bk"])}, timeout=30)
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
        if args[0] == "list" or (args[0] == "restore" and name == naming.MANIFEST):  # restore derives the manifest
            assert r.returncode == 0, r.stderr
        else:
            assert r.returncode == 1, (args, r.stdout, r.stderr)
