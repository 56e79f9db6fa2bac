"""The service's /metrics, /healthz, /readyz and /status, read from a running service against a real
redis-server (and moto's S3 server): the values match what happened. The readiness rules are table-tested
as the pure function they are."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from redis_backup.service.metrics import Metrics, ReadyInputs, metric_names, not_ready
from tests.support.s3server import s3_env
from tests.support.servers import RedisServer, free_port, wait_until
from tests.support.service import ServiceFactory, ServiceProcess, service_env

CONTRACT = {
    "redis_backup_attached", "redis_backup_primary_offset_bytes", "redis_backup_received_offset_bytes",
    "redis_backup_acked_offset_bytes", "redis_backup_captured_bytes_total", "redis_backup_captured_commands_total",
    "redis_backup_last_write_timestamp_seconds", "redis_backup_last_write_age_seconds",
    "redis_backup_snapshot_duration_seconds", "redis_backup_snapshot_size_bytes",
    "redis_backup_chains_started_total", "redis_backup_reconnects_total", "redis_backup_full_resyncs_total",
    "redis_backup_capture_gap_open", "redis_backup_upload_backlog_objects", "redis_backup_upload_backlog_bytes",
    "redis_backup_upload_lag_seconds", "redis_backup_s3_requests_total", "redis_backup_retention_deleted_chains_total",
    "redis_backup_verify_last_success", "redis_backup_verify_last_timestamp_seconds",
    "redis_backup_restorable_first_timestamp_seconds", "redis_backup_restorable_last_timestamp_seconds",
    "redis_backup_task_restarts_total", "redis_backup_build_info",
}  # fmt: skip


# ------------------------------------------------------------------------------------------ pure parts


def test_metric_names_are_the_contract() -> None:
    assert metric_names() == CONTRACT


def test_a_fresh_registry_exposes_the_shard_families_with_their_label() -> None:
    m = Metrics()
    m.shard("10.0.0.1:6379").chunk(100, 40, 3, True, 1.0)
    from prometheus_client import generate_latest

    text = generate_latest(m.registry).decode()
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["redis_backup_captured_commands_total"].labels == {"shard": "10.0.0.1:6379"}
    assert samples["redis_backup_captured_commands_total"].value == 3
    assert samples["redis_backup_received_offset_bytes"].value == 100
    assert "process_cpu_seconds_total" in samples  # the process collector is on the service's registry


BASE = ReadyInputs(attached=True, stream_silence_seconds=1.0, bucket=True, upload_lag_seconds=5.0,
                   max_upload_lag_seconds=300.0)  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, []),
        ({"attached": False}, ["not attached"]),
        ({"attached": False, "stream_silence_seconds": None}, ["not attached"]),  # one reason, not two
        ({"stream_silence_seconds": 31.0}, ["stalled"]),
        ({"stream_silence_seconds": None}, ["stalled"]),
        ({"upload_lag_seconds": 301.0}, ["upload lag 301 s"]),
        ({"upload_lag_seconds": 301.0, "bucket": False}, []),  # no bucket: the lag does not count
        ({"upload_lag_seconds": None}, []),
        ({"attached": False, "upload_lag_seconds": 900.0}, ["not attached", "upload lag 900 s"]),
    ],
)
def test_readiness(changes: dict[str, object], expected: list[str]) -> None:
    reasons = not_ready(ReadyInputs(**{**BASE.__dict__, **changes}))  # type: ignore[arg-type]
    assert len(reasons) == len(expected), reasons
    for reason, words in zip(reasons, expected, strict=True):
        assert words in reason


# ------------------------------------------------------------------------------------------ the service


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, text = _get(port, "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip


def _value(port: int, name: str, **labels: str) -> float | None:
    for (n, ls), v in _metrics(port).items():
        if n == name and all(dict(ls).get(k) == w for k, w in labels.items()):
            return v
    return None


def _start(
    service_factory: ServiceFactory, primary: RedisServer, bk: Path, **env: str | int
) -> tuple[ServiceProcess, int]:
    port = free_port()
    svc = service_factory(service_env(primary, bk, METRICS_PORT=port, METRICS_HOST="127.0.0.1", **env))
    wait_until(lambda: _get(port, "/readyz")[0] == 200, timeout=60, ignore=(OSError,), message="never ready")
    return svc, port


def test_offsets_counters_health_and_status(
    service_factory: ServiceFactory, primary: RedisServer, tmp_path: Path
) -> None:
    svc, port = _start(service_factory, primary, tmp_path / "bk")
    shard = f"{primary.host}:{primary.port}"
    c = primary.client()
    before_bytes = _value(port, "redis_backup_captured_bytes_total", shard=shard) or 0
    before_cmds = _value(port, "redis_backup_captured_commands_total", shard=shard) or 0
    for i in range(200):
        c.set(f"k{i}", "v" * 100)
    target = int(primary.info("replication")["master_repl_offset"])
    wait_until(lambda: _value(port, "redis_backup_acked_offset_bytes", shard=shard) == target, timeout=30,
               message=f"acked offset never reached {target}")  # fmt: skip
    assert _value(port, "redis_backup_received_offset_bytes", shard=shard) == target
    wait_until(lambda: _value(port, "redis_backup_primary_offset_bytes", shard=shard) == target, timeout=30)
    assert (_value(port, "redis_backup_captured_bytes_total", shard=shard) or 0) - before_bytes >= 200 * 100
    assert (_value(port, "redis_backup_captured_commands_total", shard=shard) or 0) - before_cmds >= 200
    assert _value(port, "redis_backup_attached", shard=shard) == 1
    assert _value(port, "redis_backup_full_resyncs_total", shard=shard) == 1
    assert _value(port, "redis_backup_chains_started_total", shard=shard) == 1
    assert (_value(port, "redis_backup_snapshot_size_bytes", shard=shard) or 0) > 0
    assert (_value(port, "redis_backup_last_write_age_seconds", shard=shard) or -1) >= 0

    assert _get(port, "/healthz") == (200, "ok\n")
    code, body = _get(port, "/status")
    assert code == 200
    status = json.loads(body)
    (s,) = status["shards"]
    chains = [p.name for p in (tmp_path / "bk").iterdir() if not p.name.startswith(".")]
    assert s["shard"] == shard and s["attached"] is True and s["ready"] is True and s["not_ready"] == []
    assert s["acked_offset"] == target
    assert s["backup"]["current"]["chain"] in chains
    # the window's last second is that of the last write stored (the summary is at most 5 s old)
    wait_until(lambda: (json.loads(_get(port, "/status")[1])["shards"][0]["backup"]["last_restorable_unix"]
               or 0) >= s["attached_since_unix"], timeout=30)  # fmt: skip
    first = _value(port, "redis_backup_restorable_first_timestamp_seconds", shard=shard)
    last = _value(port, "redis_backup_restorable_last_timestamp_seconds", shard=shard)
    assert first is not None and last is not None and first <= last
    assert svc.alive()


def test_readyz_follows_the_primary(service_factory: ServiceFactory, primary: RedisServer, tmp_path: Path) -> None:
    svc, port = _start(service_factory, primary, tmp_path / "bk")
    primary.stop()
    _, body = wait_until(lambda: (r := _get(port, "/readyz"))[0] == 503 and r, timeout=15,
                            message="still ready with the primary stopped")  # fmt: skip
    assert "not attached to the primary" in body
    assert _get(port, "/healthz")[0] == 200  # not ready, but alive: capture retries
    primary.restart()
    wait_until(
        lambda: _get(port, "/readyz")[0] == 200, timeout=30, message="not ready again after the primary returned"
    )
    shard = f"{primary.host}:{primary.port}"
    assert (_value(port, "redis_backup_reconnects_total", shard=shard) or 0) >= 1
    _, body = _get(port, "/status")
    assert json.loads(body)["shards"][0]["last_error"]["message"].startswith("replication interrupted")
    assert svc.alive()


def test_a_metrics_port_in_use_stops_the_start(service_factory: ServiceFactory, primary: RedisServer,
                                               tmp_path: Path) -> None:  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        svc = service_factory(service_env(primary, tmp_path / "bk", METRICS_PORT=port, METRICS_HOST="127.0.0.1"))
        assert svc.wait(30) == 2
    err = svc.stderr_text()
    assert f"127.0.0.1:{port} is in use" in err and "Traceback" not in err
    assert primary.replicas() == []  # refused before the primary was asked for anything


@pytest.mark.slow
def test_s3_requests_and_backlog(service_factory: ServiceFactory, primary: RedisServer, tmp_path: Path,
                                 s3_endpoint: str, s3_bucket: str) -> None:  # fmt: skip
    env = {**s3_env(s3_endpoint), "S3_BUCKET": s3_bucket, "S3_PREFIX": "bk/", "S3_SYNC_SECONDS": "1"}
    svc, port = _start(service_factory, primary, tmp_path / "bk", **env)
    shard = f"{primary.host}:{primary.port}"
    c = primary.client()
    for i in range(100):
        c.set(f"k{i}", "v" * 100)
    wait_until(lambda: (_value(port, "redis_backup_s3_requests_total", shard=shard, operation="PutObject",
                               result="ok") or 0) >= 2, timeout=60)  # fmt: skip
    wait_until(lambda: _value(port, "redis_backup_upload_backlog_bytes", shard=shard) == 0, timeout=60,
               message="the upload backlog never emptied")  # fmt: skip
    assert _value(port, "redis_backup_upload_backlog_objects", shard=shard) == 0
    assert _value(port, "redis_backup_upload_lag_seconds", shard=shard) == 0
    status = json.loads(_get(port, "/status")[1])["shards"][0]
    assert status["bucket"] == f"s3://{s3_bucket}/bk/" and status["upload"]["objects"] == 0
    assert svc.alive()


def test_idle_connections_neither_pile_up_nor_starve_the_backup(
    service_factory: ServiceFactory, primary: RedisServer, tmp_path: Path
) -> None:
    """Anyone who reaches METRICS_PORT (0.0.0.0 by default) could hold connections open without a request:
    each held a thread and a descriptor for ever, until the backup itself failed with EMFILE."""
    from redis_backup.service import endpoints

    MAX_CLIENTS = getattr(endpoints, "MAX_CLIENTS", 32)  # the module's bound
    svc, port = _start(service_factory, primary, tmp_path / "bk")
    fds = Path(f"/proc/{svc.pid}/fd")
    before = len(list(fds.iterdir()))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(MAX_CLIENTS * 3)]
    try:
        wait_until(lambda: all(s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"" for s in idle[MAX_CLIENTS:]),
                   timeout=30, ignore=(BlockingIOError,), message="connections beyond the bound stay open")  # fmt: skip
        assert len(list(fds.iterdir())) <= before + MAX_CLIENTS + 4
        # the rest are dropped once idle for CLIENT_TIMEOUT_SECONDS, and the endpoints answer again
        wait_until(lambda: all(s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"" for s in idle),
                   timeout=60, ignore=(BlockingIOError,), message="idle connections never dropped")  # fmt: skip
        assert _get(port, "/status")[0] == 200
    finally:
        for s in idle:
            s.close()
    assert svc.alive()
