"""SIGTERM and SIGINT against a real redis-server (and moto's S3 server): the service stops reading, stores
what it received, ships what the bucket lacks within SHUTDOWN_TIMEOUT_SECONDS and exits 0; a second
signal exits at once; what was stored before the signal restores, and a restart continues without a loss
or a duplicate (DEBUG DIGEST)."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.chains import chain_dirs, latest_chain, read_meta
from tests.support.proxy import TcpProxy
from tests.support.s3server import s3_env
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, ServiceProcess, service_env
from tests.test_s3_service import _remote_offset, _restore_from_bucket_only, _start
from tests.test_service_backup import start_service

CAUGHT_UP = 60.0
TIMEOUT = 20  # SHUTDOWN_TIMEOUT_SECONDS of these tests


@pytest.fixture
def bucket_env(s3_endpoint: str, s3_bucket: str) -> dict[str, str]:
    return {**s3_env(s3_endpoint), "S3_BUCKET": s3_bucket, "S3_PREFIX": "bk/"}


class _AckedWriter:
    """SET w:<i> then WAIT 1: `durable` counts the writes the service acknowledged (fsync'd on its disk)."""

    def __init__(self, primary: RedisServer) -> None:
        self.client = primary.client()
        self.durable = 0
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                i = self.sent
                self.client.set(f"w:{i}", i)
                self.sent = i + 1
                if self.client.execute_command("WAIT", 1, 200) == 1:
                    self.durable = i + 1
        except redis.RedisError:
            pass

    def __enter__(self) -> _AckedWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _wait_exit(svc: ServiceProcess, within: float) -> int:
    try:
        return svc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {within} s after the signal:\n{svc.stderr_text()[-3000:]}") from None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_writes_stores_what_was_acknowledged_and_a_restart_continues(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_backup_dir: Path, signum: int
) -> None:
    primary = redis_factory(extra_args=["--repl-backlog-size", "64mb"])
    env = service_env(primary, tmp_backup_dir, SHUTDOWN_TIMEOUT_SECONDS=TIMEOUT)
    svc = start_service(service_factory, primary, tmp_backup_dir, SHUTDOWN_TIMEOUT_SECONDS=TIMEOUT)
    with _AckedWriter(primary) as writer:
        wait_until(lambda: writer.durable >= 200, timeout=CAUGHT_UP, message="acknowledged writes")
        acked_before = writer.durable
        svc.signal(signum)
        assert _wait_exit(svc, TIMEOUT) == 0
        wait_until(lambda: writer.sent >= acked_before + 50, timeout=CAUGHT_UP, message="writes after the stop")
    err = svc.stderr_text()
    assert "capture stopped: everything received is stored" in err and "Traceback" not in err, err[-3000:]
    chain = latest_chain(tmp_backup_dir)
    meta = read_meta(chain)
    assert not meta["closed"]  # left open: the next start continues it
    restored = redis_factory.load_chain(chain).client()
    missing = [i for i in range(acked_before) if restored.get(f"w:{i}") != str(i).encode()]
    assert not missing, f"{len(missing)} acknowledged writes missing, first {missing[:5]}"
    # the restart continues the chain: nothing received before the stop is lost or stored twice
    svc2 = service_factory(env)
    svc2.wait_for_output("partial resync accepted", timeout=CAUGHT_UP)
    primary.wait_replicas_caught_up(CAUGHT_UP)
    assert len(chain_dirs(tmp_backup_dir)) == 1
    assert redis_factory.load_chain(latest_chain(tmp_backup_dir)).digest() == primary.digest()
    assert svc2.stop(timeout=TIMEOUT) == 0


@pytest.mark.slow
def test_after_sigterm_the_bucket_alone_holds_everything(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str]
) -> None:
    primary = redis_factory()
    bk = tmp_path / "bk"
    # S3_SYNC_SECONDS 3600: only the stop's drain can have shipped the last writes
    svc = _start(service_factory, primary, bk, bucket_env, S3_SYNC_SECONDS=3600, SHUTDOWN_TIMEOUT_SECONDS=TIMEOUT)
    wait_until(lambda: _remote_offset(bucket_env, bk) >= 0, timeout=CAUGHT_UP, message="the chain in the bucket")
    c = primary.client()
    for i in range(2000):
        c.set(f"k:{i}", "v" * 100)
    offset = primary.wait_replicas_caught_up(CAUGHT_UP)
    assert _remote_offset(bucket_env, bk) < offset  # not shipped yet
    svc.terminate()
    assert _wait_exit(svc, TIMEOUT + 10) == 0
    assert "Traceback" not in svc.stderr_text() and "shutdown timeout" not in svc.stderr_text()
    assert _remote_offset(bucket_env, bk) >= offset
    _restore_from_bucket_only(bucket_env, bk, tmp_path, redis_factory, primary)


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[TcpProxy]:
    """A way to the bucket that a test can cut."""
    with TcpProxy("127.0.0.1", int(s3_endpoint.rsplit(":", 1)[1])) as p:
        yield p


def _write_then_stop_with_the_bucket_gone(
    svc: ServiceProcess, primary: RedisServer, proxy: TcpProxy, bucket_env: dict[str, str], bk: Path
) -> int:
    """Once the chain is in the bucket: writes the bucket does not get (S3_SYNC_SECONDS is long), the
    bucket made unreachable, then SIGTERM; returns the primary's offset as of the stop."""
    wait_until(lambda: _remote_offset(bucket_env, bk) >= 0, timeout=CAUGHT_UP, message="the chain in the bucket")
    c = primary.client()
    for i in range(500):
        c.set(f"k:{i}", i)
    offset = primary.wait_replicas_caught_up(CAUGHT_UP)
    proxy.refuse()
    proxy.cut(abort=True)
    svc.terminate()
    return offset


@pytest.mark.slow
def test_a_second_signal_exits_at_once_when_the_bucket_does_not_answer(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str],
    proxy: TcpProxy,
) -> None:  # fmt: skip
    primary, bk = redis_factory(), tmp_path / "bk"
    env = {**bucket_env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    svc = _start(service_factory, primary, bk, env, S3_SYNC_SECONDS=3600, SHUTDOWN_TIMEOUT_SECONDS=600)
    _write_then_stop_with_the_bucket_gone(svc, primary, proxy, bucket_env, bk)
    svc.wait_for_output("capture stopped", timeout=CAUGHT_UP)
    assert svc.alive()  # the drain goes on: the bucket does not answer, the timeout is 600 s
    svc.terminate()
    assert _wait_exit(svc, 10) == 128 + signal.SIGTERM
    assert "stopped at once by a second signal" in svc.stderr_text()
    chain = latest_chain(bk)
    assert redis_factory.load_chain(chain).digest() == primary.digest()


@pytest.mark.slow
def test_what_the_timeout_leaves_is_logged_and_the_next_start_ships_it(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str],
    proxy: TcpProxy,
) -> None:  # fmt: skip
    primary, bk = redis_factory(), tmp_path / "bk"
    env = {**bucket_env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    svc = _start(service_factory, primary, bk, env, S3_SYNC_SECONDS=3600, SHUTDOWN_TIMEOUT_SECONDS=3)
    offset = _write_then_stop_with_the_bucket_gone(svc, primary, proxy, bucket_env, bk)
    assert _wait_exit(svc, 30) == 0
    lines = [line for line in svc.stderr_text().splitlines() if "stopped at the shutdown timeout" in line]
    assert len(lines) == 1 and "left=" in lines[0], svc.stderr_text()[-3000:]
    assert _remote_offset(bucket_env, bk) < offset  # the bucket really lacked it
    proxy.refuse(False)
    svc2 = service_factory(service_env(primary, bk, **env))
    wait_until(lambda: _remote_offset(bucket_env, bk) >= offset, timeout=CAUGHT_UP,
               message="the next start ships what the stop left")  # fmt: skip
    assert svc2.stop(timeout=TIMEOUT) == 0
    _restore_from_bucket_only(bucket_env, bk, tmp_path, redis_factory, primary)


@pytest.mark.slow
def test_a_signal_while_the_bucket_does_not_answer_at_the_start_keeps_the_timeout(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str],
    proxy: TcpProxy,
) -> None:  # fmt: skip
    """The bucket's checks at the start wait for an answer (read timeout 60 s, 5 attempts) on a worker
    thread: SIGTERM then still exits 0 by SHUTDOWN_TIMEOUT_SECONDS, not when the request gives up."""
    primary, bk = redis_factory(), tmp_path / "bk"
    proxy.stall()  # accepts, forwards nothing: a bucket that hangs
    env = {**bucket_env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    svc = service_factory(service_env(primary, bk, **env, SHUTDOWN_TIMEOUT_SECONDS=2))
    proxy.wait_for_connections(1, timeout=CAUGHT_UP)  # the start's first request waits for the bucket
    svc.terminate()
    assert _wait_exit(svc, 30) == 0
    assert "stopped at the shutdown timeout" in svc.stderr_text()
    assert "Traceback" not in svc.stderr_text()
