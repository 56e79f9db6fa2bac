"""How far the primary is: `INFO replication` on a second, ordinary connection, once a second.

The replication stream carries no times, so the service stamps commands with the second it receives
them; that is the second they were executed only while it keeps up. Comparing what it has received with
the primary's `master_repl_offset` is the one way to know that it does (after a gap in capture, and all
along). It needs `+info` for the backup user; without it the service falls back to waiting for a quiet
stream (see client.py) and says so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from .client import ConnectionOptions, open_stream
from .errors import BackupError
from .resp import encode_command

log = logging.getLogger(__name__)
_OFFSET = re.compile(rb"^master_repl_offset:(\d+)\r?$", re.MULTILINE)
MAX_REPLY = 1 << 16


class _Refused(Exception):
    pass


class OffsetProbe:
    def __init__(self, opts: ConnectionOptions, timeout: float = 1.0) -> None:
        self.opts = opts
        self.timeout = timeout
        self.available = True  # False once the primary refused INFO: not asked again
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def sample(self) -> int | None:
        """The primary's master_repl_offset now, or None (not permitted, or not reachable this time)."""
        if not self.available:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await self._sample()
        except _Refused as e:
            self.available = False
            log.warning(
                "the primary refused INFO on a second connection: without it the service cannot tell when it "
                "has caught up after a gap in capture, and waits for a quiet stream (grant +info to the backup "
                "user)",
                extra={"reply": str(e)},
            )
        except (TimeoutError, OSError, BackupError, ValueError):
            pass
        await self.close()
        return None

    async def _sample(self) -> int:
        if self._conn is None:
            reader, writer = await open_stream(self.opts)
            self._conn = reader, writer
            if self.opts.password is not None:
                user = (self.opts.username,) if self.opts.username else ()
                writer.write(encode_command("AUTH", *user, self.opts.password))
                line = await reader.readline()
                if not line.startswith(b"+"):
                    raise _Refused(line[:200].decode("utf-8", "replace").strip())
        reader, writer = self._conn
        writer.write(encode_command("INFO", "replication"))
        line = await reader.readline()
        if not line.startswith(b"$"):
            raise _Refused(line[:200].decode("utf-8", "replace").strip())
        size = int(line[1:].strip())
        if not 0 <= size <= MAX_REPLY:
            raise ValueError(f"INFO reply of {size} bytes")
        body = await reader.readexactly(size + 2)
        m = _OFFSET.search(body)
        if m is None:
            raise _Refused("no master_repl_offset in INFO replication")
        return int(m.group(1))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn[1].close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn[1].wait_closed(), 1)
