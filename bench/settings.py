"""The sizes and counts of one benchmark run (full or --quick), and checks that the machine can hold them."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

SECTIONS = ("snapshot", "stream", "wait", "rotation", "restore", "memory", "into", "metadata")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'100M' -> 104857600 (K, M, G are powers of 1024; a plain number is bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 5M, 100M, 2G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass(frozen=True)
class Size:
    label: str
    bytes: int

    @classmethod
    def parse(cls, text: str) -> Size:
        return cls(text.strip(), parse_size(text))


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    sections: tuple[str, ...]
    snapshot_sizes: tuple[Size, ...]
    requests: int  # redis-benchmark requests per ingestion round, over all command types
    wait_iterations: int
    restore_snapshot: Size
    restore_stream: Size
    into_keys: int  # small keys for restore --into against redis-cli --pipe

    @classmethod
    def defaults(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                quick=True,
                rounds=1,
                sections=SECTIONS,
                snapshot_sizes=(Size.parse("5M"),),
                requests=100_000,
                wait_iterations=200,
                restore_snapshot=Size.parse("4M"),
                restore_stream=Size.parse("4M"),
                into_keys=20_000,
            )
        return cls(
            quick=False,
            rounds=3,
            sections=SECTIONS,
            snapshot_sizes=(Size.parse("100M"), Size.parse("800M"), Size.parse("2G")),
            requests=3_000_000,
            wait_iterations=2000,
            restore_snapshot=Size.parse("1G"),
            restore_stream=Size.parse("1G"),
            into_keys=1_000_000,
        )

    def wants(self, section: str) -> bool:
        return section in self.sections


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def room_for(dataset: int, where: Path, *, disk_factor: float, mem_factor: float = 2.5) -> str | None:
    """Why the machine cannot hold a dataset of this many RDB bytes, or None if it can.

    A dataset takes about twice its RDB size in a primary's memory; ``disk_factor`` is how many copies
    of it the benchmark writes.
    """
    gib = 1 << 30
    free = shutil.disk_usage(where).free
    if free < dataset * disk_factor:
        return f"needs {dataset * disk_factor / gib:.1f} GiB of disk in {where}, {free / gib:.1f} free"
    avail = _mem_available()
    if avail < dataset * mem_factor:
        return f"needs {dataset * mem_factor / gib:.1f} GiB of memory, {avail / gib:.1f} available"
    return None
