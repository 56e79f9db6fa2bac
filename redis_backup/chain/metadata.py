"""The chain metadata: what the files hold, in stream offsets and seconds.

It is written after the data it describes (the data is fsync'd first), so everything it names is on disk.
Readers (list, restore, verify) never need to parse RESP to plan; they may to check.

Format 3 keeps its cost flat in the number of files: a small head (`redis-backup.json`, replaced
atomically on every write) with the chain's offsets and the files not yet sealed, and an append-only
journal (`redis-backup.files.jsonl`) with one line per sealed file, written once. The head says how many
bytes of the journal are committed; anything after them (a crash between the append and the head) is
not part of the chain. Formats 1 and 2 (one JSON object listing every file) are still read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from redis_backup.chain import naming, schema
from redis_backup.errors import BackupError
from redis_backup.store.base import NotFound, Store, StoreError, read_all
from redis_backup.store.fsutil import atomic_write, create_file, fsync_dir, open_read, read_small, write_all, write_new

# 2 added the databases used, the server version and the gaps in capture; 3 split the sealed files off
# into the append-only journal
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)


class MetadataError(BackupError):
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
class ChainHead:
    """A chain's fields, with the files this object holds: in the head the service rewrites, only those
    not yet sealed (the journal has the others); in a ChainMeta, every file."""

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
    server_version: str | None = None  # the snapshot's valkey-ver or redis-ver field
    server_name: str | None = None  # "redis" or "valkey" (which of the two; None: written before it was recorded)
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
    # Format 3: how many sealed files the journal holds, in how many bytes (what follows is not committed).
    journal_records: int = 0
    journal_bytes: int = 0

    def to_json(self) -> bytes:
        """The head (format 3): small, whatever the length of the chain."""
        data = asdict(self)
        data["format"] = FORMAT_VERSION
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


@dataclass
class ChainMeta(ChainHead):
    """Everything known about a chain, files[] complete (base first), as readers see it."""

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
        """The head that save() writes with the journal of the leading sealed files."""
        return self.split()[1].to_json()

    def split(self) -> tuple[list[FileMeta], ChainHead]:
        """The sealed files that lead the list (the journal) and the head that follows them."""
        n = 0
        while n < len(self.files) and self.files[n].closed:
            n += 1
        sealed = self.files[:n]
        head = ChainHead(**{k: v for k, v in vars(self).items() if k != "files"}, files=self.files[n:])
        head.journal_records = n
        head.journal_bytes = sum(len(journal_line(f)) for f in sealed)
        return sealed, head

    @classmethod
    def from_json(cls, raw: bytes | str, *, where: str = "metadata", journal: bytes | None = None) -> ChainMeta:
        """From a format 1 or 2 file, or a format 3 head with its journal's committed bytes."""
        data = parse_head(raw, where)
        if data.get("format") == 3:
            _assemble(data, journal or b"", where)
        return _build(cls, data, where)

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
        if self.format >= 3:
            unsealed = [f.name for f in self.files[: self.journal_records] if not f.closed]
            if unsealed:
                problems.append(f"the journal lists {unsealed[0]} without its size and SHA-256")
        for g in self.gaps:
            if g.to_second is not None and g.to_second <= g.from_second:
                problems.append(f"a gap in capture ends at {g.to_second}, before it begins at {g.from_second}")
        if problems:
            raise MetadataError(f"{where}: " + "; ".join(problems))


def journal_line(f: FileMeta) -> bytes:
    """One sealed file's journal record: one line of JSON, written once."""
    return (json.dumps(asdict(f), sort_keys=True, separators=(",", ":")) + "\n").encode()


def parse_head(raw: bytes | str, where: str) -> dict[str, Any]:
    """The metadata file as a dict of checked scalars (the lists are checked once assembled)."""
    if len(raw) > schema.MAX_METADATA_BYTES:
        raise MetadataError(f"{where}: larger than {schema.MAX_METADATA_BYTES} bytes: not a metadata file")
    data = _json(raw, where)
    if isinstance(data, dict) and data.get("format") not in READABLE_FORMATS:
        raise MetadataError(f"{where}: unsupported format {schema.show(data.get('format'))}")
    try:
        schema.validate_head(data)
    except schema.SchemaError as e:
        raise MetadataError(f"{where}: damaged: {e}") from None
    assert isinstance(data, dict)
    return data


def _json(raw: bytes | str, where: str) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise MetadataError(f"{where}: unreadable (nested too deeply)") from None
    except ValueError as e:
        raise MetadataError(f"{where}: unreadable ({e})") from None


def _assemble(data: dict[str, Any], journal: bytes, where: str) -> None:
    """Put the journal's records in front of the head's files (format 3)."""
    if len(journal) != data["journal_bytes"]:
        have, want = len(journal), data["journal_bytes"]
        raise MetadataError(f"{where}: damaged: {naming.JOURNAL} has {have} of the {want} bytes the head commits")
    if journal and not journal.endswith(b"\n"):
        raise MetadataError(f"{where}: damaged: {naming.JOURNAL} does not end with a whole line")
    lines = journal.count(b"\n")  # a JSON value holds no raw newline: one per record
    if lines != data["journal_records"]:
        raise MetadataError(
            f"{where}: damaged: {naming.JOURNAL} has {lines} records, the head says {data['journal_records']}"
        )
    records = _records(journal, where)
    files = data.get("files", [])
    data["files"] = records + files if isinstance(files, list) else files


_DECODER = json.JSONDecoder()


def _records(journal: bytes, where: str) -> list[Any]:
    """Each line one JSON value, exactly: one pass of the decoder over the text (a json.loads per line
    costs half as much again at 10,000 lines)."""
    try:
        text = journal.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MetadataError(f"{where}: {naming.JOURNAL} unreadable ({e})") from None
    out: list[Any] = []
    i, n = 0, len(text)
    decode = _DECODER.raw_decode
    try:
        while i < n:
            value, end = decode(text, i)
            if text[end : end + 1] != "\n":
                raise json.JSONDecodeError("extra data after the record", text, end)
            out.append(value)
            i = end + 1
    except RecursionError:
        line = text.count("\n", 0, i) + 1
        raise MetadataError(f"{where}: {naming.JOURNAL} line {line}: unreadable (nested too deeply)") from None
    except ValueError as e:
        line = text.count("\n", 0, i) + 1
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise MetadataError(f"{where}: {naming.JOURNAL} line {line}: unreadable ({msg})") from None
    return out


def _build(cls: type[ChainMeta], data: dict[str, Any], where: str) -> ChainMeta:
    try:
        schema.validate(data)
    except schema.SchemaError as e:
        raise MetadataError(f"{where}: damaged: {e}") from None
    try:
        files = [FileMeta(**f) for f in data.pop("files")]
        replids = [ReplidSpan(**r) for r in data.pop("replids", [])]
        gaps = [Gap(**g) for g in data.pop("gaps", [])]
        meta = cls(files=files, replids=replids, gaps=gaps, **data)
    except (ValueError, TypeError, KeyError) as e:
        raise MetadataError(f"{where}: unreadable ({e})") from e
    meta.check(where)
    return meta


def _committed(data: dict[str, Any]) -> int:
    return int(data["journal_bytes"]) if data.get("format") == 3 else 0


def load(chain_dir: Path) -> ChainMeta:
    """A chain's metadata from a local directory (also a `.partial-*` one, whose name is not the id)."""
    path = chain_dir / naming.METADATA
    try:
        raw = read_small(path, schema.MAX_METADATA_BYTES)
    except FileNotFoundError as e:
        raise MetadataError(f"{path}: missing") from e
    except OSError as e:
        raise MetadataError(f"{path}: cannot read ({e.strerror})") from e
    data = parse_head(raw, str(path))
    journal = b""
    if n := _committed(data):
        try:
            with open_read(chain_dir / naming.JOURNAL) as f:
                journal = f.read(n)
        except FileNotFoundError as e:
            raise MetadataError(f"{path}: damaged: {naming.JOURNAL} is missing") from e
        except OSError as e:
            raise MetadataError(f"{path}: cannot read {naming.JOURNAL} ({e.strerror})") from e
    if data.get("format") == 3:
        _assemble(data, journal, str(path))
    meta = _build(ChainMeta, data, str(path))
    if meta.chain != chain_dir.name and not chain_dir.name.startswith(naming.PARTIAL_PREFIX):
        raise MetadataError(f"{path}: names chain {meta.chain!r}, directory is {chain_dir.name!r}")
    return meta


def read(store: Store, chain: str) -> ChainMeta:
    """A chain's metadata read through the storage interface: how restore, list and verify see it, on
    any backend (the head, then the committed bytes of the journal in one ranged read)."""
    name = f"{chain}/{naming.METADATA}"
    where = f"{store.describe()}/{name}"
    try:
        raw = read_all(store, name, schema.MAX_METADATA_BYTES)
    except NotFound as e:
        raise MetadataError(f"{where}: missing") from e
    except StoreError as e:
        raise MetadataError(f"{where}: cannot read ({e})") from e
    data = parse_head(raw, where)
    journal = b""
    if n := _committed(data):
        try:
            with store.open(f"{chain}/{naming.JOURNAL}", 0, n) as f:
                parts: list[bytes] = []
                got = 0
                while got < n and (block := f.read(n - got)):
                    parts.append(block)
                    got += len(block)
            journal = b"".join(parts)
        except NotFound as e:
            raise MetadataError(f"{where}: damaged: {naming.JOURNAL} is missing") from e
        except StoreError as e:
            raise MetadataError(f"{where}: cannot read {naming.JOURNAL} ({e})") from e
    if data.get("format") == 3:
        _assemble(data, journal, where)
    meta = _build(ChainMeta, data, where)
    if meta.chain != chain:
        raise MetadataError(f"{where}: names chain {meta.chain!r}, directory is {chain!r}")
    return meta


def save(chain_dir: Path, meta: ChainMeta, *, fresh: bool = False) -> ChainHead:
    """Write a whole chain's metadata (a new chain, a test): the journal, then the head that commits it.

    Replaces the journal: for a directory no reader is looking at yet, or one in format 1 or 2 (whose
    readers ignore a journal). The service appends to a live chain's journal instead (writer.py).
    fresh: a directory that becomes visible only when renamed (a `.partial-*`): the files are created
    and fsync'd in place, and the caller fsyncs the directory once before renaming it."""
    sealed, head = meta.split()
    put = write_new if fresh else atomic_write
    put(chain_dir / naming.JOURNAL, b"".join(journal_line(f) for f in sealed))
    put(chain_dir / naming.METADATA, head.to_json())
    return head


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


def save_manifest(chain_dir: Path, meta: ChainMeta, *, fresh: bool = False) -> None:
    (write_new if fresh else atomic_write)(chain_dir / naming.MANIFEST, render_manifest(meta.files))


def append_manifest(chain_dir: Path, entry: ManifestEntry) -> None:
    """The manifest the service wrote last, plus one file, replaced atomically (temporary file, fsync,
    rename, fsync of the directory). Redis needs every file listed, so this stays a whole-file rewrite,
    but a copy of bytes (about 45 a file) in the kernel, never built from objects or held in memory."""
    path = chain_dir / naming.MANIFEST
    tmp = path.with_name(f".{path.name}.tmp")
    fd = create_file(tmp)
    try:
        with open_read(path) as src:
            left = os.fstat(src.fileno()).st_size
            while left > 0:
                sent = os.sendfile(fd, src.fileno(), None, left)
                if sent == 0:
                    break
                left -= sent
        write_all(fd, render_manifest([entry]))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(chain_dir)


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
