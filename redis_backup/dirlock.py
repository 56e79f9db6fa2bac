"""One service per BACKUP_DIR: an exclusive lock held for the life of the process.

Two services appending to one chain store every command twice (a counter INCRed 50 times restores as
100), so the second one must stop before it touches anything. `flock` is released by the kernel when the
process dies, so a crash never leaves a stale lock behind; the file only says who holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path

from . import naming
from .errors import ConfigError
from .fsutil import FILE_MODE


class DirInUse(ConfigError):
    """Another service holds the directory's lock."""


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        raw = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        if len(raw) >= 2 and raw[0].isdigit():
            return f"pid {raw[0]} on {raw[1][:64]}"
    return "unknown process"


def lock_backup_dir(root: Path) -> int:
    """Take the lock (returns its descriptor, to keep open) or raise DirInUse naming the holder."""
    path = root / naming.LOCK_FILE
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link: refusing to use it as the lock file") from None
        raise ConfigError(f"cannot create the lock file {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise DirInUse(
            f"BACKUP_DIR {root} is in use by another redis-backup service ({holder}): one service per "
            "directory; stop that one or give this one another BACKUP_DIR"
        ) from None
    except OSError as e:
        os.close(fd)
        raise ConfigError(f"cannot lock {path}: {e.strerror}") from None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def check_writable(root: Path) -> None:
    """Fail before connecting, not after the primary forked and sent a whole snapshot."""
    probe = root / naming.tmp_name(f"write-check-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            f"BACKUP_DIR {root} is not writable: {e.strerror} (check its permissions and that it is not "
            "mounted read-only)"
        ) from None
