"""Rollback detection: the newest snapshot of each source this machine wrote or saw.

Without S3 Object Lock, whoever can delete objects in the bucket can delete the newest snapshot
manifests: `restore latest` then silently restores an older state, and the next night forks from
the old parent. Nothing inside the repository can notice (the older state is genuine), so this
machine remembers, like borg's security directory, per repository and source, the newest
snapshot it wrote or saw, and the commands that rely on "the newest" (snapshot, restore latest,
drill, check) fail when that snapshot is gone. A `forget` run on this machine updates the record;
after a legitimate forget elsewhere, `sellerbak accept-rollback` takes the repository as it is.

The record is `state_dir/seen/<repository id>.json`, mode 0600, replaced atomically under a file
lock (two runs on one machine never lose each other's update). It carries an HMAC-SHA256 under a
key derived from the repository's master key: a record written without the passphrase (e.g. one
pointing at an older snapshot, to make a rollback pass) does not verify and is refused. A record
that is missing is started afresh (trust on first use): it guards against the bucket's holder,
not against someone who can also delete files on this machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sellerbak.crypto.keys import hkdf
from sellerbak.errors import IntegrityError
from sellerbak.localfiles import disk_error, private_dirs, write_private
from sellerbak.repository.manifest import Manifest
from sellerbak.repository.repo import Repository
from sellerbak.repository.timeline import MAX_CLOCK_SKEW, split_future, system_clock

SEEN_FORMAT = "sellerbak-seen/1"
#: the record is tiny; anything much larger is not ours
MAX_RECORD_BYTES = 1 << 20
ACCEPT_HINT = ("if it was forgotten on another machine, run 'sellerbak accept-rollback' to "
               "accept the repository as it is")


class RollbackError(IntegrityError):
    """A snapshot this machine saw as the newest of its source is gone: the repository was
    rolled back (or the snapshot forgotten elsewhere). Exit code 1."""


@dataclass(frozen=True)
class SeenSnapshot:
    """The newest snapshot of one source that this machine wrote or saw."""

    id: str
    time: str

    @property
    def datetime(self) -> datetime:
        return datetime.fromisoformat(self.time.replace("Z", "+00:00"))

    def newer_than(self, other: SeenSnapshot) -> bool:
        return (self.datetime, self.id) > (other.datetime, other.id)


def _seen_key(repo: Repository) -> bytes:
    return hkdf(repo.keyring.epochs[1], b"sellerbak/v1/seen-record")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class SeenRecord:
    """The record of one repository on this machine."""

    def __init__(self, state_dir: Path, repo: Repository, tolerate_damage: bool = False
                 ) -> None:
        """`tolerate_damage` (for accept-rollback only): a damaged record reads as empty."""
        self.repo = repo
        self.dir = Path(state_dir) / "seen"
        self.path = self.dir / f"{repo.repo_id.hex()}.json"
        self.tolerate_damage = tolerate_damage
        self.sources: dict[str, SeenSnapshot] = self._load()

    # ----- the file -----------------------------------------------------------------------

    def _load(self) -> dict[str, SeenSnapshot]:
        try:
            return self._read()
        except IntegrityError:
            if self.tolerate_damage:
                return {}
            raise

    def _read(self) -> dict[str, SeenSnapshot]:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise IntegrityError(f"cannot read the record of seen snapshots {self.path}: "
                                 f"{exc.strerror}") from None
        damaged = IntegrityError(f"the record of seen snapshots {self.path} is damaged or was "
                                 "not written by sellerbak with this repository's key; "
                                 "run 'sellerbak accept-rollback' to start it afresh")
        try:
            doc = json.loads(raw) if len(raw) <= MAX_RECORD_BYTES else None
            mac = doc.pop("mac")
            if (doc.get("format") != SEEN_FORMAT
                    or doc.get("repository") != self.repo.repo_id.hex()
                    or not isinstance(mac, str)):
                raise damaged
            expected = hmac.new(_seen_key(self.repo), _canonical(doc), hashlib.sha256)
            if not hmac.compare_digest(mac.encode("utf-8", "replace"),
                                       expected.hexdigest().encode()):
                raise damaged
            sources = {str(name): SeenSnapshot(str(e["id"]), str(e["time"]))
                       for name, e in doc["sources"].items()}
            for entry in sources.values():
                _ = entry.datetime  # parses
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise damaged from None
        return sources

    def _save(self) -> None:
        doc: dict[str, Any] = {
            "format": SEEN_FORMAT, "repository": self.repo.repo_id.hex(),
            "sources": {name: {"id": e.id, "time": e.time}
                        for name, e in sorted(self.sources.items())}}
        doc["mac"] = hmac.new(_seen_key(self.repo), _canonical(doc),
                              hashlib.sha256).hexdigest()
        write_private(self.path, _canonical(doc) + b"\n", "the record of seen snapshots")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Read-modify-write under an exclusive lock on a side file; re-reads the record, so
        an update made meanwhile by another run on this machine is kept."""
        lock_path = self.dir / f".{self.path.name}.lock"
        try:
            private_dirs(self.dir)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise disk_error(f"the record of seen snapshots ({self.path})", exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.sources = self._load()
            yield
        finally:
            os.close(fd)

    # ----- checks and updates -------------------------------------------------------------

    def verify(self, manifests: Iterable[Manifest]) -> None:
        """Raise RollbackError when a recorded snapshot is no longer among the readable ones
        (deleted, or damaged: either way `latest` would silently be an older one)."""
        present = {m.id.hex() for m in manifests}
        for source, seen in sorted(self.sources.items()):
            if seen.id not in present:
                raise RollbackError(
                    f"snapshot {seen.id[:8]} of source {source} ({seen.time}), the newest "
                    "this machine saw, is missing from the repository: it was rolled back or "
                    f"the snapshot deleted; {ACCEPT_HINT}")

    def saw(self, manifests: Iterable[Manifest], now: datetime | None = None) -> None:
        """Record, per source, the newest of `manifests` not dated in the future, where it is
        newer than what is recorded (or the recorded one is itself dated in the future)."""
        now = now or system_clock()
        newest: dict[str, SeenSnapshot] = {}
        for m in split_future(list(manifests), now)[0]:
            entry = SeenSnapshot(m.id.hex(), m.time)
            if m.source not in newest or entry.newer_than(newest[m.source]):
                newest[m.source] = entry
        if not newest:
            return
        with self._locked():
            changed = False
            for source, entry in newest.items():
                old = self.sources.get(source)
                if old is None or entry.newer_than(old) or old.datetime > now + MAX_CLOCK_SKEW:
                    self.sources[source] = entry
                    changed = changed or old != entry
            if changed:
                self._save()

    def check(self, manifests: list[Manifest], now: datetime | None = None) -> None:
        """verify, then record what was seen."""
        self.verify(manifests)
        self.saw(manifests, now)

    def forgot(self, removed: Iterable[bytes], remaining: Iterable[Manifest],
               now: datetime | None = None) -> None:
        """This machine removed `removed`: a source whose recorded snapshot was among them is
        recorded again with its newest remaining one (or dropped when none is left). Sources
        whose recorded snapshot was not removed here are left alone: forget accepts no
        rollback it did not make itself."""
        gone = {sid.hex() for sid in removed}
        left = split_future(list(remaining), now or system_clock())[0]
        with self._locked():
            changed = False
            for source, seen in list(self.sources.items()):
                if seen.id not in gone:
                    continue
                mine = [m for m in left if m.source == source]
                if mine:
                    self.sources[source] = SeenSnapshot(mine[-1].id.hex(), mine[-1].time)
                else:
                    del self.sources[source]
                changed = True
            if changed:
                self._save()

    def accept(self, manifests: list[Manifest], now: datetime | None = None
               ) -> list[tuple[str, SeenSnapshot]]:
        """Take the repository as it is: the record is rebuilt from `manifests`. Returns the
        recorded snapshots that were missing (source, snapshot), for the user to read."""
        present = {m.id.hex() for m in manifests}
        with self._locked():
            missing = [(s, e) for s, e in sorted(self.sources.items()) if e.id not in present]
            self.sources = {}
            self._save()
        self.saw(manifests, now)
        return missing
