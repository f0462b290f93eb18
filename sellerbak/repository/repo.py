"""An opened repository: its config, its unlocked keyring, and typed access to its objects.

Object names (docs/FORMAT.md):
    config                      cleartext JSON, authenticated by a MAC under the master key
    keys/<key_id>               key files (one per passphrase)
    data/<xx>/<pack_id>         packs of encrypted blobs (xx = first two hex digits)
    index/<index_id>            which blobs live in which pack
    snapshots/<snapshot_id>     snapshot manifests, written last: a snapshot exists iff this does
    locks/<lock_id>             shared / exclusive locks
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sellerbak.crypto import envelope
from sellerbak.crypto.envelope import Kind
from sellerbak.crypto.kdf import KdfParams
from sellerbak.crypto.keyfile import KeyFile
from sellerbak.crypto.keys import Keyring, hkdf
from sellerbak.errors import (
    FormatError,
    NoRepositoryError,
    ObjectNotFoundError,
    RepositoryExistsError,
    WrongPassphraseError,
)
from sellerbak.repository.keysearch import NOT_TRIED, OPENED, KeyEntry, KeySearch
from sellerbak.storage.base import Store

REPO_FORMAT = "sellerbak-repo/1"
DEFAULT_CHUNK_TARGET = 8 * 1024
DEFAULT_CHUNK_MAX = 64 * 1024
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
MAX_CONFIG_BYTES = 64 * 1024
#: the largest lock object read: a sealed JSON document of a few hundred bytes
MAX_LOCK_BYTES = 64 * 1024
#: the largest index or manifest object read: a sealed zstd frame of at most 1 GiB of plaintext
#: (docs/FORMAT.md, Limits); zstd and the envelope add far less than the 16 MiB margin
MAX_SEALED_BYTES = (1 << 30) + (16 << 20)

PassphraseProvider = Callable[[], str]


def pack_name(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"data/{h[:2]}/{h}"


def index_name(index_id: bytes) -> str:
    return f"index/{index_id.hex()}"


def snapshot_name(snapshot_id: bytes) -> str:
    return f"snapshots/{snapshot_id.hex()}"


def lock_name(lock_id: bytes) -> str:
    return f"locks/{lock_id.hex()}"


def parse_hex_id(name: str, prefix: str) -> bytes | None:
    """The 32-byte id at the end of an object name, or None if the name is not one of ours."""
    tail = name.rsplit("/", 1)[-1]
    if not name.startswith(prefix) or len(tail) != 64 or tail.strip(_HEX):
        return None
    if name != (f"data/{tail[:2]}/{tail}" if prefix == "data/" else f"{prefix}{tail}"):
        return None
    return bytes.fromhex(tail)


_HEX = "0123456789abcdef"


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Repository:
    """A repository whose master keyring is unlocked."""

    def __init__(self, store: Store, config: dict[str, Any], keyring: Keyring,
                 key_id: str) -> None:
        self.store = store
        self.config = config
        self.keyring = keyring
        self.key_id = key_id
        self.repo_id = bytes.fromhex(config["repo_id"])
        self.chunk_target = int(config["chunker"]["target"])
        self.chunk_max = int(config["chunker"]["max"])
        self.pack_size = int(config["pack_size"])
        self.id_key = keyring.id_key
        self.chunker_key = keyring.chunker_key
        #: the key files this command has looked at and its KDF budget (set by `open`)
        self.key_search: KeySearch | None = None

    # ----- creation and opening -------------------------------------------------------------

    @classmethod
    def init(cls, store: Store, passphrase: str, kdf: KdfParams) -> Repository:
        if store.exists("config"):
            raise RepositoryExistsError(f"a repository already exists at {store.location}")
        keyring = Keyring.generate()
        repo_id = os.urandom(16)
        config: dict[str, Any] = {
            "format": REPO_FORMAT,
            "version": 1,
            "repo_id": repo_id.hex(),
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "chunker": {"target": DEFAULT_CHUNK_TARGET, "max": DEFAULT_CHUNK_MAX},
            "pack_size": DEFAULT_PACK_SIZE,
        }
        config["mac"] = _config_mac(keyring, config)
        key_file = KeyFile.create(repo_id, keyring, passphrase, kdf)
        # the key first: a config without a key would be a repository nobody can open
        store.put(f"keys/{key_file.key_id}", key_file.to_bytes())
        store.put("config", json.dumps(config, indent=1, sort_keys=True).encode() + b"\n")
        return cls(store, config, keyring, key_file.key_id)

    @staticmethod
    def read_config(store: Store) -> dict[str, Any]:
        try:
            raw = store.get("config", MAX_CONFIG_BYTES)
        except ObjectNotFoundError:
            raise NoRepositoryError(
                f"no repository at {store.location} (run 'sellerbak init' first)") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise FormatError("repository config is too large")
        try:
            config = json.loads(raw)
            if config.get("format") != REPO_FORMAT or config.get("version") != 1:
                raise FormatError("repository config has an unknown format or version")
            if len(bytes.fromhex(config["repo_id"])) != 16:
                raise ValueError
            target, cmax = int(config["chunker"]["target"]), int(config["chunker"]["max"])
            pack_size = int(config["pack_size"])
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
            raise FormatError("repository config does not parse") from None
        if not (1024 <= target <= cmax <= 16 << 20 and 1 << 20 <= pack_size <= 1 << 30):
            raise FormatError("repository config has out-of-range chunker or pack sizes")
        return config

    @classmethod
    def open(cls, store: Store, passphrase: PassphraseProvider,
             last_key: Callable[[bytes], str | None] | None = None) -> Repository:
        """Unlock with the first key file the passphrase opens, trying first the key id
        `last_key(repo_id)` gives (the one this machine last used), and at most MAX_KDF_RUNS
        key files in all (repository/keysearch.py). The passphrase is asked for only if a key
        file is usable."""
        config = cls.read_config(store)
        repo_id = bytes.fromhex(config["repo_id"])
        search = KeySearch(store, repo_id)
        first_key_id = last_key(repo_id) if last_key is not None else None
        secret: list[str] = []

        def cached_passphrase() -> str:
            if not secret:
                secret.append(passphrase())
            return secret[0]

        any_usable = False
        for entry in search.in_order(first_key_id):
            any_usable = True
            keyring = search.unwrap(entry, cached_passphrase)
            if keyring is None:
                continue
            mac = config.get("mac")
            if not isinstance(mac, str) or not hmac.compare_digest(
                    mac.encode("utf-8", "replace"), _config_mac(keyring, config).encode()):
                raise FormatError("repository config was modified (its MAC does not verify)")
            entry.status = OPENED
            assert entry.key_file is not None
            repo = cls(store, config, keyring, entry.key_file.key_id)
            repo.key_search = search
            return repo
        if not any_usable:
            raise WrongPassphraseError(
                "wrong passphrase or damaged key files (no usable key file in the repository)")
        raise WrongPassphraseError(
            f"wrong passphrase (no key file opens with it; {search.failure()})")

    # ----- keys ------------------------------------------------------------------------------

    def _key_search(self) -> KeySearch:
        if self.key_search is None:
            self.key_search = KeySearch(self.store, self.repo_id)
        return self.key_search

    def list_keys(self) -> list[KeyFile]:
        """The usable key files of this repository, oldest first (no KDF runs)."""
        return [e.key_file for e in self._key_search().usable() if e.key_file is not None]

    def key_statuses(self, passphrase: str) -> list[KeyEntry]:
        """Every object under `keys/` with what it is to this passphrase: the one that opened
        the repository, others it opens or does not, and those not tried (past the command's
        KDF budget) or skipped as unusable, each with its reason."""
        search = self._key_search()
        entries = search.entries()
        for entry in entries:
            if entry.key_file is not None and entry.status == NOT_TRIED:
                search.unwrap(entry, lambda: passphrase)
        return entries

    def add_key(self, passphrase: str, kdf: KdfParams) -> KeyFile:
        key_file = KeyFile.create(self.repo_id, self.keyring, passphrase, kdf)
        self.store.put(f"keys/{key_file.key_id}", key_file.to_bytes())
        self.key_search = None  # what this command saw of keys/ is out of date
        return key_file

    def remove_key(self, key_id: str) -> None:
        self.store.delete(f"keys/{key_id}")
        self.key_search = None

    # ----- sealed objects ---------------------------------------------------------------------

    def seal(self, kind: Kind, object_id: bytes, plaintext: bytes) -> bytes:
        epoch = self.keyring.current
        return envelope.seal(self.keyring.data_key(epoch), self.repo_id, kind, epoch,
                             object_id, plaintext)

    def open_sealed(self, kind: Kind, object_id: bytes, data: bytes, what: str) -> bytes:
        epoch = envelope.read_epoch(data, what)
        return envelope.open_sealed(self.keyring.data_key(epoch), self.repo_id, kind, epoch,
                                    object_id, data, what)

    def chunk_id(self, plaintext: bytes) -> bytes:
        return hmac.digest(self.id_key, plaintext, "sha256")

    def blob_id(self, btype: int, plaintext: bytes) -> bytes:
        """Keyed id of a blob: chunks are HMAC(K_id, plaintext); ref-lists and dictionaries
        get a domain prefix so no two kinds of blob can ever share an id."""
        if btype == 0:
            return self.chunk_id(plaintext)
        prefix = _BLOB_DOMAINS[btype]
        mac = hmac.new(self.id_key, prefix, hashlib.sha256)
        mac.update(plaintext)
        return mac.digest()


_BLOB_DOMAINS = {1: b"sellerbak/v1/reflist\x00", 2: b"sellerbak/v1/dict\x00"}


def _config_mac(keyring: Keyring, config: dict[str, Any]) -> str:
    body = {k: v for k, v in config.items() if k != "mac"}
    key = hkdf(keyring.epochs[1], b"sellerbak/v1/config")
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()
