"""`redis-backup status`: what an operator asks first, from a running service's `/status` (`--url`) or
from a backup directory or bucket alone (what only a running service knows is then null)."""

from __future__ import annotations

import argparse
import http.client
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from redis_backup import __version__
from redis_backup.chain.catalog import load_catalog
from redis_backup.chain.summary import summarize
from redis_backup.cli import config, stores
from redis_backup.cli.config import Config
from redis_backup.cli.hints import describe
from redis_backup.errors import BackupError, ConfigError
from redis_backup.progress import human_bytes
from redis_backup.store.base import StoreError
from redis_backup.store.local import LocalStore


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "status",
        help="what a backup is doing: attached, lag, current chain, restorable window, upload backlog, last error",
        description="Ask a running service (--url http://HOST:METRICS_PORT) or read BACKUP_DIR or the bucket alone "
        "(attached, lag, upload and last error are then unknown). Exit 0 once the status was read.",
    )
    p.add_argument("--json", action="store_true", help="print the JSON document (the shape of the service's /status)")
    p.add_argument("--url", help="a running service's endpoints, e.g. http://127.0.0.1:10379 (its /status is read)")
    config.add_options(p, ["storage", "s3", "log"])
    stores.add_source(p)
    p.set_defaults(func=run)


MAX_STATUS_BYTES = 16 << 20  # a service's /status is KiB; more is not one
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """`text` without its control characters (shown escaped): what a URL answers cannot drive the terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _get(where: str, timeout: float, limit: int) -> bytes:
    with urllib.request.urlopen(where, timeout=timeout) as r:
        length = r.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            raise ValueError(f"an answer of {human_bytes(int(length))}, more than a status document")
        body: bytes = r.read(limit + 1)
    if len(body) > limit:
        raise ValueError(f"an answer of more than {human_bytes(limit)}, more than a status document")
    return body


def shown(url: str) -> str:
    """The URL as an error line may show it: control characters escaped, a password in it masked."""
    return clean(re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", url))


def fetch(url: str, timeout: float = 5.0, limit: int = MAX_STATUS_BYTES) -> dict[str, Any]:
    """The document at URL/status, read within `timeout` seconds in all (a server that trickles its answer
    is given up on) and at most `limit` bytes of it."""
    base = url.rstrip("/")
    where = base if base.endswith("/status") else base + "/status"  # the endpoints, or /status itself
    try:
        scheme = urllib.parse.urlsplit(where).scheme
    except ValueError:  # "http://[::1"
        scheme = ""
    if scheme not in ("http", "https"):
        raise ConfigError(f"invalid --url {shown(url)!r}: the service's endpoints, like http://127.0.0.1:10379")
    answer: list[bytes | BaseException] = []

    def get() -> None:  # on a thread: urlopen's timeout is per read, and the reads may never end
        try:
            answer.append(_get(where, timeout, limit))
        except BaseException as e:  # handed to the caller
            answer.append(e)

    worker = threading.Thread(target=get, name="status", daemon=True)
    worker.start()
    worker.join(timeout)
    try:
        if not answer:
            raise TimeoutError(f"no complete answer within {timeout:g} s")
        if isinstance(answer[0], BaseException):
            raise answer[0]
        doc = json.loads(answer[0])
    except (urllib.error.URLError, OSError, ValueError, RecursionError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        elif isinstance(e, RecursionError):
            reason = "JSON nested too deep"
        raise ConfigError(
            f"cannot read {shown(where)}: {clean(str(reason))}: is the service running with METRICS_PORT set, and "
            "is the URL its METRICS_HOST:METRICS_PORT?"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("shards"), list):
        raise ConfigError(f"{shown(where)} did not answer with a redis-backup status document")
    return doc


def offline(cfg: Config, source: str | None) -> dict[str, Any]:
    """The document from the files alone: the same shape as the service's, unknowns null."""
    with stores.opened(cfg, source) as store:
        cat = load_catalog(store)
        is_local = isinstance(store, LocalStore)
        summary = summarize(cat)
    upload = _upload_backlog(cfg) if is_local and cfg.s3_bucket else None
    current = summary["current"]
    shard: dict[str, Any] = {
        "shard": current["primary"] if current else None,
        "backup_dir": cfg.backup_dir if is_local else None,
        "bucket": None if is_local else store.describe(),
        "attached": None, "attached_since": None, "attached_since_unix": None,
        "primary_offset": None, "acked_offset": None, "lag_bytes": None, "last_write_age_seconds": None,
        "upload": upload, "last_error": None, "last_verify": None, "ready": None, "not_ready": [],
        "backup": summary,
    }  # fmt: skip
    return {"source": "directory" if is_local else "bucket", "version": __version__, "shards": [shard]}


def _upload_backlog(cfg: Config) -> dict[str, Any]:
    """BACKUP_DIR against one listing of the bucket: what is local and not yet there (the lag, an age
    only the service keeps, is null). A bucket that cannot be listed is said, not fatal."""
    from redis_backup.service.uploader import backlog_of

    try:
        behind = backlog_of(Path(cfg.backup_dir), stores.bucket_store(cfg))
    except (BackupError, StoreError) as e:
        return {"objects": None, "bytes": None, "lag_seconds": None, "error": describe(e, cfg)}
    return {"objects": len(behind), "bytes": sum(behind.values()), "lag_seconds": None}


def _or(value: Any, unknown: str = "unknown (no service asked: use --url)") -> str:
    return unknown if value is None else str(value)


def render(doc: dict[str, Any]) -> str:
    """The document as a few aligned lines per shard (pure: the same for a service and for files)."""
    out: list[str] = [clean(f"source: {doc.get('source')}")]
    for s in doc.get("shards", []):
        b = s.get("backup") or {}
        rows: list[tuple[str, str]] = [("primary", _or(s.get("shard"), "-"))]
        if s.get("attached") is None:
            rows.append(("attached", _or(None)))
        else:
            rows.append(("attached", f"since {s.get('attached_since')}" if s["attached"] else "not attached"))
            lag = s.get("lag_bytes")
            age = s.get("last_write_age_seconds")
            ago = "-" if age is None else f"{age:.1f}"
            rows.append(("lag", f"{_or(lag, '-')} bytes; last write stored {ago} s ago"))
            rows.append(("ready", "yes" if s.get("ready") else "no: " + "; ".join(s.get("not_ready") or ["?"])))
        if b.get("error"):  # the service could not read its backup directory: its window is unknown
            rows.append(("backup error", str(b["error"])))
        cur = b.get("current")
        rows.append(("current chain", "none" if not cur else (
            f"{cur['chain']} ({cur['state']}, snapshot {cur['snapshot_at']}, {cur['files']} files, "
            f"{human_bytes(cur['size'])})")))  # fmt: skip
        window = b.get("window") or []
        rows.append(("restorable", ", ".join(f"{w['from']} .. {w['to']}" for w in window) or "nothing restorable"))
        for g in b.get("open_gaps") or []:
            rows.append(("gap", f"since {g['from']} in chain {g['chain']} ({g['reason']}): those seconds are refused"))
        for br in b.get("broken") or []:
            rows.append(("damaged", f"{br['chain']}: {br['error']}"))
        up = s.get("upload")
        if up is not None and up.get("error"):
            rows.append(("upload", f"unknown: {up['error']}"))
        elif up is not None:
            lag = up.get("lag_seconds")
            rows.append(("upload", f"{up['objects']} objects, {human_bytes(up['bytes'])} not in the bucket yet"
                         + ("" if lag is None else f", lag {lag} s")))  # fmt: skip
        elif s.get("attached") is not None:
            rows.append(("upload", "no bucket"))
        elif s.get("backup_dir") is not None:
            rows.append(("upload", "no bucket to compare with (S3_BUCKET not set)"))
        err = s.get("last_error")
        if s.get("attached") is not None:
            rows.append(("last error", "none" if not err else f"{err['at']}: {err['message']}"))
        ver = s.get("last_verify")
        if ver:
            rows.append(("last verify", f"{ver['at']}: chain {ver['chain']} {'passed' if ver['passed'] else 'FAILED'}"))
        width = max(len(k) for k, _ in rows)
        out.append("")
        out.extend(clean(f"{k.ljust(width)}  {v}") for k, v in rows)
    return "\n".join(out)


def run(args: argparse.Namespace, cfg: Config) -> int:
    doc = fetch(args.url) if args.url is not None else offline(cfg, args.source)
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    try:
        text = render(doc)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        if args.url is None:
            raise  # a document of our own that render cannot show: a bug
        raise ConfigError(f"{shown(args.url)} did not answer with a redis-backup status document") from None
    print(text)
    return 0
