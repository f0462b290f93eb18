"""The Store interface: a flat namespace of immutable, named byte objects.

The repository code never sees S3 or file paths, only this interface, so every backend gets the
same guarantees checked by one contract test suite (tests/test_storage_contract.py).

Names are `/`-separated relative paths such as `config`, `keys/<id>`, `data/ab/<id>`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


class Store(ABC):
    """A place that holds named objects.

    Contract every backend keeps:
    - `put` never overwrites: if `name` exists it raises ObjectExistsError and leaves the old
      object as it was (S3: conditional write `If-None-Match: *`; local: link of a temp file).
    - A `put` that fails part-way leaves either nothing under `name` or the whole object.
    - `get` of a missing name raises ObjectNotFoundError.
    - Transient failures are retried inside the backend; what escapes is a StorageError
      whose message is one line a person can act on (no secrets in it).
    """

    #: human-readable location, safe to print (no credentials)
    location: str

    @abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Write a new object; raise ObjectExistsError if it already exists."""

    @abstractmethod
    def get(self, name: str) -> bytes:
        """Read a whole object."""

    @abstractmethod
    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Read `length` bytes at `offset`; a negative offset counts from the end
        (`get_range(n, -8, 8)` reads the last 8 bytes). Returns fewer bytes only if the object
        is shorter."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """All objects whose name starts with `prefix` (e.g. `snapshots/`), in no fixed order."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove an object; removing a missing object is not an error. A store with Object
        Lock raises RetentionError (and removes nothing) while the object's retention lasts."""

    # -- retention (S3 Object Lock); stores without it keep nothing beyond the objects ----

    #: the retention every new object gets, or None (sellerbak.storage.object_lock.ObjectLock)
    object_lock: Any = None

    def retention_until(self, name: str) -> datetime | None:
        """When the object's retention ends; None if it has none (always, on this store)."""
        return None

    def extend_retention(self, names: Iterable[str], until: datetime | None = None) -> int:
        """Make each object retained at least until `until` (default: now + the configured
        period); returns how many were extended. Retention is never shortened. A no-op on
        stores without Object Lock, so callers need not ask which kind of store they have."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and thread pools."""
