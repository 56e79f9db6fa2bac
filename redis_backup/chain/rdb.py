"""RDB checks done while the snapshot streams by: header, EOF opcode and CRC64, in constant memory."""

from __future__ import annotations

import hashlib
import re

import anycrc

from redis_backup.errors import BackupError
from redis_backup.store.fsutil import open_read

_CRC = anycrc.Model("CRC64-REDIS")  # Jones polynomial, reflected, init 0: what rdb.c uses
_HEADER = re.compile(rb"^REDIS(\d{4})$")


class RdbError(BackupError):
    """An RDB that does not check out (CRC64, framing): the file is damaged."""


def crc64(data: bytes | memoryview, crc: int = 0) -> int:
    return int(_CRC.calc(data, crc))


class RdbDigest:
    """Feeds every byte of an RDB through SHA-256 and CRC64 without holding more than 9 bytes back.

    The CRC covers everything but the last 8 bytes (which hold it), so those are only checked once the
    end is known. update() takes a memoryview into a reused buffer as well as bytes: what it keeps (the
    header, the held-back 8 bytes) it copies, the rest it only reads.
    """

    def __init__(self, *, sha256: bool = True) -> None:
        self.size = 0
        self.sha256 = hashlib.sha256()
        self._hash = sha256  # a one-shot snapshot has no use for it, and it costs more than the CRC
        self._crc = 0
        self._head = b""
        self._held = b""  # the last (up to) 8 bytes, not yet in the CRC
        self._before = -1  # the byte before them: the EOF opcode in a whole RDB

    def update(self, data: bytes | memoryview) -> None:
        n = len(data)
        self.size += n
        if self._hash:
            self.sha256.update(data)
        if len(self._head) < 9:
            self._head += bytes(data[: 9 - len(self._head)])
        if n >= 8:
            if self._held:
                self._crc = crc64(self._held, self._crc)
            self._crc = crc64(memoryview(data)[: n - 8], self._crc)
            if n > 8:
                self._before = data[n - 9]
            elif self._held:
                self._before = self._held[-1]
            self._held = bytes(data[n - 8 :])
        else:
            held = self._held + bytes(data)
            if len(held) > 8:
                self._crc = crc64(held[: len(held) - 8], self._crc)
                self._before = held[len(held) - 9]
                held = held[len(held) - 8 :]
            self._held = held

    @property
    def version(self) -> int | None:
        m = _HEADER.match(self._head)
        return int(m.group(1)) if m else None

    def verify(self) -> int:
        """Raise RdbError unless the stream was a whole RDB with a matching checksum; return its version."""
        version = self.version
        if version is None:
            raise RdbError(f"not an RDB file (header {self._head[:9]!r})")
        if self.size < 18:
            raise RdbError(f"RDB too short ({self.size} bytes)")
        if self._before != 0xFF:  # else a cut ending in 8 zero bytes would pass as "no checksum"
            raise RdbError("RDB incomplete: no EOF opcode before the checksum")
        stored = int.from_bytes(self._held, "little")
        if stored and stored != self._crc:
            raise RdbError(f"RDB checksum mismatch: stored {stored:016x}, computed {self._crc:016x}")
        return version


def check_rdb_file(path: str, chunk: int = 1 << 20) -> tuple[int, str, int]:
    """(version, sha256 hex, size) of an RDB file; raises RdbError on a bad header or checksum."""
    d = RdbDigest()
    with open_read(path) as f:
        while block := f.read(chunk):
            d.update(block)
    return d.verify(), d.sha256.hexdigest(), d.size
