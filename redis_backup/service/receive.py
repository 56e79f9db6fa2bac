"""Receiving a snapshot from a primary into a SnapshotWriter: for the capture's own full sync and for
the second connection that starts a new chain (rechain.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis_backup.chain.writer import SnapshotWriter
from redis_backup.errors import ProtocolError
from redis_backup.wire.client import ReplicaClient
from redis_backup.wire.protocol import SnapshotData, SnapshotEnd, SnapshotStart

TICK_SECONDS = 1.0


def fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def receive_snapshot(
    rc: ReplicaClient, open_writer: Callable[..., SnapshotWriter], run: Callable[..., Awaitable[Any]],
    on_received: Callable[[float, int], None] | None = None,
) -> SnapshotWriter:
    """Stream the snapshot of rc into a SnapshotWriter made by open_writer(size=...), every call through run
    (one thread, in order), fsync'ing about once a second as it goes so that finishing a large snapshot
    does not stall. Returns the writer with its RDB complete, not yet checked (seal_base/finish do);
    on any failure the partial snapshot is removed. on_received(seconds, bytes): the whole RDB arrived
    (the metrics' snapshot duration and size)."""
    snap: SnapshotWriter | None = None
    ok = False
    pending: asyncio.Task[None] | None = None
    try:
        last_sync = began = time.monotonic()
        async for ev in rc.events():
            if isinstance(ev, SnapshotStart):
                # Created at the header, which says how big the snapshot is: one that does not fit
                # is refused before anything is written (StorageError: a failed attempt).
                snap = await run(functools.partial(open_writer, size=ev.size))
            elif isinstance(ev, SnapshotData):
                if snap is None:
                    raise ProtocolError("snapshot data before the snapshot header")
                await run(snap.write, ev.data)
                if time.monotonic() - last_sync >= TICK_SECONDS and (pending is None or pending.done()):
                    fd = await run(snap.sync_point)
                    pending = asyncio.create_task(asyncio.to_thread(fsync_and_close, fd))
                    last_sync = time.monotonic()
            elif isinstance(ev, SnapshotEnd):
                if on_received is not None:
                    on_received(time.monotonic() - began, ev.size)
                break
        if pending is not None:
            await pending
        if snap is None:
            raise ProtocolError("the snapshot ended before its header")
        ok = True
        return snap
    finally:
        if not ok:
            if pending is not None:
                with contextlib.suppress(Exception):
                    await pending
            if snap is not None:
                await run(snap.abort)

