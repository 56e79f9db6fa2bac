"""What the service needs to know, as its own type: the CLI builds it from options and the environment
(where each default is written, once), so nothing in this layer reads either."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis_backup.chain.retention import Policy
from redis_backup.chain.writer import Limits
from redis_backup.store.codec import Codec

if TYPE_CHECKING:  # boto3 is imported only where a bucket is used
    from redis_backup.store.s3 import S3Settings
from redis_backup.wire.client import ConnectionOptions


@dataclass(frozen=True)
class RemoteSettings:
    """Where and how chains are shipped (S3_BUCKET set)."""

    s3: S3Settings
    codec: Codec
    sync_seconds: float
    ack_after_s3: bool  # REPLCONF ACK reports what is in the bucket, not only on disk


@dataclass(frozen=True)
class ServiceSettings:
    connection: ConnectionOptions
    backup_dir: str
    limits: Limits
    min_free_bytes: int | None  # None: the automatic reserve (store.diskspace)
    retry_delay_seconds: float
    max_retry_delay_seconds: float
    max_retries: int  # consecutive failed attempts before giving up; 0: never
    lag_tolerance_seconds: float
    allow_other_primary: bool
    verify_interval_hours: float  # 0: off
    remote: RemoteSettings | None = None
    snapshot_interval_hours: float = 24.0  # a new chain (rechain.py) once the open one is this old; 0: on request only
    # retention (chain.retention): BACKUP_RETENTION_HOURS, BACKUP_MAX_FILES, LOCAL_RETENTION_HOURS
    retention: Policy = field(default_factory=Policy)
    redis_server_bin: str = "redis-server"  # the scratch server of the periodic deep verify
    shutdown_timeout_seconds: float = 30.0  # after SIGTERM/SIGINT: how long pending uploads may take
    # the HTTP endpoints (service/endpoints.py); port 0: none
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 0
    ready_max_upload_lag_seconds: float = 300.0
