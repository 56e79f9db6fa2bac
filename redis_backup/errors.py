"""Errors that end up as one line for the user; each says what is wrong and what to do."""

from __future__ import annotations


class BackupError(Exception):
    """Base class of every error the package raises: str(e) is the one line shown to the user.

    `settings` names the settings (as the CLI's table spells them, lower case: `redis_host`) that the
    user should check; the layers below the CLI never name environment variables or options, and the
    CLI adds them, with their values, to what it prints and logs."""

    exit_code = 1
    settings: tuple[str, ...] = ()

    def __init__(self, *args: object, settings: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        if settings:
            self.settings = settings


class ConfigError(BackupError):
    exit_code = 2


class FatalReplicationError(BackupError):
    """The primary refused us in a way retrying cannot fix (wrong password, missing ACL permission)."""

    exit_code = 2


class RetryableError(BackupError):
    """The attempt failed but a later one may succeed (connection lost, primary loading, no master link)."""


class ProtocolError(RetryableError):
    """The peer sent bytes that are not the replication protocol; nothing of them is stored."""

    def __str__(self) -> str:
        return f"protocol error: {super().__str__()}"


class StorageError(BackupError):
    """A file could not be written or read (disk full, permissions).

    About one file of a chain, `chain` and `file` name it and the message begins `CHAIN/FILE: `; `what`
    is the rest. Callers (verify's report) read the attributes, never the message text."""

    def __init__(self, what: str, *, chain: str | None = None, file: str | None = None) -> None:
        where = "/".join(p for p in (chain, file) if p)
        super().__init__(f"{where}: {what}" if where else what)
        self.what, self.chain, self.file = what, chain, file
