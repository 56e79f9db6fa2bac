"""How far the primary is: `INFO replication` on a second, ordinary connection.

The replication stream carries no times, so the service stamps commands with the second it receives
them; that is the second they were executed only while it keeps up. Comparing what it has received with
the primary's `master_repl_offset` is the one way to know that it does (after a gap in capture, and all
along). That needs `+info` for the backup user, and a primary (a replica's offset stalls with its own
stream, so it says nothing); otherwise the probe says why once, and the service records the seconds as
unverified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from redis_backup.errors import BackupError
from redis_backup.interrupts import raise_if_cancelled
from redis_backup.wire.client import ConnectionOptions, open_stream
from redis_backup.wire.resp import encode_command

log = logging.getLogger(__name__)
_FIELD = re.compile(rb"^(master_repl_offset|master_replid|role):([^\r\n]*)\r?$", re.MULTILINE)
MAX_REPLY = 1 << 16


class _Unusable(Exception):
    """INFO cannot tell us the primary's offset: refused, or not a primary."""


class OffsetProbe:
    def __init__(self, opts: ConnectionOptions, timeout: float = 1.0) -> None:
        self.opts = opts
        self.timeout = timeout
        self.available = True  # False once INFO proved unusable: not asked again
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def sample(self, replid: str) -> int | None:
        """The primary's master_repl_offset now, or None (not reachable this time, or another server's:
        its replication id is not the stream's, as behind an address that moved to another primary)."""
        if not self.available:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await self._sample(replid)
        except _Unusable as e:
            self.available = False
            log.warning(
                "the primary's offset cannot be asked (INFO on a second connection): the service cannot tell "
                "the seconds its commands were executed in, and point-in-time restore refuses them (grant +info "
                "to the backup user, and back up a primary)",
                extra={"reason": str(e)},
            )
        except (TimeoutError, OSError, BackupError, ValueError, asyncio.IncompleteReadError):
            raise_if_cancelled()  # a TimeoutError may be a cancellation in disguise (Python 3.11)
            # a lost or slow connection: asked again on a new one
        await self.close()
        raise_if_cancelled()
        return None

    async def _sample(self, replid: str) -> int:
        if self._conn is None:
            reader, writer = await open_stream(self.opts)
            self._conn = reader, writer
            if self.opts.password is not None:
                user = (self.opts.username,) if self.opts.username else ()
                writer.write(encode_command("AUTH", *user, self.opts.password))
                _check(await reader.readline(), b"+")
        reader, writer = self._conn
        writer.write(encode_command("INFO", "replication"))
        size = int(_check(await reader.readline(), b"$")[1:].strip())
        if not 0 <= size <= MAX_REPLY:
            raise ValueError(f"INFO reply of {size} bytes")
        fields = {k: v.strip() for k, v in _FIELD.findall(await reader.readexactly(size + 2))}
        if fields.get(b"role", b"master") != b"master":
            raise _Unusable(f"the server is a {fields[b'role'].decode('utf-8', 'replace')}, not a primary")
        if b"master_repl_offset" not in fields:
            raise _Unusable("no master_repl_offset in INFO replication")
        if fields.get(b"master_replid", replid.encode()) != replid.encode():
            raise ValueError("another replication history")  # this connection reached another server
        return int(fields[b"master_repl_offset"])

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn[1].close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn[1].wait_closed(), 1)


def _check(line: bytes, want: bytes) -> bytes:
    """A reply that starts as wanted; an error reply makes INFO unusable, anything else (nothing: the
    connection closed) is a lost connection."""
    if line.startswith(want):
        return line
    if line.startswith(b"-"):
        raise _Unusable(line[:200].decode("utf-8", "replace").strip())
    raise ConnectionError(f"unexpected reply {line[:40]!r}")
