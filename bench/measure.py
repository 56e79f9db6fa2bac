"""Measuring processes: CPU time and peak memory from /proc, wall time and rusage of a finished child."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.servers import reap, spawn

MIB = 1 << 20
GIB = 1 << 30
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads included (/proc/PID/stat)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / _CLOCK_TICKS


def peak_rss(pid: int) -> int:
    """The process's peak resident set size so far, in bytes (VmHWM of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


@dataclass(frozen=True)
class Finished:
    """A child run to completion: wall time, and the kernel's rusage of that child alone."""

    argv: list[str]
    returncode: int
    wall: float
    cpu: float  # user + system seconds
    max_rss: int  # bytes
    output: Path

    def tail(self, lines: int = 3) -> str:
        text = self.output.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def check(self) -> Finished:
        if self.returncode != 0:
            raise RuntimeError(f"{' '.join(self.argv[:4])} ... exited with {self.returncode}: {self.tail()}")
        return self


def run_measured(
    argv: Sequence[str],
    output: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: Any = subprocess.DEVNULL,
    timeout: float = 3600.0,
) -> Finished:
    """Run argv to completion (stdout and stderr to ``output``), timing it and reading its rusage.

    os.wait4 gives the rusage of exactly this child, so no wrapper process is needed; a timer kills it
    after ``timeout`` seconds.
    """
    with open(output, "wb") as out:
        started = time.perf_counter()
        proc = spawn(
            argv, env=dict(env) if env is not None else None, cwd=cwd, stdin=stdin, stdout=out, stderr=subprocess.STDOUT
        )
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        reap(proc)
    return Finished(
        argv=list(argv),
        returncode=proc.returncode,
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        max_rss=usage.ru_maxrss * 1024,
        output=output,
    )


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), pct in 0..100."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * pct / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


class Stopwatch:
    """Seconds since creation (perf_counter)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
