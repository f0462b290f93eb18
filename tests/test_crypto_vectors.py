"""External and RFC vectors for every primitive sellerbak relies on.

Cobblestone-256 vectors go through sellerbak's own message-decrypt path
(sellerbak.crypto.envelope.open_message), which must accept every valid vector and reject every
invalid one with IntegrityError, never releasing a partial plaintext.
"""

from __future__ import annotations

import hashlib
import zlib

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from sellerbak.crypto.envelope import open_message
from sellerbak.crypto.kdf import KdfParams
from sellerbak.errors import IntegrityError
from tests.vectors import load_vectors


def _cases(name: str, group_filter=lambda g: True):
    data = load_vectors(name)
    return [(g, t) for g in data["testGroups"] if group_filter(g) for t in g["tests"]]


def test_cobblestone_vectors_through_sellerbak_decrypt_path() -> None:
    cases = _cases("c2sp_chunked_encryption_aes_256_gcm_test.json")
    assert len(cases) == 35
    valid = invalid = 0
    for _group, t in cases:
        key, ctx = bytes.fromhex(t["key"]), bytes.fromhex(t["ctx"])
        ct = zlib.decompress(bytes.fromhex(t["ct"]))
        if t["result"] == "valid":
            msg = open_message(key, ctx, ct, f"vector {t['tcId']}")
            assert len(msg) == t["msgLength"], t["tcId"]
            assert hashlib.sha512(msg).hexdigest() == t["msgSha512"], t["tcId"]
            valid += 1
        else:
            with pytest.raises(IntegrityError):
                open_message(key, ctx, ct, f"vector {t['tcId']}")
            invalid += 1
    assert (valid, invalid) == (10, 25)


def test_aes_gcm_wycheproof_96bit_groups() -> None:
    cases = _cases("aes_gcm_test.json", lambda g: g["ivSize"] == 96)
    assert len(cases) == 197
    for _g, t in cases:
        aead = AESGCM(bytes.fromhex(t["key"]))
        iv, aad = bytes.fromhex(t["iv"]), bytes.fromhex(t["aad"])
        ct_tag = bytes.fromhex(t["ct"] + t["tag"])
        if t["result"] == "valid":
            assert aead.decrypt(iv, ct_tag, aad) == bytes.fromhex(t["msg"]), t["tcId"]
            assert aead.encrypt(iv, bytes.fromhex(t["msg"]), aad) == ct_tag, t["tcId"]
        else:
            with pytest.raises(InvalidTag):
                aead.decrypt(iv, ct_tag, aad)


@pytest.mark.parametrize("name,algo", [("hkdf_sha256_test.json", hashes.SHA256),
                                       ("hkdf_sha512_test.json", hashes.SHA512)])
def test_hkdf_wycheproof(name: str, algo) -> None:
    cases = _cases(name)
    assert len(cases) >= 80
    for _g, t in cases:
        salt = bytes.fromhex(t["salt"]) or None

        def derive(t=t, salt=salt) -> bytes:
            return HKDF(algorithm=algo(), length=t["size"], salt=salt,
                        info=bytes.fromhex(t["info"])).derive(bytes.fromhex(t["ikm"]))

        if t["result"] == "valid":
            assert derive() == bytes.fromhex(t["okm"]), t["tcId"]
        else:
            with pytest.raises(ValueError):
                derive()


# RFC vectors, from the crypto research (section 5.2)
def test_argon2id_rfc9106() -> None:
    kdf = Argon2id(salt=b"\x02" * 16, length=32, iterations=3, lanes=4, memory_cost=32,
                   ad=b"\x04" * 12, secret=b"\x03" * 8)
    assert kdf.derive(b"\x01" * 32).hex() == (
        "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659")


@pytest.mark.parametrize("password,salt,n,r,p,expected", [
    (b"", b"", 16, 1, 1, "77d6576238657b203b19ca42c18a0497f16b4844e3074ae8dfdffa3fede21442"
                         "fcd0069ded0948f8326a753a0fc81f17e8d3e0fb2e0d3628cf35e20c38d18906"),
    (b"password", b"NaCl", 1024, 8, 16,
     "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
     "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"),
    (b"pleaseletmein", b"SodiumChloride", 16384, 8, 1,
     "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2"
     "d5432955613f0fcf62d49705242a9af9e61e85dc0d651e40dfcf017b45575887"),
])
def test_scrypt_rfc7914(password, salt, n, r, p, expected) -> None:
    assert Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(password).hex() == expected


def test_sellerbak_scrypt_path_matches_rfc7914() -> None:
    """sellerbak's own KDF wrapper (32-byte output) agrees with the RFC's first 32 bytes."""
    params = KdfParams("scrypt", b"SodiumChloride" + b"\0" * 2, log_n=14, r=8, p=1)
    expect = Scrypt(salt=params.salt, length=32, n=16384, r=8, p=1).derive(b"pleaseletmein")
    assert params.derive("pleaseletmein") == expect


@pytest.mark.parametrize("ikm,salt,info,length,okm", [
    ("0b" * 22, "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9", 42,
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    ("0b" * 22, "", "", 42,
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
])
def test_hkdf_rfc5869(ikm, salt, info, length, okm) -> None:
    out = HKDF(algorithm=hashes.SHA256(), length=length, salt=bytes.fromhex(salt) or None,
               info=bytes.fromhex(info)).derive(bytes.fromhex(ikm))
    assert out.hex() == okm
