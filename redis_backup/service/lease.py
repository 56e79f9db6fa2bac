"""One writer per bucket prefix: a lease object taken with a conditional write and renewed with another.

Two services shipping to one prefix would each delete the other's heads and parts. The lease is
`<prefix>lease.json`: created with `If-None-Match: *`, renewed with `If-Match: <its ETag>`; another
holder's lease that has not expired refuses the start in one line naming the holder. A lease of this
host and BACKUP_DIR is taken over at once: the directory's flock proves its holder is gone (a crash).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Protocol

from redis_backup.chain.objects import LEASE
from redis_backup.errors import ConfigError
from redis_backup.store.base import NotFound, PreconditionFailed

log = logging.getLogger(__name__)
LEASE_SECONDS = 60.0


class PreconditionStore(Protocol):
    def describe(self) -> str: ...
    def put_small(self, name: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str: ...
    def get_small(self, name: str, limit: int) -> tuple[bytes, str]: ...
    def delete(self, name: str) -> None: ...


class LeaseLost(ConfigError):
    """Another service took the prefix: this one must stop writing to it."""


@dataclass
class Lease:
    bucket: PreconditionStore
    owner: str  # host and BACKUP_DIR: who may take over without waiting
    etag: str | None = None

    @staticmethod
    def owner_for(backup_dir: str) -> str:
        return f"{socket.gethostname()}:{os.path.abspath(backup_dir)}"

    def _body(self) -> bytes:
        data = {"owner": self.owner, "pid": os.getpid(), "expires_at": time.time() + LEASE_SECONDS}
        return json.dumps(data).encode()

    def acquire(self) -> None:
        try:
            self.etag = self.bucket.put_small(LEASE, self._body(), if_none_match=True)
            return
        except PreconditionFailed:
            pass
        try:
            raw, etag = self.bucket.get_small(LEASE, 4096)
        except NotFound:
            self.acquire()  # released meanwhile
            return
        try:
            held = json.loads(raw)
            owner, expires = str(held["owner"]), float(held["expires_at"])
        except (ValueError, KeyError, TypeError):
            owner, expires = "?", 0.0
        if owner != self.owner and expires > time.time():
            raise ConfigError(
                f"{self.bucket.describe()} is written by another service ({owner}, lease for "
                f"{expires - time.time():.0f} s more): give each service its own S3_PREFIX"
            )
        try:
            self.etag = self.bucket.put_small(LEASE, self._body(), if_match=etag)
        except PreconditionFailed:
            raise ConfigError(f"{self.bucket.describe()}: another service took the lease just now") from None
        log.info("took over the bucket's lease", extra={"from": owner, "expired": expires <= time.time()})

    def renew(self) -> None:
        try:
            self.etag = self.bucket.put_small(LEASE, self._body(), if_match=self.etag)
        except PreconditionFailed:
            raise LeaseLost(f"{self.bucket.describe()}: another service took the lease; this one stops "
                            "writing there") from None  # fmt: skip

    def release(self) -> None:
        try:
            _raw, etag = self.bucket.get_small(LEASE, 4096)
            if etag == self.etag:
                self.bucket.delete(LEASE)
        except Exception as e:  # the lease expires anyway
            log.debug("lease not released", extra={"error": str(e)})
