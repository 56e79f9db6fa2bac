"""6. Metadata: what a rotation and the once-a-second metadata write cost as a chain grows.

Contender A is this tree (format 3: a small head plus an append-only journal); contender B is the code
before it (format 2: one JSON file listing every file, rewritten whole), unpacked from git at OLD_COMMIT
(B is left out when git or that commit is not there). Each round runs bench/metadata_driver.py once per
contender, in its own process, with PYTHONPATH pointing at that contender's code: a ChainWriter driven to
each size, real rotations timed there (see the driver for how it fast-forwards between sizes).

Then, on the chain the A driver copied at each size in READ_SIZES: `list`, `restore --dry-run` and the
crash recovery (writer.recover on a copy), A on the chain as written, B on the same chain converted to
format 2 (one JSON), each a fresh process (its start-up included, as an operator sees it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .lab import Lab
from .measure import MIB, median, run_measured
from .report import Metric, Section, Target
from .settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = os.environ.get("BENCH_METADATA_OLD", "d45c6ee")  # the last commit with format 2
NEW = "format 3 (journal)"
OLD = f"format 2 ({OLD_COMMIT})"
FLAT_LIMIT = 1.5  # cost at the largest size / at the smallest: flat, allowing for noise
READ_LIMIT = 1.2  # list, dry-run, recovery: about as fast as format 2
RSS_GROWTH_LIMIT_MIB = 2.0

RECOVER = (
    "import sys, time\nfrom pathlib import Path\nfrom redis_backup.chain.writer import Limits, recover\n"
    "t = time.perf_counter()\nrecover(Path(sys.argv[1]), limits=Limits()).release()\n"
    "print(time.perf_counter() - t)\n"
)


@dataclasses.dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    rotations: int
    read_sizes: tuple[int, ...]


def plan(settings: Settings) -> Plan:
    if settings.quick:
        return Plan((20, 100), 5, (100,))
    return Plan((100, 1000, 4000, 10_000), 40, (4000, 10_000))


def _old_tree(lab: Lab) -> Path | None:
    """The code of OLD_COMMIT, unpacked (no worktree: nothing is left in .git), or None."""
    dest = lab.subdir("old-code")
    try:
        archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", OLD_COMMIT, "redis_backup", "tests"],
                                 capture_output=True, timeout=120, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    # the compiled scanner too, when its source is the same: both sides then scan at the same speed
    here, there = REPO_ROOT / "redis_backup" / "wire", dest / "redis_backup" / "wire"
    if (here / "_scan.c").read_bytes() == (there / "_scan.c").read_bytes():
        for so in here.glob("_scan*.so"):
            shutil.copy2(so, there / so.name)
    return dest


def _env(code: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(("LC_", "PATH", "HOME", "TMPDIR"))}
    env["PYTHONPATH"] = str(code)
    return env


def _drive(lab: Lab, code: Path, p: Plan, copy: bool) -> dict[str, Any]:
    out = lab.subdir("drive")
    sizes, copies = ",".join(map(str, p.sizes)), ",".join(map(str, p.read_sizes)) if copy else ""
    argv = [sys.executable, "-m", "bench.metadata_driver", str(out), sizes, str(p.rotations), copies]
    env = _env(code) | {"PYTHONPATH": f"{code}{os.pathsep}{REPO_ROOT}"}  # bench from here, redis_backup from code
    proc = subprocess.run(argv, env=env, cwd=code, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"metadata driver failed: {proc.stderr.strip().splitlines()[-1:]}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    doc["out"] = str(out)
    return doc


def _as_format_2(src: Path, dest: Path) -> None:
    """The same chain with its metadata in one JSON file, as format 2 wrote it."""
    from redis_backup.chain import metadata as md
    from redis_backup.chain import naming

    shutil.copytree(src, dest)
    meta = dataclasses.asdict(md.load(dest))
    for k in ("journal_records", "journal_bytes", "server_name"):  # fields format 2 never had (its schema refuses them)
        meta.pop(k)
    meta["format"] = 2
    (dest / naming.METADATA).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    (dest / naming.JOURNAL).unlink()


def _read_times(lab: Lab, code: Path, chain: Path) -> dict[str, float]:
    """Wall seconds of list, restore --dry-run and recovery on one chain (in a BACKUP_DIR of its own)."""
    env = _env(code) | {"BACKUP_DIR": str(chain.parent)}
    times: dict[str, float] = {}
    logs = lab.subdir("read-logs")
    for name, argv in (
        ("list", [sys.executable, "-m", "redis_backup", "list"]),
        ("restore --dry-run", [sys.executable, "-m", "redis_backup", "restore", "--dry-run", "--chain", chain.name]),
    ):
        r = run_measured(argv, logs / f"{name.split()[0]}.log", env=env, cwd=code, timeout=600)
        r.check()
        times[name] = r.wall
    scratch = lab.subdir("recover") / chain.name
    shutil.copytree(chain, scratch)
    r = run_measured([sys.executable, "-c", RECOVER, str(scratch)], logs / "recover.log", env=env, cwd=code)
    r.check()
    times["recovery"] = r.wall
    shutil.rmtree(scratch.parent, ignore_errors=True)
    return times


def run(lab: Lab, settings: Settings) -> list[Section]:
    p = plan(settings)
    old = _old_tree(lab)
    section = Section("metadata", rounds=settings.rounds)
    runs: dict[str, list[dict[str, Any]]] = {NEW: [], OLD: []}
    reads: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(settings.rounds):
        doc = _drive(lab, REPO_ROOT, p, copy=True)
        runs[NEW].append(doc)
        if old is not None:
            runs[OLD].append(_drive(lab, old, p, copy=False))
        for size in p.read_sizes:
            chain = Path(doc["out"]) / f"copy-{size}" / doc["chain"]
            reads.setdefault((NEW, size), []).append(_read_times(lab, REPO_ROOT, chain))
            if old is not None:
                two = Path(doc["out"]) / f"format2-{size}" / doc["chain"]
                _as_format_2(chain, two)
                reads.setdefault((OLD, size), []).append(_read_times(lab, old, two))
        shutil.rmtree(doc["out"], ignore_errors=True)

    def at(contender: str, i: int, key: str, scale: float = 1.0) -> list[float]:
        return [r["results"][i][key] * scale for r in runs[contender]]

    def vs_old(name: str, unit: str, i: int, key: str, scale: float, target: Target | None = None) -> None:
        b = at(OLD, i, key, scale) if runs[OLD] else None
        section.add(Metric(name, unit, NEW, at(NEW, i, key, scale), OLD if b else None, b, target))

    last = len(p.sizes) - 1
    for i, size in enumerate(p.sizes):
        vs_old(f"rotation CPU at {size:,} files", "ms", i, "rotation_cpu", 1e3)
    for i, size in enumerate(p.sizes):
        vs_old(f"metadata write CPU at {size:,} files", "ms", i, "write_cpu", 1e3)
    for i, size in enumerate(p.sizes):
        vs_old(f"RSS at {size:,} files", "MiB", i, "rss_kib", 1024 / MIB)
    section.add(Metric(f"rotation CPU, {p.sizes[last]:,} vs {p.sizes[0]:,} files", "ms", NEW,
                       at(NEW, last, "rotation_cpu", 1e3), f"{NEW} at {p.sizes[0]:,}", at(NEW, 0, "rotation_cpu", 1e3),
                       Target("ratio", "<=", FLAT_LIMIT)))  # fmt: skip
    section.add(Metric(f"metadata write CPU, {p.sizes[last]:,} vs {p.sizes[0]:,} files", "ms", NEW,
                       at(NEW, last, "write_cpu", 1e3), f"{NEW} at {p.sizes[0]:,}", at(NEW, 0, "write_cpu", 1e3),
                       Target("ratio", "<=", FLAT_LIMIT)))  # fmt: skip

    def growth(contender: str) -> list[float]:
        return [(r["results"][last]["rss_kib"] - r["results"][0]["rss_kib"]) / 1024 for r in runs[contender]]

    section.add(Metric(f"RSS growth {p.sizes[0]:,} to {p.sizes[last]:,} files", "MiB", NEW, growth(NEW),
                       OLD if runs[OLD] else None, growth(OLD) if runs[OLD] else None,
                       Target("a", "<", RSS_GROWTH_LIMIT_MIB)))  # fmt: skip
    for i, size in enumerate(p.sizes):
        section.add(Metric(f"manifest rewrite at {size:,} files", "ms", NEW, at(NEW, i, "manifest_wall", 1e3),
                           note="read, then replaced atomically (fsync, rename, fsync dir)"))  # fmt: skip
    for size in p.read_sizes:
        for what in ("list", "restore --dry-run", "recovery"):
            a = [r[what] for r in reads[(NEW, size)]]
            b = [r[what] for r in reads[(OLD, size)]] if (OLD, size) in reads else None
            section.add(Metric(f"{what} at {size:,} files", "s", NEW, a, OLD if b else None, b,
                               Target("ratio", "<=", READ_LIMIT) if b else None))  # fmt: skip
    section.details = {
        "sizes": p.sizes,
        "rotations_per_size": p.rotations,
        "old_commit": OLD_COMMIT if old is not None else None,
        "per_size": {c: [r["results"] for r in rs] for c, rs in runs.items() if rs},
        "metadata_bytes": {c: [x["metadata_bytes"] for x in rs[0]["results"]] for c, rs in runs.items() if rs},
        "manifest_bytes": [x["manifest_bytes"] for x in runs[NEW][0]["results"]],
        "median_rss_mib_new": median(at(NEW, last, "rss_kib", 1 / 1024)),
    }
    return [section]
