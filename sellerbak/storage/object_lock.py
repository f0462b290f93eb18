"""S3 Object Lock for the S3 store: objects carry a retention date, so that whoever holds the
storage credentials (with COMPLIANCE mode: anybody at all) cannot destroy a backup before it.

Why each rule is what it is:

- Retention is set on every write (ObjectLockMode and ObjectLockRetainUntilDate on PutObject and
  on CreateMultipartUpload), not left to a bucket default rule, so the period is the one in
  sellerbak's configuration and lock objects can be left out.
- `locks/` objects get no retention: they are deleted seconds after use, and under retention
  every run would leave one behind for the whole period.
- Object Lock needs a versioned bucket. There a plain DeleteObject only adds a delete marker: the
  object disappears from listings while its locked version stays and is still billed. So
  `delete` works on versions: it reads the retention of every version first and, if one is still
  retained, raises RetentionError and removes nothing (prune leaves the object, counts it and
  tries again in a later run, as restic and kopia do). Versions whose retention has ended are
  deleted by VersionId, oldest first and delete markers last, so an interrupted delete never
  brings an old version back into view.
- A versioned bucket without Object Lock gets the same version-wise delete (`bucket_versioned`),
  so sellerbak never leaves a delete marker over stored versions: one found there was written
  by somebody else, who hid the object (`hidden_objects`, sellerbak.repository.hidden).
- Kept snapshots keep needing old packs after those packs' retention has run out, so prune
  extends the retention of everything still needed (`extend_retention`, kopia's "extend object
  locks"). Every needed object stays protected as long as prune runs more often than the
  retention period.
- An Object Lock write must carry a checksum header (Content-MD5 or x-amz-checksum-*). botocore
  sends CRC32 by default, but not when AWS_REQUEST_CHECKSUM_CALCULATION=when_required, so we ask
  for CRC32 explicitly.
- Retention dates are computed from this machine's clock; a clock far in the past would shorten
  the protection by the same amount.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.exceptions as bce

from sellerbak.errors import ConfigError, ObjectNotFoundError, RetentionError
from sellerbak.storage.base import HiddenObject, ObjectVersion

log = logging.getLogger(__name__)

T = TypeVar("T")

MODES = ("GOVERNANCE", "COMPLIANCE")
#: names that never get retention: deleted in normal operation right after use
EXEMPT_PREFIXES = ("locks/",)
#: parallel requests when extending retention of many objects
EXTEND_WORKERS = 8

_NO_LOCK_CONFIG = frozenset(
    {"ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"}
)
_UNSUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed", "XNotImplemented"})
_GONE = frozenset({"NoSuchKey", "NoSuchVersion", "404", "NotFound"})


@dataclass(frozen=True)
class ObjectLock:
    """The retention every new repository object gets."""

    mode: str
    period: timedelta
    exempt: tuple[str, ...] = EXEMPT_PREFIXES

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Object Lock mode must be one of {', '.join(MODES)}")
        if self.period <= timedelta(0):
            raise ValueError("Object Lock retention period must be positive")

    @classmethod
    def from_config(cls, value: dict[str, Any] | None) -> ObjectLock | None:
        """From `repository.object_lock` as sellerbak.config parses it ({mode, days})."""
        if not value:
            return None
        return cls(str(value["mode"]).upper(), timedelta(days=int(value["days"])))

    def applies_to(self, name: str) -> bool:
        return not name.startswith(self.exempt)

    def until(self, now: datetime | None = None) -> datetime:
        """now + period, rounded up to a whole second (S3 keeps seconds)."""
        return _ceil_second((now or datetime.now(UTC)) + self.period)

    def put_args(self, now: datetime | None = None) -> dict[str, Any]:
        """Extra PutObject / CreateMultipartUpload parameters for a new object."""
        return {
            "ObjectLockMode": self.mode,
            "ObjectLockRetainUntilDate": self.until(now),
            "ChecksumAlgorithm": "CRC32",
        }


def _ceil_second(when: datetime) -> datetime:
    whole = when.replace(microsecond=0)
    return whole if whole == when else whole + timedelta(seconds=1)


def _retention_target(lock: ObjectLock, until: datetime | None) -> datetime:
    """The retain-until date an extension asks for: `until` rounded up to the second (S3 keeps
    whole seconds), or the configured period from now."""
    if until is not None and until.tzinfo is None:
        raise ValueError("retention extensions need an aware datetime")
    return _ceil_second(until) if until is not None else lock.until()


def _code(exc: bce.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: bce.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _retained_until(head: dict[str, Any]) -> datetime | None:
    until = head.get("ObjectLockRetainUntilDate")
    if not isinstance(until, datetime):
        return None
    return until.astimezone(UTC) if until.tzinfo else until.replace(tzinfo=UTC)


def _aware(when: Any) -> datetime:
    """A listing's LastModified as an aware UTC datetime (the epoch if a server sent none)."""
    if not isinstance(when, datetime):
        return datetime.fromtimestamp(0, UTC)
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def _legal_hold(head: dict[str, Any]) -> bool:
    return head.get("ObjectLockLegalHoldStatus") == "ON"


class ObjectLockSupport:
    """The Object Lock half of S3Store (mixed into it; see the module docstring)."""

    object_lock: ObjectLock | None
    client: Any
    bucket: str
    location: str
    endpoint: str
    _base: str

    if TYPE_CHECKING:

        def _key(self, name: str) -> str: ...

        def _run(self, action: str, name: str, fn: Callable[[], T]) -> T: ...

    # -- writes -----------------------------------------------------------------------------

    def lock_put_args(self, name: str) -> dict[str, Any]:
        """Extra parameters for writing `name`: retention unless the name is exempt."""
        if self.object_lock is None or not self.object_lock.applies_to(name):
            return {}
        return self.object_lock.put_args()

    def lock_put_failed(self, exc: bce.ClientError) -> None:
        """Called when a write with lock settings was refused as a bad request: the usual
        cause is a bucket without Object Lock (AWS: InvalidRequest), which deserves a clearer
        message than the server's. Returns if the bucket is fine (the caller re-raises)."""
        if self.object_lock is not None and _status(exc) == 400:
            self.check_object_lock()

    # -- the bucket -------------------------------------------------------------------------

    def check_object_lock(self) -> None:
        """ConfigError unless the bucket has Object Lock enabled (for `init` and after a
        refused write). Object Lock can only be switched on for a bucket, never off again."""

        def attempt() -> dict[str, Any] | None:
            try:
                return self.client.get_object_lock_configuration(Bucket=self.bucket)
            except bce.ClientError as exc:
                if _code(exc) in _NO_LOCK_CONFIG:
                    return None
                if _code(exc) in _UNSUPPORTED or _status(exc) in (405, 501):
                    raise ConfigError(
                        f"repository.object_lock is set, but the S3 service at {self.endpoint} "
                        "does not support Object Lock; use a service that does or remove "
                        "repository.object_lock"
                    ) from None
                raise

        resp = self._run("read the Object Lock configuration of bucket", self.bucket, attempt)
        config = (resp or {}).get("ObjectLockConfiguration") or {}
        if config.get("ObjectLockEnabled") != "Enabled":
            raise ConfigError(
                f"repository.object_lock is set, but bucket {self.bucket} at {self.endpoint} "
                "does not have Object Lock enabled; use a new bucket (sellerbak init creates "
                "one with Object Lock), enable Object Lock on this one, or remove "
                "repository.object_lock"
            )
        rule = config.get("Rule") or {}
        if rule.get("DefaultRetention"):
            log.warning(
                "bucket %s has a default retention rule; sellerbak sets retention per object, "
                "and the default also catches lock objects, which then stay hidden until it ends",
                self.bucket,
            )

    # -- reading and extending retention ----------------------------------------------------

    def retention_until(self, name: str) -> datetime | None:
        """When the current version of `name` stops being retained (None: no retention)."""
        key = self._key(name)
        head = self._run(
            "read retention of", name, lambda: self.client.head_object(Bucket=self.bucket, Key=key)
        )
        return _retained_until(head)

    def extend_retention(self, names: Iterable[str], until: datetime | None = None) -> int:
        """Retain every named object at least until `until` (default: now + the configured
        period). Objects already retained that long are left alone (retention can only grow),
        a COMPLIANCE object stays COMPLIANCE, exempt names are skipped, and a missing object
        is logged and skipped (`check` reports missing objects). Returns how many changed."""
        lock = self.object_lock
        if lock is None:
            return 0
        target = _retention_target(lock, until)
        todo = [n for n in dict.fromkeys(names) if lock.applies_to(n)]
        if not todo:
            return 0

        def one(name: str) -> bool:
            key = self._key(name)
            try:
                head = self._run(
                    "read retention of",
                    name,
                    lambda: self.client.head_object(Bucket=self.bucket, Key=key),
                )
            except ObjectNotFoundError:
                log.warning("cannot extend retention of %s: it is missing", name)
                return False
            return self._retain(name, key, head, target, lock)

        with ThreadPoolExecutor(min(EXTEND_WORKERS, len(todo))) as pool:
            return sum(pool.map(one, todo))

    def _retain(
        self, name: str, key: str, head: dict[str, Any], target: datetime, lock: ObjectLock
    ) -> bool:
        """Lengthen the retention of the version `head` describes to `target` (never shorten
        it, keep COMPLIANCE); True if it changed."""
        current = _retained_until(head)
        if current is not None and current >= target:
            return False
        mode = "COMPLIANCE" if head.get("ObjectLockMode") == "COMPLIANCE" else lock.mode
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Retention": {"Mode": mode, "RetainUntilDate": target},
            "ChecksumAlgorithm": "CRC32",
        }
        if head.get("VersionId"):
            kwargs["VersionId"] = head["VersionId"]  # exactly the version we looked at
        self._run(
            "extend retention of", name, lambda: self.client.put_object_retention(**kwargs)
        )
        return True

    def extend_version_retention(
        self, versions: Iterable[tuple[str, str]], until: datetime | None = None
    ) -> int:
        """`extend_retention` for named versions (name, version id): a hidden object has no
        current version, yet its stored one may still be needed and must stay protected."""
        lock = self.object_lock
        if lock is None:
            return 0
        target = _retention_target(lock, until)
        todo = [(n, v) for n, v in dict.fromkeys(versions) if lock.applies_to(n)]
        if not todo:
            return 0

        def one(item: tuple[str, str]) -> bool:
            name, vid = item
            key = self._key(name)
            head = self._head_version(name, key, vid)
            if head is None:
                log.warning("cannot extend retention of a version of %s: it is gone", name)
                return False
            # never the current version: for a hidden object that is the delete marker
            return self._retain(name, key, {**head, "VersionId": vid}, target, lock)

        with ThreadPoolExecutor(min(EXTEND_WORKERS, len(todo))) as pool:
            return sum(pool.map(one, todo))

    # -- versions: is the bucket versioned, and what is hidden behind delete markers -------

    def bucket_versioned(self) -> bool:
        """Whether the bucket keeps versions (Enabled or Suspended). There a plain
        DeleteObject only hides an object behind a delete marker, so `delete` removes every
        version instead: a delete marker over older versions is then never sellerbak's own,
        which is how `check` tells an attacker's delete apart. Asked once per store."""
        known = getattr(self, "_versioned", None)
        if known is None:
            known = self.object_lock is not None or self._read_versioning()
            self._versioned = known
        return known

    def _read_versioning(self) -> bool:
        def attempt() -> bool:
            try:
                status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            except bce.ClientError as exc:
                if _code(exc) in _UNSUPPORTED or _status(exc) in (403, 405, 501):
                    log.debug("cannot read the versioning state of bucket %s", self.bucket)
                    return False  # cannot tell: delete as on an unversioned bucket
                raise
            return status in ("Enabled", "Suspended")

        return self._run("read the versioning state of bucket", self.bucket, attempt)

    def hidden_objects(self, prefix: str) -> list[HiddenObject]:
        """Objects under `prefix` whose newest version is a delete marker while older versions
        are stored (one ListObjectVersions listing). Lock objects are left out: hiding them
        is how a bucket default retention makes sellerbak release a lock. A service without
        ListObjectVersions has nothing to show: empty."""
        full = self._base + prefix
        stored: dict[str, list[ObjectVersion]] = {}
        marked: dict[str, datetime] = {}
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
        while True:
            page = self._run("list versions under", full or "/", self._version_lister(params))
            if page is None:
                return []
            for item in page.get("Versions", ()):
                stored.setdefault(str(item.get("Key", "")), []).append(
                    ObjectVersion(
                        str(item["VersionId"]),
                        _aware(item["LastModified"]),
                        int(item.get("Size") or 0),
                    )
                )
            for item in page.get("DeleteMarkers", ()):
                if item.get("IsLatest"):
                    marked[str(item.get("Key", ""))] = _aware(item["LastModified"])
            if not page.get("IsTruncated"):
                break
            params["KeyMarker"] = page.get("NextKeyMarker", "")
            params["VersionIdMarker"] = page.get("NextVersionIdMarker", "")
        hidden = []
        for key, when in sorted(marked.items()):
            name = key[len(self._base) :]
            if key not in stored or not key.startswith(self._base) or key.endswith("/"):
                continue
            if name.startswith(EXEMPT_PREFIXES):
                continue
            # newest first; the server lists a key's versions newest first, and the stable
            # sort keeps that order for versions written within the same second
            versions = sorted(stored[key], key=lambda v: v.modified, reverse=True)
            hidden.append(HiddenObject(name, when, tuple(versions)))
        return hidden

    def _version_lister(self, params: dict[str, Any]) -> Callable[[], dict[str, Any] | None]:
        snapshot = dict(params)

        def attempt() -> dict[str, Any] | None:
            try:
                return self.client.list_object_versions(**snapshot)
            except bce.ClientError as exc:
                if _code(exc) in _UNSUPPORTED or _status(exc) in (405, 501):
                    return None
                raise

        return attempt

    def get_version(self, name: str, version_id: str) -> bytes:
        """Read one stored version (for bringing a hidden object back)."""
        key = self._key(name)

        def attempt() -> bytes:
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            except bce.ClientError as exc:
                if _code(exc) in _GONE or _status(exc) == 404:
                    raise ObjectNotFoundError(
                        f"a version of object {name} is missing from {self.location}"
                    ) from None
                raise
            with resp["Body"] as body:
                return body.read()

        return self._run("read a version of", name, attempt)

    # -- deleting ---------------------------------------------------------------------------

    def delete_versions(self, name: str) -> None:
        """Delete every version of `name` for good, or raise RetentionError and delete none.

        Exempt names (locks) that a bucket default retention caught are hidden behind a
        delete marker instead: a lock only has to vanish from listings."""
        key = self._key(name)
        versions, markers = self._versions(name, key)
        if not versions and not markers:
            return
        now = datetime.now(UTC)
        held_until: datetime | None = None
        legal_hold = False
        for vid in versions:
            head = self._head_version(name, key, vid)
            if head is None:
                continue
            until = _retained_until(head)
            if until is not None and until > now:
                held_until = max(held_until or until, until)
            legal_hold = legal_hold or _legal_hold(head)
        if held_until is not None or legal_hold:
            exempt = self.object_lock.exempt if self.object_lock is not None else EXEMPT_PREFIXES
            if name.startswith(exempt):
                self._run(
                    "delete", name, lambda: self.client.delete_object(Bucket=self.bucket, Key=key)
                )
                return
            raise self._retention_error(name, held_until, legal_hold)
        for vid in [*reversed(versions), *markers]:  # oldest first: nothing old reappears
            self._delete_version(name, key, vid)

    def _versions(self, name: str, key: str) -> tuple[list[str], list[str]]:
        """Version ids of `key`: (object versions, delete markers)."""
        versions: list[str] = []
        markers: list[str] = []
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": key}
        while True:
            page = self._run(
                "list versions of",
                name,
                lambda p=dict(params): self.client.list_object_versions(**p),
            )
            for item in page.get("Versions", ()):
                if item.get("Key") == key:
                    versions.append(str(item["VersionId"]))
            for item in page.get("DeleteMarkers", ()):
                if item.get("Key") == key:
                    markers.append(str(item["VersionId"]))
            if not page.get("IsTruncated"):
                return versions, markers
            params["KeyMarker"] = page.get("NextKeyMarker", "")
            params["VersionIdMarker"] = page.get("NextVersionIdMarker", "")

    def _head_version(self, name: str, key: str, vid: str) -> dict[str, Any] | None:
        def attempt() -> dict[str, Any] | None:
            try:
                return self.client.head_object(Bucket=self.bucket, Key=key, VersionId=vid)
            except bce.ClientError as exc:
                if _code(exc) in _GONE or _status(exc) == 404:
                    return None  # deleted meanwhile
                raise

        return self._run("read retention of", name, attempt)

    def _delete_version(self, name: str, key: str, vid: str) -> None:
        def attempt() -> None:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=vid)
            except bce.ClientError as exc:
                if _code(exc) in _GONE or _status(exc) == 404:
                    return
                if _status(exc) == 403:
                    # retention may have been extended since we looked: say so if it was
                    head = self._head_version(name, key, vid)
                    if head is not None:
                        until = _retained_until(head)
                        if (until is not None and until > datetime.now(UTC)) or _legal_hold(head):
                            raise self._retention_error(name, until, _legal_hold(head)) from None
                raise

        self._run("delete", name, attempt)

    def _retention_error(
        self, name: str, until: datetime | None, legal_hold: bool
    ) -> RetentionError:
        if until is not None:
            why = f"under Object Lock retention until {until:%Y-%m-%d %H:%M:%S} UTC"
            after = "it can be deleted after that"
        else:
            why = "under an Object Lock legal hold"
            after = "it can be deleted once the hold is removed"
        if legal_hold and until is not None:
            why += " and a legal hold"
        return RetentionError(f"object {name} in {self.location} is {why}; {after}", name, until)
