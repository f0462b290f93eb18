"""Exception types, each carrying the process exit code the CLI maps it to.

The exit codes follow restic's so that scripts written for one work with the other:
0 ok; 1 failed; 2 bad usage or config; 3 snapshot stored but a source was incomplete;
10 no repository; 11 lock held; 12 wrong passphrase.
"""

from __future__ import annotations

from datetime import datetime

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_NO_REPOSITORY = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSPHRASE = 12


class SellerbakError(Exception):
    """Base of every error the CLI reports as one line; `exit_code` is the process status."""

    exit_code = EXIT_FAILED


class ConfigError(SellerbakError):
    """The configuration file or a command-line value is wrong; the message names the key."""

    exit_code = EXIT_USAGE


class UsageError(SellerbakError):
    exit_code = EXIT_USAGE


class NoRepositoryError(SellerbakError):
    exit_code = EXIT_NO_REPOSITORY


class RepositoryExistsError(SellerbakError):
    exit_code = EXIT_FAILED


class LockHeldError(SellerbakError):
    exit_code = EXIT_LOCKED


class WrongPassphraseError(SellerbakError):
    exit_code = EXIT_WRONG_PASSPHRASE


class IntegrityError(SellerbakError):
    """Stored data failed authentication or verification (tampered, truncated, swapped, missing)."""

    exit_code = EXIT_FAILED


class FormatError(IntegrityError):
    """Bytes that do not parse as the documented repository format."""


class StorageError(SellerbakError):
    """The storage backend failed after retries (server down, permission denied, disk full)."""

    exit_code = EXIT_FAILED


class ObjectNotFoundError(StorageError):
    """A named object does not exist in the store."""


class ObjectExistsError(StorageError):
    """An object that must be written once already exists; nothing was overwritten."""


class RetentionError(StorageError):
    """An object cannot be deleted yet: S3 Object Lock retention (or a legal hold) protects it.

    Raised by `Store.delete` instead of hiding the object behind a delete marker, so a caller
    such as prune can leave the object, count it and delete it in a later run. `until` is when
    the retention ends (None for a legal hold, which has no end date)."""

    def __init__(self, message: str, name: str = "", until: datetime | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.until = until


class SourceError(SellerbakError):
    """A source (exporter) failed; nothing was stored for it."""

    exit_code = EXIT_FAILED


class SnapshotNotFoundError(SellerbakError):
    exit_code = EXIT_FAILED
