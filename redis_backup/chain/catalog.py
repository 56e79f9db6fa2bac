"""What a backup store holds: every chain's metadata, plus what only the files know yet.

Everything is read through a `Store` (store/base.py), so list, restore and verify work unchanged on any
backend: the chains from one listing of the store's top level (`prefixes`: nothing per file); each
chain's metadata by `metadata.read`; the open chain's newest incr file indexed by streaming it (the
metadata lags it by up to about a second: the index gives its true last second and offset). Verify lists
every object once (`list_store`: sizes, stray files), grouped by chain. Names that are not chains
(`.partial-*` snapshots still being received, `.deleting-*` chains retention is removing, anything else)
are ignored; chains whose metadata cannot be read are listed as broken rather than guessed at. In a
bucket, a chain whose deletion has begun (its marker object, chain/objects.py) is not offered at all.

A local directory has entries no object store has: symbolic links or plain files with a chain's name,
empty chain directories. The local-only part at the end finds those by looking at the directory itself,
and reports them; nothing is followed through a link.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from redis_backup.chain import metadata as md
from redis_backup.chain import naming
from redis_backup.chain.metadata import ChainMeta, Gap
from redis_backup.chain.tsindex import FileIndex, index_incr_stream
from redis_backup.errors import StorageError
from redis_backup.store.base import NotFound, Store, StoreError
from redis_backup.store.local import LocalStore
from redis_backup.times import iso


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
    server_name: str | None = None
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


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges of seconds as disjoint ranges, in order (ranges that touch or overlap merge)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def windows(chains: Iterable[ChainRecord]) -> list[tuple[int, int]]:
    """The exactly restorable seconds as disjoint ranges (chains that touch or overlap merge; gaps in
    capture split them)."""
    return merge_spans(span for c in chains for span in c.exact_spans)


def describe_spans(spans: Sequence[tuple[int, int]]) -> str:
    """'restorable window(s): A .. B, C .. D', as list, restore and prune say it."""
    if not spans:
        return "there are no backups to restore from"
    text = ", ".join(f"{iso(lo)} .. {iso(hi)}" for lo, hi in spans)
    return f"restorable window{'s' if len(spans) > 1 else ''}: {text}"


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
        server_name=meta.server_name,
        max_db=meta.max_db,
        verified_until=meta.verified_until,
    )


def file_error(chain: str, file: str, e: StoreError) -> StoreError:
    """A storage failure reading one file of a chain, as one line naming both (and keeping whether a
    later attempt may succeed)."""
    if isinstance(e, NotFound):
        return NotFound("missing", name=e.name, reason=e.reason, chain=chain, file=file)
    hint = "; a temporary storage failure: try again" if e.retryable else ""
    return StoreError(
        f"cannot read ({e.reason}{hint})", name=e.name, retryable=e.retryable, reason=e.reason, chain=chain, file=file
    )


def index_file(
    store: Store, chain: str, f: FileRecord | md.FileMeta, *, hash: bool = False,
    on_read: Callable[[int], None] | None = None,
) -> FileIndex:  # fmt: skip
    """Index one incr file of a chain, streamed from the store (StorageError naming chain and file if it
    cannot be read); on_read(n): told of each block read."""
    if not naming.is_data_file(f.name):
        raise StorageError("not a data file name", chain=chain, file=f.name)
    try:
        with store.open(f"{chain}/{f.name}") as stream:
            return index_incr_stream(
                stream, name=f.name, header_size=f.header_size, start_db=f.start_db,
                start_offset=f.start_offset, hash=hash, on_read=on_read,
            )  # fmt: skip
    except StoreError as e:
        raise file_error(chain, f.name, e) from e


@dataclass(frozen=True)
class BrokenChain:
    chain: str
    error: str


@dataclass(frozen=True)
class Listing:
    """The store listed once: chain -> {name inside the chain: size}, chains in name (= time) order;
    and, on a local directory, the entries with a chain's name that are not chain directories."""

    chains: dict[str, dict[str, int]]
    foreign: tuple[BrokenChain, ...] = ()


def _listing_error(store: Store, e: StoreError) -> StorageError:
    return StorageError(f"cannot list {store.describe()}: {e.reason}")


def chain_ids(store: Store) -> list[str]:
    """The chains, oldest first, from one listing of the store's top level (no cost per file)."""
    try:
        return [p[:-1] for p in store.prefixes() if naming.is_chain_id(p[:-1])]
    except StoreError as e:
        raise _listing_error(store, e) from e


def list_store(store: Store) -> Listing:
    """Every object of every chain, with its size, from one listing of the whole store grouped by chain
    prefix (not one call per chain): what verify checks the metadata against."""
    foreign = local_foreign(store)  # first: it says when BACKUP_DIR is missing or not a directory
    chains: dict[str, dict[str, int]] = {}
    if isinstance(store, LocalStore):  # an empty chain directory is broken, not invisible
        chains = {d.name: {} for d in chain_dirs(store.root)}
    try:
        for o in store.list():
            head, sep, rest = o.name.partition("/")
            if sep and naming.is_chain_id(head):
                chains.setdefault(head, {})[rest] = o.size
    except StoreError as e:
        raise _listing_error(store, e) from e
    return Listing(dict(sorted(chains.items())), foreign)


@dataclass
class Catalog:
    store: Store
    chains: list[ChainRecord] = field(default_factory=list)  # oldest first
    broken: list[BrokenChain] = field(default_factory=list)
    tails: dict[str, FileIndex] = field(default_factory=dict)  # open chain -> index of its newest file

    def find(self, chain: str) -> ChainRecord | None:
        return next((c for c in self.chains if c.chain == chain), None)

    def find_broken(self, chain: str) -> BrokenChain | None:
        return next((b for b in self.broken if b.chain == chain), None)


def load_chain(store: Store, chain: str) -> tuple[ChainRecord, FileIndex | None]:
    """One chain's record (MetadataError, StorageError when it cannot be read)."""
    meta = md.read(store, chain)
    last = meta.files[-1]
    tail = None
    if not meta.closed and last.type == "incr" and not last.closed:
        tail = index_file(store, chain, last)
    return record_from_meta(meta, tail), tail


def load_catalog(store: Store) -> Catalog:
    cat = Catalog(store)
    cat.broken.extend(b for b in local_foreign(store) if naming.is_chain_id(b.chain))
    for chain in chain_ids(store):
        try:
            record, tail = load_chain(store, chain)
        except (md.MetadataError, StorageError) as e:
            cat.broken.append(BrokenChain(chain, str(e)))
            continue
        cat.chains.append(record)
        if tail is not None:
            cat.tails[record.chain] = tail
    cat.chains.sort(key=lambda c: (c.snapshot_at, c.chain))
    return cat


# --------------------------------------------------------------------------------------------- local only
# What only a local directory can hold, looked at directly (also by the service, which writes there).


def local_foreign(store: Store) -> tuple[BrokenChain, ...]:
    """On a local store, its entries with a chain's or a partial snapshot's name that are not chain
    directories (an object store has no such thing: nothing)."""
    return tuple(foreign_entries(store.root)) if isinstance(store, LocalStore) else ()


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
        ours = naming.is_chain_id(p.name) or p.name.startswith((naming.PARTIAL_PREFIX, naming.DELETING_PREFIX))
        if ours and not _is_real_dir(p):
            what = "a symbolic link" if p.is_symlink() else "not a directory"
            out.append(BrokenChain(p.name, f"is {what}, not a chain directory: not followed, left as it is"))
    return out
