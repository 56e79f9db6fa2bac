"""Every name the backup writes, in one place, so the layout can be read off this file."""

from __future__ import annotations

import calendar
import re
import time

MANIFEST = "appendonly.aof.manifest"
METADATA = "redis-backup.json"  # the head: the chain's offsets and its files not yet sealed
JOURNAL = "redis-backup.files.jsonl"  # one line per sealed file, appended once (format 3)
METADATA_FILES = (MANIFEST, METADATA, JOURNAL)  # the files of a chain directory that are not data
AOF_BASENAME = "appendonly.aof"
PARTIAL_PREFIX = ".partial-"
DELETING_PREFIX = ".deleting-"  # a chain being deleted by retention: hidden first (one rename), then removed
TMP_SUFFIX = ".tmp"
LOCK_FILE = ".redis-backup.lock"  # in BACKUP_DIR: held by the one service that writes there

# matched with fullmatch: "$" would let a name ending in a newline through
_CHAIN_RE = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}-\d{1,20}")
_FILE_RE = re.compile(r"appendonly\.aof\.(\d{1,10})\.(base\.rdb|incr\.aof)")


def chain_id(started_at: float, replid: str, offset: int) -> str:
    """Chain ids sort by start time; replid and offset keep two chains of one second apart."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started_at))
    return f"{stamp}-{replid[:8].lower()}-{offset}"


def chain_started(chain: str) -> float:
    """The start second a chain id names (its first 16 characters)."""
    return float(calendar.timegm(time.strptime(chain[:16], "%Y%m%dT%H%M%SZ")))


def name_after(previous: str | None, at: float) -> float:
    """The time a new chain's id names: `at`, or the second after `previous` (the newest id so far) if
    that is later, since ids sort by their second and two ids of one second sort by offset as text."""
    return at if previous is None else max(at, chain_started(previous) + 1)


def is_chain_id(name: str) -> bool:
    return bool(_CHAIN_RE.fullmatch(name))


def partial_chain_dir(chain: str) -> str:
    """A chain lives under this name until its snapshot is complete, so it is never mistaken for one."""
    return PARTIAL_PREFIX + chain


def deleting_chain_dir(chain: str) -> str:
    """A chain retention is deleting is renamed to this first, so that no reader ever sees it half gone."""
    return DELETING_PREFIX + chain


def base_file(seq: int = 1) -> str:
    return f"{AOF_BASENAME}.{seq}.base.rdb"


def incr_file(seq: int) -> str:
    return f"{AOF_BASENAME}.{seq}.incr.aof"


def tmp_name(name: str) -> str:
    return f".{name}{TMP_SUFFIX}"


def is_data_file(name: str) -> bool:
    """A name that may appear in a manifest: no directory part, one of the two AOF file kinds."""
    return bool(_FILE_RE.fullmatch(name))
