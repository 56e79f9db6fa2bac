"""Points in time as the user gives them (ISO-8601 or unix seconds) and as we show them (UTC, ISO-8601).

Restores have a granularity of one second, so a time is an int: the unix second it falls in.
"""

from __future__ import annotations

import datetime
import math
import re

from redis_backup.errors import ConfigError

_UNIX = re.compile(r"^\d+(\.\d+)?$")


def parse_time(text: str, *, what: str = "--at") -> int:
    """The unix second of TIME: ISO-8601 with Z, an offset or no zone (UTC), or unix seconds."""
    s = text.strip()
    if _UNIX.match(s):
        return math.floor(float(s))
    try:
        dt = datetime.datetime.fromisoformat(s)
    except ValueError:
        raise ConfigError(
            f"invalid {what} {text!r}: expected ISO-8601 (2026-11-25T18:00:05Z, an offset, or no zone "
            "meaning UTC) or unix seconds"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return math.floor(dt.timestamp())


def iso(ts: float) -> str:
    """2026-11-25T18:00:05Z (whole seconds, UTC)."""
    return datetime.datetime.fromtimestamp(math.floor(ts), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
