"""`redis-backup status`: on a backup the real service made from a real redis-server, offline and
through the running service's /status; the rendering table-tested as the pure function it is."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from redis_backup.cli.cmd_status import render
from tests.support.faults import wait_for_chain
from tests.support.servers import RedisServer, free_port, wait_until
from tests.support.service import ServiceFactory, run_cli, service_env
from tests.support.workload import mixed_workload


def _status(*args: str) -> dict[str, Any]:
    r = run_cli(["status", "--json", *args])
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def test_offline_and_online_status_agree_with_list(service_factory: ServiceFactory, primary: RedisServer,
                                                   tmp_path: Path) -> None:  # fmt: skip
    bk = tmp_path / "bk"
    port = free_port()
    svc = service_factory(service_env(primary, bk, METRICS_PORT=port, METRICS_HOST="127.0.0.1"))
    chain = wait_for_chain(svc, bk)
    mixed_workload(primary.client, rounds=2, seed=7)

    def restorable() -> bool:
        listing = json.loads(run_cli(["list", "--json", "--backup-dir", str(bk)]).stdout)
        return bool(listing["window"])

    wait_until(restorable, timeout=30, message="nothing restorable")
    listing = json.loads(run_cli(["list", "--json", "--backup-dir", str(bk)]).stdout)
    doc = _status("--backup-dir", str(bk))
    assert doc["source"] == "directory"
    (s,) = doc["shards"]
    assert s["attached"] is None and s["shard"] == f"{primary.host}:{primary.port}"
    assert s["backup"]["current"]["chain"] == chain.name == listing["chains"][-1]["chain"]
    # the service goes on confirming seconds: the offline window starts where list's does, ends no earlier
    assert s["backup"]["window"][0]["from_unix"] == listing["window"][0]["from_unix"]
    assert s["backup"]["window"][-1]["to_unix"] >= listing["window"][-1]["to_unix"]

    online = _status("--url", f"http://127.0.0.1:{port}")
    assert online["source"] == "service"
    (o,) = online["shards"]
    assert o["attached"] is True and o["backup"]["current"]["chain"] == chain.name
    assert _status("--url", f"http://127.0.0.1:{port}/status/")["source"] == "service"  # the page's own URL
    human = run_cli(["status", "--url", f"http://127.0.0.1:{port}"])
    assert human.returncode == 0 and f"{chain.name} (open" in human.stdout and "since " in human.stdout
    assert svc.alive()


def test_an_empty_directory_has_nothing_restorable(tmp_path: Path) -> None:
    (tmp_path / "bk").mkdir()
    doc = _status("--backup-dir", str(tmp_path / "bk"))
    assert doc["shards"][0]["backup"]["current"] is None and doc["shards"][0]["backup"]["window"] == []
    r = run_cli(["status", "--backup-dir", str(tmp_path / "bk")])
    assert r.returncode == 0 and "nothing restorable" in r.stdout


def test_an_unreachable_service_is_one_line_and_exit_2() -> None:
    port = free_port()
    r = run_cli(["status", "--url", f"http://127.0.0.1:{port}"])
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and f"127.0.0.1:{port}/status" in r.stderr and "Traceback" not in r.stderr


def _doc(**shard: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"shard": "h:1", "attached": None, "upload": None, "last_error": None, "last_verify": None,
                            "not_ready": [], "backup": {"current": None, "window": []}}  # fmt: skip
    return {"source": "service", "shards": [{**base, **shard}]}


def test_render_as_data() -> None:
    assert "attached       unknown (no service asked" in render(_doc())
    live = render(_doc(attached=True, attached_since="2026-12-02T10:00:00Z", lag_bytes=12,
                       last_write_age_seconds=1.25, ready=False, not_ready=["upload lag 400 s is more"]))  # fmt: skip
    assert "since 2026-12-02T10:00:00Z" in live and "12 bytes; last write stored 1.2 s ago" in live
    assert "no: upload lag 400 s" in live and "no bucket" in live and "last error     none" in live
    assert "not attached" in render(_doc(attached=False))
    gap = {"current": None, "window": [{"from": "a", "to": "b"}],
           "open_gaps": [{"from": "c", "chain": "x", "reason": "behind"}]}  # fmt: skip
    text = render(_doc(backup=gap))
    assert "restorable     a .. b" in text and "since c in chain x (behind): those seconds are refused" in text
    verified = render(_doc(last_verify={"at": "t", "chain": "x", "passed": False}))
    assert "chain x FAILED" in verified


def test_offline_status_of_a_directory_says_what_the_bucket_lacks(
    service_factory: ServiceFactory, primary: RedisServer, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    """A backup made without a bucket: status with S3_BUCKET set counts every local file as not uploaded,
    `upload` ships them, and then nothing is behind; an unreachable bucket is said in the document."""
    from tests.support.s3server import s3_env

    bk = tmp_path / "bk"
    svc = service_factory(service_env(primary, bk))
    chain = wait_for_chain(svc, bk)
    mixed_workload(primary.client, rounds=2, seed=3)
    primary.wait_replicas_caught_up(timeout=30)
    assert svc.stop() == 0
    local = {p.name: p.stat().st_size for p in chain.iterdir() if p.name.endswith((".rdb", ".aof"))}
    bucket = {**s3_env(s3_endpoint), "S3_BUCKET": s3_bucket, "S3_PREFIX": "st/", "BACKUP_DIR": str(bk)}

    def upload_field(env: dict[str, str]) -> dict[str, Any]:
        r = run_cli(["status", "--json", "--source", "local"], env)
        assert r.returncode == 0, r.stderr
        up: dict[str, Any] = json.loads(r.stdout)["shards"][0]["upload"]
        return up

    assert upload_field(bucket) == {"objects": len(local), "bytes": sum(local.values()), "lag_seconds": None}
    human = run_cli(["status", "--source", "local"], bucket)
    assert f"{len(local)} objects" in human.stdout and "not in the bucket yet" in human.stdout
    assert run_cli(["upload"], bucket).returncode == 0
    assert upload_field(bucket) == {"objects": 0, "bytes": 0, "lag_seconds": None}

    down = upload_field({**bucket, "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "S3_PREFIX": "st/"})
    assert down["objects"] is None and "127.0.0.1" in down["error"], down
    without = run_cli(["status", "--source", "local"], {"BACKUP_DIR": str(bk)})
    assert "no bucket to compare with (S3_BUCKET not set)" in without.stdout


# ------------------------------------------------------------------ a URL that answers something else


@contextmanager
def _answering(respond: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A server on 127.0.0.1 that reads a request and hands the connection to respond(conn, stop)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed
                return
            if stop.is_set():
                conn.close()
                return
            with conn:
                conn.recv(65536)
                with suppress(OSError):  # the client gave up
                    respond(conn, stop)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        with suppress(OSError):  # wakes the accept() (closing the listener does not)
            socket.create_connection(listener.getsockname(), timeout=5).close()
        thread.join(10)
        listener.close()


def _json(body: bytes) -> Callable[[socket.socket, threading.Event], None]:
    def respond(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        conn.sendall(body)

    return respond


def _endless(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (10 << 30) + b'{"shards": [], "x": "')
    while not stop.is_set():
        conn.sendall(b"a" * (1 << 20))


def _endless_chunked(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    while not stop.is_set():
        conn.sendall(b"100000\r\n" + b"a" * (1 << 20) + b"\r\n")


def _trickle(conn: socket.socket, stop: threading.Event) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:  # a byte at a time: no read ever times out
        conn.sendall(bytes([byte]))
        if stop.wait(0.5):
            return


def _one_line(r: subprocess.CompletedProcess[str], *wanted: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert all(w in r.stderr for w in wanted), r.stderr


def test_an_endless_answer_is_refused_after_a_bounded_read() -> None:
    for respond in (_endless, _endless_chunked):
        with _answering(respond) as url:
            _one_line(run_cli(["status", "--url", url]), "more than a status document")


def test_an_answer_that_trickles_in_is_given_up_on() -> None:
    with _answering(_trickle) as url:
        _one_line(run_cli(["status", "--url", url]), "no complete answer within")


def test_foreign_json_is_not_a_status_document() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    shapes = {
        deep: "JSON nested too deep",
        b'{"shards": [' + deep + b"]}": "JSON nested too deep",
        b'{"shards": [1, "x", null]}': "did not answer with a redis-backup status document",
        b'{"shards": [{"attached": true, "last_write_age_seconds": "b", "backup": {"current": "x"}}]}':
            "did not answer with a redis-backup status document",
    }  # fmt: skip
    for body, wanted in shapes.items():
        with _answering(_json(body)) as url:
            _one_line(run_cli(["status", "--url", url]), wanted)
    for bad in ("127.0.0.1:10379", "file:///etc", "http://[::1"):
        _one_line(run_cli(["status", "--url", bad]), "invalid --url")


def test_control_characters_of_an_answer_are_shown_escaped() -> None:
    body = json.dumps({"source": "\x1b]0;pwned\x07", "shards": [{"shard": "\x1b[2Jx", "backup": {}}]}).encode()
    with _answering(_json(body)) as url:
        r = run_cli(["status", "--url", url])
    assert r.returncode == 0 and "\x1b" not in r.stdout and "\x07" not in r.stdout, r.stdout
    assert "\\x1b]0;pwned\\x07" in r.stdout and "\\x1b[2Jx" in r.stdout


def test_a_service_that_cannot_read_its_backup_says_so() -> None:
    text = render(_doc(backup={"error": "cannot read /data: Permission denied"}))
    assert "backup error   cannot read /data: Permission denied" in text


def _raw(answer: bytes) -> Callable[[socket.socket, threading.Event], None]:
    def respond(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(answer)

    return respond


def test_a_server_that_does_not_speak_http_is_one_line() -> None:
    """What answers on a wrong port: an SSH or Redis banner, a broken HTTP server."""
    for answer in (b"SSH-2.0-OpenSSH_9.2\r\n", b"-ERR unknown command\r\n",
                   b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n",
                   b"HTTP/1.1 200 OK\r\nX: " + b"y" * 100_000 + b"\r\n\r\n"):  # fmt: skip
        with _answering(_raw(answer)) as url:
            _one_line(run_cli(["status", "--url", url]), f"cannot read {url}/status: ")
    for bad in ("http://127.0.0.1:abc", ""):
        _one_line(run_cli(["status", "--url", bad]))


def test_a_password_in_the_url_is_not_repeated_in_the_error() -> None:
    port = free_port()
    r = run_cli(["status", "--url", f"http://admin:s3cret@127.0.0.1:{port}"])
    assert r.returncode == 2 and "s3cret" not in r.stderr and "admin:***@127.0.0.1" in r.stderr, r.stderr
