"""Results: metrics with their medians, ratios and targets; the printed table; the JSON file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .measure import median

Op = Literal["<=", "<", ">=", "==", "±"]
Subject = Literal["ratio", "a"]


class Skip(Exception):
    """A benchmark cannot run here (the reason is printed and recorded instead of its figures)."""


@dataclass(frozen=True)
class Target:
    """What a figure should be: ``subject op limit``; subject is the ratio a/b or the value of a.

    ``±`` means within ``limit`` of 1 (for ratios that should be about even).
    """

    subject: Subject
    op: Op
    limit: float

    def holds(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.limit
        if self.op == "<":
            return value < self.limit
        if self.op == ">=":
            return value >= self.limit
        if self.op == "==":
            return value == self.limit
        return abs(value - 1.0) <= self.limit

    def render(self, a_name: str) -> str:
        what = "ratio" if self.subject == "ratio" else a_name
        if self.op == "±":
            return f"{what} 1±{self.limit:g}"
        return f"{what} {self.op} {self.limit:g}"


@dataclass
class Metric:
    """One figure for contender a, optionally against contender b, as medians over the rounds."""

    name: str
    unit: str
    a_name: str
    a_samples: list[float]
    b_name: str | None = None
    b_samples: list[float] | None = None
    target: Target | None = None
    note: str = ""

    @property
    def a(self) -> float:
        return median(self.a_samples)

    @property
    def b(self) -> float | None:
        return median(self.b_samples) if self.b_samples else None

    @property
    def ratio(self) -> float | None:
        """a / b of the medians; None without b or when b is 0."""
        b = self.b
        return self.a / b if b else None

    @property
    def result(self) -> str:
        if self.target is None:
            return "-"
        value = self.ratio if self.target.subject == "ratio" else self.a
        if value is None:
            return "-"
        return "PASS" if self.target.holds(value) else "MISS"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "a_name": self.a_name,
            "a_median": self.a,
            "a_samples": self.a_samples,
            "b_name": self.b_name,
            "b_median": self.b,
            "b_samples": self.b_samples,
            "ratio": self.ratio,
            "target": asdict(self.target) if self.target else None,
            "target_text": self.target.render(self.a_name) if self.target else None,
            "result": self.result,
            "note": self.note,
        }


@dataclass
class Section:
    name: str
    rounds: int = 0
    metrics: list[Metric] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # per-round raw figures, settings
    skipped: str | None = None
    error: str | None = None
    seconds: float = 0.0

    def add(self, metric: Metric) -> Metric:
        self.metrics.append(metric)
        return metric

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": "error" if self.error else "skipped" if self.skipped else "ok",
            "reason": self.error or self.skipped,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 1),
            "metrics": [m.to_dict() for m in self.metrics],
            "details": self.details,
        }


# ------------------------------------------------------------------------------------------ table


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 1e5:
        return f"{value:,.0f}"
    if mag >= 100:
        return f"{value:.1f}"
    if mag >= 1:
        return f"{value:.3g}" if mag < 10 else f"{value:.2f}"
    return f"{value:.3g}"


def render_section(section: Section) -> str:
    title = f"== {section.name}"
    if section.error:
        return f"{title}: ERROR: {section.error}"
    if section.skipped:
        return f"{title}: skipped: {section.skipped}"
    title += f" ({section.rounds} round{'s' if section.rounds != 1 else ''}, {section.seconds:.0f} s)"
    rows = [("metric", "contender A", "A", "contender B", "B", "A/B", "target", "result")]
    for m in section.metrics:
        rows.append(
            (
                f"{m.name} [{m.unit}]",
                m.a_name,
                _fmt(m.a),
                m.b_name or "",
                _fmt(m.b),
                _fmt(m.ratio),
                m.target.render("A") if m.target else "",
                m.result,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 4, 5}
    lines = [title]
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    notes = [f"  note: {m.name}: {m.note}" for m in section.metrics if m.note]
    return "\n".join(lines + notes)


def render(sections: Sequence[Section]) -> str:
    return "\n\n".join(render_section(s) for s in sections)


# ------------------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _command_output(argv: Sequence[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, cwd=cwd, check=False)
    except OSError:
        return ""
    return done.stdout.strip()


def redis_version() -> str:
    out = _command_output(["redis-server", "--version"])
    m = re.search(r"v=(\S+)", out)
    return m.group(1) if m else out


def _accelerated() -> bool:
    """Whether redis_backup's optional compiled stream scanner is built (the service uses it if so)."""
    try:
        from redis_backup.wire import resp
    except ImportError:
        return False
    return bool(getattr(resp, "accelerated", lambda: False)())


def machine_info(repo: Path, tmp: Path) -> dict[str, Any]:
    dirty = _command_output(["git", "status", "--porcelain", "--", "redis_backup"], cwd=repo)
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _mem_total(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis": redis_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": list(os.getloadavg()),
        "tmp_dir": str(tmp),
        "tmp_free_bytes": shutil.disk_usage(tmp).free,
        "git_commit": _command_output(["git", "rev-parse", "HEAD"], cwd=repo),
        "scanner": "C fast path" if _accelerated() else "pure Python",
        "redis_backup_uncommitted_changes": bool(dirty),
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write atomically (bench/results/*.tmp is git-ignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
