"""The local-directory backend of `Store`: an object is a file under the root, its name the path.

Writes go to an exclusive temporary name beside the target (`.NAME.RANDOM.tmp`, which no listing
shows), are fsync'd, renamed into place and the directory fsync'd: a reader or a crash sees the old
file or the new one. Nothing is read through a symbolic link; links, special files and entries whose
names start with `.` are not objects, and are not listed.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from redis_backup.store import fsutil
from redis_backup.store.base import NotFound, ObjectInfo, StoreError, check_name, check_prefix

_RETRYABLE = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR, errno.EMFILE, errno.ENFILE}


def _error(e: OSError, what: str, name: str) -> StoreError:
    if e.errno == errno.ENOENT:
        return NotFound(f"{what}: no such object", name=name)
    return StoreError(f"{what}: {e.strerror or e}", name=name, retryable=e.errno in _RETRYABLE)


class _Range(io.RawIOBase):
    """At most `left` bytes of a file from where it stands: a range read as a stream."""

    def __init__(self, f: BinaryIO, left: int | None) -> None:
        self._f, self._left = f, left

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        if self._left is not None:
            view = view[: self._left]
        n = self._f.readinto(view)  # type: ignore[attr-defined]
        if self._left is not None and n:
            self._left -= n
        return int(n or 0)

    def close(self) -> None:
        self._f.close()
        super().close()


class LocalStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        head, _, _ = prefix.rpartition("/")
        found: builtins.list[ObjectInfo] = []
        self._walk(self.root / head if head else self.root, head, found)
        found.sort(key=lambda o: o.name.encode())
        return iter([o for o in found if o.name.startswith(prefix)])

    def _walk(self, path: Path, name: str, found: builtins.list[ObjectInfo]) -> None:
        try:
            entries = list(os.scandir(path))
        except FileNotFoundError:
            return
        except OSError as e:
            raise _error(e, f"cannot list {path}", name) from e
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = f"{name}/{entry.name}" if name else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                self._walk(Path(entry.path), child, found)
            elif stat.S_ISREG(st.st_mode):
                found.append(ObjectInfo(child, st.st_size))

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)
        try:
            st = os.lstat(path)
        except OSError as e:
            raise _error(e, f"cannot read {path}", name) from e
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"{path} is not a file of ours (a link or a directory)", name=name)
        return ObjectInfo(name, st.st_size)

    @contextlib.contextmanager
    def open(self, name: str, start: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        path = self._path(name)
        if start < 0 or (length is not None and length < 0):
            raise StoreError(f"bad range {start}+{length} of {path}", name=name)
        try:
            f = fsutil.open_read(path)
        except OSError as e:
            raise _error(e, f"cannot read {path}", name) from e
        with contextlib.closing(f):
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise NotFound(f"{path} is not a file of ours", name=name)
            f.seek(start)
            with io.BufferedReader(_Range(f, length), 1 << 20) as stream:
                yield stream

    def write(self, name: str, chunks: Iterable[bytes | memoryview]) -> ObjectInfo:
        path = self._path(name)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        size = 0
        try:
            fsutil.make_dir(path.parent)
            fd = fsutil.create_file(tmp)
            try:
                for chunk in chunks:
                    fsutil.write_all(fd, chunk)
                    size += len(chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsutil.fsync_dir(path.parent)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _error(e, f"cannot write {path}", name) from e
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return ObjectInfo(name, size)

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise _error(e, f"cannot delete {path}", name) from e
        fsutil.fsync_dir(path.parent)
        # a directory left empty goes too, so that a deleted chain leaves nothing behind
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
