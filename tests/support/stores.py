"""Stores for testing the readers: one that serves a backup from somewhere else and records every
call, and one that fails on the objects it is told to."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import BinaryIO

from redis_backup.store.base import ObjectInfo, Store, StoreError


@dataclass
class RecordingStore:
    """Any store, under another description, with every call recorded as (method, name or prefix).
    Not a LocalStore: the readers cannot tell it holds local files, so no local-only path is taken."""

    inner: Store
    where: str = "test://relocated"
    calls: builtins.list[tuple[str, str]] = field(default_factory=builtins.list)

    def describe(self) -> str:
        return self.where

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.calls.append(("list", prefix))
        return self.inner.list(prefix)

    def prefixes(self, prefix: str = "") -> Iterator[str]:
        self.calls.append(("prefixes", prefix))
        return self.inner.prefixes(prefix)

    def stat(self, name: str) -> ObjectInfo:
        self.calls.append(("stat", name))
        return self.inner.stat(name)

    def open(self, name: str, start: int = 0, length: int | None = None) -> AbstractContextManager[BinaryIO]:
        self.calls.append(("open", name))
        return self.inner.open(name, start, length)

    def write(self, name: str, chunks: Iterable[bytes | memoryview]) -> ObjectInfo:
        self.calls.append(("write", name))
        return self.inner.write(name, chunks)

    def delete(self, name: str) -> None:
        self.calls.append(("delete", name))
        self.inner.delete(name)

    def opened(self) -> builtins.list[str]:
        return [n for m, n in self.calls if m == "open"]


class _FailingStream:
    """A stream that gives `good` bytes, then fails the way the store was told to."""

    def __init__(self, f: BinaryIO, good: int, fail: Callable[[], StoreError]) -> None:
        self._f, self._left, self._fail = f, good, fail

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            raise self._fail()
        block = self._f.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(block)
        return block


@dataclass
class FailingStore(RecordingStore):
    """Reading `fail_on` fails after `good_bytes` bytes with a StoreError(retryable) (at open when
    good_bytes is None), as a dropped connection or a throttled request would."""

    fail_on: str = ""
    retryable: bool = False
    good_bytes: int | None = None

    def _error(self, name: str) -> StoreError:
        what = "503 Slow Down" if self.retryable else "403 Access Denied"
        return StoreError(f"{self.where}/{name}: {what}", name=name, retryable=self.retryable, reason=what)

    @contextlib.contextmanager
    def _open(self, name: str, start: int, length: int | None) -> Iterator[BinaryIO]:
        if self.good_bytes is None:
            raise self._error(name)
        with self.inner.open(name, start, length) as f:
            yield _FailingStream(f, self.good_bytes, lambda: self._error(name))  # type: ignore[misc]

    def open(self, name: str, start: int = 0, length: int | None = None) -> AbstractContextManager[BinaryIO]:
        if name != self.fail_on:
            return super().open(name, start, length)
        self.calls.append(("open", name))
        return self._open(name, start, length)
