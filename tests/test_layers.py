"""The package's folders are layers, and a layer never imports one above it: the tree shows the
architecture only as long as this holds."""

from __future__ import annotations

import ast
from pathlib import Path

import redis_backup

PACKAGE = Path(redis_backup.__file__).parent
# lowest first; the modules at the package root (errors, times, progress, interrupts) are the bottom
LAYERS = ("", "wire", "store", "chain", "restore", "service", "cli")
TOP = {"__main__"}  # the entry point may import anything


def layer_of(module: str) -> int:
    """redis_backup.chain.writer -> index of 'chain'; a root module -> 0 (the entry point: above all)."""
    parts = module.split(".")
    assert parts[0] == "redis_backup", module
    if len(parts) == 1:
        return 0
    if parts[1] in TOP:
        return len(LAYERS)
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else 0


def imports_of(source: str) -> list[str]:
    """Every redis_backup module a source imports, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "redis_backup":
                found.append(node.module)
                found += [f"{node.module}.{a.name}" for a in node.names if (PACKAGE / a.name).is_dir()]
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.append("relative")
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "redis_backup"]
    return found


def violations(module: str, source: str) -> list[str]:
    here = layer_of(module)
    bad = []
    for target in imports_of(source):
        if target == "relative":
            bad.append(f"{module} uses a relative import (write the layer out)")
        elif layer_of(target) > here:
            bad.append(f"{module} imports {target}, a layer above it")
    return bad


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out.append((name.removesuffix(".__init__"), path))
    return out


def test_every_module_sits_in_a_known_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS) - {""}, folders
    roots = {n for n, p in modules() if p.parent == PACKAGE} - {"redis_backup", "redis_backup.__main__"}
    assert roots == {f"redis_backup.{m}" for m in ("errors", "times", "progress", "interrupts")}, roots


def test_no_layer_imports_a_layer_above_it() -> None:
    bad = [v for name, path in modules() for v in violations(name, path.read_text())]
    assert bad == []


def test_the_check_finds_an_upward_import() -> None:
    src = "def f():\n    from redis_backup.cli.config import Config\n"
    assert violations("redis_backup.chain.writer", src) == [
        "redis_backup.chain.writer imports redis_backup.cli.config, a layer above it"
    ]
    assert violations("redis_backup.wire.resp", "from redis_backup import service\n") == [
        "redis_backup.wire.resp imports redis_backup.service, a layer above it"
    ]
    assert violations("redis_backup.cli.main", "from redis_backup.wire.resp import encode_command\n") == []
    assert violations("redis_backup.store.local", "from . import fsutil\n")
