"""A bucket's backup seen through the local layout, so that list, restore and verify read it unchanged.

The bucket holds immutable objects (chain/objects.py); this `Store` presents each chain as the
directory the service writes: `redis-backup.json` is the newest head object as uploaded, the journal is
made from the names of the sealed files the head counts, the manifest from the files, and the open
incr file is its part objects put end to end. Every object is checked as it streams: its codec
(authenticated when encrypted), and at its end its size and SHA-256 against its name, so that a reader
that renames its output only after a clean end never keeps a changed byte. A chain whose objects do not
cover what its head says (a missing sealed file, a hole in the parts) cannot be read, and says which.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from redis_backup.chain import metadata as md
from redis_backup.chain import naming, objects
from redis_backup.chain.metadata import FileMeta
from redis_backup.chain.objects import HeadObject, PartObject, SealedObject
from redis_backup.chain.schema import MAX_METADATA_BYTES
from redis_backup.errors import ConfigError
from redis_backup.store.base import NotFound, ObjectInfo, Store, StoreError, check_name, check_prefix
from redis_backup.store.codec import Key, WrongKey, decode, split_suffix

CHUNK = 1 << 20


@dataclass(frozen=True)
class Piece:
    """One object of the bucket, and what its plain bytes must be."""

    physical: str  # the object's name in the bucket, suffix included
    size: int
    sha256: str
    start: int = 0  # where in the logical file its bytes go (parts)


@dataclass
class ChainObjects:
    """One chain as found in the bucket: its newest head, the files it commits, and where each is."""

    chain: str
    head: bytes = b""
    journal: bytes = b""
    manifest: bytes = b""
    files: dict[str, list[Piece]] = field(default_factory=dict)  # data file name -> its objects, in order
    sizes: dict[str, int] = field(default_factory=dict)  # every logical object -> plain size
    error: str | None = None  # the chain cannot be read: why (names the object)


def authenticated(chain: str, physical: str) -> str:
    """The name an object is sealed under: its chain's and its own, so that a copy elsewhere is refused."""
    return f"{chain}/{split_suffix(physical)[0]}"


class RemoteFault(StoreError):
    """An object of the bucket is not what its name says, or the objects do not cover a file."""


def physical_objects(backend: Store, chain: str) -> dict[str, tuple[objects.RemoteObject, str]]:
    """The chain's objects by logical name: (what the name says, the object's name in the bucket)."""
    return chain_listing(backend, chain)[0]


def chain_listing(backend: Store, chain: str) -> tuple[dict[str, tuple[objects.RemoteObject, str]], bool]:
    """One listing of the chain's prefix: its objects by logical name, and whether its deletion has begun
    (the marker objects.DELETING is there)."""
    out: dict[str, tuple[objects.RemoteObject, str]] = {}
    deleting = False
    for o in backend.list(f"{chain}/"):
        rest = o.name[len(chain) + 1 :]
        if "/" in rest:
            continue
        if rest == objects.DELETING:
            deleting = True
            continue
        logical, _, _ = split_suffix(rest)
        parsed = objects.parse(logical)
        if parsed is not None:
            out[logical] = (parsed, rest)
    return out, deleting


def newest_head(found: dict[str, tuple[objects.RemoteObject, str]]) -> tuple[HeadObject, str] | None:
    heads = [(p, phys) for p, phys in found.values() if isinstance(p, HeadObject)]
    return max(heads, key=lambda h: (h[0].end_offset, h[0].written_ms)) if heads else None


def sealed_files(
    found: dict[str, tuple[objects.RemoteObject, str]],
) -> dict[tuple[str, int], list[tuple[FileMeta, str]]]:
    """(type, seq) -> every sealed object in the bucket that claims to be that file (normally one)."""
    out: dict[tuple[str, int], list[tuple[FileMeta, str]]] = {}
    for p, phys in sorted(found.values(), key=lambda x: x[1]):
        if isinstance(p, SealedObject):
            out.setdefault((p.file.type, p.file.seq), []).append((p.file, phys))
    return out


class RemoteChains:
    """A bucket's chains as the local layout (read-only). One instance answers one command: each chain
    is listed once, when first asked, and its objects are taken as they were then.

    Downloads run ahead: when a data file is opened, the objects of the files after it (up to
    `parallelism` at a time) are fetched, still encoded, into temporary files on local disk, so that a
    restore of many files waits for the network once, not once per object; each is decoded and checked
    when its turn comes, exactly as if streamed. Memory stays bounded; disk holds at most `parallelism`
    objects ahead."""

    def __init__(self, backend: Store, key: Key | None, *, parallelism: int = 8) -> None:
        self.backend = backend
        self.key = key
        self.parallelism = parallelism
        self._chains: dict[str, ChainObjects] = {}
        self._listed: dict[str, tuple[dict[str, tuple[objects.RemoteObject, str]], bool]] = {}
        self._lock = threading.Lock()
        self._ahead: dict[str, Future[Path]] = {}  # object (chain/physical) -> its downloaded copy
        self._pool: ThreadPoolExecutor | None = None
        self._spool: tempfile.TemporaryDirectory[str] | None = None

    def describe(self) -> str:
        return self.backend.describe()

    # ------------------------------------------------------------------------------- listing

    def prefixes(self, prefix: str = "") -> Iterator[str]:
        """The chains, less those whose deletion has begun: a half-deleted chain is never offered."""
        if prefix:
            return iter(())
        return (p for p in self._chain_prefixes() if not self.listing(p[:-1])[1])

    def _chain_prefixes(self) -> builtins.list[str]:
        return [p for p in self.backend.prefixes("") if naming.is_chain_id(p[:-1])]

    def deleting(self) -> builtins.list[str]:
        """The chains whose deletion has begun and not ended (a prune that was stopped): the next prune's."""
        return [p[:-1] for p in self._chain_prefixes() if self.listing(p[:-1])[1]]

    def listing(self, chain: str) -> tuple[dict[str, tuple[objects.RemoteObject, str]], bool]:
        with self._lock:
            found = self._listed.get(chain)
        if found is None:
            found = chain_listing(self.backend, chain)
            with self._lock:
                found = self._listed.setdefault(chain, found)
        return found

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        head, sep, _ = prefix.partition("/")
        chains = [head] if sep and naming.is_chain_id(head) else [p[:-1] for p in self.prefixes()]
        for chain in chains:
            if not chain.startswith(prefix[: len(chain)]):
                continue
            view = self.chain(chain)
            for name in sorted(view.sizes):
                full = f"{chain}/{name}"
                if full.startswith(prefix):
                    yield ObjectInfo(full, view.sizes[name])

    def stat(self, name: str) -> ObjectInfo:
        view, inner = self._locate(name)
        return ObjectInfo(name, view.sizes[inner])

    # ------------------------------------------------------------------------------- reading

    def open(self, name: str, start: int = 0, length: int | None = None) -> AbstractContextManager[BinaryIO]:
        view, inner = self._locate(name)
        synthesized = {naming.METADATA: view.head, naming.JOURNAL: view.journal, naming.MANIFEST: view.manifest}
        if inner in synthesized:
            data = synthesized[inner]
            end = len(data) if length is None else min(len(data), start + length)
            return _closing(io.BytesIO(data[start:end]))
        return self._open_file(view, inner, start, length)

    def _prefetch(self, view: ChainObjects, inner: str) -> None:
        """Start downloading the objects that follow `inner`'s first one, in file order."""
        if self.parallelism <= 1:
            return
        order = list(view.files)  # in file order: base, sealed incr files, the open one (_commit)
        upcoming = [p for n in order[order.index(inner):] for p in view.files[n]][1:]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.parallelism, thread_name_prefix="download")
                self._spool = tempfile.TemporaryDirectory(prefix="redis-backup-download-")
            waiting = sum(1 for f in self._ahead.values() if not f.done())
            for piece in upcoming:
                if waiting >= self.parallelism:
                    break
                full = f"{view.chain}/{piece.physical}"
                if full not in self._ahead:
                    self._ahead[full] = self._pool.submit(self._download, full)
                    waiting += 1

    def _download(self, full: str) -> Path:
        assert self._spool is not None
        fd, path = tempfile.mkstemp(dir=self._spool.name)
        with os.fdopen(fd, "wb") as out, self.backend.open(full) as raw:
            shutil.copyfileobj(raw, out, CHUNK)
        return Path(path)

    def _raw(self, full: str, stack: ExitStack) -> BinaryIO:
        """An object's encoded bytes: the copy downloaded ahead if there is a good one, else the store's."""
        with self._lock:
            ahead = self._ahead.pop(full, None)
        if ahead is not None:
            try:
                path = ahead.result()
            except Exception:
                pass  # fetched again below, where its error is reported as usual
            else:
                f = stack.enter_context(open(path, "rb"))  # noqa: SIM115 (the stack closes it)
                path.unlink()  # the open descriptor keeps it readable
                return f
        return stack.enter_context(self.backend.open(full))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._spool is not None:
            self._spool.cleanup()

    @contextmanager
    def _open_file(self, view: ChainObjects, inner: str, start: int, length: int | None) -> Iterator[BinaryIO]:
        self._prefetch(view, inner)
        with ExitStack() as stack:
            stream = _Range(_Concat(self, view.chain, inner, view.files[inner], stack), start, length)
            yield stream  # type: ignore[misc]
            stream.drain()  # a reader that stopped at its range's end: the objects are still checked whole

    def open_piece(self, chain: str, file: str, piece: Piece, stack: ExitStack) -> BinaryIO:
        """One object decoded and checked against its name as it is read."""
        full = f"{chain}/{piece.physical}"
        try:
            raw = self._raw(full, stack)
        except NotFound as e:
            raise RemoteFault(f"{self.describe()}/{full}: missing", name=full, reason="missing",
                              chain=chain, file=file) from e  # fmt: skip
        plain = stack.enter_context(decode(raw, piece.physical, self.key, name=authenticated(chain, piece.physical)))
        return _Checked(plain, piece, f"{self.describe()}/{full}", chain, file)  # type: ignore[return-value]

    def _locate(self, name: str) -> tuple[ChainObjects, str]:
        check_name(name)
        chain, sep, inner = name.partition("/")
        if not sep or "/" in inner or not naming.is_chain_id(chain):
            raise NotFound(f"{self.describe()}/{name}: no such object", name=name)
        view = self.chain(chain)
        if view.error is not None and inner == naming.METADATA:
            raise RemoteFault(view.error, name=name, reason=view.error, chain=chain)
        if inner not in view.sizes:
            raise NotFound(f"{self.describe()}/{name}: no such object", name=name)
        return view, inner

    def chain(self, chain: str) -> ChainObjects:
        with self._lock:
            view = self._chains.get(chain)
        if view is None:
            view = self._load(chain)
            with self._lock:
                view = self._chains.setdefault(chain, view)
        return view

    def _load(self, chain: str) -> ChainObjects:
        view = ChainObjects(chain)
        found, deleting = self.listing(chain)
        if deleting:
            view.error = f"{self.describe()}/{chain}/: being deleted (retention)"
            view.sizes[naming.METADATA] = 0
            return view
        newest = newest_head(found)
        if newest is None:
            view.error = (f"{self.describe()}/{chain}/: no head object (h-*.json): the chain was never "
                          "uploaded completely")  # fmt: skip
            view.sizes[naming.METADATA] = 0
            return view
        head_obj, head_phys = newest
        try:
            view.head = self._read_small(chain, head_phys)
            data = md.parse_head(view.head, f"{self.describe()}/{chain}/{head_phys}")
            self._commit(view, found, data, head_obj, head_phys)
        except WrongKey as e:  # not this chain's fault: the command's, for every chain
            raise ConfigError(str(e)) from e
        except (StoreError, md.MetadataError) as e:
            view.error = str(e)
            view.sizes = {naming.METADATA: len(view.head)}
        return view

    def _read_small(self, chain: str, physical: str) -> bytes:
        with ExitStack() as stack:
            raw = stack.enter_context(self.backend.open(f"{chain}/{physical}"))
            plain = stack.enter_context(decode(raw, physical, self.key, name=authenticated(chain, physical)))
            data = plain.read(MAX_METADATA_BYTES + 1)
        if len(data) > MAX_METADATA_BYTES:
            raise RemoteFault(f"{self.describe()}/{chain}/{physical}: larger than {MAX_METADATA_BYTES} bytes")
        return bytes(data)

    def _commit(
        self, view: ChainObjects, found: dict[str, tuple[objects.RemoteObject, str]], data: dict[str, object],
        head_obj: HeadObject, head_phys: str,
    ) -> None:  # fmt: skip
        """The files the head commits, each found in the bucket (RemoteFault naming what is missing)."""
        where = f"{self.describe()}/{view.chain}"
        count = head_obj.records
        if data.get("journal_records") != count:
            raise RemoteFault(f"{where}/{head_phys}: damaged (it commits {data.get('journal_records')} sealed "
                              f"files, its name says {count})")  # fmt: skip
        sealed = sealed_files(found)
        order = [("base", 1)] + [("incr", s) for s in range(1, count)]
        lines: list[bytes] = []
        all_files: list[FileMeta] = []
        prev_end = data.get("start_offset")
        for kind, seq in order[:count]:
            fname = naming.base_file(seq) if kind == "base" else naming.incr_file(seq)
            if (kind, seq) not in sealed:
                raise RemoteFault(f"{where}: {fname} is missing (head {head_phys} counts {count} sealed files)")
            # an object that does not belong (a stray copy) does not connect to the file before it
            fits = [c for c in sealed[(kind, seq)] if c[0].start_offset == prev_end]
            if len(fits) > 1:
                raise RemoteFault(f"{where}: {len(fits)} objects claim to be {fname}: "
                                  + ", ".join(phys for _, phys in fits))  # fmt: skip
            f, phys = (fits or sealed[(kind, seq)])[0]
            prev_end = f.end_offset
            assert f.size is not None and f.sha256 is not None
            lines.append(md.journal_line(f))
            view.files[f.name] = [Piece(phys, f.size, f.sha256)]
            view.sizes[f.name] = f.size
            all_files.append(f)
        view.journal = b"".join(lines)
        files = data.get("files")
        for raw in files if isinstance(files, builtins.list) else []:
            try:
                f = FileMeta(**raw)
            except TypeError as e:
                raise RemoteFault(f"{where}/{head_phys}: damaged ({e})") from e
            if f.type != "incr" or f.seq != count or f.name in view.files or not naming.is_data_file(f.name):
                raise RemoteFault(f"{where}/{head_phys}: damaged (its open file {f.name!r} does not follow "
                                  f"its {count} sealed files)")  # fmt: skip
            parts = [(p, phys) for p, phys in found.values() if isinstance(p, PartObject) and p.seq == f.seq]
            run, reach = objects.part_run(parts, head_obj.shipped)
            if reach < head_obj.shipped:
                raise RemoteFault(
                    f"{where}: {f.name}: the part objects cover bytes 0..{reach} of the {head_obj.shipped} "
                    f"that head {head_phys} commits (a part starting at byte {reach} is missing)"
                )
            view.files[f.name] = [Piece(phys, p.end - p.start, p.sha256, p.start) for p, phys in run]
            view.sizes[f.name] = head_obj.shipped
            all_files.append(f)
        view.manifest = md.render_manifest(all_files)
        view.sizes.update({naming.METADATA: len(view.head), naming.JOURNAL: len(view.journal),
                           naming.MANIFEST: len(view.manifest)})  # fmt: skip

    # ------------------------------------------------------------------------------- read-only

    def write(self, name: str, chunks: Iterable[bytes | memoryview]) -> ObjectInfo:
        raise StoreError(f"{self.describe()}: the bucket's chains are read here, not written", name=name)

    def delete(self, name: str) -> None:
        raise StoreError(f"{self.describe()}: the bucket's chains are read here, not deleted", name=name)


@contextmanager
def _closing(f: BinaryIO) -> Iterator[BinaryIO]:
    try:
        yield f
    finally:
        f.close()


class _Reader(io.RawIOBase):
    """read() is the one method of a stream here; readinto (what io's helpers and some readers use) is
    served from it."""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        n = len(data)
        memoryview(b).cast("B")[:n] = data
        return n


class _Checked(_Reader):
    """An object's plain bytes; at its end, its size and SHA-256 against what its name says."""

    def __init__(self, inner: BinaryIO, piece: Piece, where: str, chain: str, file: str) -> None:
        self._inner, self._piece, self._where = inner, piece, where
        self._chain, self._file = chain, file
        self._sha = hashlib.sha256()
        self._got = 0
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        data = self._inner.read(CHUNK if n is None or n < 0 else n)
        if data:
            self._got += len(data)
            if self._got > self._piece.size:
                self._fail(f"holds more than the {self._piece.size} bytes its name says")
            self._sha.update(data)
            return bytes(data)
        if not self._done:
            if self._got != self._piece.size:
                self._fail(f"holds {self._got} bytes, its name says {self._piece.size}")
            if self._sha.hexdigest() != self._piece.sha256:
                self._fail("its content does not match the SHA-256 in its name: changed in the bucket")
            self._done = True
        return b""

    def _fail(self, what: str) -> None:
        raise RemoteFault(f"{self._where}: {what}", name=self._where, reason=f"object {self._piece.physical} {what}",
                          chain=self._chain, file=self._file)  # fmt: skip


class _Concat(_Reader):
    """A data file's objects end to end, each opened when the one before has ended."""

    def __init__(self, owner: RemoteChains, chain: str, file: str, pieces: list[Piece], stack: ExitStack) -> None:
        self._owner, self._chain, self._file = owner, chain, file
        self._pieces = list(pieces)
        self._stack = stack
        self._current: BinaryIO | None = None
        self._inner_stack: ExitStack | None = None

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        want = CHUNK if n is None or n < 0 else n
        while True:
            if self._current is None:
                if not self._pieces:
                    return b""
                self._inner_stack = self._stack.enter_context(ExitStack())
                self._current = self._owner.open_piece(self._chain, self._file, self._pieces.pop(0), self._inner_stack)
            data = self._current.read(want)
            if data:
                return bytes(data)
            assert self._inner_stack is not None
            self._inner_stack.close()
            self._current = self._inner_stack = None


class _Range(_Reader):
    """Bytes [start, start+length) of a stream; read to the stream's end regardless, so that every
    object under the range is checked whole before the reader sees its end."""

    def __init__(self, inner: _Concat, start: int, length: int | None) -> None:
        self._inner = inner
        self._skip = start
        self._left = length

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        while self._skip:
            data = self._inner.read(min(self._skip, CHUNK))
            if not data:
                self._skip = 0
                break
            self._skip -= len(data)
        if self._left is not None and self._left <= 0:
            self.drain()
            return b""
        if n is None or n < 0:  # everything: what a caller asks for knowing the object is small
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        want = n
        if self._left is not None:
            want = min(want, self._left)
        data = self._inner.read(want)
        if self._left is not None:
            self._left -= len(data)
        return data

    def drain(self) -> None:
        while self._inner.read(CHUNK):  # past the range: only checked
            pass


def head_json(head: md.ChainHead, journal_records: int, journal_bytes: int) -> bytes:
    """The head as uploaded: the local head's fields with the counts of the sealed files it commits
    (whose journal a reader makes from their object names)."""
    return dataclasses.replace(head, journal_records=journal_records, journal_bytes=journal_bytes).to_json()
