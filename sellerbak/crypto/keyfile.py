"""Key files: one per passphrase, each wrapping the same keyring.

    {"format":"sellerbak-key/1","repo_id":hex16,"key_id":hex16,"created":RFC3339,
     "hostname":..., "kdf":{...},"wrapped":b64(Cobblestone-256(KEK, context, keyring_json))}
    context = "sellerbak/v1/keyfile" 0x00 || canonical JSON of every field except "wrapped"

Binding all public fields in the context means an attacker who edits the KDF parameters, salt,
repository id or key id makes the unwrap fail rather than silently weakening anything.
Any unwrap failure is reported as "wrong passphrase" (exit 12): the file cannot tell a wrong
passphrase from a damaged file, and saying more would help an attacker.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.cobblestone import Cobblestone256Decryptor, Cobblestone256Encryptor
from cryptography.exceptions import InvalidTag

from sellerbak.crypto.kdf import KdfParams
from sellerbak.crypto.keys import Keyring
from sellerbak.errors import FormatError, WrongPassphraseError

FORMAT = "sellerbak-key/1"
CONTEXT_LABEL = b"sellerbak/v1/keyfile\x00"
MAX_KEYFILE_BYTES = 64 * 1024
_MEMBERS = {"format", "repo_id", "key_id", "created", "hostname", "kdf", "wrapped"}
#: what `create` writes: hex of 16 random bytes, and a UTC time to the second
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
CREATED_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def is_key_id(text: str) -> bool:
    """Whether `text` is exactly a key id as `create` writes it (the name `keys/<id>` of a
    key file must be one; anything else under keys/ is not read)."""
    return KEY_ID_PATTERN.fullmatch(text) is not None


@dataclass
class KeyFile:
    repo_id: bytes
    key_id: str
    created: str
    hostname: str
    kdf: KdfParams
    wrapped: bytes

    def public_fields(self) -> dict[str, Any]:
        return {"format": FORMAT, "repo_id": self.repo_id.hex(), "key_id": self.key_id,
                "created": self.created, "hostname": self.hostname, "kdf": self.kdf.to_json()}

    def context(self) -> bytes:
        return CONTEXT_LABEL + _canonical(self.public_fields())

    def to_bytes(self) -> bytes:
        obj = self.public_fields()
        obj["wrapped"] = base64.b64encode(self.wrapped).decode()
        return json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, raw: bytes) -> KeyFile:
        if len(raw) > MAX_KEYFILE_BYTES:
            raise FormatError("key file is too large")
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested past the stack
            raise FormatError("key file is not JSON") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise FormatError("key file has an unknown format")
        if set(obj) - _MEMBERS:
            # every member is authenticated; one this version does not know could not be
            raise FormatError("key file has members this version does not know")
        try:
            repo_id = bytes.fromhex(obj["repo_id"])
            key_id = obj["key_id"]
            created = obj["created"]
            hostname = obj.get("hostname", "")
            wrapped = base64.b64decode(obj["wrapped"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise FormatError("key file is missing a field or has a malformed one") from None
        if (len(repo_id) != 16 or not all(isinstance(x, str) for x in (key_id, created, hostname))
                or not is_key_id(key_id) or CREATED_PATTERN.fullmatch(created) is None):
            raise FormatError("key file has a malformed field")
        kdf = KdfParams.from_json(obj.get("kdf"))  # bounds checked here, before any KDF work
        key_file = cls(repo_id, key_id, created, hostname, kdf, wrapped)
        try:
            key_file.context()
        except UnicodeEncodeError:  # a lone surrogate: JSON can spell it, UTF-8 cannot
            raise FormatError("key file has a malformed field") from None
        return key_file

    @classmethod
    def create(cls, repo_id: bytes, keyring: Keyring, passphrase: str, kdf: KdfParams) -> KeyFile:
        kdf.check_floor()
        kdf.check_writable()
        key_file = cls(repo_id, os.urandom(16).hex(),
                       datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       socket.gethostname(), kdf, b"")
        kek = kdf.derive(passphrase)
        enc = Cobblestone256Encryptor(kek, key_file.context())
        key_file.wrapped = enc.update(keyring.to_bytes()) + enc.finalize()
        return key_file

    def unwrap(self, passphrase: str) -> Keyring:
        kek = self.kdf.derive(passphrase)
        dec = Cobblestone256Decryptor(kek, self.context())
        try:
            raw = dec.update(self.wrapped) + dec.finalize()
        except (InvalidTag, ValueError):
            raise WrongPassphraseError("wrong passphrase (no key file opens with it)") from None
        return Keyring.from_bytes(raw)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
