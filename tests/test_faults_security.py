"""Secrets never show (logs at debug level in both formats, errors, --help, the process title), files
are private whatever the umask, and TLS verifies the server unless told otherwise."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.chains import chain_dirs
from tests.support.faults import CAUGHT_UP, error_lines, start_service, wait_for_chain
from tests.support.servers import RedisFactory, TlsMaterial, wait_until
from tests.support.service import ServiceFactory, service_env
from tests.support.workload import mixed_workload

COMMANDS = ("run", "snapshot", "list", "restore", "verify")


def _key_material(path: Path) -> list[str]:
    """The base64 lines of a PEM private key: none may ever be printed."""
    return [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]


def _assert_no_secret(text: str, secrets_: list[str], where: str) -> None:
    for s in secrets_:
        assert s not in text, f"a secret ({s[:6]}...) appears in {where}"


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_never_appear_in_logs_errors_help_or_the_process_title(
    redis_factory: RedisFactory,
    service_factory: ServiceFactory,
    tmp_path: Path,
    tls_material: TlsMaterial,
    log_format: str,
) -> None:
    password = "Pw-" + secrets.token_hex(12)
    wrong = "Wrong-" + secrets.token_hex(12)
    key_lines = _key_material(tls_material.client_key)
    forbidden = [password, wrong, *key_lines]
    primary = redis_factory(tls=tls_material, tls_auth_clients="yes", requirepass=password)
    backup_dir = tmp_path / "backups"
    env = service_env(primary, backup_dir, LOG_LEVEL="debug", LOG_FORMAT=log_format)
    assert env["REDIS_PASSWORD"] == password and env["REDIS_TLS_KEY"] == str(tls_material.client_key)

    # The service at work: its title and its logs.
    svc = start_service(service_factory, primary, backup_dir, LOG_LEVEL="debug", LOG_FORMAT=log_format)
    cmdline = Path(f"/proc/{svc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    comm = Path(f"/proc/{svc.pid}/comm").read_text()
    mixed_workload(primary.client, rounds=1, seed=91)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    primary.execute("CLIENT", "KILL", "TYPE", "replica")  # a reconnect: AUTH is sent again
    svc.wait_for_output("partial resync accepted", timeout=20)
    assert svc.stop() == 0
    _assert_no_secret(cmdline + comm, forbidden, "the process title")
    _assert_no_secret(svc.output_text(), forbidden, "the service's output")

    # A wrong password: one error line, exit 2, the password not echoed.
    bad = service_factory(service_env(primary, backup_dir, REDIS_PASSWORD=wrong, LOG_LEVEL="debug",
                                      LOG_FORMAT=log_format))  # fmt: skip
    assert bad.wait(20) == 2
    assert len(error_lines(bad.stderr_text())) == 1
    _assert_no_secret(bad.output_text(), forbidden, "the wrong-password error")

    # The one-shot snapshot, right and wrong.
    out = tmp_path / "one.rdb"
    snap = service_factory.run_cli(["snapshot", "--out", str(out)], env)
    assert snap.returncode == 0, snap.stderr
    _assert_no_secret(snap.stdout + snap.stderr, forbidden, "snapshot's output")
    snap_bad = service_factory.run_cli(["snapshot", "--out", str(out)], {**env, "REDIS_PASSWORD": wrong})
    assert snap_bad.returncode == 2
    _assert_no_secret(snap_bad.stdout + snap_bad.stderr, forbidden, "snapshot's error")

    # --help of every command, with the secrets in the environment: defaults never show them.
    for command in ("", *COMMANDS):
        shown = service_factory.run_cli([command, "--help"] if command else ["--help"], env)
        assert shown.returncode == 0, shown.stderr
        _assert_no_secret(shown.stdout + shown.stderr, forbidden, f"{command or 'top-level'} --help")

    # A password given as an option with a bad companion value: the error masks it.
    masked = service_factory.run_cli(["run", "--redis-password", wrong, "--redis-port", "0"], env)
    assert masked.returncode == 2
    _assert_no_secret(masked.stdout + masked.stderr, forbidden, "a configuration error")


def test_restore_into_a_server_does_not_print_the_target_password(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    primary = redis_factory()
    start_service(service_factory, primary, tmp_backup_dir).stop()
    password = "Target-" + secrets.token_hex(12)
    target = redis_factory(requirepass=password)
    url = f"redis://:{password}@{target.host}:{target.port}"
    done = service_factory.run_cli(["restore", "--into", url, "--backup-dir", str(tmp_backup_dir)])
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout + done.stderr


def test_backup_dir_created_by_the_service_and_everything_in_it_are_private_under_umask_0(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    server = redis_factory()
    backup_dir = tmp_path / "new" / "backups"  # does not exist yet
    with _umask(0):
        svc = service_factory(service_env(server, backup_dir, SEGMENT_MAX_BYTES=4096))
        chain = wait_for_chain(svc, backup_dir)
        mixed_workload(server.client, rounds=1, seed=92)
        server.wait_replicas_caught_up(CAUGHT_UP)
        wait_until(lambda: len(list(chain.glob("*.incr.aof"))) >= 3, timeout=10, message="rotated files")
        out = tmp_path / "snap.rdb"
        snap = service_factory.run_cli(["snapshot", "--out", str(out)], service_env(server, None))
    assert snap.returncode == 0, snap.stderr
    assert svc.stop() == 0
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o700
    for path in [chain, *chain.iterdir()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path.name}: {oct(mode)}"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_tls_verifies_the_server_by_default_without_a_ca_setting(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, tls_material: TlsMaterial
) -> None:
    """No REDIS_TLS_CA_CERT: the system CAs are used, and they do not know the test CA."""
    primary = redis_factory(tls=tls_material)
    env = service_env(primary, tmp_backup_dir, REDIS_TLS_CA_CERT=None, REDIS_TLS_CERT=None, REDIS_TLS_KEY=None,
                      MAX_RETRIES=1)  # fmt: skip
    svc = service_factory(env)
    assert svc.wait(20) == 1
    (line,) = error_lines(svc.stderr_text())
    assert re.search(r"certificate .* not trusted", line), line
    assert "verification is off" not in svc.stderr_text()
    assert not chain_dirs(tmp_backup_dir)
