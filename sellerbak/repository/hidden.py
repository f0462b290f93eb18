"""Repository objects hidden behind delete markers: finding them, keeping what they need, and
bringing them back.

The attack: in a versioned bucket (every Object Lock bucket is one) a plain DeleteObject does
not remove anything, it writes a delete marker on top. Anyone holding the bucket's credentials
but not the passphrase can so make the newest snapshot vanish from listings: `snapshots` and
`restore latest` no longer see it, and a prune that only looks at listings would free its packs
and index once their retention ends, turning a reversible hiding into real loss.

How an attacker's marker is told from sellerbak's own deletions: sellerbak never leaves a delete
marker. On a versioned bucket `Store.delete` (forget, prune, key remove, lock release) removes
every version of the object, markers included (`ObjectLockSupport.delete_versions`). So an
object whose newest version is a delete marker while older versions are still stored was hidden
by somebody else, and is reported as such. Lock objects (`locks/`) are left out.

What follows from a hidden object:
- `check` reports each one as an error (one line naming it and when it was hidden);
- `prune` keeps every blob an authentic hidden manifest needs, renews the retention of the
  hidden versions like the live set's, never deletes a hidden index, and warns naming them;
- `repair hidden` verifies the newest stored version (it decrypts and is bound to its name
  under the repository key) and writes it back as a new current version with a create-only
  put, which also gives it retention under Object Lock.

Stores without versions (a local folder, an unversioned bucket) cannot hide objects this way;
there `Store.hidden_objects` is always empty and everything here is a no-op. Rolling such a
store back to an older state is a different attack, detected by a separate mechanism.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sellerbak.crypto.envelope import Kind
from sellerbak.crypto.keyfile import KeyFile
from sellerbak.errors import (
    FormatError,
    IntegrityError,
    ObjectExistsError,
    ObjectNotFoundError,
    SellerbakError,
)
from sellerbak.repository.datasets import iter_chunk_refs
from sellerbak.repository.format import TRAILER_LEN, decode_index, decode_trailer, decompress
from sellerbak.repository.index import Index
from sellerbak.repository.manifest import Manifest
from sellerbak.repository.packs import ChunkReader
from sellerbak.repository.repo import PassphraseProvider, Repository, parse_hex_id
from sellerbak.storage.base import HiddenObject, ObjectInfo, ObjectVersion, Store, check_size

log = logging.getLogger(__name__)

#: where repository objects live; restored in this order, so that a snapshot comes back only
#: after the data and indexes it needs (a snapshot exists iff its manifest does)
PREFIXES = ("config", "keys/", "data/", "index/", "snapshots/")
_HEX = frozenset("0123456789abcdef")


def find_hidden(store: Store) -> list[HiddenObject]:
    """Every repository object hidden behind a delete marker, in restore order."""
    found: list[HiddenObject] = []
    for prefix in PREFIXES:
        found.extend(h for h in store.hidden_objects(prefix) if _is_repository_name(h.name))
    return found


def _is_repository_name(name: str) -> bool:
    if name == "config":
        return True
    if name.startswith("keys/"):
        tail = name[len("keys/"):]
        return len(tail) == 32 and set(tail) <= _HEX
    return any(parse_hex_id(name, p) is not None for p in ("data/", "index/", "snapshots/"))


def describe(hidden: HiddenObject) -> str:
    """The one line `check` and `prune` print for a hidden object."""
    return (f"{hidden.name} hidden by a delete marker at {hidden.hidden_at:%Y-%m-%d %H:%M:%S} "
            "UTC (not deleted by sellerbak; 'sellerbak repair hidden' brings it back)")


# ----- verifying a stored version -----------------------------------------------------------


def verify_version(repo: Repository, name: str, data: bytes) -> Manifest | None:
    """Raise IntegrityError unless `data` is an authentic object of this repository bound to
    `name` (its id is authenticated with the content under the repository key). Returns the
    manifest for a snapshot. A key file cannot be opened without its own passphrase, so it is
    checked for this repository's id and for the key id its name carries."""
    if name == "config":
        try:
            same = json.loads(data) == repo.config
        except (ValueError, RecursionError):
            same = False
        if not same:
            raise IntegrityError(f"{name}: stored version is not this repository's config")
        return None
    if name.startswith("keys/"):
        key_file = KeyFile.from_bytes(data)
        if key_file.repo_id != repo.repo_id or name != f"keys/{key_file.key_id}":
            raise IntegrityError(f"{name}: stored version is a key file of another name or "
                                 "repository")
        return None
    if (sid := parse_hex_id(name, "snapshots/")) is not None:
        plain = decompress(repo.open_sealed(Kind.MANIFEST, sid, data, name), name)
        try:
            return Manifest.from_json(json.loads(plain), sid)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
                RecursionError) as exc:
            raise FormatError(f"{name}: manifest does not parse ({exc})") from None
    if (iid := parse_hex_id(name, "index/")) is not None:
        decode_index(repo.open_sealed(Kind.INDEX, iid, data, name), name)
        return None
    if (pid := parse_hex_id(name, "data/")) is not None:
        header_len = decode_trailer(data[-TRAILER_LEN:], len(data), name)
        start = len(data) - TRAILER_LEN - header_len
        repo.open_sealed(Kind.PACK_HEADER, pid, data[start:start + header_len],
                         f"{name} header")
        return None
    raise IntegrityError(f"{name} is not a repository object")


def authentic_version(repo: Repository, hidden: HiddenObject
                      ) -> tuple[ObjectVersion, bytes, Manifest | None] | None:
    """The newest stored version of `hidden` that verifies, with its bytes (and manifest);
    None if none does (versions an attacker wrote are skipped, never restored)."""
    for version in hidden.versions:
        try:
            data = repo.store.get_version(hidden.name, version.version_id)
            manifest = verify_version(repo, hidden.name, data)
        except ObjectNotFoundError:
            continue
        except IntegrityError as exc:
            log.warning("skipping a version of %s: %s", hidden.name, exc)
            continue
        return version, data, manifest
    return None


# ----- what prune must keep -----------------------------------------------------------------


@dataclass
class HiddenNeeds:
    """What hidden objects still need from prune."""

    #: blob ids the authentic hidden manifests reference
    blobs: set[bytes] = field(default_factory=set)
    #: (name, version id) of the hidden versions whose retention is renewed
    versions: list[tuple[str, str]] = field(default_factory=list)
    #: ids of hidden index objects: the new index supersedes them (it lists every pack that
    #: stays), so a restored one cannot point readers at a pack repacked meanwhile
    index_ids: list[bytes] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def hidden_needs(repo: Repository, index: Index) -> HiddenNeeds:
    """Blobs, versions and indexes the hidden objects need kept. A hidden manifest whose data
    is partly gone already still protects what is left (and is warned about), so that prune
    is never blocked forever by something it cannot fix."""
    needs = HiddenNeeds()
    reader = ChunkReader(repo, index)
    for hidden in find_hidden(repo.store):
        needs.warnings.append(describe(hidden))
        if (iid := parse_hex_id(hidden.name, "index/")) is not None:
            needs.index_ids.append(iid)
        if parse_hex_id(hidden.name, "snapshots/") is None:
            needs.versions.append((hidden.name, hidden.versions[0].version_id))
            continue
        found = authentic_version(repo, hidden)
        if found is None:
            needs.warnings.append(f"{hidden.name}: no stored version is authentic")
            continue
        version, _data, manifest = found
        needs.versions.append((hidden.name, version.version_id))
        if manifest is None:  # a snapshot name always verifies as a manifest
            continue
        for problem in _add_blobs(reader, index, manifest, needs.blobs):
            needs.warnings.append(f"hidden {hidden.name}: {problem}")
    return needs


def _add_blobs(reader: ChunkReader, index: Index, manifest: Manifest,
               blobs: set[bytes]) -> Iterator[str]:
    """Add every blob `manifest` needs to `blobs`; yield what cannot be found."""
    for entry in manifest.datasets.values():
        if entry.dict_id is not None:
            blobs.add(entry.dict_id)
        blobs.update(r.blob_id for r in entry.reflist)
        if any(r.blob_id not in index for r in entry.reflist):
            yield f"dataset {entry.name} needs a ref-list blob no pack holds"
            continue
        try:
            blobs.update(ref.chunk_id for ref in iter_chunk_refs(reader, entry))
        except SellerbakError as exc:
            yield f"dataset {entry.name}: {exc}"


# ----- bringing hidden objects back ---------------------------------------------------------


@dataclass
class RepairReport:
    dry_run: bool = False
    #: names restored (or, in a dry run, that would be)
    restored: list[str] = field(default_factory=list)
    #: one line per hidden object no authentic version of which is stored
    unrecoverable: list[str] = field(default_factory=list)


def repair_hidden(repo: Repository, dry_run: bool = False,
                  on_restored: Callable[[str], None] | None = None) -> RepairReport:
    """Write the newest authentic version of every hidden object back as its current version.

    The write is the store's create-only put (it fails rather than overwrite an object that
    came back meanwhile, and under Object Lock it carries retention). The old version and the
    marker stay as noncurrent versions; sellerbak's next delete of the name removes them all."""
    report = RepairReport(dry_run=dry_run)
    for hidden in find_hidden(repo.store):
        found = authentic_version(repo, hidden)
        if found is None:
            report.unrecoverable.append(f"{hidden.name}: none of its {len(hidden.versions)} "
                                        "stored versions is authentic; left hidden")
            continue
        _version, data, _manifest = found
        if not dry_run:
            with contextlib.suppress(ObjectExistsError):  # brought back meanwhile: done
                repo.store.put(hidden.name, data)
        report.restored.append(hidden.name)
        if on_restored is not None:
            on_restored(hidden.name)
    return report


def open_revealing(store: Store, passphrase: PassphraseProvider) -> Repository:
    """Open the repository even when its config or key files are hidden: the newest stored
    version of each stands in while opening (and is authenticated by opening: the config's
    MAC, the key file's passphrase). Without hidden ones this is `Repository.open`."""
    revealed: dict[str, bytes] = {}
    for hidden in store.hidden_objects("config") + store.hidden_objects("keys/"):
        if not _is_repository_name(hidden.name):
            continue
        for version in hidden.versions:
            try:
                revealed[hidden.name] = store.get_version(hidden.name, version.version_id)
                break
            except ObjectNotFoundError:
                continue
    if not revealed:
        return Repository.open(store, passphrase)
    opened = Repository.open(_RevealedStore(store, revealed), passphrase)
    return Repository(store, opened.config, opened.keyring, opened.key_id)


class _RevealedStore(Store):
    """A read view of `inner` in which some hidden objects appear with given bytes; only for
    opening a repository."""

    def __init__(self, inner: Store, revealed: dict[str, bytes]) -> None:
        self.inner = inner
        self.revealed = revealed
        self.location = inner.location

    def put(self, name: str, data: bytes) -> None:
        raise IntegrityError(f"cannot write {name} while opening a repository")

    def get(self, name: str, limit: int | None = None) -> bytes:
        if name in self.revealed and not self.inner.exists(name):
            check_size(name, len(self.revealed[name]), limit)
            return self.revealed[name]
        return self.inner.get(name, limit)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if name in self.revealed and not self.inner.exists(name):
            data = self.revealed[name]
            start = offset if offset >= 0 else max(len(data) + offset, 0)
            return data[start:start + length]
        return self.inner.get_range(name, offset, length)

    def exists(self, name: str) -> bool:
        return name in self.revealed or self.inner.exists(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        listed = list(self.inner.list(prefix))
        shown = {info.name for info in listed}
        yield from listed
        for name, data in self.revealed.items():
            if name.startswith(prefix) and name not in shown:
                yield ObjectInfo(name, len(data))

    def delete(self, name: str) -> None:
        raise IntegrityError(f"cannot delete {name} while opening a repository")
