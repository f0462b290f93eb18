"""Which key files opening a repository tries, in which order, and how many.

Whoever can write `keys/` can plant key files; each one tried costs a KDF run (up to the bounds
in crypto/kdf.py). So one command runs at most MAX_KDF_RUNS KDFs, whatever `keys/` holds:

1. the key file this machine last opened the repository with (a hint kept in `state_dir`,
   repository/lastkey.py), fetched by name, without listing `keys/`;
2. then every other usable key file, oldest `created` first, ties by key id.

A key file is usable, and so can be tried, only if its name is `keys/<key id>` as `init` writes
it (32 lowercase hex digits), it parses within the KDF bounds, its `key_id` equals its name and
its `repo_id` is this repository's. Anything else is skipped without a KDF run, with the reason
kept for `key list`. What is past the limit is "not tried"; whoever can write `keys/` can also
delete the real key files, so the point is a bounded cost, not availability.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sellerbak.crypto.keyfile import MAX_KEYFILE_BYTES, KeyFile, is_key_id
from sellerbak.crypto.keys import Keyring
from sellerbak.errors import FormatError, ObjectNotFoundError, WrongPassphraseError
from sellerbak.storage.base import NotAnObjectError, Store

#: KDF runs one command may spend on key files (restic tries at most 20 key files; ours may
#: each cost a few seconds at the bounds, so fewer)
MAX_KDF_RUNS = 10
PREFIX = "keys/"

# what became of a key file in this command
OPENED = "opened"  # opened the repository
OPENS = "opens"  # opens with this passphrase too
WRONG = "does not open"  # tried: this passphrase does not open it
NOT_TRIED = "not tried"  # usable, but not tried (see reason)
SKIPPED = "skipped"  # not usable: never tried (see reason)


@dataclass
class KeyEntry:
    """One object under `keys/` and what this command made of it."""

    name: str
    key_file: KeyFile | None = None
    status: str = NOT_TRIED
    #: why it was skipped or not tried; built from the format, never from the passphrase
    reason: str = ""

    @property
    def key_id(self) -> str | None:
        """The key id the name holds, or None if the name is not one."""
        tail = self.name[len(PREFIX):]
        return tail if self.name.startswith(PREFIX) and is_key_id(tail) else None

    @property
    def sort_key(self) -> tuple[str, str]:
        return (self.key_file.created, self.key_file.key_id) if self.key_file else ("", "")


class KeySearch:
    """The key files of one repository as one command sees them, and its KDF budget."""

    def __init__(self, store: Store, repo_id: bytes, max_kdf_runs: int = MAX_KDF_RUNS) -> None:
        self.store = store
        self.repo_id = repo_id
        self.max_kdf_runs = max_kdf_runs
        #: KDF runs spent so far in this command
        self.kdf_runs = 0
        self._entries: dict[str, KeyEntry] = {}
        self._listed = False

    def in_order(self, first_key_id: str | None) -> Iterator[KeyEntry]:
        """Usable key files in the order they are tried: `first_key_id` (if it names a usable
        key file), then the others by (created, key id). `keys/` is listed only if the caller
        asks for more than the first."""
        first = None
        if first_key_id is not None and is_key_id(first_key_id):
            first = self._load(PREFIX + first_key_id, size=None)
            if first is not None and first.key_file is not None:
                yield first
        for entry in self.usable():
            if entry is not first:
                yield entry

    def usable(self) -> list[KeyEntry]:
        """Every usable key file, by (created, key id)."""
        return sorted((e for e in self.entries() if e.key_file is not None),
                      key=lambda e: e.sort_key)

    def entries(self) -> list[KeyEntry]:
        """Every object under `keys/`, usable ones first (by created, key id), then the
        skipped ones by name."""
        if not self._listed:
            for info in self.store.list(PREFIX):
                if info.name not in self._entries:
                    self._load(info.name, info.size)
            self._listed = True
        entries = list(self._entries.values())
        return (sorted((e for e in entries if e.key_file), key=lambda e: e.sort_key)
                + sorted((e for e in entries if not e.key_file), key=lambda e: e.name))

    def unwrap(self, entry: KeyEntry, passphrase: Callable[[], str]) -> Keyring | None:
        """Try one key file, if the budget allows; its status says what happened."""
        assert entry.key_file is not None
        if self.kdf_runs >= self.max_kdf_runs:
            entry.status = NOT_TRIED
            entry.reason = f"at most {self.max_kdf_runs} key files are tried per command"
            return None
        secret = passphrase()
        self.kdf_runs += 1
        try:
            keyring = entry.key_file.unwrap(secret)
        except WrongPassphraseError:
            entry.status, entry.reason = WRONG, ""
            return None
        entry.status, entry.reason = OPENS, ""
        return keyring

    def failure(self) -> str:
        """Why no key file opened: the counts, never a name or field from the files."""
        usable = self.usable()
        tried = sum(e.status in (WRONG, OPENS, OPENED) for e in usable)
        skipped = sum(e.key_file is None for e in self._entries.values())
        text = f"tried {tried} of {len(usable)} key files"
        if tried < len(usable):
            text += f" (at most {self.max_kdf_runs} per command)"
        if skipped:
            text += f"; {skipped} unusable skipped"
        return text

    def _load(self, name: str, size: int | None) -> KeyEntry | None:
        """Read and check one object under `keys/`; None if it is gone."""
        entry = KeyEntry(name, status=SKIPPED)
        if entry.key_id is None:
            entry.reason = "its name is not keys/<key id>"
        elif size is not None and size > MAX_KEYFILE_BYTES:
            entry.reason = "key file is too large"
        else:
            try:  # never more than a key file may hold, whatever the object's size
                raw = self.store.get_range(name, 0, MAX_KEYFILE_BYTES + 1)
            except ObjectNotFoundError:
                return None
            except NotAnObjectError as exc:  # a planted link, FIFO, ...: skipped, not followed
                entry.reason = str(exc).rsplit(": ", 1)[-1]
                self._entries[name] = entry
                return entry
            try:
                key_file = KeyFile.from_bytes(raw)
            except FormatError as exc:
                entry.reason = str(exc)
            else:
                if key_file.key_id != entry.key_id:
                    entry.reason = "its key_id differs from its name"
                elif key_file.repo_id != self.repo_id:
                    entry.reason = "it belongs to another repository"
                else:
                    entry.key_file, entry.status = key_file, NOT_TRIED
        self._entries[name] = entry
        return entry
