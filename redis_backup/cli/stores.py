"""The store the reading commands (list, restore, verify) work on: the one place that says which backend
BACKUP_DIR and S3_BUCKET mean, so that tests substitute one here and nowhere else."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from redis_backup.chain.catalog import chain_ids
from redis_backup.chain.remoteview import RemoteChains
from redis_backup.cli.config import Config
from redis_backup.errors import ConfigError, StorageError
from redis_backup.store.base import Store
from redis_backup.store.local import LocalStore

if TYPE_CHECKING:
    from redis_backup.store.s3 import S3Store


def add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source", choices=("local", "s3"), default=None,
        help="read the chains from BACKUP_DIR or from the bucket (default: BACKUP_DIR when it holds chains, "
        "else the bucket when S3_BUCKET is set)",
    )  # fmt: skip


def bucket_store(cfg: Config) -> S3Store:
    from redis_backup.store.s3 import S3Store

    s3 = cfg.s3_settings()
    if s3 is None:
        raise ConfigError("--source s3 needs S3_BUCKET (and S3_PREFIX, AWS_REGION, S3_ENDPOINT_URL as the service "
                          "has them)")  # fmt: skip
    return S3Store(s3)


@contextlib.contextmanager
def opened(cfg: Config, source: str | None = None) -> Iterator[Store]:
    """open_store, and afterwards whatever the store holds (downloads running ahead, their files)."""
    store = open_store(cfg, source)
    try:
        yield store
    finally:
        if isinstance(store, RemoteChains):
            store.close()


def open_store(cfg: Config, source: str | None = None) -> Store:
    local = LocalStore(cfg.backup_dir)
    if source == "local" or (source is None and not cfg.s3_bucket):
        return local
    if source is None:
        try:
            if chain_ids(local):
                return local
        except StorageError:
            pass  # no BACKUP_DIR here: the bucket
    return RemoteChains(bucket_store(cfg), cfg.key(), parallelism=cfg.s3_restore_parallelism)
