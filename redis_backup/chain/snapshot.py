"""`redis-backup snapshot`: fetch one RDB from the primary and exit, like `redis-cli --rdb`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from redis_backup.chain.rdb import RdbDigest, RdbError
from redis_backup.errors import ProtocolError, StorageError
from redis_backup.progress import Progress
from redis_backup.store.fsutil import create_file, write_all
from redis_backup.wire.client import ConnectionOptions, ReplicaClient
from redis_backup.wire.protocol import FullResync


async def fetch_snapshot(opts: ConnectionOptions, out: str) -> RdbDigest:
    """Stream the snapshot to out ('-' for stdout) via a temporary name; the CRC64 is checked before
    the file gets its name, so a damaged transfer never looks like a good RDB."""
    digest = RdbDigest(sha256=False)
    to_stdout = out == "-"
    path = Path(out)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        fd = sys.stdout.fileno() if to_stdout else create_file(tmp)
    except OSError as e:
        raise StorageError(f"cannot write {out}: {e.strerror}") from e
    ok = False
    try:
        async with ReplicaClient(opts, rdb_only=True) as rc:
            assert isinstance(rc.sync, FullResync)
            progress = Progress("snapshot")
            async for chunk in rc.snapshot():
                try:
                    write_all(fd, chunk)
                except OSError as e:
                    raise StorageError(f"cannot write {out}: {e.strerror}") from e
                digest.update(chunk)
                progress.add(len(chunk))
            progress.finish()
        try:
            digest.verify()
        except RdbError as e:
            raise ProtocolError(f"the snapshot received is damaged: {e}") from e
        if not to_stdout:
            os.fsync(fd)
        ok = True
    finally:
        if not to_stdout:
            os.close(fd)
            if ok:
                os.replace(tmp, path)
            else:
                tmp.unlink(missing_ok=True)
    return digest
