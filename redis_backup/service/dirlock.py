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
import time
from pathlib import Path

from redis_backup.chain import naming
from redis_backup.errors import ConfigError
from redis_backup.store.fsutil import FILE_MODE


class DirInUse(ConfigError):
    """Another service holds the directory's lock."""


def _holder(fd: int) -> str:
    """Who holds the lock, as it wrote: the holder writes right after locking, so a service that lost a
    race by a hair looks again for a moment rather than say "unknown"."""
    for _ in range(50):
        with contextlib.suppress(OSError):
            raw = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            if len(raw) >= 2 and raw[0].isdigit():
                return f"pid {raw[0]} on {raw[1][:64]}"
        time.sleep(0.01)
    return "unknown process"


def _in_use(root: Path, holder: str) -> DirInUse:
    return DirInUse(
        f"BACKUP_DIR {root} is in use by another redis-backup service ({holder}): one service per "
        "directory; stop that one or give this one another BACKUP_DIR"
    )


def _lock_directory(root: Path) -> int | None:
    """The directory itself is locked too: deleting the lock file must not let a second service in.
    Where directories cannot be locked (some network file systems), the file lock alone stands."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = "unknown process"
        with contextlib.suppress(OSError):
            info = os.open(root / naming.LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            holder = _holder(info)
            os.close(info)
        raise _in_use(root, holder) from None
    except OSError:
        os.close(fd)
        return None
    return fd


def lock_backup_dir(root: Path) -> tuple[int, ...]:
    """Take the locks (returns their descriptors, to keep open) or raise DirInUse naming the holder."""
    dir_fd = _lock_directory(root)
    try:
        return (*([dir_fd] if dir_fd is not None else []), _lock_file(root))
    except BaseException:
        if dir_fd is not None:
            os.close(dir_fd)
        raise


def _lock_file(root: Path) -> int:
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
        raise _in_use(root, holder) from None
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


def running_service(root: Path) -> tuple[int, str]:
    """(pid, host) of the service that holds root's lock; ConfigError when none does."""
    path = root / naming.LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"no redis-backup service runs on BACKUP_DIR {root} ({path}: {e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            if len(raw) >= 2 and raw[0].isdigit():
                return int(raw[0]), raw[1]
            raise ConfigError(f"the service on BACKUP_DIR {root} did not say who it is ({path})") from None
        raise ConfigError(f"no redis-backup service runs on BACKUP_DIR {root} (its lock is free)")
    finally:
        os.close(fd)
