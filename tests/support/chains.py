"""Looking at what the service left in BACKUP_DIR, independently of redis_backup's own code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


JOURNAL = "redis-backup.files.jsonl"


def read_meta(chain_dir: Path) -> dict[str, Any]:
    """A chain's metadata as one dict with every file in ``files``, read as docs/FORMAT.md says: format 3
    is the head plus the journal's committed lines in front of the head's own files; 1 and 2 are one file."""
    head: dict[str, Any] = json.loads((chain_dir / METADATA).read_text())
    if head.get("format", 0) < 3:
        return head
    committed = (chain_dir / JOURNAL).read_bytes()[: head["journal_bytes"]] if head["journal_bytes"] else b""
    sealed = [json.loads(line) for line in committed.splitlines()]
    assert len(sealed) == head["journal_records"], (len(sealed), head["journal_records"])
    return {**head, "files": sealed + head["files"]}


def write_meta(chain_dir: Path, meta: dict[str, Any] | str) -> None:
    """Replace a chain's metadata (to tamper with it): a string is the head's bytes as they are; a dict
    as read_meta gives it is written back in format 3, its leading sealed files in the journal."""
    if isinstance(meta, str) or meta.get("format", 0) < 3:
        (chain_dir / METADATA).write_text(meta if isinstance(meta, str) else json.dumps(meta))
        return
    files = meta.get("files")
    sealed: list[Any] = []
    if isinstance(files, list):
        while len(sealed) < len(files) and isinstance(files[len(sealed)], dict) and files[len(sealed)].get("sha256"):
            sealed.append(files[len(sealed)])
    journal = b"".join(json.dumps(f, sort_keys=True, separators=(",", ":")).encode() + b"\n" for f in sealed)
    head = {**meta, "journal_records": len(sealed), "journal_bytes": len(journal)}
    if isinstance(files, list):
        head["files"] = files[len(sealed) :]
    (chain_dir / JOURNAL).write_bytes(journal)
    (chain_dir / METADATA).write_text(json.dumps(head, indent=1, sort_keys=True) + "\n")
