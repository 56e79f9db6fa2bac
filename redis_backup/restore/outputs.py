"""Where a restore goes: an AOF directory, an RDB, or a running server.

Every output starts the same way: a plan (plan.py), then the planned files copied into an
`appendonlydir` while they are checked against the metadata (aofdir.py). An RDB and `--into` then
load that directory in a temporary redis-server on a unix socket (tempserver.py) and SAVE it, or copy
its keys (keycopy.py). The chain is read through a `Store`; only the output is a local path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path

from redis_backup.chain import naming
from redis_backup.chain.catalog import Catalog, index_file
from redis_backup.chain.rdb import RdbError, check_rdb_file
from redis_backup.errors import BackupError, StorageError
from redis_backup.progress import Progress, silent
from redis_backup.restore.aofdir import AOF_DIR, replayed, write_aof_dir
from redis_backup.restore.keycopy import CopyResult, copy_keys
from redis_backup.restore.plan import PlanError, RestorePlan, choose_chain, file_to_cut, plan_restore, resolve_time
from redis_backup.restore.tempserver import ServerBinary
from redis_backup.store.base import Store
from redis_backup.store.fsutil import FILE_MODE, fsync_dir, make_dir

log = logging.getLogger(__name__)
RDB_NAME = "dump.rdb"
WORK_PREFIX = ".redis-backup-restore-"


class RestoreRefused(BackupError):
    """The destination is not one we may write to as asked."""


def make_plan(cat: Catalog, *, at: int | None, chain_id: str | None, before_gap: bool = False) -> RestorePlan:
    """Choose, index the one file the cut falls in (the open tail is already indexed), plan."""
    if chain_id is not None:
        broken = cat.find_broken(chain_id)
        if broken is not None:
            raise PlanError(f"chain {chain_id} cannot be read: {broken.error}")
    asked, at = at, resolve_time(cat.chains, at, before_gap=before_gap)
    chain = choose_chain(cat.chains, at=at, chain_id=chain_id)
    target = file_to_cut(chain, at)
    index = None
    if target is not None:
        tail = cat.tails.get(chain.chain)
        index = tail if tail is not None and tail.name == target.name else index_file(cat.store, chain.chain, target)
    plan = plan_restore(chain, at=at, index=index)
    return dataclasses.replace(plan, asked_at=asked) if asked != at else plan


def refuse_inside_backups(dest: Path, root: Path) -> None:
    """DIR may be under BACKUP_DIR (the service ignores what is not a chain), never in a chain (a check
    for a local store: an object store's chains are not paths one could write to)."""
    d, r = dest.resolve(), root.resolve()
    if d == r or (d.is_relative_to(r) and _is_backup_name(d.relative_to(r).parts[0])):
        raise RestoreRefused(f"--to {dest} is BACKUP_DIR or one of its chains: restore somewhere else")


def _is_backup_name(name: str) -> bool:
    return naming.is_chain_id(name) or name.startswith((naming.PARTIAL_PREFIX, naming.DELETING_PREFIX))


def prepare_dir(dest: Path, *, force: bool) -> None:
    if dest.exists():
        if not dest.is_dir():
            raise RestoreRefused(f"--to {dest} is not a directory")
        if any(dest.iterdir()) and not force:
            raise RestoreRefused(
                f"{dest} is not empty: restore into an empty or new directory, or pass --force to "
                f"replace {AOF_DIR}/ or {RDB_NAME} in it"
            )
    else:
        try:
            make_dir(dest)
        except OSError as e:
            raise StorageError(f"cannot create {dest}: {e.strerror}") from e


def restore_aof(
    plan: RestorePlan, store: Store, dest: Path, *, progress: Progress | None = None
) -> tuple[Path, int | None]:
    """The AOF directory, and the highest db it uses (None: not known)."""
    out = dest / AOF_DIR
    max_db = write_aof_dir(plan, store, out, replace=True, progress=progress)
    if (dest / RDB_NAME).exists():
        log.warning("%s also holds %s, which redis-server ignores when started with --appendonly yes", dest, RDB_NAME)
    return out, max_db


def restore_rdb(
    plan: RestorePlan, store: Store, dest: Path, server: ServerBinary, *, progress: Progress | None = None
) -> tuple[Path, int | None]:
    """Replay into a temporary redis-server, SAVE, check and move the RDB into place."""
    progress = progress or silent()
    with replayed(plan, store, prefix=WORK_PREFIX, under=dest, server=server, progress=progress) as srv:
        max_db = srv.max_db
        rdb = srv.data_dir / RDB_NAME  # complete once SAVE returned; the server never saves on its own
        with progress.phase(f"saving and checking {RDB_NAME}"):  # SAVE blocks the server: no figures
            with contextlib.closing(srv.client()) as client:
                client.save()
            try:
                check_rdb_file(str(rdb))
            except (OSError, RdbError) as e:
                raise StorageError(f"the RDB written by redis-server does not check out: {e}") from e
        out = dest / RDB_NAME
        os.chmod(rdb, FILE_MODE)
        os.replace(rdb, out)
        fsync_dir(dest)
    if (dest / AOF_DIR).exists():
        log.warning("%s also holds %s/, which redis-server loads instead when --appendonly yes", dest, AOF_DIR)
    return out, max_db


def restore_into(
    plan: RestorePlan, store: Store, url: str, *, replace: bool, server: ServerBinary, progress: Progress | None = None
) -> CopyResult:
    """Rebuild the state in a temporary redis-server (temporary files under TMPDIR), then copy the keys."""
    with replayed(plan, store, prefix="redis-backup-restore-", server=server, progress=progress) as srv:
        with contextlib.closing(srv.client()) as client:
            client.config_set("appendonly", "no")  # the copy may delete every key from it: nothing to log
        return copy_keys(srv.client, url, replace=replace, progress=progress)


