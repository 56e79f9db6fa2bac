"""Reaching the primary: passwords, ACL users, TLS, IPv6, and one clear line for each way it fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chains import chain_dirs, latest_chain
from tests.support.fake_primary import FakePrimary, empty_rdb, fullresync_reply
from tests.support.servers import RedisFactory, RedisServer, TlsMaterial, free_port, ipv6_available, wait_until
from tests.support.service import ServiceFactory, service_env
from tests.support.workload import mixed_workload


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("redis-backup: ")]


def backs_up(
    primary: RedisServer, redis_factory: RedisFactory, service_factory: ServiceFactory, backup_dir: Path, **env: str
) -> None:
    svc = service_factory(service_env(primary, backup_dir, **env))
    wait_until(lambda: chain_dirs(backup_dir) or not svc.alive(), timeout=30, message="a chain")
    assert svc.alive(), svc.stderr_text()
    mixed_workload(primary.client, rounds=2)
    primary.wait_replicas_caught_up(30)
    assert redis_factory.load_chain(latest_chain(backup_dir)).digest() == primary.digest()


def test_password(redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path) -> None:
    primary = redis_factory(requirepass="s3cret pass")
    backs_up(primary, redis_factory, service_factory, tmp_backup_dir)


def test_acl_user_with_only_psync_replconf_ping_is_enough(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    primary = redis_factory(
        acl_users=["admin on >adminpw ~* &* +@all", "backup on >backuppw -@all +psync +replconf +ping"],
        admin_username="admin", admin_password="adminpw",
    )
    backs_up(
        primary, redis_factory, service_factory, tmp_backup_dir, REDIS_USERNAME="backup", REDIS_PASSWORD="backuppw"
    )


def test_wrong_password_exits_2_with_one_clear_line(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    primary = redis_factory(requirepass="right")
    svc = service_factory(service_env(primary, tmp_backup_dir, REDIS_PASSWORD="Wr0ngP4ss-xyz", MAX_RETRIES=0))
    assert svc.wait(20) == 2
    lines = error_lines(svc.stderr_text())
    assert len(lines) == 1 and "authentication failed" in lines[0] and "REDIS_PASSWORD" in lines[0], lines
    assert "Traceback" not in svc.stderr_text()
    assert "Wr0ngP4ss-xyz" not in svc.stderr_text()  # the password is never echoed
    assert not chain_dirs(tmp_backup_dir)


def test_missing_acl_permission_exits_2_naming_what_is_needed(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    primary = redis_factory(
        acl_users=["admin on >adminpw ~* &* +@all", "weak on >weakpw -@all +replconf +ping"],
        admin_username="admin", admin_password="adminpw",
    )
    svc = service_factory(service_env(primary, tmp_backup_dir, REDIS_USERNAME="weak", REDIS_PASSWORD="weakpw"))
    assert svc.wait(20) == 2
    lines = error_lines(svc.stderr_text())
    assert len(lines) == 1 and "+psync +replconf +ping" in lines[0], lines


def test_unreachable_host_retries_then_exits_with_one_clear_line(
    service_factory: ServiceFactory, tmp_backup_dir: Path
) -> None:
    env = service_env(None, tmp_backup_dir, REDIS_HOST="127.0.0.1", REDIS_PORT=free_port(), MAX_RETRIES=3)
    svc = service_factory(env)
    assert svc.wait(30) == 1
    lines = error_lines(svc.stderr_text())
    assert len(lines) == 1, lines
    assert "giving up after 3 failed attempts" in lines[0] and "Connection refused" in lines[0]
    assert svc.stderr_text().count("replication interrupted") == 3
    assert "Traceback" not in svc.stderr_text()


def test_unknown_host_name_is_one_clear_line(service_factory: ServiceFactory, tmp_backup_dir: Path) -> None:
    svc = service_factory(service_env(None, tmp_backup_dir, REDIS_HOST="no-such-host.invalid", MAX_RETRIES=1))
    assert svc.wait(30) == 1
    (line,) = error_lines(svc.stderr_text())
    assert "cannot resolve 'no-such-host.invalid'" in line


def test_loading_primary_is_retried(service_factory: ServiceFactory, tmp_backup_dir: Path) -> None:
    """-LOADING is something a real primary only says while it loads: a fake one says it on cue."""

    def reply(conn: object) -> bytes:
        if fake.connections == 1:
            return b"-LOADING Redis is loading the dataset in memory\r\n"
        return fullresync_reply(empty_rdb())

    with FakePrimary(psync_reply=reply) as fake:
        env = service_env(None, tmp_backup_dir, REDIS_HOST="127.0.0.1", REDIS_PORT=fake.port, MAX_RETRIES=2)
        svc = service_factory(env)
        wait_until(lambda: chain_dirs(tmp_backup_dir), timeout=20, message="chain after retry")
        assert fake.connections == 2
        assert "LOADING" in svc.stderr_text()
        assert svc.alive()


def test_psync_only_after_every_handshake_reply(service_factory: ServiceFactory, tmp_backup_dir: Path) -> None:
    with FakePrimary(psync_reply=fullresync_reply(empty_rdb())) as fake:
        env = service_env(
            None, tmp_backup_dir, REDIS_HOST="127.0.0.1", REDIS_PORT=fake.port, REDIS_PASSWORD="pw"
        )
        service_factory(env)
        fake.wait_for_psync()
        names = [c[0].upper() for c in fake.connection(0).received]
        assert names[:2] == [b"PING", b"AUTH"]
        assert names.count(b"REPLCONF") >= 2 and names.index(b"PSYNC") > max(
            i for i, n in enumerate(names) if n == b"REPLCONF" and fake.connection(0).received[i][1] != b"ACK"
        )
        psync = next(c for c in fake.connection(0).received if c[0].upper() == b"PSYNC")
        assert psync == [b"PSYNC", b"?", b"-1"]
        capa = [c for c in fake.connection(0).received if c[:2] == [b"REPLCONF", b"capa"]]
        assert capa and b"eof" in capa[0] and b"psync2" in capa[0]


def test_tls_with_client_certificate(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, tls_material: TlsMaterial
) -> None:
    primary = redis_factory(tls=tls_material, tls_auth_clients="yes")
    backs_up(primary, redis_factory, service_factory, tmp_backup_dir)


def test_tls_certificate_not_signed_by_the_ca_is_refused(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, tls_material: TlsMaterial
) -> None:
    primary = redis_factory(tls=tls_material, server_identity="rogue")
    env = service_env(primary, tmp_backup_dir, REDIS_TLS_CA_CERT=tls_material.ca_cert, MAX_RETRIES=1)
    svc = service_factory(env)
    assert svc.wait(20) == 1
    (line,) = error_lines(svc.stderr_text())
    assert "certificate" in line and "not trusted" in line and "REDIS_TLS_CA_CERT" in line, line
    assert not chain_dirs(tmp_backup_dir)


def test_tls_insecure_needs_explicit_setting_and_warns(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, tls_material: TlsMaterial
) -> None:
    primary = redis_factory(tls=tls_material, server_identity="rogue")
    svc = service_factory(service_env(primary, tmp_backup_dir, REDIS_TLS_INSECURE="true"))
    wait_until(lambda: chain_dirs(tmp_backup_dir), timeout=20, message="chain")
    assert "verification is off" in svc.stderr_text()


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback here")
def test_ipv6(redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path) -> None:
    primary = redis_factory(bind="::1")
    backs_up(primary, redis_factory, service_factory, tmp_backup_dir, REDIS_HOST="::1")


def test_host_name(redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path) -> None:
    primary = redis_factory()
    backs_up(primary, redis_factory, service_factory, tmp_backup_dir, REDIS_HOST="localhost")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_PORT", "abc"),
        ("REDIS_PORT", "70000"),
        ("MAX_RETRIES", "-1"),
        ("SEGMENT_MAX_BYTES", "10"),
        ("SEGMENT_MAX_SECONDS", "0"),
        ("RETRY_DELAY_SECONDS", "soon"),
        ("REDIS_TLS_ENABLED", "maybe"),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_invalid_configuration_is_one_line_and_exit_2(
    service_factory: ServiceFactory, tmp_backup_dir: Path, name: str, value: str
) -> None:
    result = service_factory.run_cli(["run"], service_env(None, tmp_backup_dir, **{name: value}), timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert name in result.stderr and "invalid value" in result.stderr


def test_option_wins_over_environment(service_factory: ServiceFactory, tmp_backup_dir: Path) -> None:
    result = service_factory.run_cli(
        ["run", "--max-retries", "x"], service_env(None, tmp_backup_dir, MAX_RETRIES="3"), timeout=30
    )
    assert result.returncode == 2 and "--max-retries" in result.stderr


def test_every_command_has_help(service_factory: ServiceFactory) -> None:
    top = service_factory.run_cli(["--help"])
    assert top.returncode == 0
    commands = [c for c in ("run", "snapshot", "list", "restore", "verify") if f"    {c}" in top.stdout]
    assert {"run", "snapshot"} <= set(commands)
    for command in commands:
        result = service_factory.run_cli([command, "--help"])
        assert result.returncode == 0 and "usage:" in result.stdout, command
    assert "REDIS_PASSWORD" in service_factory.run_cli(["run", "--help"]).stdout
