"""Looking at what the service left in BACKUP_DIR, independently of redis_backup's own code."""

from __future__ import annotations

from pathlib import Path

from tests.support.servers import wait_until

PARTIAL_PREFIX = ".partial-"
MANIFEST = "appendonly.aof.manifest"
METADATA = "redis-backup.json"


def chain_dirs(backup_dir: Path) -> list[Path]:
    """Complete chain directories, oldest first (names sort by time; dot-dirs such as
    ``.partial-*`` are ignored)."""
    if not backup_dir.is_dir():
        return []
    return sorted(p for p in backup_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def partial_dirs(backup_dir: Path) -> list[Path]:
    if not backup_dir.is_dir():
        return []
    return sorted(p for p in backup_dir.iterdir() if p.is_dir() and p.name.startswith(PARTIAL_PREFIX))


def latest_chain(backup_dir: Path) -> Path:
    chains = chain_dirs(backup_dir)
    assert chains, f"no complete chain in {backup_dir}: {sorted(p.name for p in backup_dir.iterdir())}"
    return chains[-1]


def wait_for_chains(backup_dir: Path, count: int = 1, timeout: float = 30.0) -> list[Path]:
    """Wait until at least ``count`` complete chains (with a manifest) exist; returns all of them."""

    def ready() -> list[Path] | None:
        chains = [c for c in chain_dirs(backup_dir) if (c / MANIFEST).is_file()]
        return chains if len(chains) >= count else None

    return wait_until(ready, timeout=timeout, message=f"{count} complete chain(s) in {backup_dir}")


def manifest_entries(chain_dir: Path) -> list[dict[str, str]]:
    """The manifest's lines as dicts (``file``, ``seq``, ``type``: b/h/i), in file order."""
    entries: list[dict[str, str]] = []
    for line in (chain_dir / MANIFEST).read_text().splitlines():
        words = line.split()
        if not words:
            continue
        entries.append(dict(zip(words[0::2], words[1::2], strict=False)))
    return entries
