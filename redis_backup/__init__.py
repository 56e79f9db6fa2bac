"""redis-backup: continuous, point-in-time-restorable backups of a Redis primary."""

__version__ = "0.1.0"
