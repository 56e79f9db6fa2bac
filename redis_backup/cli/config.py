"""Configuration: every setting is an environment variable and a command-line option (options win).

The table below is the single source for the CLI, the validation and the README's configuration table.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from redis_backup.chain.retention import Policy
from redis_backup.chain.writer import Limits
from redis_backup.errors import ConfigError
from redis_backup.service.settings import RemoteSettings, ServiceSettings
from redis_backup.store.base import is_component
from redis_backup.store.codec import Codec, Key, load_key
from redis_backup.wire.client import ConnectionOptions

if TYPE_CHECKING:
    from redis_backup.store.s3 import S3Settings


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(v: str) -> int:
        n = int(v.strip().replace("_", ""))
        if n < lo or (hi is not None and n > hi):
            raise ValueError
        return n

    parse.__doc__ = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
    return parse


def _float(lo: float, *, strict: bool = False) -> Callable[[str], float]:
    def parse(v: str) -> float:
        x = float(v)
        if x != x or x < lo or (strict and x == lo) or x == float("inf"):
            raise ValueError
        return x

    parse.__doc__ = f"a number {'>' if strict else '>='} {lo:g}"
    return parse


def _bool(v: str) -> bool:
    """true or false"""
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError


def _str(v: str) -> str:
    """a string"""
    return v


def _nonempty(v: str) -> str:
    """a non-empty string"""
    if not v.strip():
        raise ValueError
    return v


def _bytes_or_auto(v: str) -> int | None:
    """auto or a number of bytes >= 0"""
    s = v.strip().lower()
    if s == "auto":
        return None
    n = int(s.replace("_", ""))
    if n < 0:
        raise ValueError
    return n


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v.lower() not in choices:
            raise ValueError
        return v.lower()

    parse.__doc__ = "one of " + ", ".join(choices)
    return parse


@dataclass(frozen=True)
class Option:
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    groups: frozenset[str]
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")

    @property
    def attr(self) -> str:
        return self.env.lower()


def _opt(env: str, parse: Callable[[str], Any], default: Any, help: str, *groups: str, secret: bool = False) -> Option:
    return Option(env, parse, default, help, frozenset(groups), secret)


# Where the library has a default of its own, the table takes it from there: each is written once.
_CONN = ConnectionOptions()
_LIMITS = Limits()
_RETENTION = Policy()
# Free in Prometheus's default port allocations (docs/OPERATIONS.md, "The port")
DEFAULT_METRICS_PORT = 10379

OPTIONS: tuple[Option, ...] = (
    _opt("REDIS_HOST", _nonempty, _CONN.host, "primary host name, IPv4 or IPv6 address", "redis"),
    _opt("REDIS_PORT", _int(1, 65535), _CONN.port, "primary port", "redis"),
    _opt("REDIS_USERNAME", _str, None, "ACL user (needs +psync +replconf +ping)", "redis"),
    _opt(
        "REDIS_PASSWORD", _str, None,
        "password (of the ACL user, or requirepass); prefer the environment variable, since an option "
        "shows in the process list", "redis", secret=True,
    ),
    _opt("REDIS_TLS_ENABLED", _bool, False, "connect with TLS", "redis"),
    _opt("REDIS_TLS_CA_CERT", _str, None, "CA certificate file that signed the server's certificate", "redis"),
    _opt("REDIS_TLS_CERT", _str, None, "client certificate file (mutual TLS)", "redis"),
    _opt("REDIS_TLS_KEY", _str, None, "client private key file (mutual TLS)", "redis"),
    _opt("REDIS_TLS_INSECURE", _bool, False, "do not verify the server certificate (logs a warning)", "redis"),
    _opt("CONNECT_TIMEOUT_SECONDS", _float(0, strict=True), _CONN.connect_timeout,
         "connect and TLS handshake timeout", "redis"),
    _opt("READ_TIMEOUT_SECONDS", _float(0, strict=True), _CONN.read_timeout,
         "silence after which the link is dead", "redis"),
    _opt(
        "SNAPSHOT_START_TIMEOUT_SECONDS", _float(0, strict=True), _CONN.snapshot_start_timeout,
        "longest wait from connecting to the start of the snapshot (keepalive newlines do not extend it)", "run",
    ),
    _opt("BACKUP_DIR", _nonempty, "/data", "directory holding one directory per backup chain", "storage"),
    _opt(
        "MIN_FREE_BYTES", _bytes_or_auto, "auto",
        "free space a snapshot leaves in BACKUP_DIR: a bigger one is refused or stopped and discarded "
        "(auto: 1%% of the volume, at most 64 MiB; 0: none)", "run",
    ),
    _opt("SEGMENT_MAX_BYTES", _int(1024), _LIMITS.segment_max_bytes, "rotate incr files at this size", "run"),
    _opt("SEGMENT_MAX_SECONDS", _float(0, strict=True), _LIMITS.segment_max_seconds,
         "rotate incr files after this age (if written)", "run"),
    _opt("RETRY_DELAY_SECONDS", _float(0), 5.0, "first retry delay; doubles per failure", "run"),
    _opt("MAX_RETRY_DELAY_SECONDS", _float(0), 300.0, "largest retry delay", "run"),
    _opt("MAX_RETRIES", _int(0), 5, "consecutive failed attempts before exiting (0: forever)", "run"),
    _opt(
        "LAG_TOLERANCE_SECONDS", _float(0, strict=True), 0.25,
        "how late a command may arrive for the second it was executed in to be restorable exactly", "run",
    ),
    _opt(
        "ALLOW_OTHER_PRIMARY", _bool, False,
        "continue in a BACKUP_DIR whose newest chain was taken from another primary address", "run",
    ),
    _opt("VERIFY_INTERVAL_HOURS", _float(0), 0.0, "deep-verify the newest closed chain this often (0: off)", "run"),
    _opt(
        "SNAPSHOT_INTERVAL_HOURS", _float(0), 24.0,
        "begin a new chain (a fresh snapshot, taken beside the stream, no gap) once the open one is this "
        "old; fractions allowed (0: only when asked, by SIGUSR1 or snapshot-now)", "run",
    ),
    _opt("SHUTDOWN_TIMEOUT_SECONDS", _float(0), 30.0,
         "after SIGTERM/SIGINT, how long pending uploads may take before the service exits anyway", "run"),
    _opt("S3_BUCKET", _str, None, "ship every chain to this bucket (unset: local only)", "s3"),
    _opt("S3_PREFIX", _str, "redis-backup/", "key prefix of this backup in the bucket", "s3"),
    _opt("AWS_REGION", _nonempty, "us-east-1", "the bucket's region", "s3"),
    _opt("S3_ENDPOINT_URL", _str, None, "endpoint of an S3-compatible store (MinIO, Ceph, R2)", "s3"),
    _opt("S3_SYNC_SECONDS", _float(0, strict=True), 10.0,
         "longest the bucket lags the primary under steady writes (one PUT of the open file per period)", "upload"),
    _opt("ACK_AFTER", _choice("local", "s3"), "local",
         "what REPLCONF ACK reports: stored on local disk, or in the bucket (WAIT 1 then means in S3)", "run"),
    _opt("COMPRESSION", _choice("zstd", "none"), "zstd", "compression of uploaded objects", "upload"),
    _opt("COMPRESSION_LEVEL", _int(1, 22), 3, "zstd level", "upload"),
    _opt("ENCRYPTION_KEY_FILE", _str, None,
         "32-byte key (raw or base64): every object is encrypted client-side (AES-256-GCM)", "s3"),
    _opt("S3_SSE", _choice("aes256", "aws:kms"), None, "also request server-side encryption (AES256 or aws:kms)",
         "upload"),
    _opt("S3_SSE_KMS_KEY_ID", _str, None, "KMS key for S3_SSE=aws:kms", "upload"),
    _opt("S3_RESTORE_PARALLELISM", _int(1, 64), 8, "objects downloaded at once when reading the bucket", "s3"),
    # retention (chain.retention)
    _opt("BACKUP_RETENTION_HOURS", _float(0, strict=True), _RETENTION.retention_hours,
         "keep every chain needed to restore any second of this many last hours", "retention"),
    _opt("BACKUP_MAX_FILES", _int(0), _RETENTION.max_chains,
         "keep at most this many chains (0: no limit); the open chain and the newest closed one always stay",
         "retention"),
    _opt("LOCAL_RETENTION_HOURS", _float(0, strict=True), None,
         "with S3_BUCKET: keep chains locally for this many hours only, once the bucket holds them "
         "(default: BACKUP_RETENTION_HOURS; not more)", "retention"),
    _opt(
        "REDIS_SERVER_BIN", _nonempty, "redis-server",
        "the scratch redis-server (a path, or a name on PATH) that restore --format rdb, restore --into and "
        "verify --deep (and the service's VERIFY_INTERVAL_HOURS) load a chain in: it must read the "
        "snapshot's RDB version", "server",
    ),
    _opt("METRICS_PORT", _int(0, 65535), DEFAULT_METRICS_PORT,
         "port of /metrics, /healthz, /readyz and /status (0: off)", "metrics"),
    _opt("METRICS_HOST", _nonempty, "0.0.0.0", "address the metrics port listens on", "metrics"),
    _opt("READY_MAX_UPLOAD_LAG_SECONDS", _float(0, strict=True), 300.0,
         "with S3_BUCKET: /readyz fails while the upload lag is longer than this", "metrics"),
    _opt("LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info", "log level", "log"),
    _opt("LOG_FORMAT", _choice("text", "json"), "text", "log format", "log"),
)


@dataclass
class Config:
    """Every setting, resolved; the defaults are those of OPTIONS."""

    redis_host: str
    redis_port: int
    redis_username: str | None
    redis_password: str | None = field(repr=False)
    redis_tls_enabled: bool
    redis_tls_ca_cert: str | None
    redis_tls_cert: str | None
    redis_tls_key: str | None
    redis_tls_insecure: bool
    connect_timeout_seconds: float
    read_timeout_seconds: float
    snapshot_start_timeout_seconds: float
    backup_dir: str
    min_free_bytes: int | None
    segment_max_bytes: int
    segment_max_seconds: float
    retry_delay_seconds: float
    max_retry_delay_seconds: float
    max_retries: int
    lag_tolerance_seconds: float
    allow_other_primary: bool
    verify_interval_hours: float
    snapshot_interval_hours: float
    shutdown_timeout_seconds: float
    s3_bucket: str | None
    s3_prefix: str
    aws_region: str
    s3_endpoint_url: str | None
    s3_sync_seconds: float
    ack_after: str
    compression: str
    compression_level: int
    encryption_key_file: str | None
    s3_sse: str | None
    s3_sse_kms_key_id: str | None
    s3_restore_parallelism: int
    backup_retention_hours: float
    backup_max_files: int
    local_retention_hours: float | None
    redis_server_bin: str
    metrics_port: int
    metrics_host: str
    ready_max_upload_lag_seconds: float
    log_level: str
    log_format: str


    def connection(self) -> ConnectionOptions:
        return ConnectionOptions(
            host=self.redis_host,
            port=self.redis_port,
            username=self.redis_username,
            password=self.redis_password,
            tls=self.redis_tls_enabled,
            tls_ca_cert=self.redis_tls_ca_cert,
            tls_cert=self.redis_tls_cert,
            tls_key=self.redis_tls_key,
            tls_insecure=self.redis_tls_insecure,
            connect_timeout=self.connect_timeout_seconds,
            read_timeout=self.read_timeout_seconds,
            snapshot_start_timeout=self.snapshot_start_timeout_seconds,
        )

    def service_settings(self) -> ServiceSettings:
        return ServiceSettings(
            connection=self.connection(),
            backup_dir=self.backup_dir,
            limits=Limits(self.segment_max_bytes, self.segment_max_seconds),
            min_free_bytes=self.min_free_bytes,
            retry_delay_seconds=self.retry_delay_seconds,
            max_retry_delay_seconds=self.max_retry_delay_seconds,
            max_retries=self.max_retries,
            lag_tolerance_seconds=self.lag_tolerance_seconds,
            allow_other_primary=self.allow_other_primary,
            verify_interval_hours=self.verify_interval_hours,
            remote=self.remote_settings(),
            snapshot_interval_hours=self.snapshot_interval_hours,
            retention=self.retention_policy(),
            redis_server_bin=self.redis_server_bin,
            shutdown_timeout_seconds=self.shutdown_timeout_seconds,
            metrics_host=self.metrics_host,
            metrics_port=self.metrics_port,
            ready_max_upload_lag_seconds=self.ready_max_upload_lag_seconds,
        )

    def retention_policy(self) -> Policy:
        return Policy(self.backup_retention_hours, self.backup_max_files, self.local_retention_hours)

    def s3_settings(self) -> S3Settings | None:
        if not self.s3_bucket:
            return None
        from redis_backup.store.s3 import S3Settings

        sses: dict[str, Literal["AES256", "aws:kms"]] = {"aes256": "AES256", "aws:kms": "aws:kms"}
        sse = sses.get(self.s3_sse or "")
        return S3Settings(bucket=self.s3_bucket, prefix=self.s3_prefix, region=self.aws_region,
                          endpoint_url=self.s3_endpoint_url or None, sse=sse,
                          sse_kms_key_id=self.s3_sse_kms_key_id or None)  # fmt: skip

    def key(self) -> Key | None:
        return load_key(self.encryption_key_file) if self.encryption_key_file else None

    def codec(self) -> Codec:
        compression: Literal["zstd", "none"] = "zstd" if self.compression == "zstd" else "none"
        return Codec(compression, self.compression_level, self.key())

    def remote_settings(self) -> RemoteSettings | None:
        s3 = self.s3_settings()
        if s3 is None:
            return None
        return RemoteSettings(s3, self.codec(), self.s3_sync_seconds, self.ack_after == "s3")


assert {o.attr for o in OPTIONS} == {f.name for f in fields(Config)}, "OPTIONS and Config disagree"


def add_options(parser: argparse.ArgumentParser, groups: Iterable[str]) -> None:
    wanted = set(groups)
    for o in OPTIONS:
        if o.groups & wanted:
            shown = "(not shown)" if o.secret or o.default is None else o.default
            parser.add_argument(
                o.flag, dest=o.attr, default=None, metavar=o.env,
                help=f"{o.help} [env {o.env}; default {shown}]",
            )


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Options win over the environment, which wins over defaults; any bad value is a ConfigError.

    Only the settings the command takes (those add_options put on its parser) are read, so that a
    variable meant for the service cannot break `list` or `restore`."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for o in OPTIONS:
        if not hasattr(args, o.attr):
            continue
        raw = getattr(args, o.attr)
        source = o.flag
        if raw is None:
            raw = env.get(o.env)
            source = o.env
        if raw is None or (raw == "" and o.default is None):
            continue
        try:
            values[o.attr] = o.parse(raw)
        except ValueError:
            shown = "***" if o.secret else repr(raw)
            raise ConfigError(f"invalid value for {source}: {shown} (expected {o.parse.__doc__})") from None
    for o in OPTIONS:  # what the command does not take, or nobody set
        if o.attr not in values:
            values[o.attr] = o.parse(o.default) if isinstance(o.default, str) else o.default
    cfg = Config(**values)
    if cfg.redis_tls_enabled:
        for attr in ("redis_tls_ca_cert", "redis_tls_cert", "redis_tls_key"):
            path = getattr(cfg, attr)
            if path and not os.path.isfile(path):
                raise ConfigError(f"{attr.upper()}: no such file {path!r}")
        if bool(cfg.redis_tls_cert) != bool(cfg.redis_tls_key):
            raise ConfigError("REDIS_TLS_CERT and REDIS_TLS_KEY go together: set both for mutual TLS, or neither")
    if cfg.max_retry_delay_seconds < cfg.retry_delay_seconds:
        raise ConfigError("MAX_RETRY_DELAY_SECONDS must not be smaller than RETRY_DELAY_SECONDS")
    if cfg.s3_bucket and not _BUCKET.fullmatch(cfg.s3_bucket):
        raise ConfigError(f"invalid S3_BUCKET {cfg.s3_bucket!r}: a bucket name (3 to 63 lowercase letters, digits, "
                          "'.' and '-')")  # fmt: skip
    if cfg.s3_endpoint_url and not re.match(r"https?://[^/\s]+", cfg.s3_endpoint_url):
        raise ConfigError(f"invalid S3_ENDPOINT_URL {cfg.s3_endpoint_url!r}: a URL like https://minio.internal:9000")
    if cfg.encryption_key_file:
        load_key(cfg.encryption_key_file)  # a key that cannot be used is found before anything starts
    if cfg.ack_after == "s3" and not cfg.s3_bucket:
        raise ConfigError("ACK_AFTER=s3 needs S3_BUCKET: there is no bucket to wait for")
    if cfg.s3_sse_kms_key_id and cfg.s3_sse != "aws:kms":
        raise ConfigError("S3_SSE_KMS_KEY_ID is set but S3_SSE is not aws:kms")
    if cfg.s3_prefix and not all(is_component(c) for c in cfg.s3_prefix.removesuffix("/").split("/")):
        raise ConfigError(f"invalid S3_PREFIX {cfg.s3_prefix!r}: a key prefix like 'redis-backup/' (components of "
                          "letters, digits, '.', '_', '-', not starting with '.'; no leading '/')")  # fmt: skip
    if cfg.local_retention_hours is not None and cfg.local_retention_hours > cfg.backup_retention_hours:
        raise ConfigError(f"LOCAL_RETENTION_HOURS={cfg.local_retention_hours:g} is more than BACKUP_RETENTION_HOURS="
                          f"{cfg.backup_retention_hours:g}: the bucket would have pruned what is still local, and "
                          "the uploader ship it again; keep LOCAL_RETENTION_HOURS at or below it")  # fmt: skip
    if cfg.redis_username and cfg.redis_password is None:
        raise ConfigError("REDIS_USERNAME is set but REDIS_PASSWORD is not: an ACL user needs its password")
    return cfg
