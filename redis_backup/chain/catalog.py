"""What BACKUP_DIR holds: every chain's metadata, plus what only the files know yet.

The metadata of an open chain lags its newest incr file by up to about a second, so that file is indexed
(tsindex) for its true last second and offset. Directories that are not chains (`.partial-*` snapshots
still being received, anything else) are ignored; chains whose metadata cannot be read are listed as
broken rather than guessed at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from redis_backup.chain import metadata as md
from redis_backup.chain import naming
from redis_backup.chain.metadata import ChainMeta, Gap
from redis_backup.chain.tsindex import FileIndex, index_incr_file
from redis_backup.errors import StorageError


@dataclass(frozen=True)
class FileRecord:
    name: str
    type: Literal["base", "incr"]
    seq: int
    start_offset: int
    end_offset: int | None
    header_size: int
    start_db: int
    first_ts: int | None
    last_ts: int | None
    size: int | None
    sha256: str | None

    @property
    def closed(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class ChainRecord:
    """One chain as list, plan and restore see it (derived from ChainMeta and, when open, its tail)."""

    chain: str
    primary: str
    replid: str
    closed: bool
    snapshot_at: float
    start_offset: int
    end_offset: int
    files: tuple[FileRecord, ...]
    rdb_version: int | None = None
    closed_reason: str | None = None
    gaps: tuple[Gap, ...] = ()
    server_version: str | None = None
    max_db: int | None = None  # the highest db the chain uses, when the metadata knows it
    verified_until: float | None = None

    @property
    def state(self) -> str:
        return "closed" if self.closed else "open"

    @property
    def base(self) -> FileRecord:
        return self.files[0]

    @property
    def incr(self) -> tuple[FileRecord, ...]:
        return self.files[1:]

    @property
    def first_second(self) -> int:
        """The snapshot's second: the state at its end is the snapshot plus the commands of that second."""
        return math.floor(self.snapshot_at)

    @property
    def last_second(self) -> int:
        """The last second with recorded commands (or the snapshot's, before any arrived)."""
        seconds = [f.last_ts for f in self.incr if f.last_ts is not None]
        return max([self.first_second, *seconds])

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def exact_spans(self) -> list[tuple[int, int]]:
        """The seconds a restore gives exactly: first..last second, less the gaps in capture, and none
        whose end the service has not confirmed (a stopped service's last second, the metadata's lag)."""
        last = self.last_second
        if self.verified_until is not None:
            last = min(last, math.floor(self.verified_until) - 1)
        spans = [(self.first_second, last)] if last >= self.first_second else []
        for g in self.gaps:
            end = self.last_second + 1 if g.to_second is None else g.to_second  # first exact second after
            kept: list[tuple[int, int]] = []
            for lo, hi in spans:
                if g.from_second > hi or end <= lo:
                    kept.append((lo, hi))
                    continue
                if lo < g.from_second:
                    kept.append((lo, g.from_second - 1))
                if end <= hi:
                    kept.append((end, hi))
            spans = kept
        return spans

    def gap_at(self, second: int) -> Gap | None:
        return next((g for g in self.gaps if g.covers(second)), None)


def record_from_meta(meta: ChainMeta, tail: FileIndex | None = None) -> ChainRecord:
    """Pure: the metadata, with the newest file's size, seconds and end offset taken from its index."""
    files = []
    end_offset = meta.end_offset
    for f in meta.files:
        size, first_ts, last_ts, end = f.size, f.first_ts, f.last_ts, f.end_offset
        if tail is not None and f is meta.files[-1] and not f.closed:
            size = tail.size
            first_ts = tail.first_ts if tail.first_ts is not None else first_ts
            last_ts = tail.last_ts if tail.last_ts is not None else last_ts
            end_offset = max(end_offset, tail.end_offset)
        files.append(
            FileRecord(
                name=f.name,
                type=f.type,
                seq=f.seq,
                start_offset=f.start_offset,
                end_offset=end,
                header_size=f.header_size,
                start_db=f.start_db,
                first_ts=first_ts,
                last_ts=last_ts,
                size=size,
                sha256=f.sha256,
            )
        )
    return ChainRecord(
        chain=meta.chain,
        primary=meta.primary,
        replid=meta.replid,
        closed=meta.closed,
        snapshot_at=meta.snapshot_at,
        start_offset=meta.start_offset,
        end_offset=end_offset,
        files=tuple(files),
        rdb_version=meta.rdb_version,
        closed_reason=meta.closed_reason,
        gaps=tuple(meta.gaps),
        server_version=meta.server_version,
        max_db=meta.max_db,
        verified_until=meta.verified_until,
    )


def index_file(chain_dir: Path, f: FileRecord | md.FileMeta, *, hash: bool = False) -> FileIndex:
    """Index one incr file of a chain (StorageError if it cannot be read)."""
    if not naming.is_data_file(f.name):
        raise StorageError(f"{chain_dir.name}/{f.name}: not a data file name")
    try:
        return index_incr_file(
            chain_dir / f.name,
            header_size=f.header_size,
            start_db=f.start_db,
            start_offset=f.start_offset,
            hash=hash,
        )
    except FileNotFoundError:
        raise StorageError(f"{chain_dir.name}/{f.name}: missing") from None
    except OSError as e:
        raise StorageError(f"{chain_dir.name}/{f.name}: cannot read ({e.strerror})") from e


@dataclass(frozen=True)
class BrokenChain:
    chain: str
    error: str


@dataclass
class Catalog:
    root: Path
    chains: list[ChainRecord] = field(default_factory=list)  # oldest first
    broken: list[BrokenChain] = field(default_factory=list)
    tails: dict[str, FileIndex] = field(default_factory=dict)  # open chain -> index of its newest file

    def find(self, chain: str) -> ChainRecord | None:
        return next((c for c in self.chains if c.chain == chain), None)

    def find_broken(self, chain: str) -> BrokenChain | None:
        return next((b for b in self.broken if b.chain == chain), None)

    def chain_dir(self, chain: str) -> Path:
        if not naming.is_chain_id(chain):
            raise ValueError(f"not a chain id: {chain!r}")
        return self.root / chain


def _entries(root: Path) -> list[Path]:
    try:
        return list(root.iterdir())
    except FileNotFoundError:
        raise StorageError(f"BACKUP_DIR {root} does not exist") from None
    except NotADirectoryError:
        raise StorageError(f"BACKUP_DIR {root} is not a directory") from None
    except OSError as e:
        raise StorageError(f"cannot read BACKUP_DIR {root}: {e.strerror}") from e


def _is_real_dir(p: Path) -> bool:
    return not p.is_symlink() and p.is_dir()


def chain_dirs(root: Path) -> list[Path]:
    """The chain directories under root, oldest first (chain ids sort by start time). A symbolic link
    is never a chain: following one would read, rewrite or delete files outside BACKUP_DIR."""
    return sorted(p for p in _entries(root) if naming.is_chain_id(p.name) and _is_real_dir(p))


def foreign_entries(root: Path) -> list[BrokenChain]:
    """Entries with a chain's or a partial snapshot's name that are not directories of ours: reported,
    never followed, never deleted through."""
    out = []
    for p in sorted(_entries(root)):
        if (naming.is_chain_id(p.name) or p.name.startswith(naming.PARTIAL_PREFIX)) and not _is_real_dir(p):
            what = "a symbolic link" if p.is_symlink() else "not a directory"
            out.append(BrokenChain(p.name, f"is {what}, not a chain directory: not followed, left as it is"))
    return out


def load_chain(chain_dir: Path) -> tuple[ChainRecord, FileIndex | None]:
    """One chain's record (MetadataError, StorageError when it cannot be read)."""
    meta = md.load(chain_dir)
    last = meta.files[-1]
    tail = None
    if not meta.closed and last.type == "incr" and not last.closed:
        tail = index_file(chain_dir, last)
    return record_from_meta(meta, tail), tail


def load_catalog(root: Path) -> Catalog:
    cat = Catalog(root)
    cat.broken.extend(b for b in foreign_entries(root) if naming.is_chain_id(b.chain))
    for d in chain_dirs(root):
        try:
            record, tail = load_chain(d)
        except (md.MetadataError, StorageError) as e:
            cat.broken.append(BrokenChain(d.name, str(e)))
            continue
        cat.chains.append(record)
        if tail is not None:
            cat.tails[record.chain] = tail
    cat.chains.sort(key=lambda c: (c.snapshot_at, c.chain))
    return cat
