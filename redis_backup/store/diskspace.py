"""Free space in BACKUP_DIR: a snapshot never takes the last of it.

A primary decides how big a snapshot is, and a hostile or broken one can announce 10^15 bytes or send
a diskless snapshot that never ends. A snapshot whose announced size does not fit is refused before
anything is written; one being written is stopped (and discarded by the caller) before the free space
of the volume would drop below a reserve, MIN_FREE_BYTES. The chains already stored are never touched.

statvfs is a system call of about 2 microseconds (measured on ext4 and tmpfs), next to about 200 for
writing a 256 KiB chunk: it is called when a snapshot starts and then once per CHECK_EVERY bytes
written, or sooner when the room left at the last check is smaller than that.
"""

from __future__ import annotations

import os
from pathlib import Path

from redis_backup.errors import StorageError
from redis_backup.progress import human_bytes as human

AUTO_FRACTION = 0.01  # MIN_FREE_BYTES unset ("auto"): 1% of the volume...
AUTO_MAX = 64 << 20  # ...but at most 64 MiB
CHECK_EVERY = 4 << 20  # bytes written between two looks at the free space
HINT = "free space or grow the volume"


def _statvfs(path: Path) -> os.statvfs_result:
    try:
        return os.statvfs(path)
    except OSError as e:
        raise StorageError(f"cannot read the free space of BACKUP_DIR {path}: {e.strerror or e}") from e


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on path's file system (f_bavail * f_frsize)."""
    st = _statvfs(path)
    return st.f_bavail * st.f_frsize


def auto_reserve(path: Path) -> int:
    """The reserve when MIN_FREE_BYTES is not set: 1% of the volume, at most 64 MiB."""
    st = _statvfs(path)
    return min(AUTO_MAX, int(st.f_blocks * st.f_frsize * AUTO_FRACTION))


class SpaceGuard:
    """Checks a snapshot's writes against the free space of root, keeping `reserve` bytes free.

    min_free_bytes None means auto (see auto_reserve). Call check_size() with an announced size, and
    allow(n, written) before writing n more bytes; both raise StorageError with one line that says what
    happened and what to do."""

    def __init__(self, root: Path, min_free_bytes: int | None) -> None:
        self.root = root
        self.reserve = auto_reserve(root) if min_free_bytes is None else min_free_bytes
        shown = "auto" if min_free_bytes is None else str(min_free_bytes)
        self._reserve_text = f"MIN_FREE_BYTES={shown} ({human(self.reserve)})"
        self._allowance = 0  # bytes that may be written before the next look at the free space

    def _room(self) -> tuple[int, int]:
        """(free bytes, bytes that may be written keeping the reserve free)."""
        st = _statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        # one block of slack: a write that ends inside a block takes the whole block
        return free, free - self.reserve - st.f_frsize

    def check_size(self, size: int) -> None:
        """A sized snapshot ($<len>) is refused at once, before anything is written, when it does not fit."""
        free, room = self._room()
        if size > room:
            raise StorageError(
                f"the primary announced a snapshot of {size} bytes ({human(size)}), more than the "
                f"{human(max(free - self.reserve, 0))} that BACKUP_DIR {self.root} can take "
                f"({human(free)} free, keeping {self._reserve_text}): nothing was written; {HINT}"
            )
        # nothing is allowed ahead: the sized snapshot is checked again as it is written, like any other

    def allow(self, n: int, written: int) -> None:
        """About to write n more bytes after `written`: raises if that would eat into the reserve."""
        if n <= self._allowance:
            self._allowance -= n
            return
        free, room = self._room()
        if n > room:
            raise StorageError(
                f"stopped the snapshot after {human(written)}: writing on would leave less than "
                f"{self._reserve_text} free in BACKUP_DIR {self.root} ({human(free)} free now); the partial "
                f"snapshot is discarded, the chains stored are kept (the disk is full: {HINT})"
            )
        self._allowance = max(n, min(room, CHECK_EVERY)) - n
