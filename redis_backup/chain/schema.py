"""The metadata's schema (the head, and the files once the journal is put in front of them), checked
before anything is built from it.

Someone who can write into BACKUP_DIR (or a copy of it) controls these bytes: a type, a range or a
size that the code does not expect must be one clear "damaged" line for that chain, never an
exception (a RecursionError, a MemoryError for a header_size of 10**15) that stops every other chain.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from redis_backup.chain import naming

# A metadata file (format 1, 2, or a format 3 head) and a journal's committed bytes are each refused above
# this: about 200,000 files (250,000 in a journal); a chain rotates a file a minute at most by default.
MAX_METADATA_BYTES = 64 << 20
MAX_FILES = 1_000_000
MAX_LIST = 1_000_000
MAX_OFFSET = 1 << 62
MAX_DB = (1 << 31) - 1
MAX_SECOND = 1 << 40
MAX_HEADER = 64  # the SELECT of the largest db is 33 bytes
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")

Check = Callable[[Any], str | None]  # None: fine; else what was expected

# Why a gap in capture began: (a few words for `list`, the sentence a refused restore gives)
GAP_REASONS: Mapping[str, tuple[str, str]] = {
    "snapshot": ("snapshot transfer", "the snapshot was being transferred"),
    "reconnected": ("not receiving", "the service was not receiving"),
    "behind": ("behind the primary", "the service was behind the primary"),
    "ended": ("the chain ended in it", "the link was lost in it and a newer chain began"),
    "unverified": (
        "not verified: no +info",
        "the service could not ask the primary its offset, so it cannot tell the seconds its commands were "
        "executed in (grant +info to the backup user)",
    ),
}


def _int(lo: int, hi: int, *, optional: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if v is None and optional:
            return None
        if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
            return None
        return f"an integer {lo}..{hi}" + (" or null" if optional else "")

    return check


def _number(*, optional: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if v is None and optional:
            return None
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= MAX_SECOND
        return None if ok else "a unix time" + (" or null" if optional else "")

    return check


def _str(limit: int, pattern: re.Pattern[str] | None = None, *, optional: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if v is None and optional:
            return None
        if isinstance(v, str) and len(v) <= limit and (pattern is None or pattern.fullmatch(v)):
            return None
        what = f"a string of at most {limit} characters" if pattern is None else f"a string like {pattern.pattern}"
        return what + (" or null" if optional else "")

    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _one_of(*values: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in values else "one of " + ", ".join(values)

    return check


def _name(v: Any) -> str | None:
    return None if isinstance(v, str) and naming.is_data_file(v) else "an AOF data file name"


def _chain(v: Any) -> str | None:
    return None if isinstance(v, str) and naming.is_chain_id(v) else "a chain id"


FILE: Mapping[str, Check] = {
    "name": _name,
    "type": _one_of("base", "incr"),
    "seq": _int(1, MAX_DB),
    "start_offset": _int(0, MAX_OFFSET),
    "end_offset": _int(0, MAX_OFFSET, optional=True),
    "header_size": _int(0, MAX_HEADER),
    "start_db": _int(0, MAX_DB),
    "first_ts": _int(0, MAX_SECOND, optional=True),
    "last_ts": _int(0, MAX_SECOND, optional=True),
    "size": _int(0, MAX_OFFSET, optional=True),
    "sha256": _str(64, _HEX64, optional=True),
}
REPLID: Mapping[str, Check] = {"replid": _str(40, _HEX40), "from_offset": _int(0, MAX_OFFSET)}
GAP: Mapping[str, Check] = {
    "from_second": _int(0, MAX_SECOND),
    "to_second": _int(0, MAX_SECOND, optional=True),
    "offset": _int(0, MAX_OFFSET),
    "reason": _one_of(*GAP_REASONS),
}
CHAIN: Mapping[str, Check] = {
    "format": _int(1, 3),
    "chain": _chain,
    "primary": _str(1024),
    "replid": _str(40, _HEX40),
    "start_offset": _int(0, MAX_OFFSET),
    "end_offset": _int(0, MAX_OFFSET),
    "db": _int(0, MAX_DB),
    "snapshot_at": _number(),
    "snapshot_done_at": _number(optional=True),
    "last_write_at": _number(optional=True),
    "closed": _bool,
    "closed_at": _number(optional=True),
    "closed_reason": _str(1024, optional=True),
    "rdb_version": _int(0, 9999, optional=True),
    "server_version": _str(64, optional=True),
    "server_name": _str(64, optional=True),
    "base_max_db": _int(0, MAX_DB, optional=True),
    "stream_max_db": _int(0, MAX_DB, optional=True),
    "verified_until": _number(optional=True),
    "journal_records": _int(0, MAX_FILES),
    "journal_bytes": _int(0, MAX_METADATA_BYTES),
}
REQUIRED = {"format", "chain", "primary", "replid", "start_offset", "end_offset", "db", "snapshot_at", "files"}
JOURNAL_FIELDS = {"journal_records", "journal_bytes"}  # format 3's head, and only it
LISTS: Mapping[str, tuple[Mapping[str, Check], int]] = {
    "files": (FILE, MAX_FILES),
    "replids": (REPLID, MAX_LIST),
    "gaps": (GAP, MAX_LIST),
}
FILE_REQUIRED = {"name", "type", "seq", "start_offset"}


class SchemaError(ValueError):
    """What is wrong, with where: files[3].header_size: expected an integer 0..64, got 1000000000000000."""


def show(v: Any) -> str:
    """A value as an error message may quote it: short."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _object(where: str, obj: Any, fields: Mapping[str, Check], required: set[str]) -> None:
    if not isinstance(obj, dict):
        raise SchemaError(f"{where or 'the file'}: expected an object, got {type(obj).__name__}")
    missing = required - obj.keys()
    if missing:
        raise SchemaError(f"{where or 'the file'}: missing {', '.join(sorted(missing))}")
    for key, value in obj.items():
        at = f"{where}.{key}" if where else str(key)
        if key in LISTS and not where:
            continue
        check = fields.get(key)
        if check is None:
            raise SchemaError(f"{at}: unknown field")
        expected = check(value)
        if expected is not None and check is _name:
            raise SchemaError(f"{at}: bad file name {show(value)} (expected {expected})")
        if expected is not None:
            raise SchemaError(f"{at}: expected {expected}, got {show(value)}")


def validate_head(data: Any) -> None:
    """The fields of the object itself (not its lists): enough to trust what it says of the journal."""
    _object("", data, CHAIN, REQUIRED)
    if data["format"] >= 3:
        missing = JOURNAL_FIELDS - data.keys()
        if missing:
            raise SchemaError(f"the file: missing {', '.join(sorted(missing))}")
    elif extra := JOURNAL_FIELDS & data.keys():
        raise SchemaError(f"{min(extra)}: unknown field")


def validate(data: Any) -> None:
    """Raise SchemaError unless data is a metadata object of the types and ranges the code relies on."""
    validate_head(data)
    for key, (fields, limit) in LISTS.items():
        items = data.get(key, [])
        if not isinstance(items, list) or len(items) > limit:
            raise SchemaError(f"{key}: expected a list of at most {limit} entries")
        for i, item in enumerate(items):
            _object(f"{key}[{i}]", item, fields, FILE_REQUIRED if key == "files" else set(fields))
