"""The checks of `redis-backup verify`: that every chain is what its metadata says, and (--deep) that it loads.

Checks per chain: the metadata reads; the manifest is the one the metadata gives; the directory holds
exactly the files listed; the base's size, SHA-256 and RDB CRC64; each incr file's size and SHA-256 once
closed, its SELECT header, RESP well-formedness, `#TS` lines in order and outside MULTI/EXEC, the stream
bytes it holds against its offsets, and that only the newest file of an open chain ends with an
incomplete command. `--deep` then restores the latest state of each chain into a temporary redis-server.

``verify_chain_deep(chain_dir)`` is the entry point for the service's periodic check.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from redis_backup.chain import metadata as md
from redis_backup.chain import naming
from redis_backup.chain.catalog import index_file, load_chain
from redis_backup.chain.metadata import ChainMeta, FileMeta
from redis_backup.chain.rdb import RdbError, check_rdb_file
from redis_backup.chain.schema import MAX_METADATA_BYTES
from redis_backup.chain.tsindex import FileIndex
from redis_backup.errors import BackupError, StorageError
from redis_backup.restore.aofdir import replayed
from redis_backup.restore.plan import file_to_cut, plan_restore
from redis_backup.restore.tempserver import TempServerError, find_redis_server
from redis_backup.store.fsutil import SYMLINK, read_small

_FILE_IN_LOG = re.compile(r"appendonly\.aof\.\d+\.(?:base\.rdb|incr\.aof)")
_Bad = Callable[[str, str], None]


@dataclass(frozen=True)
class Problem:
    chain: str
    file: str
    what: str

    def __str__(self) -> str:
        return f"{self.chain}/{self.file}: {self.what}" if self.file else f"{self.chain}: {self.what}"


# --------------------------------------------------------------------------------------------- checks


def verify_chain(chain_dir: Path) -> list[Problem]:
    """Every problem of one chain (an empty list: the chain is sound)."""
    chain = chain_dir.name
    try:
        meta = md.load(chain_dir)
    except md.MetadataError as e:
        return [Problem(chain, naming.METADATA, _strip_path(str(e), chain_dir / naming.METADATA))]
    problems: list[Problem] = []

    def bad(file: str, what: str) -> None:
        problems.append(Problem(chain, file, what))

    _check_manifest(chain_dir, meta, bad)
    _check_listing(chain_dir, meta, bad)
    _check_base(chain_dir, meta, bad)
    incr = meta.incr_files
    prev_last_ts: int | None = None
    for i, f in enumerate(incr):
        last_of_chain = i == len(incr) - 1
        ix = _check_incr(chain_dir, meta, f, last_of_chain, bad)
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


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _check_manifest(chain_dir: Path, meta: ChainMeta, bad: _Bad) -> None:
    try:
        raw = read_small(chain_dir / naming.MANIFEST, MAX_METADATA_BYTES)
    except FileNotFoundError:
        bad(naming.MANIFEST, "missing")
        return
    except OSError as e:
        bad(naming.MANIFEST, f"cannot read ({e.strerror})")
        return
    if raw == md.render_manifest(meta.files):
        return
    if not meta.closed:  # a rotation writes the manifest just before the metadata: look again
        try:
            meta = md.load(chain_dir)
            raw = read_small(chain_dir / naming.MANIFEST, MAX_METADATA_BYTES)
        except (md.MetadataError, OSError):
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


def _check_listing(chain_dir: Path, meta: ChainMeta, bad: _Bad) -> None:
    known = {f.name for f in meta.files} | set(naming.METADATA_FILES)
    next_incr = naming.incr_file(meta.files[-1].seq + 1) if meta.files[-1].type == "incr" else None
    for p in sorted(chain_dir.iterdir()):
        if p.is_symlink():
            bad(p.name, f"is {SYMLINK}")
            continue
        if p.name in known or p.name.startswith("."):  # .name.tmp: a write in progress
            continue
        if not meta.closed and p.name == next_incr:  # created by a rotation, listed a moment later
            continue
        bad(p.name, "is not listed in the metadata")


def _check_base(chain_dir: Path, meta: ChainMeta, bad: _Bad) -> None:
    base = meta.base
    try:
        version, sha, size = check_rdb_file(str(chain_dir / base.name))
    except FileNotFoundError:
        bad(base.name, "missing")
        return
    except OSError as e:
        bad(base.name, f"cannot read ({e.strerror})")
        return
    except RdbError as e:
        bad(base.name, str(e))
        version, sha, size = None, None, None
    if size is not None and base.size is not None and size != base.size:
        bad(base.name, f"is {size} bytes, the metadata says {base.size}")
    if sha is not None and sha != base.sha256:
        bad(base.name, "SHA-256 does not match the metadata (the file is damaged)")
    if version is not None and meta.rdb_version is not None and version != meta.rdb_version:
        bad(base.name, f"RDB version {version}, the metadata says {meta.rdb_version}")


def _check_incr(chain_dir: Path, meta: ChainMeta, f: FileMeta, last_of_chain: bool, bad: _Bad) -> FileIndex | None:
    try:
        ix = index_file(chain_dir, f, hash=True)
    except StorageError as e:
        bad(f.name, str(e).split(": ", 1)[-1])
        return None
    growing = last_of_chain and not meta.closed and not f.closed
    if f.closed:
        if ix.size != f.size:
            bad(f.name, f"is {ix.size} bytes, the metadata says {f.size}")
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


def verify_chain_deep(chain_dir: Path) -> list[Problem]:
    """verify_chain, then restore the chain's latest state into a temporary redis-server (unix socket
    only; files under TMPDIR) and check that it loads. Blocking: call it from a thread in async code.
    Raises tempserver.RedisServerMissing when there is no redis-server binary."""
    find_redis_server()
    problems = verify_chain(chain_dir)
    if problems:
        return problems
    chain = chain_dir.name
    try:
        record, tail = load_chain(chain_dir)
        target = file_to_cut(record, None)
        index = None
        if target is not None:
            index = tail if tail is not None and tail.name == target.name else index_file(chain_dir, target)
        plan = plan_restore(record, at=None, index=index)
    except (md.MetadataError, BackupError) as e:
        return [Problem(chain, naming.METADATA, f"cannot plan a restore: {e}")]
    try:
        with replayed(plan, chain_dir, prefix="redis-backup-verify-") as srv, contextlib.closing(srv.client()) as c:
            c.dbsize()
    except TempServerError as e:
        m = _FILE_IN_LOG.search(str(e))
        return [Problem(chain, m.group(0) if m else naming.MANIFEST, f"does not load in redis-server: {e}")]
    except BackupError as e:
        text = str(e)
        file = text[len(chain) + 1 :].split(":", 1)[0] if text.startswith(chain + "/") else naming.MANIFEST
        return [Problem(chain, file, text.split(": ", 1)[-1])]
    return []
