"""Retention against a real S3 endpoint (moto's server) from real redis-servers and the service as a
process: with BACKUP_MAX_FILES the service prunes after each new chain, locally and in the bucket, and the
bucket alone still restores the primary; a `redis-backup prune` killed (-9) in the middle of deleting a
chain from the bucket leaves nothing any listing shows half deleted, and the next prune finishes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.pristine import chain_names, new_chain
from tests.support.proxy import TcpProxy
from tests.support.s3server import admin_client, s3_env
from tests.support.servers import RedisFactory, RedisServer, wait_until
from tests.support.service import ServiceFactory, ok, run_cli, service_env
from tests.test_s3_service import _remote_offset, _restore_from_bucket_only

pytestmark = pytest.mark.slow
CAUGHT_UP = 60.0


@pytest.fixture
def bucket_env(s3_endpoint: str, s3_bucket: str) -> dict[str, str]:
    return {**s3_env(s3_endpoint), "S3_BUCKET": s3_bucket, "S3_PREFIX": "bk/"}


def bucket_chains(bucket_env: dict[str, str], bk: Path) -> dict[str, Any]:
    """`list --source s3 --json`: the chains the bucket offers, and those it cannot read."""
    r = ok(run_cli(["list", "--source", "s3", "--json"], {**bucket_env, "BACKUP_DIR": str(bk)}))
    doc: dict[str, Any] = json.loads(r.stdout)
    return {"chains": [c["chain"] for c in doc["chains"]], "broken": [b["chain"] for b in doc["broken"]],
            "states": {c["chain"]: c["state"] for c in doc["chains"]}}  # fmt: skip


def local_chains(bk: Path) -> dict[str, Any]:
    r = ok(run_cli(["list", "--json"], {"BACKUP_DIR": str(bk)}))
    doc = json.loads(r.stdout)
    return {"chains": [c["chain"] for c in doc["chains"]], "broken": [b["chain"] for b in doc["broken"]]}


def keys_under(endpoint: str, bucket: str, prefix: str) -> list[str]:
    out = admin_client(endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in out.get("Contents", [])]


def _caught_up(bucket_env: dict[str, str], bk: Path, primary: RedisServer) -> None:
    offset = primary.wait_replicas_caught_up(CAUGHT_UP)
    wait_until(lambda: _remote_offset(bucket_env, bk) >= offset, timeout=CAUGHT_UP, interval=0.2,
               message="the bucket catches up")  # fmt: skip


def test_the_service_prunes_after_each_new_chain_locally_and_in_the_bucket(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str]
) -> None:
    primary = redis_factory()
    bk = tmp_path / "bk"
    svc = service_factory(service_env(primary, bk, **bucket_env, BACKUP_MAX_FILES=2, S3_SYNC_SECONDS=1))
    primary.wait_replicas(1, timeout=CAUGHT_UP)
    first = wait_until(lambda: chain_names(bk), timeout=CAUGHT_UP, message="the first chain")[0]
    made = [first] + [new_chain(primary, bk, tag=str(i)) for i in range(3)]
    a, b, c, d = made
    wait_until(lambda: chain_names(bk) == [c, d], timeout=CAUGHT_UP, message="two chains left locally")
    wait_until(lambda: bucket_chains(bucket_env, bk)["chains"] == [c, d], timeout=CAUGHT_UP, interval=0.2,
               message="two chains left in the bucket")  # fmt: skip
    for gone in (a, b):
        assert keys_under(bucket_env["S3_ENDPOINT_URL"], bucket_env["S3_BUCKET"], f"bk/{gone}/") == []
    _caught_up(bucket_env, bk, primary)
    assert svc.alive()
    log = svc.stderr_text()
    assert log.count("retention deletes a chain") == 4, log[-3000:]  # a and b, each in both places
    assert "beyond BACKUP_MAX_FILES=2" in log and "after pruning" in log
    assert svc.stop() == 0
    assert "Traceback" not in svc.stderr_text()
    _restore_from_bucket_only(bucket_env, bk, tmp_path, redis_factory, primary)


def test_kill9_in_the_middle_of_a_prune_is_never_listed_and_the_next_prune_finishes_it(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str]
) -> None:
    primary = redis_factory()
    bk = tmp_path / "bk"
    svc = service_factory(service_env(primary, bk, **bucket_env, BACKUP_MAX_FILES=0, S3_SYNC_SECONDS=1))
    primary.wait_replicas(1, timeout=CAUGHT_UP)
    first = wait_until(lambda: chain_names(bk), timeout=CAUGHT_UP, message="the first chain")[0]
    a, b, c = first, new_chain(primary, bk, tag="1"), new_chain(primary, bk, tag="2")
    wait_until(lambda: bucket_chains(bucket_env, bk)["states"] == {a: "closed", b: "closed", c: "open"},
               timeout=CAUGHT_UP, interval=0.2, message="every chain in the bucket")  # fmt: skip
    _caught_up(bucket_env, bk, primary)
    assert svc.stop() == 0
    endpoint, bucket = bucket_env["S3_ENDPOINT_URL"], bucket_env["S3_BUCKET"]
    host, port = endpoint.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as proxy:
        # the request that deletes a's heads reaches S3; its answer never comes back
        stalled = proxy.stall_after_up(f"<Key>bk/{a}/h-".encode())
        env = {**bucket_env, "BACKUP_DIR": str(bk), "BACKUP_MAX_FILES": "1",
               "S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}  # fmt: skip
        prune = service_factory(env, args=("prune",))
        assert stalled.wait(CAUGHT_UP), prune.stderr_text()[-3000:]
        wait_until(lambda: f"bk/{a}/h-" not in " ".join(keys_under(endpoint, bucket, f"bk/{a}/")),
                   timeout=CAUGHT_UP, message="S3 deleted a's heads")  # fmt: skip
        left = keys_under(endpoint, bucket, f"bk/{a}/")
        assert f"bk/{a}/deleting.json" in left and any("/f-" in k for k in left), left  # half deleted
        assert (bk / f".deleting-{a}").is_dir() and not (bk / a).exists()  # hidden before the bucket began
        # every listing, meanwhile, shows the chains that are whole, and nothing of a
        assert local_chains(bk) == {"chains": [b, c], "broken": []}
        assert {k: v for k, v in bucket_chains(bucket_env, bk).items() if k != "states"} == {
            "chains": [b, c], "broken": []}
        assert prune.alive()
        prune.kill9()
    # the next prune finishes what the killed one began, and goes no further
    r = ok(run_cli(["prune", "--json"], {**bucket_env, "BACKUP_DIR": str(bk), "BACKUP_MAX_FILES": "1"}))
    doc = json.loads(r.stdout)
    assert doc["finished"] == [{"chain": a, "where": "local"}, {"chain": a, "where": "bucket"}]
    assert [(d["chain"], d["where"], d["action"]) for d in doc["decisions"]] == [
        (b, "local", "keep"), (b, "bucket", "keep"), (c, "local", "keep"), (c, "bucket", "keep")]
    assert keys_under(endpoint, bucket, f"bk/{a}/") == []
    assert not (bk / f".deleting-{a}").exists()
    assert local_chains(bk)["chains"] == [b, c] and bucket_chains(bucket_env, bk)["chains"] == [b, c]
    assert doc["windows"]["bucket"] and doc["windows"]["local"]
    _restore_from_bucket_only(bucket_env, bk, tmp_path, redis_factory, primary)


def _window(r_stdout: str) -> list[tuple[int, int]]:
    return [(w["from_unix"], w["to_unix"]) for w in json.loads(r_stdout)["window"]]


def test_the_bucket_window_stated_after_pruning_is_the_buckets_own_when_it_lags_behind_local(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path, bucket_env: dict[str, str]
) -> None:
    primary = redis_factory()
    bk = tmp_path / "bk"
    svc = service_factory(service_env(primary, bk, **bucket_env, S3_SYNC_SECONDS=1))
    primary.wait_replicas(1, timeout=CAUGHT_UP)
    primary.client().set("in-the-bucket", "1")
    _caught_up(bucket_env, bk, primary)
    assert svc.stop() == 0
    cli = {**bucket_env, "BACKUP_DIR": str(bk)}
    in_bucket = _window(ok(run_cli(["list", "--source", "s3", "--json"], cli)).stdout)
    # the service goes on without the bucket: the local chain reaches seconds the bucket never saw
    svc = service_factory(service_env(primary, bk))
    primary.wait_replicas(1, timeout=CAUGHT_UP)
    primary.client().set("local-only", "1")
    assert in_bucket
    wait_until(lambda: (_window(ok(run_cli(["list", "--json"], cli)).stdout) or [(0, 0)])[-1][1] > in_bucket[-1][1] + 1,
               timeout=CAUGHT_UP, interval=0.2, message="local seconds past the bucket's")  # fmt: skip
    assert svc.stop() == 0
    local = _window(ok(run_cli(["list", "--json"], cli)).stdout)
    doc = json.loads(ok(run_cli(["prune", "--dry-run", "--json"], cli)).stdout)
    stated = {w: [(s["from_unix"], s["to_unix"]) for s in spans] for w, spans in doc["windows"].items()}
    assert stated == {"local": local, "bucket": in_bucket}
