"""Durable file operations: temporary name, fsync, rename, fsync of the directory; 0600/0700."""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: str | os.PathLike[str]) -> None:
    """Create a private directory (and parents), durable in its parent."""
    p = Path(path)
    if p.is_dir():
        return
    p.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(p, DIR_MODE)
    fsync_dir(p.parent)


def open_new(path: str | os.PathLike[str], *, append: bool = False) -> int:
    """Open a private file for writing; truncates unless append."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace path with data so that a crash leaves either the old or the new content."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    fd = open_new(tmp)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
    fsync_dir(p.parent)
