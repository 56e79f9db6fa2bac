"""The benchmark suite still works: `python -m bench.run --quick` completes, writes every section with
numeric medians and ratios, and leaves nothing running. The figures themselves are not checked: a quick
run on a shared machine measures noise."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.run import ALL_SECTIONS
from tests.support.service import REPO_ROOT, base_env

RESULTS = {"PASS", "MISS", "-"}
MACHINE_KEYS = {"cpu_model", "cores", "kernel", "python", "redis", "date"}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _processes_mentioning(text: str) -> list[str]:
    """Processes (other than this one) whose command line or environment contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for name in ("cmdline", "environ"):
            try:
                raw = (entry / name).read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in raw:
                found.append(f"{entry.name}: {raw[:200]}")
                break
    return found


def _check_metric(section: str, metric: dict[str, Any]) -> None:
    where = f"{section}/{metric['name']}"
    assert _number(metric["a_median"]), where
    assert metric["a_samples"] and all(_number(v) for v in metric["a_samples"]), where
    assert metric["result"] in RESULTS, where
    if metric["b_name"] is not None:
        assert _number(metric["b_median"]), where
        assert all(_number(v) for v in metric["b_samples"]), where
        if metric["b_median"] != 0:
            assert _number(metric["ratio"]), where


def _check_section(name: str, section: dict[str, Any]) -> None:
    if name == "restore" and section["status"] == "skipped":
        assert section["reason"].startswith("restore unavailable"), section["reason"]
        return
    assert section["status"] == "ok", f"{name}: {section['status']}: {section['reason']}"
    assert section["rounds"] >= 1
    assert section["metrics"], name
    for metric in section["metrics"]:
        _check_metric(name, metric)
    assert any(_number(m["ratio"]) for m in section["metrics"]), f"{name}: no ratio"
    assert any(m["target"] is not None for m in section["metrics"]), f"{name}: no target"


def test_quick_benchmark_runs_and_cleans_up(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "quick.json"
    argv = [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), "--tmp", str(work)]
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=base_env(), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    doc = json.loads(out.read_text())
    assert set(doc["sections"]) == set(ALL_SECTIONS)
    for name, section in doc["sections"].items():
        _check_section(name, section)
    assert set(doc["machine"]) >= MACHINE_KEYS, doc["machine"]
    assert doc["command"].startswith("python -m bench.run --quick")
    assert "target" in proc.stdout and "result" in proc.stdout  # the table was printed

    assert _processes_mentioning(str(work)) == []
    assert list(work.iterdir()) == []  # the temporary directory is gone
