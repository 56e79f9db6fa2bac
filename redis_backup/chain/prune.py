"""Retention applied: what BACKUP_DIR and the bucket hold, the policy's decisions (chain.retention), and
deletions in an order that keeps every listing honest.

- **Locally** a chain is first renamed to `.deleting-<chain>` (one rename, then an fsync of BACKUP_DIR):
  from that instant no reader sees it (list, restore, verify and the uploader know only chain ids), and
  only then are its files removed.
- **In the bucket** the marker `<chain>/deleting.json` is written first, then the heads go (a reader that
  does not know the marker sees a chain without a head: unreadable, never a wrong one), then every other
  object, the marker last. A chain with the marker is not offered by the bucket's view (remoteview).
- Every local deletion of a prune is hidden before any of its bucket deletions begins, so that the
  uploader, which ships what is local, never finds a chain the bucket no longer has.
- A prune that was stopped (kill -9, a failure) left `.deleting-*` directories or marked chains: the next
  prune finishes them first (and the service, at start, the local ones).

A bucket chain with objects and no head yet, whose local copy is readable, is that local chain's upload
begun and not committed (the uploader stopped between its files and its head): it is kept while the
local chain is (the upload resumes) and deleted with it, never left behind as an unreadable chain.

Nothing is read that the decision does not need: each chain's metadata (the open chain's last second as
of its metadata, at most about a second behind its file), the bucket's newest head per chain.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from redis_backup.chain import metadata as md
from redis_backup.chain import naming, objects
from redis_backup.chain.backlog import LocalChain, complete_in_bucket
from redis_backup.chain.catalog import ChainRecord, chain_ids, describe_spans, foreign_entries, record_from_meta
from redis_backup.chain.remoteview import RemoteChains, newest_head
from redis_backup.chain.retention import ChainSummary, Decision, Outcome, Policy, Unreadable, decide
from redis_backup.errors import StorageError
from redis_backup.store.base import Store, StoreError
from redis_backup.store.codec import Key, split_suffix
from redis_backup.store.fsutil import UnsafeEntry, clear_temp, fsync_dir
from redis_backup.store.local import LocalStore

log = logging.getLogger(__name__)


@runtime_checkable
class BatchDelete(Protocol):
    def delete_many(self, names: Iterable[str]) -> None: ...


@dataclass
class Survey:
    """What the places hold, as retention needs it."""

    chains: list[ChainSummary] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    local_leftovers: list[str] = field(default_factory=list)  # chains whose .deleting-* directory is left
    bucket_leftovers: list[str] = field(default_factory=list)  # chains with the marker


@dataclass
class PruneResult:
    outcome: Outcome
    finished: list[tuple[str, str]] = field(default_factory=list)  # (chain, where) a stopped prune left
    deleted: list[Decision] = field(default_factory=list)
    bucket_skipped: str | None = None  # why the bucket was left for the next prune (it did not answer)


def _local_records(root: Path) -> tuple[dict[str, ChainRecord], dict[str, md.ChainMeta], list[Unreadable]]:
    store = LocalStore(root)
    records: dict[str, ChainRecord] = {}
    metas: dict[str, md.ChainMeta] = {}
    bad = [Unreadable(b.chain, "local", b.error) for b in foreign_entries(root) if naming.is_chain_id(b.chain)]
    for chain in chain_ids(store):
        try:
            meta = md.read(store, chain)
        except (md.MetadataError, StorageError) as e:
            bad.append(Unreadable(chain, "local", str(e)))
            continue
        metas[chain] = meta
        records[chain] = record_from_meta(meta)
    return records, metas, bad


def local_leftovers(root: Path) -> list[str]:
    """The chains whose `.deleting-*` directory is still there (only real directories named after a chain:
    links and files with such names are reported by the catalog, never followed; other names are not ours)."""
    out = []
    for p in sorted(root.iterdir()):
        chain = p.name.removeprefix(naming.DELETING_PREFIX)
        if chain != p.name and naming.is_chain_id(chain) and not p.is_symlink() and p.is_dir():
            out.append(chain)
    return out


def survey(root: Path, bucket: Store | None = None, key: Key | None = None) -> Survey:
    """BACKUP_DIR's chains and, with a bucket, the bucket's: one summary per chain (the local metadata
    where it is readable, else the bucket's), and what cannot be read where."""
    out = Survey()
    local, metas, out.unreadable = _local_records(root)
    out.local_leftovers = local_leftovers(root)
    remote: dict[str, ChainRecord] = {}
    uploaded: set[str] = set()
    headless: set[str] = set()  # uploads begun and not committed (no head yet): the local chain's objects
    if bucket is not None:
        view = RemoteChains(bucket, key, parallelism=1)
        out.bucket_leftovers = view.deleting()
        for prefix in view.prefixes():
            chain = prefix[:-1]
            if chain in metas and newest_head(view.listing(chain)[0]) is None:
                headless.add(chain)  # kept while the local chain is (the upload resumes), deleted with it
                continue
            try:
                meta = md.read(view, chain)
            except (md.MetadataError, StorageError) as e:
                out.unreadable.append(Unreadable(chain, "bucket", str(e)))
                continue
            remote[chain] = record_from_meta(meta)
            if chain in metas:
                m = metas[chain]
                head = newest_head(view.listing(chain)[0])
                if complete_in_bucket(LocalChain(m.chain, m.closed, m.end_offset, tuple(m.files)),
                                      head[0] if head else None):  # fmt: skip
                    uploaded.add(chain)
    for chain in sorted(set(local) | set(remote)):
        record = local.get(chain) or remote[chain]
        in_bucket = chain in remote or chain in headless
        summary = ChainSummary.of(record, local=chain in local, bucket=in_bucket, uploaded=chain in uploaded)
        if chain in local and in_bucket:  # the window each place can restore: the bucket may lag
            spans = remote[chain].exact_spans if chain in remote else ()
            summary = replace(summary, bucket_spans=tuple(spans))
        out.chains.append(summary)
    return out


def plan(survey: Survey, policy: Policy, *, bucket: bool, now: float | None = None,
         live: Iterable[str] = ()) -> Outcome:  # fmt: skip
    return decide(survey.chains, time.time() if now is None else now, policy, bucket=bucket,
                  unreadable=survey.unreadable, live=set(live))  # fmt: skip


# ------------------------------------------------------------------------------------------- deleting


def hide_local(root: Path, chain: str) -> None:
    """One rename: from here on no reader sees the chain (durable once the directory is fsync'd)."""
    src, dst = root / chain, root / naming.deleting_chain_dir(chain)
    if src.is_symlink() or not src.is_dir():
        raise StorageError(f"{src} is not a chain directory of ours: not deleted")
    try:
        clear_temp(dst, want_dir=True)  # a leftover of the same name (never normally)
        os.rename(src, dst)
        fsync_dir(root)
    except OSError as e:
        raise StorageError(f"cannot delete {src}: {e.strerror or e}") from e


def finish_local(root: Path) -> list[str]:
    """Remove every `.deleting-*` directory (what this prune hid, and what a stopped one left); the
    chain ids removed. Nothing is followed through a link."""
    done = []
    for chain in local_leftovers(root):
        path = root / naming.deleting_chain_dir(chain)
        try:
            clear_temp(path, want_dir=True)
        except UnsafeEntry as e:
            log.warning("not a directory of ours: left as it is", extra={"entry": path.name, "what": str(e)})
            continue
        except OSError as e:
            raise StorageError(f"cannot delete {path}: {e.strerror or e}") from e
        done.append(chain)
    if done:
        try:
            fsync_dir(root)
        except OSError as e:
            raise StorageError(f"cannot sync {root}: {e.strerror or e}") from e
    return done


def _delete_all(bucket: Store, names: list[str]) -> None:
    if not names:
        return
    if isinstance(bucket, BatchDelete):
        bucket.delete_many(names)
    else:
        for n in names:
            bucket.delete(n)


def _is_head(chain: str, name: str) -> bool:
    return isinstance(objects.parse(split_suffix(name[len(chain) + 1 :])[0]), objects.HeadObject)


def delete_bucket_chain(bucket: Store, chain: str, reason: str) -> None:
    """Marker, heads, every other object of the chain, marker: a chain is never shown half deleted."""
    names = [o.name for o in bucket.list(f"{chain}/")]
    marker = f"{chain}/{objects.DELETING}"
    if marker not in names:
        body = json.dumps({"chain": chain, "reason": reason, "at": time.time()}).encode()
        bucket.write(marker, [body])
    heads = [n for n in names if _is_head(chain, n)]
    _delete_all(bucket, heads)
    _delete_all(bucket, [n for n in names if n != marker and n not in heads])
    bucket.delete(marker)


def apply(
    outcome: Outcome, root: Path, bucket: Store | None, *, finish: Survey | None = None
) -> PruneResult:
    """Carry out the deletions (and first finish what a stopped prune left, from the survey)."""
    result = PruneResult(outcome)
    if finish is not None and bucket is not None:
        for chain in finish.bucket_leftovers:
            delete_bucket_chain(bucket, chain, "a prune that was stopped")
            result.finished.append((chain, "bucket"))
            log.info("finished deleting a chain a stopped prune left", extra={"chain": chain, "where": "bucket"})
    local = outcome.deletions("local")
    for d in local:  # every local deletion is hidden before any bucket deletion begins
        log.info("retention deletes a chain", extra={"chain": d.chain, "where": d.where, "reason": d.reason})
        hide_local(root, d.chain)
    if bucket is not None:
        for d in outcome.deletions("bucket"):
            log.info("retention deletes a chain", extra={"chain": d.chain, "where": d.where, "reason": d.reason})
            delete_bucket_chain(bucket, d.chain, d.reason)
            result.deleted.append(d)
    hidden = {d.chain for d in local}
    for chain in finish_local(root):
        if chain not in hidden:
            result.finished.append((chain, "local"))
            log.info("finished deleting a chain a stopped prune left", extra={"chain": chain, "where": "local"})
    result.deleted += local
    return result


def prune(
    root: Path, policy: Policy, *, bucket: Store | None = None, key: Key | None = None, now: float | None = None,
    live: Iterable[str] = (),
) -> PruneResult:  # fmt: skip
    """Survey, decide, delete; every deletion logged with its reason, then the windows that remain.
    live: the chains the service is writing (kept whatever the policy says)."""
    try:
        found = survey(root, bucket, key)
    except StoreError as e:
        if bucket is None or not e.retryable:
            raise
        # A bucket that does not answer must not let the disk fill: what the policy deletes everywhere (past
        # the window, beyond the count) goes locally now, nothing that only the bucket's copy would allow
        # (every chain counts as not uploaded), and the bucket's part is the next prune's.
        log.warning("the bucket does not answer: pruning BACKUP_DIR alone, the bucket at the next prune",
                    extra={"error": str(e)})  # fmt: skip
        found = survey(root, None, key)
        outcome = plan(found, policy, bucket=True, now=now, live=live)
        result = apply(outcome, root, None, finish=found)
        result.bucket_skipped = str(e)
        return result
    outcome = plan(found, policy, bucket=bucket is not None, now=now, live=live)
    result = apply(outcome, root, bucket, finish=found)
    if result.deleted or result.finished:
        for where, spans in outcome.windows.items():
            log.info("after pruning", extra={"where": where, "window": describe_spans(spans)})
    return result
