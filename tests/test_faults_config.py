"""Every setting, given an invalid value (as an environment variable and as an option): one clear line
that names it, and exit code 2, before anything connects or writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from redis_backup.cli.config import OPTIONS, Option
from tests.support.service import ServiceFactory, service_env

MISSING = "/nonexistent/redis-backup-test.pem"

# option -> (invalid value, other settings that make it invalid: cross-checks and files)
INVALID: dict[str, tuple[str, dict[str, str]]] = {
    "REDIS_HOST": ("  ", {}),
    "REDIS_PORT": ("0", {}),
    "REDIS_USERNAME": ("backup", {}),  # an ACL user without a password
    "REDIS_PASSWORD": ("", {"REDIS_USERNAME": "backup"}),  # empty is unset: the user has no password
    "REDIS_TLS_ENABLED": ("maybe", {}),
    "REDIS_TLS_CA_CERT": (MISSING, {"REDIS_TLS_ENABLED": "true"}),
    "REDIS_TLS_CERT": (MISSING, {"REDIS_TLS_ENABLED": "true"}),
    "REDIS_TLS_KEY": (MISSING, {"REDIS_TLS_ENABLED": "true"}),
    "REDIS_TLS_INSECURE": ("sometimes", {}),
    "CONNECT_TIMEOUT_SECONDS": ("0", {}),
    "READ_TIMEOUT_SECONDS": ("nan", {}),
    "SNAPSHOT_START_TIMEOUT_SECONDS": ("0", {}),
    "MIN_FREE_BYTES": ("-1", {}),
    "BACKUP_DIR": ("", {}),
    "SEGMENT_MAX_BYTES": ("1k", {}),
    "SEGMENT_MAX_SECONDS": ("-1", {}),
    "RETRY_DELAY_SECONDS": ("soon", {}),
    "MAX_RETRY_DELAY_SECONDS": ("inf", {}),
    "MAX_RETRIES": ("-1", {}),
    "ALLOW_OTHER_PRIMARY": ("perhaps", {}),
    "LAG_TOLERANCE_SECONDS": ("0", {}),
    "VERIFY_INTERVAL_HOURS": ("-1", {}),
    "SNAPSHOT_INTERVAL_HOURS": ("-0.5", {}),
    "S3_BUCKET": ("Not_A_Bucket", {}),
    "S3_PREFIX": ("/backups/", {"S3_BUCKET": "my-bucket"}),
    "AWS_REGION": (" ", {}),
    "S3_ENDPOINT_URL": ("minio:9000", {}),
    "S3_SYNC_SECONDS": ("0", {}),
    "ACK_AFTER": ("s3", {}),  # without a bucket to wait for
    "COMPRESSION": ("gzip", {}),
    "COMPRESSION_LEVEL": ("30", {}),
    "ENCRYPTION_KEY_FILE": (MISSING, {}),
    "S3_SSE": ("des", {}),
    "S3_SSE_KMS_KEY_ID": ("alias/backup", {}),  # without S3_SSE=aws:kms
    "S3_RESTORE_PARALLELISM": ("0", {}),
    # retention
    "BACKUP_RETENTION_HOURS": ("0", {}),
    "BACKUP_MAX_FILES": ("-1", {}),
    "LOCAL_RETENTION_HOURS": ("48", {}),  # more than BACKUP_RETENTION_HOURS (24)
    "REDIS_SERVER_BIN": (" ", {}),
    "SHUTDOWN_TIMEOUT_SECONDS": ("-1", {}),
    "METRICS_PORT": ("65536", {}),
    "METRICS_HOST": (" ", {}),
    "READY_MAX_UPLOAD_LAG_SECONDS": ("0", {}),
    "LOG_LEVEL": ("loud", {}),
    "LOG_FORMAT": ("xml", {}),
}


def test_every_option_has_an_invalid_case() -> None:
    assert set(INVALID) == {o.env for o in OPTIONS}


@pytest.mark.parametrize("how", ["env", "option"])
@pytest.mark.parametrize("option", OPTIONS, ids=[o.env for o in OPTIONS])
def test_invalid_value_is_one_line_and_exit_2(
    service_factory: ServiceFactory, tmp_path: Path, option: Option, how: str
) -> None:
    value, companions = INVALID[option.env]
    backup_dir = tmp_path / "backups"
    env = service_env(None, backup_dir, REDIS_HOST="127.0.0.1", REDIS_PORT=1, **companions)
    args = ["run"]
    if how == "env":
        env[option.env] = value
    else:
        env.pop(option.env, None)
        args += [f"{option.flag}={value}"]
    result = service_factory.run_cli(args, env, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("redis-backup: error: "), result.stderr
    assert option.env in lines[0] or option.flag in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not backup_dir.exists(), "nothing is created before the configuration is valid"


def test_backup_dir_that_is_a_file_is_a_configuration_error(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    result = service_factory.run_cli(["run"], service_env(None, path, REDIS_HOST="127.0.0.1", REDIS_PORT=1))
    assert result.returncode == 2, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("redis-backup: ")]
    assert "BACKUP_DIR" in line and str(path) in line, line
