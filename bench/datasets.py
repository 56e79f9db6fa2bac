"""Datasets of a given size: DEBUG POPULATE keys plus strings, hashes, lists, sets and sorted sets.

Values are slices of a random pool, so the RDB (LZF-compressed per value) is about as large as the
data: the size asked for is roughly the RDB size. Everything is built server-side by a Lua script, a
few hundred keys per call, so that 2 GB take about a minute rather than an hour of round trips.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, cast

from tests.support.servers import RedisServer

POOL_SIZE = 1 << 16
VALUE_SIZE = 64  # bytes per string value, hash value, list element, set and zset member
ITEMS = 50  # elements per hash, list, set and sorted set
KEYS_PER_CALL = 200
POPULATE_SHARE = 0.10  # of the bytes: DEBUG POPULATE's small "key:N" -> "value:N" strings
POPULATE_ENTRY = 24  # RDB bytes per DEBUG POPULATE key, about
STRING_SHARE = 0.18
STRING_SIZE = 200
COLLECTION_ENTRY = VALUE_SIZE + 8  # RDB bytes per collection element, about
KINDS = ("hash", "list", "set", "zset")

# ARGV: kind, prefix, first index, count, items, value size, pool
_BUILD = """
local kind, prefix = ARGV[1], ARGV[2]
local first, count, items, size = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local pool = ARGV[7]
local span = #pool - size
local function value(i, j)
  local at = (i * 7919 + j * 104729) % span + 1
  return string.sub(pool, at, at + size - 1)
end
for i = first, first + count - 1 do
  local key = prefix .. i
  if kind == 'string' then
    redis.call('SET', key, value(i, 0))
  else
    local args = {}
    for j = 1, items do
      if kind == 'hash' then
        args[#args + 1] = 'f' .. j
        args[#args + 1] = value(i, j)
      elseif kind == 'zset' then
        args[#args + 1] = (i * items + j) % 1000003
        args[#args + 1] = j .. ':' .. value(i, j)
      elseif kind == 'set' then
        args[#args + 1] = j .. ':' .. value(i, j)
      else
        args[#args + 1] = value(i, j)
      end
    end
    local cmd = ({hash = 'HSET', list = 'RPUSH', set = 'SADD', zset = 'ZADD'})[kind]
    redis.call(cmd, key, unpack(args))
  end
end
return count
"""


@dataclass(frozen=True)
class Plan:
    """How many keys of each kind make up about ``size`` bytes of RDB."""

    size: int
    populate: int
    strings: int
    per_kind: int

    @classmethod
    def for_size(cls, size: int) -> Plan:
        collection_share = (1.0 - POPULATE_SHARE - STRING_SHARE) / len(KINDS)
        return cls(
            size=size,
            populate=max(1, int(size * POPULATE_SHARE / POPULATE_ENTRY)),
            strings=max(1, int(size * STRING_SHARE / (STRING_SIZE + 16))),
            per_kind=max(1, int(size * collection_share / (ITEMS * COLLECTION_ENTRY))),
        )

    @property
    def keys(self) -> int:
        return self.populate + self.strings + self.per_kind * len(KINDS)


def populate(server: RedisServer, size: int, *, seed: int = 0) -> Plan:
    """Fill db 0 of an empty server with about ``size`` bytes (as an RDB) of mixed types."""
    plan = Plan.for_size(size)
    pool = random.Random(seed).randbytes(POOL_SIZE)
    client = cast(Any, server.client(socket_timeout=600.0))
    try:
        client.execute_command("DEBUG", "POPULATE", plan.populate, "key")
        sha = client.script_load(_BUILD)
        batches: list[tuple[str, int, int, int]] = [("string", plan.strings, 1, STRING_SIZE)]
        batches += [(kind, plan.per_kind, ITEMS, VALUE_SIZE) for kind in KINDS]
        for kind, count, items, value_size in batches:
            for first in range(0, count, KEYS_PER_CALL):
                n = min(KEYS_PER_CALL, count - first)
                client.evalsha(sha, 0, kind, f"{kind}:", first, n, items, value_size, pool)
    finally:
        client.close()
    return plan
