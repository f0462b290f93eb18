"""The master keyring and the subkeys derived from it.

A repository has a random master key per epoch (epoch 1 at `init`; later epochs are room for
master-key rotation). Everything else is derived with HKDF-SHA-256 so that one secret, wrapped in
key files, unlocks the whole repository:

    K_data[e]  = HKDF(MK[e], info="sellerbak/v1/data")     Cobblestone input key for epoch e
    K_id       = HKDF(MK[1], info="sellerbak/v1/chunk-id") HMAC key for chunk ids (stable across
                                                           epochs so deduplication survives)
    K_chunker  = HKDF(MK[1], info="sellerbak/v1/chunker")  key of the chunk-boundary hash
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sellerbak.errors import FormatError

#: an epoch as a keyring member name: decimal, no sign, no leading zero
_EPOCH = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)


def hkdf(master: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


@dataclass
class Keyring:
    """Master keys by epoch; `current` is the epoch new objects are written under."""

    epochs: dict[int, bytes]
    current: int
    _data_keys: dict[int, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls) -> Keyring:
        return cls({1: os.urandom(32)}, 1)

    def to_bytes(self) -> bytes:
        return json.dumps({
            "epochs": {str(e): base64.b64encode(k).decode() for e, k in self.epochs.items()},
            "current": self.current,
        }, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Keyring:
        """The keyring as docs/FORMAT.md §5.1 spells it, exactly: `current` and `epochs` and no
        other member, epochs written as decimal u32 without sign or leading zeros, each key
        32 bytes of padded base64. Nothing is coerced (`"1"`, `1.0` and `true` are not the
        epoch 1), so every reader finds the same keyrings inconsistent."""
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise FormatError(f"keyring does not parse: {type(exc).__name__}") from None
        if not isinstance(obj, dict) or set(obj) != {"current", "epochs"}:
            raise FormatError("keyring does not have exactly the members current and epochs")
        current, named = obj["current"], obj["epochs"]
        if (not isinstance(named, dict) or not isinstance(current, int)
                or isinstance(current, bool)
                or not all(_EPOCH.fullmatch(e) and int(e) < 1 << 32 for e in named)):
            raise FormatError("keyring is inconsistent")
        try:
            epochs = {int(e): base64.b64decode(k, validate=True) for e, k in named.items()
                      if isinstance(k, str)}
        except ValueError:
            raise FormatError("keyring is inconsistent") from None
        if (len(epochs) != len(named) or current not in epochs or 1 not in epochs
                or any(len(k) != 32 for k in epochs.values())):
            raise FormatError("keyring is inconsistent")
        return cls(epochs, current)

    def data_key(self, epoch: int) -> bytes:
        if epoch not in self._data_keys:
            if epoch not in self.epochs:
                raise FormatError(f"object uses key epoch {epoch}, which this keyring lacks")
            self._data_keys[epoch] = hkdf(self.epochs[epoch], b"sellerbak/v1/data")
        return self._data_keys[epoch]

    @property
    def id_key(self) -> bytes:
        return hkdf(self.epochs[1], b"sellerbak/v1/chunk-id")

    @property
    def chunker_key(self) -> bytes:
        return hkdf(self.epochs[1], b"sellerbak/v1/chunker")


def chunk_id(id_key: bytes, plaintext: bytes) -> bytes:
    """Keyed MAC of a chunk's plaintext: equal chunks dedupe, yet names reveal nothing."""
    return hmac.new(id_key, plaintext, hashlib.sha256).digest()
