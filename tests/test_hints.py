"""The library layers word their errors without environment variables; the CLI adds what to check."""

from __future__ import annotations

import ast
from pathlib import Path

from redis_backup.cli.config import OPTIONS, resolve
from redis_backup.cli.hints import describe
from redis_backup.cli.main import build_parser
from redis_backup.errors import BackupError, FatalReplicationError, RetryableError

LIBRARY = Path(__file__).resolve().parents[1] / "redis_backup" / "wire"


def strings_naming_settings(source: str) -> list[str]:
    envs = {o.env for o in OPTIONS}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [env for env in envs if env in node.value]
    return found


def test_the_wire_layer_names_no_environment_variable() -> None:
    named = {p.name: strings_naming_settings(p.read_text()) for p in LIBRARY.glob("*.py")}
    assert {k: v for k, v in named.items() if v} == {}


def test_the_check_sees_a_setting_in_a_message() -> None:
    assert strings_naming_settings('raise X(f"cannot resolve {h} (check REDIS_HOST)")') == ["REDIS_HOST"]


def test_the_cli_adds_the_settings_with_their_values_and_hides_secrets() -> None:
    args = build_parser().parse_args(["run", "--redis-host", "db1", "--redis-port", "6380"])
    cfg = resolve(args, {"REDIS_PASSWORD": "s3cret", "REDIS_USERNAME": "backup"})
    e = RetryableError("cannot connect to db1:6380: refused", settings=("redis_host", "redis_port"))
    assert describe(e, cfg) == "cannot connect to db1:6380: refused (check REDIS_HOST=db1, REDIS_PORT=6380)"
    auth = FatalReplicationError("authentication failed: WRONGPASS", settings=("redis_username", "redis_password"))
    text = describe(auth, cfg)
    assert text.endswith("(check REDIS_USERNAME=backup, REDIS_PASSWORD)") and "s3cret" not in text
    assert describe(BackupError("plain"), cfg) == "plain"
    assert describe(e, None) == "cannot connect to db1:6380: refused (check REDIS_HOST, REDIS_PORT)"
