"""The test support code, checked against real redis-servers (no redis_backup code involved)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.chains import chain_dirs, manifest_entries
from tests.support.fake_primary import (
    CLOSE,
    FakePrimary,
    crc64,
    empty_rdb,
    fullresync_reply,
    resp_command,
)
from tests.support.servers import (
    RedisFactory,
    RedisServer,
    RedisStartError,
    TlsMaterial,
    free_port,
    ipv6_available,
    load_chain,
    parse_replica_line,
    wait_until,
)
from tests.support.service import ServiceFactory, ServiceProcess, base_env, service_env
from tests.support.workload import BackgroundWriter, bulk_load, mixed_workload

EMPTY_DIGEST = "0" * 40


def test_wait_until_returns_value_and_times_out() -> None:
    calls: list[int] = []

    def third_time() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert wait_until(third_time, timeout=5) == 3
    with pytest.raises(AssertionError, match=r"never true.*last value: 0"):
        wait_until(lambda: 0, timeout=0.05, message="never true")
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        wait_until(lambda: 1 / 0, timeout=0.05, ignore=(ZeroDivisionError,))


def test_free_port_is_bindable_and_unique() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))


def test_parse_replica_line() -> None:
    r = parse_replica_line("ip=127.0.0.1,port=6380,state=online,offset=1234,lag=0")
    assert (r.ip, r.port, r.state, r.offset, r.lag) == ("127.0.0.1", 6380, "online", 1234, 0)


def test_replica_gets_same_digest_as_primary(redis_factory: RedisFactory, primary: RedisServer) -> None:
    replica = redis_factory.replica_of(primary)
    n = mixed_workload(primary.client, rounds=10, seed=7)
    assert n > 1000
    offset = primary.wait_replicas_caught_up(timeout=10)
    assert 0 < offset <= primary.master_repl_offset()
    assert primary.replica_offsets() and primary.replicas()[0].state == "online"
    digest = primary.digest()
    assert digest != EMPTY_DIGEST
    assert replica.digest() == digest
    assert set(primary.keyspace()) == {0, 1, 3}
    assert primary.client(1).get("small:5") is not None


def test_workload_is_deterministic(redis_factory: RedisFactory) -> None:
    a, b = redis_factory(), redis_factory()
    mixed_workload(a.client, rounds=3, seed=3)
    mixed_workload(b.client, rounds=3, seed=3)
    assert a.digest() == b.digest()


def test_load_rdb_of_a_redis_cli_dump(
    redis_factory: RedisFactory, primary: RedisServer, tmp_path: Path
) -> None:
    mixed_workload(primary.client, rounds=3, seed=1)
    bulk_load(primary.client(2), 2000, 64)
    rdb = primary.dump_rdb(tmp_path / "dump.rdb")
    check = subprocess.run(["redis-check-rdb", str(rdb)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    loaded = redis_factory.load_rdb(rdb)
    assert loaded.digest() == primary.digest()
    assert loaded.keyspace()[2] >= 2000


def test_load_aof_dir_and_chain(redis_factory: RedisFactory, tmp_path: Path) -> None:
    source = redis_factory(appendonly=True, extra_args=["--appendfsync", "always"])
    mixed_workload(source.client, rounds=2, seed=5)
    digest = source.digest()
    source.stop()
    aof_dir = source.dir / "appendonlydir"
    assert (aof_dir / "appendonly.aof.manifest").is_file()

    loaded = redis_factory.load_aof_dir(source.dir)
    assert loaded.digest() == digest
    loaded.stop()

    # The same files, under a chain-like name, through load_chain.
    chain = tmp_path / "chains" / "20261125T190000Z-1a2b3c4d-0"
    chain.parent.mkdir()
    (chain.parent / ".partial-20261125T190001Z-1a2b3c4d-9").mkdir()
    subprocess.run(["cp", "-r", str(aof_dir), str(chain)], check=True)
    assert chain_dirs(chain.parent) == [chain]
    assert [e["type"] for e in manifest_entries(chain)][:1] == ["b"]
    with load_chain(chain, tmp_path / "scratch") as server:
        assert server.digest() == digest
    assert not server.alive()
    assert (chain / "appendonly.aof.manifest").read_bytes()  # the original is untouched

    with pytest.raises(FileNotFoundError):
        load_chain(tmp_path, tmp_path / "scratch")


def test_bad_rdb_is_reported_with_log(redis_factory: RedisFactory, tmp_path: Path) -> None:
    bad = tmp_path / "bad.rdb"
    bad.write_bytes(b"REDIS0010\xfe\x00garbage")
    with pytest.raises(RedisStartError) as info:
        redis_factory.load_rdb(bad)
    assert "redis.log" in str(info.value)


def test_restart_kill_and_background_writer(primary: RedisServer) -> None:
    port, pid = primary.port, primary.pid
    with BackgroundWriter(primary.client()) as writer:
        wait_until(lambda: writer.written >= 50, timeout=10, message="background writes")
    assert writer.error is None
    assert int(primary.client().get("bg:count") or 0) == writer.written
    primary.restart()
    assert primary.port == port and primary.pid != pid
    assert primary.client().dbsize() == 0  # --save "": nothing survives a restart
    primary.kill()
    assert not primary.alive()


def test_password_and_acl_users(redis_factory: RedisFactory) -> None:
    server = redis_factory(
        requirepass="s3cret",
        acl_users=["backup on >bpass ~* &* +@all"],
    )
    assert server.client().ping()
    assert server.client(username="backup", password="bpass").ping()
    with pytest.raises(redis.AuthenticationError):
        server.client(username="backup", password="wrong").ping()
    with pytest.raises(redis.AuthenticationError):
        server.client(password=None).set("k", "v")
    env = service_env(server, Path("/nonexistent"), SEGMENT_MAX_BYTES=1024)
    assert env["REDIS_PASSWORD"] == "s3cret" and env["SEGMENT_MAX_BYTES"] == "1024"


def test_tls_server_trusts_ca_and_refuses_rogue(
    redis_factory: RedisFactory, tls_material: TlsMaterial
) -> None:
    server = redis_factory(tls=tls_material, tls_auth_clients="yes")
    c = server.client()
    c.set(b"k", b"v")
    assert c.get(b"k") == b"v"
    assert server.digest() != EMPTY_DIGEST
    env = service_env(server, Path("/b"))
    assert env["REDIS_TLS_ENABLED"] == "true" and env["REDIS_TLS_CA_CERT"] == str(tls_material.ca_cert)

    # The client does not trust the server's CA.
    with pytest.raises(redis.ConnectionError):
        server.client(ssl_ca_certs=str(tls_material.rogue_ca_cert), track=False).ping()
    # The server does not trust the client's certificate.
    with pytest.raises(redis.ConnectionError):
        server.client(
            ssl_certfile=str(tls_material.rogue_client_cert),
            ssl_keyfile=str(tls_material.rogue_client_key),
            track=False,
        ).ping()
    # Plain TCP to the TLS port gets nowhere.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2, retry=Retry(NoBackoff(), 0)).ping()

    # A server presenting a certificate the CA did not sign is refused by a client trusting the CA.
    rogue = redis_factory(tls=tls_material, server_identity="rogue")
    assert rogue.client().ping()  # admin client trusts the rogue CA
    with pytest.raises(redis.ConnectionError):
        rogue.client(ssl_ca_certs=str(tls_material.ca_cert), track=False).ping()

    # A server whose certificate names another host: refused when the hostname is checked.
    wronghost = redis_factory(tls=tls_material, server_identity="wronghost")
    assert wronghost.client().ping()
    with pytest.raises(redis.ConnectionError):
        wronghost.client(ssl_check_hostname=True, track=False).ping()


def test_tls_replication(redis_factory: RedisFactory, tls_material: TlsMaterial) -> None:
    primary = redis_factory(tls=tls_material)
    replica = redis_factory.replica_of(primary)
    mixed_workload(primary.client, rounds=1, seed=2)
    primary.wait_replicas_caught_up()
    assert replica.digest() == primary.digest()


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_bind(redis_factory: RedisFactory) -> None:
    server = redis_factory(bind="127.0.0.1 -::1")
    assert server.client(host="::1").ping()


def test_empty_rdb_and_crc64(redis_factory: RedisFactory, tmp_path: Path) -> None:
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA  # the check value in Redis' crc64.c
    path = tmp_path / "empty.rdb"
    path.write_bytes(empty_rdb())
    check = subprocess.run(["redis-check-rdb", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout
    assert redis_factory.load_rdb(path).digest() == EMPTY_DIGEST


def test_fake_primary_records_handshake() -> None:
    payload = fullresync_reply(empty_rdb()) + resp_command("SELECT", 0) + resp_command("SET", "k", "v")
    with FakePrimary(psync_reply=payload) as fake:
        with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as s:
            s.sendall(b"PING\r\n" + resp_command("REPLCONF", "listening-port", 1234))
            assert _recv_exactly(s, 12) == b"+PONG\r\n+OK\r\n"
            s.sendall(resp_command("PSYNC", "?", -1) + resp_command("REPLCONF", "ACK", 0))
            assert _recv_exactly(s, len(payload)) == payload
            fake.wait_for_command(b"REPLCONF ACK")
            fake.send(resp_command("PING"))
            assert _recv_exactly(s, 14) == resp_command("PING")
        assert fake.commands() == [
            [b"PING"],
            [b"REPLCONF", b"listening-port", b"1234"],
            [b"PSYNC", b"?", b"-1"],
            [b"REPLCONF", b"ACK", b"0"],
        ]
        assert fake.connections == 1 and not fake.errors


def test_fake_primary_steps_and_close() -> None:
    steps = [(b"PING", b"-NOAUTH Authentication required.\r\n"), (b"AUTH", CLOSE)]
    with FakePrimary(steps) as fake:
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as s:
                s.sendall(resp_command("PING"))
                assert _recv_exactly(s, 34).startswith(b"-NOAUTH")
                s.sendall(resp_command("AUTH", "pw"))
                assert s.recv(10) == b""  # closed by the server
        fake.wait_for_connections(2)
        assert fake.commands(b"auth") == [[b"AUTH", b"pw"]] * 2
        assert not fake.mismatches


def test_service_env_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "leak.example")
    monkeypatch.setenv("BACKUP_DIR", "/leak")
    monkeypatch.setenv("MAX_RETRIES", "99")
    env = base_env()
    assert not {"REDIS_HOST", "BACKUP_DIR", "MAX_RETRIES"} & set(env)
    assert "PATH" in env


def test_service_process_lifecycle(service_factory: ServiceFactory) -> None:
    """The process plumbing, with a stand-in child (the real service is tested elsewhere)."""
    child = [
        sys.executable,
        "-c",
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\n"
        "print('started', os.environ.get('BACKUP_DIR'), flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "while True: signal.pause()\n",
    ]
    svc = service_factory({"BACKUP_DIR": "/b"}, args=[], command=child)
    svc.wait_for_output("started /b", stream="stdout")
    svc.wait_for_output("to stderr", stream="stderr")
    assert svc.alive()
    with pytest.raises(subprocess.TimeoutExpired):
        svc.wait(timeout=0.05)
    svc.terminate()
    assert svc.wait(timeout=10) == 3
    assert not svc.alive()

    svc2 = service_factory({}, args=[], command=child)
    svc2.wait_for_output("started None")
    assert svc2.kill9() == -signal.SIGKILL

    svc3 = service_factory({}, args=[], command=[sys.executable, "-c", "raise SystemExit(7)"])
    with pytest.raises(AssertionError, match="exited"):
        svc3.wait_for_output("never printed")
    assert svc3.wait(timeout=10) == 7

    leaked = service_factory({}, args=[], command=child)
    leaked.wait_for_output("started")  # left running: the fixture must kill it

    assert ServiceProcess({}, svc.workdir, start=False).argv[1:] == ["-m", "redis_backup", "run"]


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf
