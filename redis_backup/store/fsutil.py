"""Durable file operations: temporary name, fsync, rename, fsync of the directory; 0600/0700.

Nothing here follows a symbolic link that someone else may have planted: temporary files and
directories are created exclusively (`O_EXCL`, `mkdir`), and files of a chain are opened with
`O_NOFOLLOW`. A leftover temporary entry is removed only if it is a plain file or directory of ours.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

from redis_backup.errors import StorageError

FILE_MODE = 0o600
DIR_MODE = 0o700
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
SYMLINK = "a symbolic link, not followed"


class UnsafeEntry(StorageError):
    """Something that is not ours sits where we write: refused rather than followed or deleted."""


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: str | os.PathLike[str]) -> None:
    """Create a private directory (and parents), durable in its parent: for paths the user names."""
    p = Path(path)
    if p.is_dir():
        return
    p.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(p, DIR_MODE)
    fsync_dir(p.parent)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a file" if stat.S_ISREG(mode) else "a special file"


def clear_temp(path: str | os.PathLike[str], *, want_dir: bool = False) -> None:
    """Remove a leftover temporary entry (a crash's) if it is a plain file or directory of ours."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    ours = st.st_uid == os.geteuid() and (stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode))
    if not ours:
        raise UnsafeEntry(
            f"{path} exists and is {_kind(st.st_mode)}"
            + ("" if st.st_uid == os.geteuid() else f" of uid {st.st_uid}")
            + ", not a leftover of ours: refusing to use or remove it (remove it by hand)"
        )
    if want_dir:
        shutil.rmtree(path)  # rmtree never follows the links inside
    else:
        os.unlink(path)


def create_file(path: str | os.PathLike[str], *, append: bool = False) -> int:
    """A new private file at a name of ours, created exclusively (a leftover of ours is replaced)."""
    clear_temp(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | (os.O_APPEND if append else 0)
    return os.open(path, flags, FILE_MODE)


def create_dir(path: str | os.PathLike[str]) -> None:
    """A new private directory at a name of ours, created exclusively, durable in its parent."""
    clear_temp(path, want_dir=True)
    os.mkdir(path, DIR_MODE)
    os.chmod(path, DIR_MODE, follow_symlinks=False)
    fsync_dir(Path(path).parent)


def open_append(path: str | os.PathLike[str]) -> int:
    """An existing file of a chain, to append to; never through a symbolic link."""
    return _open(path, os.O_WRONLY | os.O_APPEND)


SPECIAL = "a special file (a FIFO, socket or device), not read"


def open_read(path: str | os.PathLike[str]) -> BinaryIO:
    """A file of a chain, to read; never through a symbolic link (OSError ELOOP, strerror SYMLINK).

    Opened non-blocking (no effect on a regular file) so that a FIFO planted in its place is refused
    at once (OSError EINVAL, strerror SPECIAL) instead of waiting forever for a writer."""
    fd = _open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a directory fails on read: EISDIR, as before
            raise OSError(errno.EINVAL, SPECIAL, str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_update(path: str | os.PathLike[str]) -> BinaryIO:
    """A file of a chain, to read and cut; never through a symbolic link."""
    return os.fdopen(_open(path, os.O_RDWR), "r+b")


def _open(path: str | os.PathLike[str], flags: int) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, SYMLINK, str(path)) from None
        raise


def read_small(path: str | os.PathLike[str], limit: int) -> bytes:
    """A small file of a chain (metadata, manifest) read whole, refused when larger than limit."""
    with open_read(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_new(path: str | os.PathLike[str], data: bytes) -> None:
    """A new file of ours holding data, fsync'd (its directory entry is the caller's to make durable)."""
    fd = create_file(path)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace path with data so that a crash leaves either the old or the new content."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    write_new(tmp, data)
    os.replace(tmp, p)
    fsync_dir(p.parent)
