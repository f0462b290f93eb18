"""Passphrase -> key-encryption key, with parameters that are checked before any work is done.

Key files are read from storage that may be hostile, so the parameters in them are bounded
(`check_bounds`) before the KDF runs: a key file asking for 1 TiB of Argon2 memory is refused,
not attempted. New keys must also meet the OWASP floor (`check_floor`) and stay under the
writer's limits (`check_writable`).

The reader's bounds are the writer's limits with a margin of 2 on memory, passes and work, so
every key file sellerbak can write opens, while a key file planted by whoever can write `keys/`
costs at most about 4 GiB-passes of Argon2id (a few seconds), not the 64 GiB-passes that
m_kib=4 GiB, t=16 would. Opening tries a bounded number of key files (repository/keysearch.py),
so the whole open is bounded too.
"""

from __future__ import annotations

import base64
import unicodedata
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from sellerbak.errors import FormatError

KEY_LEN = 32

# Limits on what `init`, `key add` and `key passwd` write (repository.kdf is checked against
# them). Argon2id work is counted as m_kib * t (KiB-passes): the default is 256 MiB-passes.
WRITE_ARGON2_M_KIB = 1024 * 1024  # 1 GiB
WRITE_ARGON2_T = 8
WRITE_LANES = 8
WRITE_ARGON2_WORK = 2 * 1024 * 1024  # 2 GiB-passes: 1 GiB at t=2, 256 MiB at t=8
# scrypt memory is 128 * r * 2^log_n bytes, its work that times p; new_params writes
# DEFAULT_SCRYPT (256 MiB) where Argon2id is missing
DEFAULT_SCRYPT = {"log_n": 18, "r": 8, "p": 1}
WRITE_SCRYPT_MEMORY = 256 * 1024 * 1024
WRITE_SCRYPT_WORK = 2 * WRITE_SCRYPT_MEMORY

# Caps applied when reading a key file: the writer's limits above times READ_MARGIN.
READ_MARGIN = 2
MAX_ARGON2_M_KIB = READ_MARGIN * WRITE_ARGON2_M_KIB  # 2 GiB
MAX_ARGON2_T = READ_MARGIN * WRITE_ARGON2_T  # 16
MAX_LANES = READ_MARGIN * WRITE_LANES  # 16
MAX_ARGON2_WORK = READ_MARGIN * WRITE_ARGON2_WORK  # 4 GiB-passes
MAX_SCRYPT_LOG_N = 20
MAX_SCRYPT_R = 32
MAX_SCRYPT_MEMORY = READ_MARGIN * WRITE_SCRYPT_MEMORY  # 512 MiB
MAX_SCRYPT_WORK = READ_MARGIN * WRITE_SCRYPT_WORK  # 1 GiB
MIN_SALT, MAX_SALT = 16, 64

# Defaults for new keys: Argon2id 64 MiB, t=4, p=4 (about 0.15 s on two cores): RFC 9106's
# second recommendation (also borg 2.0's) with one more pass. 256 MiB would quadruple the peak
# memory of every nightly run on a shop's small machine for a modest gain; repositories that
# want more set repository.kdf.
DEFAULT_ARGON2 = {"m_kib": 65536, "t": 4, "p": 4}


@dataclass(frozen=True)
class KdfParams:
    """The KDF algorithm and its parameters, as stored in a key file's `kdf` object."""

    alg: str
    salt: bytes
    m_kib: int = 0
    t: int = 0
    p: int = 0
    log_n: int = 0
    r: int = 0

    def to_json(self) -> dict[str, Any]:
        salt = base64.b64encode(self.salt).decode()
        if self.alg == "argon2id":
            return {"alg": "argon2id", "version": 19, "m_kib": self.m_kib, "t": self.t,
                    "p": self.p, "salt": salt}
        return {"alg": "scrypt", "log_n": self.log_n, "r": self.r, "p": self.p, "salt": salt}

    @classmethod
    def from_json(cls, obj: Any) -> KdfParams:
        """Parse and bound-check untrusted parameters; raises FormatError, never runs the KDF."""
        if not isinstance(obj, dict):
            raise FormatError("key file: kdf is not an object")
        allowed = ({"alg", "version", "m_kib", "t", "p", "salt"} if obj.get("alg") == "argon2id"
                   else {"alg", "log_n", "r", "p", "salt"})
        if set(obj) - allowed:
            raise FormatError("key file: kdf has members this version does not know")
        alg = obj.get("alg")
        try:
            salt = base64.b64decode(_str(obj, "salt"), validate=True)
        except ValueError:
            raise FormatError("key file: kdf.salt is not base64") from None
        if alg == "argon2id":
            if obj.get("version") != 19:
                raise FormatError("key file: unsupported argon2id version")
            params = cls("argon2id", salt, m_kib=_int(obj, "m_kib"), t=_int(obj, "t"),
                         p=_int(obj, "p"))
        elif alg == "scrypt":
            params = cls("scrypt", salt, log_n=_int(obj, "log_n"), r=_int(obj, "r"),
                         p=_int(obj, "p"))
        else:
            raise FormatError(f"key file: unknown kdf algorithm {str(alg)[:20]!r}")
        params.check_bounds()
        return params

    def check_bounds(self) -> None:
        """Refuse parameters that would exhaust memory or CPU, or are malformed."""
        if not MIN_SALT <= len(self.salt) <= MAX_SALT:
            raise FormatError("key file: kdf salt must be 16 to 64 bytes")
        if self.alg == "argon2id":
            if not (1 <= self.p <= MAX_LANES and 1 <= self.t <= MAX_ARGON2_T
                    and 8 * self.p <= self.m_kib <= MAX_ARGON2_M_KIB
                    and self.m_kib * self.t <= MAX_ARGON2_WORK):
                raise FormatError(
                    "key file: argon2id parameters out of bounds "
                    f"(m_kib<= {MAX_ARGON2_M_KIB}, t<= {MAX_ARGON2_T}, p<= {MAX_LANES}, "
                    f"m_kib*t<= {MAX_ARGON2_WORK})")
        elif self.alg == "scrypt":
            if not (1 <= self.log_n <= MAX_SCRYPT_LOG_N and 1 <= self.r <= MAX_SCRYPT_R
                    and 1 <= self.p <= MAX_LANES
                    and 128 * self.r * (1 << self.log_n) <= MAX_SCRYPT_MEMORY
                    and 128 * self.r * (1 << self.log_n) * self.p <= MAX_SCRYPT_WORK):
                raise FormatError(
                    f"key file: scrypt parameters out of bounds (log_n<= {MAX_SCRYPT_LOG_N}, "
                    "memory 128*r*2^log_n <= 512 MiB, memory*p <= 1 GiB)")
        else:
            raise FormatError("key file: unknown kdf algorithm")

    def check_floor(self) -> None:
        """New keys must be at least as hard as OWASP's minimum for interactive logins."""
        if self.alg == "argon2id":
            ok = (self.m_kib >= 19456 and self.t >= 2) or (self.m_kib >= 47104 and self.t >= 1)
        else:
            ok = self.log_n >= 17
        if not ok:
            raise ValueError("KDF parameters below the OWASP floor "
                             "(argon2id m_kib>=19456 with t>=2, or scrypt log_n>=17)")

    def check_writable(self) -> None:
        """New keys stay under the writer's limits, so every reader (whose bounds are these
        times READ_MARGIN) opens them."""
        if self.alg == "argon2id":
            ok = (self.p <= WRITE_LANES and self.t <= WRITE_ARGON2_T
                  and self.m_kib <= WRITE_ARGON2_M_KIB
                  and self.m_kib * self.t <= WRITE_ARGON2_WORK)
        else:
            memory = 128 * self.r * (1 << self.log_n)
            ok = memory <= WRITE_SCRYPT_MEMORY and memory * self.p <= WRITE_SCRYPT_WORK
        if not ok:
            raise ValueError(
                "KDF parameters above what new keys may use (argon2id m_kib<= "
                f"{WRITE_ARGON2_M_KIB}, t<= {WRITE_ARGON2_T}, p<= {WRITE_LANES}, "
                f"m_kib*t<= {WRITE_ARGON2_WORK}; scrypt memory<= 256 MiB, memory*p<= 512 MiB)")

    def derive(self, passphrase: str) -> bytes:
        self.check_bounds()
        secret = normalize_passphrase(passphrase)
        if self.alg == "argon2id":
            return Argon2id(salt=self.salt, length=KEY_LEN, iterations=self.t, lanes=self.p,
                            memory_cost=self.m_kib).derive(secret)
        return Scrypt(salt=self.salt, length=KEY_LEN, n=1 << self.log_n, r=self.r,
                      p=self.p).derive(secret)


def normalize_passphrase(passphrase: str) -> bytes:
    """UTF-8 of the NFC form, so a passphrase typed on any OS gives the same bytes."""
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def argon2id_available() -> bool:
    try:
        Argon2id(salt=b"\0" * 16, length=32, iterations=1, lanes=1, memory_cost=8)
    except UnsupportedAlgorithm:
        return False
    return True


def new_params(salt: bytes, m_kib: int | None = None, t: int | None = None,
               p: int | None = None) -> KdfParams:
    """Parameters for a new key: Argon2id (defaults above), or scrypt log_n=18 where the
    OpenSSL build lacks Argon2id."""
    if argon2id_available():
        params = KdfParams("argon2id", salt, m_kib=m_kib or DEFAULT_ARGON2["m_kib"],
                           t=t or DEFAULT_ARGON2["t"], p=p or DEFAULT_ARGON2["p"])
    else:
        params = KdfParams("scrypt", salt, **DEFAULT_SCRYPT)
    params.check_bounds()
    params.check_floor()
    params.check_writable()
    return params


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"key file: kdf.{key} is not an integer")
    return value


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise FormatError(f"key file: kdf.{key} is not a string")
    return value
