"""The storage interface: named, immutable-once-written objects, as an object store has them.

Restore, list, verify and retention read backups only through `Store`, so that a second backend
(S3) needs nothing else changed. The chain writer is not behind it: it is a local spool that appends,
fsyncs and truncates, which object stores cannot do; it announces sealed files instead
(`chain.events`), and whatever ships them to another store subscribes.

Names are `/`-separated paths of components made of letters, digits, `.`, `_` and `-`, none empty,
none starting with `.` (that prefix is the backends' own: temporary names, locks). Anything else is
refused with `InvalidName` before a backend sees it, so no name can climb out of a prefix, hide as a
temporary file, or mean two different objects on two backends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from redis_backup.errors import StorageError

_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
MAX_NAME = 1024


class StoreError(StorageError):
    """A storage operation failed. `retryable` says whether the same call may succeed later (a timeout,
    a throttled request, a full disk freed) or never will (permissions, a damaged object). `reason` is
    the cause alone (no name, no location), for readers that say which file of which chain it was."""

    def __init__(
        self, message: str, *, name: str = "", retryable: bool = False, reason: str = "",
        chain: str | None = None, file: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message, chain=chain, file=file)
        self.name = name
        self.retryable = retryable
        self.reason = reason or message


class NotFound(StoreError):
    """No object of that name (never retryable: absence is an answer)."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the object exists (if_none_match) or changed (if_match). Not retryable
    as such: the caller reads the current version and decides again."""


class InvalidName(StoreError):
    """A name outside the naming rules above; refused before anything is read or written."""


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or not all(_COMPONENT.fullmatch(c) for c in name.split("/")):
        raise InvalidName(f"invalid object name {name!r}: components of letters, digits, '.', '_', '-', "
                          "not starting with '.'", name=name)  # fmt: skip
    return name


def check_dir_prefix(prefix: str) -> str:
    """A `prefixes` argument: empty, or a name followed by '/'."""
    if prefix and (not prefix.endswith("/") or prefix == "/"):
        raise InvalidName(f"invalid prefix {prefix!r}: empty, or a name followed by '/'", name=prefix)
    if prefix:
        check_name(prefix[:-1])
    return prefix


def is_component(text: str) -> bool:
    return bool(_COMPONENT.fullmatch(text))


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, a name, or a name ending in '/' (a partial last component is allowed)."""
    if prefix == "":
        return prefix
    head, _, last = prefix.rpartition("/")
    if head:
        check_name(head)
    if last and not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", last):
        raise InvalidName(f"invalid object prefix {prefix!r}", name=prefix)
    return prefix


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


class Store(Protocol):
    """What every backend offers; `tests/test_store_contract.py` holds each to it."""

    def describe(self) -> str:
        """Where this store is, for messages (a path, a bucket and prefix)."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every complete object whose name starts with prefix, in byte order of the names. An object
        being written is never listed."""
        ...

    def prefixes(self, prefix: str = "") -> Iterator[str]:
        """The distinct `prefix + component + "/"` under which objects are, in byte order; prefix is ""
        or ends in "/". What S3 answers to a listing with Delimiter "/": the chains of a backup, in one
        call with no cost per object (a local directory may also show an empty one)."""
        ...

    def stat(self, name: str) -> ObjectInfo:
        """Size of one object; NotFound if there is none."""
        ...

    def open(self, name: str, start: int = 0, length: int | None = None) -> AbstractContextManager[BinaryIO]:
        """The bytes [start, start+length) (to the end without length) as a stream: nothing is read
        into memory at once. A range past the end gives what there is."""
        ...

    def write(self, name: str, chunks: Iterable[bytes | memoryview]) -> ObjectInfo:
        """Make an object from a stream of chunks, atomically: a reader sees the old object (or none) until
        the whole new one is stored, never a part, also if chunks raises midway or the process dies."""
        ...

    def delete(self, name: str) -> None:
        """Remove one object; removing one that does not exist is not an error (a retried delete)."""
        ...


def read_all(store: Store, name: str, limit: int) -> bytes:
    """A small object (metadata, a manifest) read whole, refused when larger than limit."""
    with store.open(name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise StoreError(f"{store.describe()}/{name} is larger than {limit} bytes", name=name)
    return data
