"""Write a restore plan out as a Redis 7 multi-part AOF directory, checking every byte on the way.

Files are streamed in chunks (constant memory). The base's RDB CRC64 and SHA-256, and each closed incr
file's SHA-256 (over the whole file, also past a cut) are checked against the metadata. What is copied of
each incr file is scanned as RESP (the newest file of an open chain has no checksum yet): it must end at a
complete command outside MULTI/EXEC and hold no `#TS` later than the second asked for. Everything is
written under a temporary name next to the destination, which only gets its name once all checks passed:
a damaged chain never leaves a restorable-looking directory behind.

The chain is read through a `Store` (any backend); the output is a local directory, because a scratch
redis-server (tempserver.py) loads files only from one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from redis_backup.chain import naming
from redis_backup.chain.catalog import file_error
from redis_backup.chain.metadata import render_manifest
from redis_backup.chain.rdb import RdbDigest, RdbError
from redis_backup.chain.rdbscan import RdbScan
from redis_backup.errors import BackupError, ProtocolError, StorageError
from redis_backup.interrupts import held
from redis_backup.progress import Progress, silent
from redis_backup.restore.plan import PlannedFile, RestorePlan
from redis_backup.restore.tempserver import ServerBinary, TempRedis, check_reads
from redis_backup.store.base import NotFound, Store, StoreError
from redis_backup.store.fsutil import UnsafeEntry, clear_temp, create_dir, create_file, fsync_dir, write_all
from redis_backup.store.local import LocalStore
from redis_backup.wire.resp import StreamScanner

CHUNK = 1 << 20
AOF_DIR = "appendonlydir"
UNKNOWN_DB = -1  # an RDB whose structure this version cannot walk (its CRC checked out): dbs not known


class ChainDamaged(BackupError):
    """A file of the chain does not match its metadata: restoring it would restore wrong data. Like
    StorageError, it names the chain and file (attributes, and the message's `CHAIN/FILE: `)."""

    def __init__(self, what: str, *, chain: str | None = None, file: str | None = None) -> None:
        where = "/".join(p for p in (chain, file) if p)
        super().__init__(f"{where}: {what}" if where else what)
        self.what, self.chain, self.file = what, chain, file


def _safe_name(name: str) -> str:
    if not naming.is_data_file(name):
        raise ChainDamaged(f"refusing to write a file named {name!r}: not an AOF data file name")
    return name


class _Checker:
    """What a copied file must satisfy, fed the source bytes in order."""

    def __init__(self, plan: RestorePlan, f: PlannedFile) -> None:
        self.chain = plan.chain
        self.f = f
        self.sha = hashlib.sha256()
        self.rdb = RdbDigest() if f.type == "base" else None
        # which databases the base uses, when the metadata does not say (format 1, or a walk that failed)
        self.dbs = RdbScan() if f.type == "base" and plan.max_db is None else None
        # Also checksummed files are scanned: the copy must end at a safe boundary, and hold no second
        # after the one asked for (which the metadata's seconds, not covered by a checksum, promise).
        self.scanner = StreamScanner(annotations=True) if f.type == "incr" else None
        self.at = plan.at
        self.size = 0
        self.copied = 0

    def feed(self, block: bytes, copied: bool) -> None:
        self.size += len(block)
        if self.rdb is not None:
            self.rdb.update(block)
            if self.dbs is not None:
                self.dbs.feed(block)
        else:
            self.sha.update(block)
        if copied:
            self.copied += len(block)
            if self.scanner is not None:
                try:
                    self.scanner.feed(block)
                except ProtocolError as e:
                    raise self.damaged(f"not a valid command stream: {e}") from None

    def damaged(self, what: str) -> ChainDamaged:
        return ChainDamaged(what, chain=self.chain, file=self.f.name)

    def finish(self) -> None:
        f = self.f
        if self.copied < f.copy_bytes:
            raise self.damaged(f"is {self.size} bytes, {f.copy_bytes} were expected (truncated)")
        if self.rdb is not None:
            try:
                self.rdb.verify()
            except RdbError as e:
                raise self.damaged(str(e)) from None
            digest = self.rdb.sha256.hexdigest()
        else:
            digest = self.sha.hexdigest()
        if f.sha256 is not None:
            if self.size != f.size:
                raise self.damaged(f"is {self.size} bytes, the metadata says {f.size}")
            if digest != f.sha256:
                raise self.damaged("SHA-256 does not match the metadata (the file is damaged)")
        sc = self.scanner
        if sc is not None and (not sc.at_boundary or sc.in_multi):
            raise self.damaged("the copy does not end at a complete command outside MULTI/EXEC")
        if sc is not None and self.at is not None and sc.last_ts is not None and sc.last_ts > self.at:
            raise self.damaged(f"holds commands of {sc.last_ts}, after {self.at} (metadata wrong)")

    @property
    def max_db(self) -> int | None:
        """The highest db the copied bytes select (None: the metadata's figure stands, or none known)."""
        if self.scanner is not None:
            return self.scanner.max_db
        if self.dbs is not None:
            self.dbs.finish()
            return (self.dbs.max_db or 0) if self.dbs.complete else UNKNOWN_DB
        return None


def copy_file(plan: RestorePlan, store: Store, f: PlannedFile, dest: Path, progress: Progress) -> int | None:
    """Copy f.copy_bytes of the chain's f.name from the store to dest, reading (and checking) the whole
    source file when a checksum covers it; returns the highest db the copy selects, where it had to find
    out."""
    check = _Checker(plan, f)
    length = None if f.sha256 is not None else f.copy_bytes  # the checksum covers the rest of the file too
    try:
        with store.open(f"{plan.chain}/{_safe_name(f.name)}", 0, length) as inp:
            fd = create_file(dest)
            try:
                left = f.copy_bytes
                while left > 0:
                    block = inp.read(min(CHUNK, left))
                    if not block:
                        break
                    write_all(fd, block)
                    check.feed(block, copied=True)
                    left -= len(block)
                    progress.add(len(block))
                os.fsync(fd)
            finally:
                os.close(fd)
            while block := inp.read(CHUNK):
                check.feed(block, copied=False)
                progress.add(len(block))
    except NotFound:
        raise check.damaged("missing") from None
    except StoreError as e:
        raise file_error(plan.chain, f.name, e) from e
    except OSError as e:
        raise StorageError(f"cannot write {dest}: {e.strerror}") from e
    check.finish()
    progress.add(0, items=1)
    return check.max_db


def read_size(plan: RestorePlan) -> int:
    """The bytes a restore reads: the whole of each file a checksum covers (also past a cut)."""
    return sum(f.size if f.sha256 is not None else f.copy_bytes for f in plan.files)


def write_aof_dir(
    plan: RestorePlan, store: Store, dest: Path, *, replace: bool = False, progress: Progress | None = None
) -> int | None:
    """Create dest (an `appendonlydir`) from the plan; an existing dest is swapped out only if replace.
    Returns the highest db index the files use (a server that loads them needs one more database), or
    None when the snapshot's could not be told. progress: counts bytes read and files done."""
    progress = progress or silent()
    exists = os.path.lexists(dest)
    if exists and not replace:
        raise StorageError(f"{dest} exists")
    if exists and (dest.is_symlink() or not dest.is_dir()):
        raise UnsafeEntry(f"{dest} is not a directory of ours (a link or a file): refusing to replace it")
    tmp = dest.with_name(f".{dest.name}.partial")
    made = False  # tmp is ours to remove: a link planted there is refused by create_dir, never removed
    try:
        with held():  # a signal is delivered once `made` says what to clean up
            create_dir(tmp)  # exclusively: a link planted there is refused, never written through
            made = True
        verb = "copying" if isinstance(store, LocalStore) else "downloading"
        with progress.phase(f"{verb} into {dest.name}", total=read_size(plan), items=len(plan.files)):
            max_db: int | None = plan.max_db or 0
            for f in plan.files:
                found = copy_file(plan, store, f, tmp / _safe_name(f.name), progress)
                if found == UNKNOWN_DB or max_db is None:
                    max_db = None
                elif found is not None:
                    max_db = max(max_db, found)
            fd = create_file(tmp / naming.MANIFEST)
            try:
                write_all(fd, render_manifest(plan.files))
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(tmp)
        old = dest.with_name(f".{dest.name}.old")
        with held():  # the old directory swapped out and the new one in, not one without the other
            if exists:
                clear_temp(old, want_dir=True)
                os.replace(dest, old)
            os.replace(tmp, dest)
            made = False
        if exists:  # outside held(): removing a large old restore must not keep Ctrl-C waiting
            shutil.rmtree(old, ignore_errors=True)  # (left over, the next restore's clear_temp removes it)
        fsync_dir(dest.parent)
        return max_db
    except OSError as e:
        raise StorageError(f"cannot write {dest}: {e.strerror}") from e
    finally:
        if made:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def replayed(
    plan: RestorePlan,
    store: Store,
    *,
    prefix: str,
    server: ServerBinary,
    under: Path | None = None,
    progress: Progress | None = None,
) -> Iterator[TempRedis]:
    """The plan's state loaded in the scratch redis-server `server`; its files live in a temporary
    directory (under `under`, else TMPDIR) that is removed afterwards. The server's directory is
    `srv.data_dir`. ServerCannotRead, before anything is written, when it is too old for the base.
    progress: the copy's, then the load's."""
    check_reads(server, plan.rdb_version, plan.server_name, plan.server_version)
    work: Path | None = None
    try:
        with held():  # made and owned (by the finally below) with no signal in between
            work = Path(tempfile.mkdtemp(prefix=prefix, dir=under))
        max_db = write_aof_dir(plan, store, work / AOF_DIR, progress=progress)
        with TempRedis(work, max_db=max_db, server=server, progress=progress) as srv:
            yield srv
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
