"""The store the reading commands (list, restore, verify) work on: the one place that says which backend
BACKUP_DIR means, so that a second backend plugs in here and nowhere else (and tests substitute one)."""

from __future__ import annotations

from redis_backup.cli.config import Config
from redis_backup.store.base import Store
from redis_backup.store.local import LocalStore


def open_store(cfg: Config) -> Store:
    return LocalStore(cfg.backup_dir)
