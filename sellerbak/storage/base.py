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

from sellerbak.errors import FormatError, ObjectNotFoundError, StorageError


class ObjectTooLargeError(FormatError):
    """An object is larger than any valid object of its kind can be. Raised before its bytes
    are read (from the listed or announced size) and also if a server sends more than it
    announced, so a planted huge object (or a key file linked to /dev/zero) costs no memory.
    A FormatError, since no well-formed repository holds such an object: callers that skip a
    damaged object (a bad key file) skip this one too."""


class NotAnObjectError(StorageError):
    """What lies under an object's name is not a plain object: on a local store a symbolic
    link, FIFO, device, socket or directory (or a symlinked parent directory). It is refused
    without being followed or opened for reading, so it can neither hang the run nor make it
    read someone else's file."""


def check_size(name: str, size: int, limit: int | None) -> None:
    """Raise ObjectTooLargeError if `size` bytes exceed `limit` (None: no limit)."""
    if limit is not None and size > limit:
        raise ObjectTooLargeError(f"object {name} is larger than the {limit} bytes an object "
                                  "of its kind may have; not read")


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


@dataclass(frozen=True)
class ObjectVersion:
    """One stored version of an object in a versioned bucket."""

    version_id: str
    modified: datetime
    size: int


@dataclass(frozen=True)
class HiddenObject:
    """An object whose newest version is a delete marker while older versions are still stored.

    sellerbak never leaves such a thing behind (it deletes every version of what it removes),
    so one is the trace of a plain DeleteObject by someone else: the object vanished from
    listings but can be brought back (sellerbak.repository.hidden)."""

    name: str
    #: when the (newest) delete marker was written
    hidden_at: datetime
    #: the versions still stored, newest first
    versions: tuple[ObjectVersion, ...]


class Store(ABC):
    """A place that holds named objects.

    Contract every backend keeps:
    - `put` never overwrites: if `name` exists it raises ObjectExistsError and leaves the old
      object as it was (S3: conditional write `If-None-Match: *`; local: link of a temp file).
    - A `put` that fails part-way leaves either nothing under `name` or the whole object.
    - `get` of a missing name raises ObjectNotFoundError.
    - `get(name, limit)` never reads (nor holds in memory) more than `limit` bytes: an object
      that is larger, or claims to be, raises ObjectTooLargeError before its body is read.
    - Only plain objects are read: anything else under a name (a symlink, FIFO, device or
      directory on a local store) raises NotAnObjectError naming it, and `list` reports such
      entries, without following them, so they fail loudly instead of hiding.
    - Transient failures are retried inside the backend; what escapes is a StorageError
      whose message is one line a person can act on (no secrets in it).
    """

    #: human-readable location, safe to print (no credentials)
    location: str

    @abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Write a new object; raise ObjectExistsError if it already exists."""

    @abstractmethod
    def get(self, name: str, limit: int | None = None) -> bytes:
        """Read a whole object of at most `limit` bytes. Every caller that knows how large a
        valid object of its kind can be passes that bound, since the object's size is the one
        thing a hostile store controls before anything is authenticated."""

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

    # -- versions (versioned S3 buckets); stores without them have nothing hidden ----------

    def hidden_objects(self, prefix: str) -> list[HiddenObject]:
        """Objects under `prefix` hidden behind a delete marker (see HiddenObject). A store
        without versions cannot hide anything this way: always empty here."""
        return []

    def get_version(self, name: str, version_id: str) -> bytes:
        """Read one stored version of an object (only stores with versions have any)."""
        raise ObjectNotFoundError(f"object {name} has no stored versions in {self.location}")

    def extend_version_retention(self, versions: Iterable[tuple[str, str]],
                                 until: datetime | None = None) -> int:
        """`extend_retention` for given (name, version id) pairs: hidden versions that are
        still needed stay protected like the live set. A no-op without Object Lock."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and thread pools."""
