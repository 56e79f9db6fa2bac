"""Retention applied to real chains (written by the real service from a real redis-server): what goes
and what stays locally and in a bucket, the deletion order that keeps every listing honest (a chain being
deleted is never listed, and the next prune finishes it), the uploader that never ships a pruned chain
again nor runs beside a prune, local chains kept until the bucket holds them, and `redis-backup prune`
end to end.

The bucket here is a LocalStore, so that what is tested is the order of deletions and the uploader's
interplay; the same against moto's S3 server, with a kill -9, is in test_s3_prune.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from redis_backup.chain import objects
from redis_backup.chain import prune as pr
from redis_backup.chain.catalog import describe_spans, load_catalog, windows
from redis_backup.chain.events import ChainBegun, ChainClosed
from redis_backup.chain.remoteview import RemoteChains
from redis_backup.chain.retention import Policy
from redis_backup.cli import cmd_list
from redis_backup.cli.main import build_parser
from redis_backup.service.pruner import Pruner
from redis_backup.service.uploader import Shipper, Uploader
from redis_backup.store.base import ObjectInfo
from redis_backup.store.codec import Codec
from redis_backup.store.local import LocalStore
from tests.support.pristine import chain_names, make_chains, new_chain
from tests.support.servers import RedisFactory, wait_until
from tests.support.service import ServiceFactory, ok, run_cli, service_env
from tests.support.stores import RecordingStore

pytestmark = pytest.mark.slow
CHAINS = 4
DAY = 24 * 3600


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield make_chains(tmp_path_factory.mktemp("chains"), CHAINS)


@pytest.fixture
def bk(made: Path, tmp_path: Path) -> Path:
    """A copy of the module's BACKUP_DIR: a, b, c closed, d open (oldest first)."""
    shutil.copytree(made, tmp_path / "bk", symlinks=True)
    return tmp_path / "bk"


def ship(bk: Path, bucket: Path) -> Shipper:
    shipper = Shipper(bk, LocalStore(bucket), Codec("none"))
    shipper.run_steps(shipper.plan())
    return shipper


def bucket_chains(bucket: Path) -> list[str]:
    """The chains the bucket's view offers (as list and restore see them)."""
    return [c.chain for c in load_catalog(RemoteChains(LocalStore(bucket), None)).chains]


def objects_of(bucket: Path, chain: str) -> list[str]:
    return [o.name for o in LocalStore(bucket).list(f"{chain}/")]


def listed(store: LocalStore | RemoteChains) -> list[str]:
    """The chains `list --json` shows for the store, readable or not."""
    args = build_parser().parse_args(["list", "--json"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cmd_list.run_on(store, args) == 0
    doc = json.loads(out.getvalue())
    return [c["chain"] for c in doc["chains"]] + [c["chain"] for c in doc["broken"]]


def test_past_the_window_only_the_open_and_newest_closed_chains_stay(bk: Path) -> None:
    a, b, c, d = chain_names(bk)
    later = time.time() + 2 * DAY
    result = pr.prune(bk, Policy(24, 10), now=later)
    assert [(x.chain, x.where) for x in result.deleted] == [(a, "local"), (b, "local")]
    assert chain_names(bk) == [c, d]
    assert sorted(p.name for p in bk.iterdir() if p.name.startswith(".deleting-")) == []
    reasons = {x.chain: x.reason for x in result.outcome.decisions}
    assert reasons[a].startswith("older than BACKUP_RETENTION_HOURS=24: its last second")
    assert reasons[c].startswith("the newest closed chain, kept whatever the settings say")
    assert reasons[d].startswith("the open chain")
    # the window stated after pruning is the one list shows
    assert result.outcome.windows["local"] == windows(load_catalog(LocalStore(bk)).chains)


def test_the_count_caps_even_inside_the_window(bk: Path) -> None:
    a, b, c, d = chain_names(bk)
    result = pr.prune(bk, Policy(24, 2))
    assert chain_names(bk) == [c, d]
    assert {x.chain: x.reason for x in result.deleted} == {
        a: "beyond BACKUP_MAX_FILES=2: the 4th newest", b: "beyond BACKUP_MAX_FILES=2: the 3rd newest"}
    assert pr.prune(bk, Policy(24, 2)).deleted == []  # nothing more: a prune is idempotent


def test_a_chain_being_deleted_is_never_listed_and_the_next_prune_finishes_it(bk: Path, tmp_path: Path) -> None:
    a, b, c, d = chain_names(bk)
    pr.hide_local(bk, a)  # where a prune killed after its rename stopped
    cat = load_catalog(LocalStore(bk))
    assert [x.chain for x in cat.chains] == [b, c, d] and cat.broken == []
    assert listed(LocalStore(bk)) == [b, c, d]
    assert all(s.chain != a for s in Shipper(bk, LocalStore(tmp_path / "bucket"), Codec("none")).plan())
    result = pr.prune(bk, Policy(24, 10))
    assert result.finished == [(a, "local")] and result.deleted == []
    assert not (bk / f".deleting-{a}").exists() and chain_names(bk) == [b, c, d]


def test_only_a_chain_of_ours_is_finished_from_a_deleting_name(bk: Path) -> None:
    """`.deleting-<chain>` is what a prune leaves; a directory of another name after the prefix (a user's,
    a mount point) is not ours: never removed, never reported as finished."""
    other = bk / ".deleting-photos"
    other.mkdir()
    (other / "keep.jpg").write_bytes(b"x")
    assert pr.prune(bk, Policy(24, 10)).finished == []
    assert (other / "keep.jpg").read_bytes() == b"x"


def test_the_bucket_is_pruned_too_and_nothing_pruned_is_uploaded_again(bk: Path, tmp_path: Path) -> None:
    a, b, c, d = chain_names(bk)
    bucket = tmp_path / "bucket"
    shipper = ship(bk, bucket)
    assert bucket_chains(bucket) == [a, b, c, d]
    result = pr.prune(bk, Policy(24, 2), bucket=LocalStore(bucket))
    assert sorted((x.chain, x.where) for x in result.deleted) == [(a, "bucket"), (a, "local"), (b, "bucket"),
                                                                  (b, "local")]  # fmt: skip
    assert chain_names(bk) == [c, d] and bucket_chains(bucket) == [c, d]
    assert objects_of(bucket, a) == [] and objects_of(bucket, b) == []
    assert result.outcome.windows["bucket"] == windows(load_catalog(RemoteChains(LocalStore(bucket), None)).chains)
    # the uploader derives its backlog again (at start, after a failure): nothing of a or b
    steps = shipper.plan()
    assert {s.chain for s in steps} <= {c, d}
    shipper.run_steps(steps)
    # an event about a pruned chain still queued when the prune ran: ignored, nothing uploaded
    uploader = Uploader(shipper, sync_seconds=1, ship_point=_no_point)
    uploader.forget([a, b])
    uploader._handle(ChainClosed(a, "superseded", 0))
    assert objects_of(bucket, a) == [] and bucket_chains(bucket) == [c, d]


def test_a_chain_marked_in_the_bucket_is_never_offered_and_the_next_prune_finishes_it(
    bk: Path, tmp_path: Path
) -> None:
    a, b, c, d = chain_names(bk)
    bucket = tmp_path / "bucket"
    ship(bk, bucket)
    store = LocalStore(bucket)
    # where a prune killed after the marker and the heads: the files are still there
    store.write(f"{b}/{objects.DELETING}", [b"{}"])
    for name in objects_of(bucket, b):
        if name.split("/")[1].startswith("h-"):
            store.delete(name)
    assert any(n.split("/")[1].startswith("f-") for n in objects_of(bucket, b))
    view = RemoteChains(store, None)
    cat = load_catalog(view)
    assert [x.chain for x in cat.chains] == [a, c, d] and cat.broken == []
    assert listed(RemoteChains(store, None)) == [a, c, d]
    shutil.rmtree(bk / b)  # its local copy went first (as a prune does it)
    result = pr.prune(bk, Policy(24, 10), bucket=store)
    assert result.finished == [(b, "bucket")]
    assert objects_of(bucket, b) == [] and bucket_chains(bucket) == [a, c, d]


def test_nothing_is_deleted_locally_before_the_bucket_holds_it(bk: Path, tmp_path: Path) -> None:
    a, b, c, d = chain_names(bk)
    bucket = tmp_path / "bucket"
    ship(bk, bucket)
    store = LocalStore(bucket)
    for name in objects_of(bucket, a):  # a never reached the bucket
        store.delete(name)
    policy = Policy(24, 10, local_retention_hours=1)
    later = time.time() + 2 * 3600  # past LOCAL_RETENTION_HOURS, inside BACKUP_RETENTION_HOURS
    result = pr.prune(bk, policy, bucket=store, now=later)
    assert [(x.chain, x.where) for x in result.deleted] == [(b, "local")]
    kept = result.outcome.find(a, "local")
    assert kept is not None and not kept.delete and "but not yet in the bucket" in kept.reason
    assert chain_names(bk) == [a, c, d] and bucket_chains(bucket) == [b, c, d]
    # once the uploader has shipped it, the next prune lets it go locally
    ship(bk, bucket)
    result = pr.prune(bk, policy, bucket=store, now=later)
    assert [(x.chain, x.where) for x in result.deleted] == [(a, "local")]
    assert chain_names(bk) == [c, d] and bucket_chains(bucket) == [a, b, c, d]
    # the window each place can restore is stated apart
    assert result.outcome.windows["bucket"][0][0] < result.outcome.windows["local"][0][0]


def test_a_bucket_that_does_not_answer_still_lets_the_disk_shrink(bk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the policy deletes everywhere goes locally at once; nothing that only an upload would allow, and
    the bucket is the next prune's."""
    from redis_backup.store.s3 import S3Settings, S3Store
    from tests.support.s3server import FAKE_CREDENTIALS
    from tests.support.servers import free_port

    for var, value in FAKE_CREDENTIALS.items():  # credentials, so that what fails is the connection
        monkeypatch.setenv(var, value)
    a, b, c, d = chain_names(bk)
    down = S3Store(S3Settings(bucket="nobody-answers", endpoint_url=f"http://127.0.0.1:{free_port()}",
                              connect_timeout=0.5, read_timeout=0.5, max_attempts=1))  # fmt: skip
    result = pr.prune(bk, Policy(24, 3, local_retention_hours=0.001), bucket=down)
    assert [(x.chain, x.where) for x in result.deleted] == [(a, "local")]  # beyond BACKUP_MAX_FILES=3
    assert result.bucket_skipped and chain_names(bk) == [b, c, d]  # b: past LOCAL_RETENTION_HOURS, not uploaded
    kept = result.outcome.find(b, "local")
    assert kept is not None and not kept.delete and "not yet in the bucket" in kept.reason


def test_an_upload_that_stopped_before_its_head_goes_with_its_local_chain(bk: Path, tmp_path: Path) -> None:
    """The uploader stopped (a failure) after a chain's files and before its head: those objects are
    that local chain's, deleted with it, never left in the bucket as an unreadable chain forever."""
    a, b, c, d = chain_names(bk)
    bucket = tmp_path / "bucket"
    ship(bk, bucket)
    store = LocalStore(bucket)
    for name in objects_of(bucket, a):
        if name.split("/")[1].startswith("h-"):
            store.delete(name)
    assert objects_of(bucket, a)
    kept = pr.prune(bk, Policy(24, 10), bucket=store)
    assert kept.deleted == [] and objects_of(bucket, a)  # kept while the local chain is: the upload resumes
    assert kept.outcome.find(a, "local") is not None and kept.outcome.find(a, "bucket") is not None
    result = pr.prune(bk, Policy(24, 2), bucket=store)
    assert sorted((x.chain, x.where) for x in result.deleted) == [(a, "bucket"), (a, "local"), (b, "bucket"),
                                                                  (b, "local")]  # fmt: skip
    assert objects_of(bucket, a) == [] and chain_names(bk) == [c, d]
    assert pr.survey(bk, store).unreadable == []


async def _no_point() -> None:
    return None


@dataclass
class GatedStore(RecordingStore):
    """Every write waits for the gate (the test opens it); `writing` is set when the first one waits."""

    gate: threading.Event = field(default_factory=threading.Event)
    writing: threading.Event = field(default_factory=threading.Event)

    def write(self, name: str, chunks: Iterable[bytes | memoryview]) -> ObjectInfo:
        self.writing.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().write(name, chunks)


def test_a_prune_never_runs_beside_an_upload(bk: Path, tmp_path: Path) -> None:
    """The service prunes the bucket under the uploader's lock: a prune that comes while an upload is
    under way waits for it, and every deletion comes after the upload's last write."""
    a, b, c, d = chain_names(bk)
    store = GatedStore(LocalStore(tmp_path / "bucket"))
    shipper = Shipper(bk, store, Codec("none"))
    uploader = Uploader(shipper, sync_seconds=3600, ship_point=_no_point)
    pruner = Pruner(bk, Policy(24, 2), bucket=store, uploader=uploader)

    async def scenario() -> None:
        up = asyncio.create_task(uploader.run())
        try:
            assert await asyncio.to_thread(store.writing.wait, 30), "the uploader never began to upload"
            assert uploader.busy.locked()
            prune = asyncio.create_task(pruner.prune_now())
            deadline = time.monotonic() + 30
            while not uploader.busy._waiters:  # the prune queues for the lock the upload holds
                assert time.monotonic() < deadline and not prune.done(), "the prune did not wait for the upload"
                await asyncio.sleep(0.01)
            assert ("prefixes", "") not in store.calls  # it has not touched the bucket
            store.gate.set()
            result = await asyncio.wait_for(prune, 60)
            assert sorted((x.chain, x.where) for x in result.deleted) == [
                (a, "bucket"), (a, "local"), (b, "bucket"), (b, "local")]
        finally:
            store.gate.set()
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)

    asyncio.run(scenario())
    first = store.calls.index(("prefixes", ""))  # the prune's first request: its listing of the chains
    uploads = [i for i, (m, n) in enumerate(store.calls) if m == "write" and not n.endswith(objects.DELETING)]
    deletes = [i for i, (m, n) in enumerate(store.calls) if m == "delete" and n.split("/")[0] in (a, b)]
    assert uploads and deletes and max(uploads) < first < min(deletes)
    assert chain_names(bk) == [c, d] and bucket_chains(tmp_path / "bucket") == [c, d]
    assert set(shipper.remote) == {c, d}  # the uploader forgot what went


# ------------------------------------------------------------------------------------- the command


def _prune(bk: Path, *args: str, **env: str) -> dict[str, object]:
    r = ok(run_cli(["prune", "--json", *args], {"BACKUP_DIR": str(bk), **env}))
    doc: dict[str, object] = json.loads(r.stdout)
    return doc


def _decisions(doc: dict[str, object]) -> dict[str, str]:
    return {d["chain"]: d["action"] for d in doc["decisions"]}  # type: ignore[attr-defined,index]


def test_the_prune_command_end_to_end(
    redis_factory: RedisFactory, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    primary = redis_factory()
    bk = tmp_path / "bk"
    svc = service_factory(service_env(primary, bk))
    primary.wait_replicas(1, timeout=30)
    wait_until(lambda: chain_names(bk), timeout=30, message="the first chain")
    for i in range(4):
        new_chain(primary, bk, tag=str(i))
    a, b, c, d, e = chain_names(bk)
    # while the service runs: the decisions may be printed, but nothing is deleted by hand
    doc = _prune(bk, "--dry-run", BACKUP_MAX_FILES="3")
    assert doc["dry_run"] is True and _decisions(doc) == {a: "delete", b: "delete", c: "keep", d: "keep", e: "keep"}
    assert chain_names(bk) == [a, b, c, d, e]
    refused = run_cli(["prune"], {"BACKUP_DIR": str(bk)})
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "in use by another redis-backup service" in refused.stderr and "Traceback" not in refused.stderr
    assert svc.stop() == 0
    # a small BACKUP_RETENTION_HOURS, once c's last second is out of it: everything but d and e goes
    hours = 0.0005  # 1.8 s
    chains = json.loads(ok(run_cli(["list", "--json"], {"BACKUP_DIR": str(bk)})).stdout)["chains"]
    c_last = next(x["last_second_unix"] for x in chains if x["chain"] == c)
    wait_until(lambda: time.time() > c_last + 1 + hours * 3600, timeout=30, interval=0.1,
               message="c's last second out of the window")  # fmt: skip
    r = ok(run_cli(["prune"], {"BACKUP_DIR": str(bk), "BACKUP_RETENTION_HOURS": str(hours)}))
    lines = r.stdout.splitlines()
    assert [ln.split()[:3] for ln in lines[:5]] == [
        ["delete", a, "local"], ["delete", b, "local"], ["delete", c, "local"], ["keep", d, "local"],
        ["keep", e, "local"]]  # fmt: skip
    assert "older than BACKUP_RETENTION_HOURS=0.0005" in lines[2] and "the newest closed chain" in lines[3]
    listed_now = json.loads(ok(run_cli(["list", "--json"], {"BACKUP_DIR": str(bk)})).stdout)
    spans = [(w["from_unix"], w["to_unix"]) for w in listed_now["window"]]
    assert f"local: after pruning, {describe_spans(spans)}" in r.stdout  # what list says afterwards
    assert lines[-1] == "deleted 3 chains locally"
    assert chain_names(bk) == [d, e]
    # the latest state still restores exactly
    out = tmp_path / "restored"
    ok(run_cli(["restore", "--to", str(out)], {"BACKUP_DIR": str(bk)}))
    assert redis_factory.load_aof_dir(out, strict=True).digest() == primary.digest()
    # a stopped prune's leftover is finished by the service when it starts
    pr.hide_local(bk, d)
    svc = service_factory(service_env(primary, bk))
    primary.wait_replicas(1, timeout=30)
    assert not (bk / f".deleting-{d}").exists() and chain_names(bk) == [e]
    assert svc.stop() == 0
    assert "Traceback" not in svc.stderr_text()


def test_errors_are_one_line(tmp_path: Path) -> None:
    r = run_cli(["prune"], {"BACKUP_DIR": str(tmp_path / "missing")})
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and r.stderr.startswith("redis-backup: error: "), r.stderr
    r = run_cli(["prune", "--dry-run"], {"BACKUP_DIR": str(tmp_path / "missing")})
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr, r.stderr
    r = run_cli(["prune"], {"BACKUP_DIR": str(tmp_path), "LOCAL_RETENTION_HOURS": "30"})
    assert r.returncode == 2 and "LOCAL_RETENTION_HOURS=30 is more than BACKUP_RETENTION_HOURS=24" in r.stderr
    (tmp_path / "empty").mkdir()
    r = ok(run_cli(["prune", "--dry-run"], {"BACKUP_DIR": str(tmp_path / "empty")}))
    assert r.stdout.splitlines()[0] == "no chains" and "there are no backups to restore from" in r.stdout


def test_the_service_task_prunes_after_a_new_chain_on_a_timer_and_retries_a_failure(
    bk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, c, d = chain_names(bk)
    missing = tmp_path / "missing"
    failing = Pruner(missing, Policy(24, 2), interval=0.05)
    waiting = Pruner(bk, Policy(24, 2), interval=3600)

    async def until(what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        tasks = [asyncio.create_task(failing.run()), asyncio.create_task(waiting.run())]
        try:
            # a failing prune: one warning each time, and another attempt later
            await until("two failed prunes", lambda: failing.failures >= 2)
            missing.mkdir()
            await until("a prune once BACKUP_DIR is there", lambda: failing.runs >= 1 and failing.failures == 0)
            await until("the first prune", lambda: waiting.runs == 1)
            assert chain_names(bk) == [c, d]
            # an event on the writer's thread makes the next one due at once (the timer is an hour away)
            threading.Thread(target=waiting.notify, args=(ChainBegun(d, "base", 1, "0" * 64, 0),)).start()
            await until("a prune after the event", lambda: waiting.runs == 2)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="redis_backup.service.pruner"):
        asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.name == "redis_backup.service.pruner"]
    assert len(warnings) >= 2 and all(r.getMessage() == "prune failed; capture goes on, retrying later"
                                      for r in warnings)  # fmt: skip
    assert "does not exist" in str(warnings[0].__dict__["error"])
