"""The servers of the version matrix: the system's redis-server and the builds in ../shared/redis-versions.

The folder is found relative to the project (``<repo>/../shared/redis-versions``, as on the development
machines) or at ``$REDIS_VERSIONS_DIR``; each version is one ``<folder>/<name>/redis-server``. A version
whose binary is missing (or does not run) is skipped with a message, so that the suite passes on a machine
without that folder. See docs/COMPATIBILITY.md.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import REDIS_SERVER

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_ENV = "REDIS_VERSIONS_DIR"
SYSTEM = "system"
MATRIX = (SYSTEM, "redis-7.2", "redis-7.4", "valkey-8.0")


def versions_dir() -> Path:
    """``$REDIS_VERSIONS_DIR``, else ``../shared/redis-versions`` beside the checkout."""
    override = os.environ.get(VERSIONS_ENV)
    return Path(override) if override else REPO_ROOT.parent / "shared" / "redis-versions"


@dataclass(frozen=True)
class ServerVersion:
    """One server of the matrix: ``name`` (``system``, ``redis-7.4``...), its binary and its version."""

    name: str
    binary: str
    product: str  # "redis" or "valkey"
    version: tuple[int, int, int]

    def at_least(self, major: int, minor: int = 0) -> bool:
        """The Redis feature level is at least ``major.minor`` (Valkey 8 counts as Redis 7.2 here: it
        forked from 7.2.4 and has neither hash field expiration nor anything else from 7.4)."""
        level = (7, 2, 4) if self.product == "valkey" else self.version
        return level >= (major, minor, 0)

    @property
    def has_hash_field_expiration(self) -> bool:
        """HEXPIRE and friends: Redis 7.4+ (not Valkey 8)."""
        return self.product == "redis" and self.version >= (7, 4, 0)

    def __str__(self) -> str:
        return f"{self.name} ({self.product} {'.'.join(map(str, self.version))}, {self.binary})"


@functools.cache
def find_version(name: str) -> ServerVersion | str:
    """The :class:`ServerVersion` called ``name``, or why it is not available here (a skip message)."""
    if name == SYSTEM:
        binary = shutil.which(REDIS_SERVER) or REDIS_SERVER
    else:
        binary = str(versions_dir() / name / "redis-server")
        if not os.access(binary, os.X_OK):
            return f"{name}: no executable {binary} (set {VERSIONS_ENV} to the folder of the version builds)"
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"{name}: {binary} does not run: {exc}"
    # "Redis server v=7.4.1 sha=..." / "Valkey server v=8.0.1 sha=..."
    match = re.search(r"^(\w+) server v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    if out.returncode != 0 or match is None:
        return f"{name}: {binary} --version said {out.stdout.strip() or out.stderr.strip()!r}"
    major, minor, patch = (int(g) for g in match.group(2, 3, 4))
    return ServerVersion(name, binary, match.group(1).lower(), (major, minor, patch))
