"""The checks of `redis-backup verify`: that every chain is what its metadata says, and (--deep) that it loads.

Checks per chain: the metadata reads; the manifest is the one the metadata gives; the chain holds
exactly the files listed; the base's size, SHA-256 and RDB CRC64; each incr file's size and SHA-256 once
closed, its SELECT header, RESP well-formedness, `#TS` lines in order and outside MULTI/EXEC, the stream
bytes it holds against its offsets, and that only the newest file of an open chain ends with an
incomplete command. `--deep` then restores the latest state of each chain into a temporary redis-server.

Everything is read through a `Store`: sizes and stray files from its listing, contents streamed. What
only a local directory can hold (symbolic links in a chain) is looked for in `_local_only`.

``verify_chain_deep(store, chain)`` is the entry point for the service's periodic check.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis_backup.chain import metadata as md
from redis_backup.chain import naming
from redis_backup.chain.catalog import file_error, index_file, load_chain
from redis_backup.chain.metadata import ChainMeta, FileMeta
from redis_backup.chain.rdb import RdbDigest, RdbError
from redis_backup.chain.schema import MAX_METADATA_BYTES
from redis_backup.chain.tsindex import FileIndex
from redis_backup.errors import BackupError, StorageError
from redis_backup.progress import Progress, silent
from redis_backup.restore.aofdir import CHUNK, replayed
from redis_backup.restore.plan import RestorePlan, file_to_cut, plan_restore
from redis_backup.restore.tempserver import ServerBinary, ServerCannotRead, TempServerError, find_redis_server
from redis_backup.store.base import Store, StoreError, read_all
from redis_backup.store.fsutil import SYMLINK
from redis_backup.store.local import LocalStore

_Bad = Callable[[str, str], None]
Objects = Mapping[str, int]  # a chain's objects as the store lists them: name inside the chain -> size


@dataclass(frozen=True)
class Problem:
    chain: str
    file: str
    what: str

    def __str__(self) -> str:
        return f"{self.chain}/{self.file}: {self.what}" if self.file else f"{self.chain}: {self.what}"


# --------------------------------------------------------------------------------------------- checks


def _objects(store: Store, chain: str) -> dict[str, int]:
    try:
        return {o.name[len(chain) + 1 :]: o.size for o in store.list(f"{chain}/")}
    except StoreError as e:
        raise StorageError(f"cannot list {store.describe()}/{chain}/: {e.reason}", chain=chain) from e


def verify_chain(
    store: Store, chain: str, objects: Objects | None = None, *, progress: Progress | None = None
) -> list[Problem]:
    """Every problem of one chain (an empty list: the chain is sound). objects: the chain's part of a
    listing already made (else it is listed here). progress: counts the bytes read and the files checked."""
    progress = progress or silent()
    if objects is None:
        objects = _objects(store, chain)
    try:
        meta = md.read(store, chain)
    except md.MetadataError as e:
        where = f"{store.describe()}/{chain}/{naming.METADATA}"
        return [Problem(chain, naming.METADATA, _strip_prefix(str(e), where))]
    problems: list[Problem] = []

    def bad(file: str, what: str) -> None:
        problems.append(Problem(chain, file, what))

    _check_manifest(store, meta, bad)
    _check_listing(store, meta, objects, bad)
    _check_base(store, meta, objects, bad, progress)
    incr = meta.incr_files
    prev_last_ts: int | None = None
    for i, f in enumerate(incr):
        last_of_chain = i == len(incr) - 1
        ix = _check_incr(store, meta, f, objects, last_of_chain, bad, progress)
        if ix is None:
            continue
        if prev_last_ts is not None and ix.first_ts is not None and ix.first_ts < prev_last_ts:
            bad(f.name, f"first #TS {ix.first_ts} is earlier than the previous file's last #TS {prev_last_ts}")
        prev_last_ts = ix.marks[-1].ts if ix.marks else prev_last_ts
    if incr and incr[0].start_offset != meta.start_offset:
        bad(incr[0].name, f"starts at offset {incr[0].start_offset}, the snapshot is at {meta.start_offset}")
    if meta.closed and incr and incr[-1].end_offset != meta.end_offset:
        bad(
            naming.METADATA,
            f"the chain ends at offset {meta.end_offset}, its last file at {incr[-1].end_offset}",
        )
    return problems


def _strip_prefix(message: str, where: str) -> str:
    prefix = f"{where}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _read_manifest(store: Store, chain: str) -> bytes:
    try:
        return read_all(store, f"{chain}/{naming.MANIFEST}", MAX_METADATA_BYTES)
    except StoreError as e:
        raise file_error(chain, naming.MANIFEST, e) from e


def _check_manifest(store: Store, meta: ChainMeta, bad: _Bad) -> None:
    chain = meta.chain
    try:
        raw = _read_manifest(store, chain)
    except StorageError as e:
        bad(naming.MANIFEST, e.what)
        return
    if raw == md.render_manifest(meta.files):
        return
    if not meta.closed:  # a rotation writes the manifest just before the metadata: look again
        try:
            meta = md.read(store, chain)
            raw = _read_manifest(store, chain)
        except (md.MetadataError, StorageError):
            pass
        if raw == md.render_manifest(meta.files):
            return
    try:
        listed = [name for name, _, _ in md.parse_manifest(raw)]
    except (ValueError, UnicodeDecodeError) as e:
        bad(naming.MANIFEST, f"not a valid manifest: {e}")
        return
    expected = [f.name for f in meta.files]
    last = meta.files[-1]
    if not meta.closed and last.type == "incr" and listed == [*expected, naming.incr_file(last.seq + 1)]:
        return  # a rotation in progress: the new file is in the manifest, the metadata follows it
    if listed != expected:
        bad(
            naming.MANIFEST,
            f"lists {', '.join(listed) or 'nothing'}; the metadata lists {', '.join(expected)}",
        )
    else:
        bad(naming.MANIFEST, "does not match the metadata (seq or type)")


def _check_listing(store: Store, meta: ChainMeta, objects: Objects, bad: _Bad) -> None:
    """What the chain holds beyond what its metadata lists (and, locally, links planted in it)."""
    known = {f.name for f in meta.files} | set(naming.METADATA_FILES)
    next_incr = naming.incr_file(meta.files[-1].seq + 1) if meta.files[-1].type == "incr" else None
    found = {name.split("/", 1)[0]: "is not listed in the metadata" for name in objects}
    found.update(_local_only(store, meta.chain, found))
    for name, what in sorted(found.items()):
        if what == "is not listed in the metadata":
            if name in known:
                continue
            if not meta.closed and name == next_incr:  # created by a rotation, listed a moment later
                continue
        bad(name, what)


def _local_only(store: Store, chain: str, listed: Mapping[str, str]) -> dict[str, str]:
    """A local chain directory's entries that are not objects (symbolic links, special files, empty
    directories), which no listing shows; names starting with `.` are writes in progress."""
    if not isinstance(store, LocalStore):
        return {}
    out: dict[str, str] = {}
    try:
        entries = list(os.scandir(store.root / chain))
    except OSError:
        return out  # the listing's and the metadata's errors say what is wrong
    for entry in entries:
        if entry.name.startswith(".") or entry.name in listed:
            continue
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            out[entry.name] = f"is {SYMLINK}"
        elif not stat.S_ISREG(mode):
            out[entry.name] = "is not listed in the metadata"
    return out


def _size(objects: Objects, f: FileMeta, streamed: int) -> int:
    """The listed size; when it is not the metadata's, the size read (after the metadata): a listing
    made while the service still appended to a file it has closed since is older than both."""
    listed = objects.get(f.name)
    return listed if listed is not None and listed == f.size else streamed


def _open_problem(chain: str, file: str, e: StoreError) -> str:
    return file_error(chain, file, e).what


def _check_base(store: Store, meta: ChainMeta, objects: Objects, bad: _Bad, progress: Progress) -> None:
    base = meta.base
    digest = RdbDigest()
    try:
        with store.open(f"{meta.chain}/{base.name}") as f:
            while block := f.read(CHUNK):
                digest.update(block)
                progress.add(len(block))
    except StoreError as e:
        bad(base.name, _open_problem(meta.chain, base.name, e))
        return
    finally:
        progress.add(0, items=1)
    version: int | None = None
    sha: str | None = digest.sha256.hexdigest()
    size: int | None = _size(objects, base, digest.size)
    try:
        version = digest.verify()
    except RdbError as e:
        bad(base.name, str(e))
        sha = size = None
    if size is not None and base.size is not None and size != base.size:
        bad(base.name, f"is {size} bytes, the metadata says {base.size}")
    if sha is not None and sha != base.sha256:
        bad(base.name, "SHA-256 does not match the metadata (the file is damaged)")
    if version is not None and meta.rdb_version is not None and version != meta.rdb_version:
        bad(base.name, f"RDB version {version}, the metadata says {meta.rdb_version}")


def _check_incr(
    store: Store, meta: ChainMeta, f: FileMeta, objects: Objects, last_of_chain: bool, bad: _Bad, progress: Progress
) -> FileIndex | None:
    try:
        ix = index_file(store, meta.chain, f, hash=True, on_read=progress.add)
    except StorageError as e:
        bad(f.name, e.what)
        return None
    finally:
        progress.add(0, items=1)
    growing = last_of_chain and not meta.closed and not f.closed
    if f.closed:
        size = _size(objects, f, ix.size)
        if size != f.size:
            bad(f.name, f"is {size} bytes, the metadata says {f.size}")
        elif ix.sha256 != f.sha256:
            bad(f.name, "SHA-256 does not match the metadata (the file is damaged)")
    elif not last_of_chain:
        bad(f.name, "is not closed (no checksum) but newer files follow")
    elif meta.closed:
        bad(f.name, "is not closed (no checksum) but the chain is")
    if not ix.header_ok:
        bad(f.name, f"does not begin with the SELECT {f.start_db} header of {f.header_size} bytes")
    if ix.error is not None:
        bad(f.name, ix.error)
    if ix.ts_out_of_order:
        bad(f.name, "#TS lines out of order")
    for m in ix.marks:
        if not m.safe:
            bad(f.name, f"#TS line inside MULTI/EXEC at byte {m.pos}")
            break
    if ix.error is None and ix.incomplete_tail and not growing:
        bad(f.name, f"ends with an incomplete command at byte {ix.end_pos}")
    if ix.safe_pos < ix.end_pos and not last_of_chain:
        bad(f.name, f"ends inside MULTI/EXEC (at byte {ix.safe_pos}) but newer files follow")
    if ix.error is None:
        if f.end_offset is not None and ix.end_offset != f.end_offset:
            bad(
                f.name,
                f"holds stream offsets {f.start_offset}..{ix.end_offset}, the metadata says ..{f.end_offset}",
            )
        if growing and ix.end_offset < meta.end_offset:
            bad(
                f.name,
                f"ends at offset {ix.end_offset}, the metadata says the chain reached {meta.end_offset}",
            )
        scanned = (ix.first_ts, ix.marks[-1].ts if ix.marks else None)
        if f.closed and (f.first_ts, f.last_ts) != scanned:
            bad(
                f.name,
                f"#TS lines span {scanned[0]}..{scanned[1]}, the metadata says {f.first_ts}..{f.last_ts}",
            )
        elif not f.closed and f.last_ts is not None and (scanned[1] is None or f.last_ts > scanned[1]):
            bad(f.name, f"the metadata says #TS lines reach {f.last_ts}, the file's only {scanned[1]}")
    return ix


# --------------------------------------------------------------------------------------------- deep


def verify_chain_deep(
    store: Store,
    chain: str,
    objects: Objects | None = None,
    *,
    server: ServerBinary | None = None,
    progress: Progress | None = None,
) -> list[Problem]:
    """verify_chain, then restore the chain's latest state into a temporary redis-server (`server`, else
    the redis-server on PATH; unix socket only; files under TMPDIR) and check that it loads. Blocking:
    call it from a thread in async code. Raises tempserver.RedisServerMissing when there is no
    redis-server binary, and tempserver.ServerCannotRead when the chain checks out but the server is too
    old for its snapshot (the load is not tried: the chain is not checked, not damaged). progress: the
    checks' (verify_chain), then the restore's steps."""
    if server is None:
        server = find_redis_server()
    problems = verify_chain(store, chain, objects, progress=progress)
    if problems:
        return problems
    try:
        record, tail = load_chain(store, chain)
        target = file_to_cut(record, None)
        index = None
        if target is not None:
            index = tail if tail is not None and tail.name == target.name else index_file(store, chain, target)
        plan = plan_restore(record, at=None, index=index)
    except (md.MetadataError, BackupError) as e:
        return [Problem(chain, naming.METADATA, f"cannot plan a restore: {e}")]
    try:
        with (
            replayed(plan, store, prefix="redis-backup-verify-", server=server, progress=progress) as srv,
            contextlib.closing(srv.client()) as c,
        ):
            c.dbsize()
    except ServerCannotRead:
        raise
    except TempServerError as e:
        return [Problem(chain, _named_in(plan, str(e)), f"does not load in redis-server: {e}")]
    except BackupError as e:
        file = getattr(e, "file", None)  # StorageError, ChainDamaged: the file they are about
        return [Problem(chain, file or naming.MANIFEST, getattr(e, "what", str(e)) if file else str(e))]
    return []


def _named_in(plan: RestorePlan, server_says: str) -> str:
    """The file of the plan that redis-server's complaint names (the manifest when it names none)."""
    return next((f.name for f in reversed(plan.files) if f.name in server_says), naming.MANIFEST)
