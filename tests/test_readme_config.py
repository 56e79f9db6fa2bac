"""The README's configuration table is checked against the settings table the CLI is built from, so the
two cannot drift: every setting has a row, every row a setting, and the defaults agree."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from redis_backup.cli.config import OPTIONS

README = Path(__file__).resolve().parents[1] / "README.md"
_ROW = re.compile(r"^\| (`[A-Z0-9_]+`(?:, `[A-Z0-9_]+`)*) \|([^|]*)\|", re.M)


def readme_rows(text: str) -> dict[str, str]:
    rows = {}
    for names, default in _ROW.findall(text):
        for env in re.findall(r"`([A-Z0-9_]+)`", names):
            rows[env] = default.strip()
    return rows


def shown(default: Any) -> str | None:
    """How the README writes a default: in backticks at the start of its cell; no default, no backticks."""
    if default is None:
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def mismatches(text: str) -> list[str]:
    rows = readme_rows(text)
    problems = []
    for o in OPTIONS:
        if o.env not in rows:
            problems.append(f"{o.env}: no row in the README")
            continue
        m = re.match(r"`([^`]*)`", rows[o.env])
        if (m.group(1) if m else None) != shown(o.default):
            problems.append(f"{o.env}: README says {rows[o.env]!r}, the default is {shown(o.default)!r}")
    problems += [f"{env}: in the README, not a setting" for env in sorted(set(rows) - {o.env for o in OPTIONS})]
    return problems


def test_the_readme_table_lists_every_setting_with_its_default() -> None:
    assert mismatches(README.read_text()) == []


def test_the_check_sees_a_wrong_default_a_missing_row_and_an_unknown_one() -> None:
    text = README.read_text()
    assert "| `REDIS_PORT` | `6379` |" in text
    broken = text.replace("| `REDIS_PORT` | `6379` |", "| `REDIS_PORT` | `6380` |")
    broken = re.sub(r"^\| `LOG_FORMAT` .*\n", "", broken, flags=re.M)
    broken += "\n| `NO_SUCH_SETTING` | `1` | nothing |\n"
    assert mismatches(broken) == [
        "REDIS_PORT: README says '`6380`', the default is '6379'",
        "LOG_FORMAT: no row in the README",
        "NO_SUCH_SETTING: in the README, not a setting",
    ]
