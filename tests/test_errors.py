"""Every error the package raises derives from one base, so the CLI's one-line handling sees them all."""

from __future__ import annotations

import ast
from pathlib import Path

import redis_backup
from redis_backup.errors import BackupError

PACKAGE = Path(redis_backup.__file__).parent


def exception_classes(source: str) -> list[tuple[str, list[str]]]:
    """(class name, base names) of every class in source whose bases look like exceptions."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(b) for b in node.bases]
            if any(b.endswith(("Error", "Exception")) or b in ("Exception", "BaseException") for b in bases):
                out.append((node.name, bases))
    return out


def test_every_public_error_is_a_backup_error() -> None:
    """Private ones (a leading underscore) never leave their module; Stopped is the signal unwinding."""
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, bases in exception_classes(path.read_text()):
            if name.startswith("_") or name == "Stopped":
                continue
            if ("Exception" in bases or "BaseException" in bases) and name != "BackupError":
                wrong.append(f"{path.relative_to(PACKAGE)}: {name}({', '.join(bases)})")
    assert wrong == []


def test_the_errors_found_are_backup_errors() -> None:
    from redis_backup.chain.metadata import MetadataError
    from redis_backup.chain.rdb import RdbError
    from redis_backup.restore.plan import PlanError
    from redis_backup.store.base import InvalidName, NotFound, StoreError

    for cls in (MetadataError, RdbError, PlanError, StoreError, NotFound, InvalidName):
        assert issubclass(cls, BackupError), cls


def test_the_check_finds_a_stray_base() -> None:
    assert exception_classes("class Bad(Exception):\n    pass\n") == [("Bad", ["Exception"])]
