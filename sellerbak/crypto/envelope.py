"""The object envelope: every stored byte string is one Cobblestone-256 message bound to its place.

    object  = "SBK1" || epoch (uint32 BE) || Cobblestone-256(K_data[epoch], context, plaintext)
    context = "sellerbak/v1" 0x00 || repo_id (16) || kind (1) || epoch (4, BE) || object_id (32)

The context is fixed-length, hence unambiguous. A blob moved to another place (another
repository, kind or id), a changed header, a truncated or extended message, or a wrong key all
fail the key-commitment or tag check. See docs/FORMAT.md.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from cryptography.cobblestone import Cobblestone256Decryptor, Cobblestone256Encryptor
from cryptography.exceptions import InvalidTag

from sellerbak.errors import IntegrityError

MAGIC = b"SBK1"
HEADER_LEN = 8
CONTEXT_LABEL = b"sellerbak/v1\x00"
COBBLESTONE_OVERHEAD = 56 + 16  # salt + commitment, plus at least one tag
OVERHEAD = HEADER_LEN + COBBLESTONE_OVERHEAD


class Kind(IntEnum):
    BLOB = 0x01
    PACK_HEADER = 0x02
    INDEX = 0x03
    MANIFEST = 0x04
    LOCK = 0x06
    REFLIST = 0x07
    DICT = 0x08


def context(repo_id: bytes, kind: Kind, epoch: int, object_id: bytes) -> bytes:
    if len(repo_id) != 16 or len(object_id) != 32:
        raise ValueError("repo_id must be 16 bytes and object_id 32 bytes")
    return CONTEXT_LABEL + repo_id + bytes([kind]) + struct.pack(">I", epoch) + object_id


def seal(key: bytes, repo_id: bytes, kind: Kind, epoch: int, object_id: bytes,
         plaintext: bytes) -> bytes:
    enc = Cobblestone256Encryptor(key, context(repo_id, kind, epoch, object_id))
    return MAGIC + struct.pack(">I", epoch) + enc.update(plaintext) + enc.finalize()


def read_epoch(data: bytes, what: str) -> int:
    """The epoch named in an envelope's header (authenticated later through the context)."""
    if len(data) < OVERHEAD or data[:4] != MAGIC:
        raise IntegrityError(f"{what} is not a sellerbak object (bad magic or too short)")
    return struct.unpack(">I", data[4:8])[0]


def open_sealed(key: bytes, repo_id: bytes, kind: Kind, epoch: int, object_id: bytes,
                data: bytes, what: str) -> bytes:
    """Decrypt and authenticate; nothing is returned unless the whole message verified."""
    if read_epoch(data, what) != epoch:
        raise IntegrityError(f"{what} names a different key epoch than expected")
    return open_message(key, context(repo_id, kind, epoch, object_id),
                        memoryview(data)[HEADER_LEN:], what)


def open_message(key: bytes, ctx: bytes, message: bytes | memoryview, what: str) -> bytes:
    """Decrypt one whole Cobblestone-256 message. The plaintext is only returned after
    `finalize()` succeeded, so a truncated message never yields a partial prefix."""
    try:
        dec = Cobblestone256Decryptor(key, ctx)
        body = dec.update(message)
        return body + dec.finalize()
    except InvalidTag:
        raise IntegrityError(
            f"{what} failed authentication: tampered, truncated, moved, or not from this "
            "repository") from None
    except ValueError as exc:
        raise IntegrityError(f"{what} is malformed: {exc}") from None
