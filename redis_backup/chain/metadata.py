"""The chain metadata file: what the files hold, in stream offsets and seconds.

It is written after the data it describes (the data is fsync'd first), so everything it names is on disk.
Readers (list, restore, verify) never need to parse RESP to plan; they may to check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from redis_backup.chain import naming, schema
from redis_backup.store.base import NotFound, Store, StoreError, read_all
from redis_backup.store.fsutil import atomic_write, read_small

FORMAT_VERSION = 2  # 2 added the databases used, the server version and the gaps in capture
READABLE_FORMATS = (1, 2)


class MetadataError(Exception):
    """The metadata file is missing, unreadable or inconsistent."""


@dataclass
class FileMeta:
    name: str
    type: Literal["base", "incr"]
    seq: int
    # Stream offsets: the base holds the state at start_offset; an incr file holds the stream bytes
    # start_offset..end_offset (end_offset is None while the file is still being appended to).
    start_offset: int
    end_offset: int | None = None
    # Bytes at the head of an incr file that are not stream bytes (the SELECT of the current db).
    header_size: int = 0
    start_db: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    # Set once the file is closed (complete and fsync'd); a base is closed when it is named.
    size: int | None = None
    sha256: str | None = None

    @property
    def closed(self) -> bool:
        return self.sha256 is not None


@dataclass
class ReplidSpan:
    """A replication id and the stream offset from which it applies (psync2 keeps offsets across failover)."""

    replid: str
    from_offset: int


@dataclass
class Gap:
    """Seconds whose state the backup cannot know exactly: from from_second to to_second - 1.

    After a reconnect (+CONTINUE) the commands the primary executed while the service was not
    receiving arrive together and are stamped with the second they were received; after a snapshot, so
    are those executed while it was transferred. Which of those seconds each one belongs to is lost.
    to_second is the first second received once the service had caught up (None: not yet)."""

    from_second: int
    to_second: int | None
    offset: int  # stream offset where the commands of the gap begin
    reason: str = "reconnected"

    def covers(self, second: int) -> bool:
        return second >= self.from_second and (self.to_second is None or second < self.to_second)


@dataclass
class ChainMeta:
    chain: str
    primary: str
    replid: str
    start_offset: int
    end_offset: int
    db: int
    snapshot_at: float
    snapshot_done_at: float | None = None
    last_write_at: float | None = None
    closed: bool = False
    closed_at: float | None = None
    closed_reason: str | None = None
    rdb_version: int | None = None
    server_version: str | None = None  # the snapshot's redis-ver field
    # Highest db index in the snapshot (None: not known) and in the stream (None: format 1, not recorded):
    # a server that loads the chain needs max + 1 databases.
    base_max_db: int | None = None
    stream_max_db: int | None = None
    # The last moment the service confirmed that everything the primary had executed before it had
    # arrived (in time): no second ending after it is vouched for (None: not recorded).
    verified_until: float | None = None
    replids: list[ReplidSpan] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    files: list[FileMeta] = field(default_factory=list)
    format: int = FORMAT_VERSION

    @property
    def base(self) -> FileMeta:
        return self.files[0]

    @property
    def incr_files(self) -> list[FileMeta]:
        return [f for f in self.files if f.type == "incr"]

    @property
    def max_db(self) -> int | None:
        """The highest db index the chain uses (None: not known from the metadata alone)."""
        if self.base_max_db is None or self.stream_max_db is None:
            return None
        return max(self.base_max_db, self.stream_max_db)

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes | str, *, where: str = "metadata") -> ChainMeta:
        if len(raw) > schema.MAX_METADATA_BYTES:
            raise MetadataError(f"{where}: larger than {schema.MAX_METADATA_BYTES} bytes: not a metadata file")
        try:
            data = json.loads(raw)
        except RecursionError:
            raise MetadataError(f"{where}: unreadable (nested too deeply)") from None
        except ValueError as e:
            raise MetadataError(f"{where}: unreadable ({e})") from None
        if isinstance(data, dict) and data.get("format") not in READABLE_FORMATS:
            raise MetadataError(f"{where}: unsupported format {schema.show(data.get('format'))}")
        try:
            schema.validate(data)
        except schema.SchemaError as e:
            raise MetadataError(f"{where}: damaged: {e}") from None
        try:
            files = [FileMeta(**f) for f in data.pop("files")]
            replids = [ReplidSpan(**r) for r in data.pop("replids", [])]
            gaps = [Gap(**g) for g in data.pop("gaps", [])]
            meta = cls(files=files, replids=replids, gaps=gaps, **data)
        except MetadataError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise MetadataError(f"{where}: unreadable ({e})") from e
        meta.check(where)
        return meta

    def check(self, where: str = "metadata") -> None:
        """Structural checks that keep a damaged or edited file from steering a restore astray."""
        problems: list[str] = []
        if not naming.is_chain_id(self.chain):
            problems.append(f"bad chain id {self.chain!r}")
        if not self.files or self.files[0].type != "base":
            problems.append("the first file is not a base")
        seqs: set[int] = set()
        prev_end: int | None = None
        for f in self.files:
            if not naming.is_data_file(f.name):
                problems.append(f"bad file name {f.name!r}")
            if f.type == "incr":
                if f.name != naming.incr_file(f.seq) or f.seq in seqs:
                    problems.append(f"bad or repeated incr seq for {f.name!r}")
                seqs.add(f.seq)
                if prev_end is not None and f.start_offset != prev_end:
                    problems.append(f"{f.name} starts at offset {f.start_offset}, previous file ends at {prev_end}")
                prev_end = f.end_offset
            elif f is not self.files[0]:
                problems.append(f"second base {f.name!r}")
            else:
                prev_end = f.start_offset
        for g in self.gaps:
            if g.to_second is not None and g.to_second <= g.from_second:
                problems.append(f"a gap in capture ends at {g.to_second}, before it begins at {g.from_second}")
        if problems:
            raise MetadataError(f"{where}: " + "; ".join(problems))


def load(chain_dir: Path) -> ChainMeta:
    path = chain_dir / naming.METADATA
    try:
        raw = read_small(path, schema.MAX_METADATA_BYTES)
    except FileNotFoundError as e:
        raise MetadataError(f"{path}: missing") from e
    except OSError as e:
        raise MetadataError(f"{path}: cannot read ({e.strerror})") from e
    meta = ChainMeta.from_json(raw, where=str(path))
    if meta.chain != chain_dir.name and not chain_dir.name.startswith(naming.PARTIAL_PREFIX):
        raise MetadataError(f"{path}: names chain {meta.chain!r}, directory is {chain_dir.name!r}")
    return meta


def read(store: Store, chain: str) -> ChainMeta:
    """A chain's metadata read through the storage interface: how restore, list and verify see it, on
    any backend."""
    name = f"{chain}/{naming.METADATA}"
    where = f"{store.describe()}/{name}"
    try:
        raw = read_all(store, name, schema.MAX_METADATA_BYTES)
    except NotFound as e:
        raise MetadataError(f"{where}: missing") from e
    except StoreError as e:
        raise MetadataError(f"{where}: cannot read ({e})") from e
    meta = ChainMeta.from_json(raw, where=where)
    if meta.chain != chain:
        raise MetadataError(f"{where}: names chain {meta.chain!r}, directory is {chain!r}")
    return meta


def save(chain_dir: Path, meta: ChainMeta) -> None:
    atomic_write(chain_dir / naming.METADATA, meta.to_json())


class ManifestEntry(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def type(self) -> Literal["base", "incr"]: ...


def render_manifest(files: Iterable[ManifestEntry]) -> bytes:
    """The Redis 7 AOF manifest: always derived (from the metadata, or a restore plan), never edited."""
    return "".join(f"file {f.name} seq {f.seq} type {'b' if f.type == 'base' else 'i'}\n" for f in files).encode()


def save_manifest(chain_dir: Path, meta: ChainMeta) -> None:
    atomic_write(chain_dir / naming.MANIFEST, render_manifest(meta.files))


def parse_manifest(raw: bytes) -> list[tuple[str, int, str]]:
    """(name, seq, type letter) per line, as Redis reads it; raises ValueError on anything else."""
    out: list[tuple[str, int, str]] = []
    for n, line in enumerate(raw.decode("utf-8", "strict").split("\n"), 1):
        if not line:
            continue
        parts = line.split(" ")
        kv: dict[str, Any] = dict(zip(parts[::2], parts[1::2], strict=False))
        if len(parts) % 2 or set(kv) - {"file", "seq", "type"} or "file" not in kv:
            raise ValueError(f"line {n}: {line!r}")
        if not naming.is_data_file(kv["file"]):
            raise ValueError(f"line {n}: unsafe or unknown file name {kv['file']!r}")
        out.append((kv["file"], int(kv["seq"]), kv["type"]))
    return out
