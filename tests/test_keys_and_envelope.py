"""Key files and the object envelope: binding, tamper detection, bounds before the KDF."""

from __future__ import annotations

import base64
import json
import os

import pytest

from sellerbak.crypto import envelope, kdf
from sellerbak.crypto.envelope import Kind
from sellerbak.crypto.kdf import KdfParams
from sellerbak.crypto.keyfile import KeyFile
from sellerbak.crypto.keys import Keyring
from sellerbak.errors import FormatError, IntegrityError, WrongPassphraseError

FAST = KdfParams("argon2id", b"s" * 32, m_kib=19456, t=2, p=1)
REPO = os.urandom(16)


def _keyfile(passphrase: str = "correct horse") -> tuple[KeyFile, Keyring]:
    ring = Keyring.generate()
    return KeyFile.create(REPO, ring, passphrase, FAST), ring


def test_keyfile_roundtrip_and_wrong_passphrase() -> None:
    kf, ring = _keyfile()
    again = KeyFile.from_bytes(kf.to_bytes())
    assert again.unwrap("correct horse").epochs == ring.epochs
    with pytest.raises(WrongPassphraseError):
        again.unwrap("correct horse!")


def test_passphrase_is_nfc_normalised() -> None:
    kf, ring = _keyfile("caf\u00e9")
    assert kf.unwrap("cafe\u0301").epochs == ring.epochs


@pytest.mark.parametrize("field,value", [
    ("hostname", "evil"), ("created", "2001-01-01T00:00:00Z"), ("key_id", "0" * 32),
    ("repo_id", "00" * 16),
])
def test_every_public_field_is_bound(field: str, value: str) -> None:
    kf, _ = _keyfile()
    obj = json.loads(kf.to_bytes())
    obj[field] = value
    with pytest.raises(WrongPassphraseError):
        KeyFile.from_bytes(json.dumps(obj).encode()).unwrap("correct horse")


def test_flipped_kdf_parameter_fails_unwrap() -> None:
    kf, _ = _keyfile()
    obj = json.loads(kf.to_bytes())
    obj["kdf"]["t"] = 3
    with pytest.raises(WrongPassphraseError):
        KeyFile.from_bytes(json.dumps(obj).encode()).unwrap("correct horse")
    obj = json.loads(kf.to_bytes())
    salt = bytearray(base64.b64decode(obj["kdf"]["salt"]))
    salt[0] ^= 1
    obj["kdf"]["salt"] = base64.b64encode(bytes(salt)).decode()
    with pytest.raises(WrongPassphraseError):
        KeyFile.from_bytes(json.dumps(obj).encode()).unwrap("correct horse")


@pytest.mark.parametrize("params", [
    {"alg": "argon2id", "version": 19, "m_kib": 1 << 30, "t": 3, "p": 4},  # 1 TiB
    {"alg": "argon2id", "version": 19, "m_kib": 65536, "t": 1000, "p": 4},
    {"alg": "argon2id", "version": 19, "m_kib": 65536, "t": 3, "p": 255},
    {"alg": "scrypt", "log_n": 40, "r": 8, "p": 1},
    {"alg": "scrypt", "log_n": 18, "r": 10_000, "p": 1},
    {"alg": "scrypt", "log_n": 22, "r": 32, "p": 1},  # 16 GiB
    {"alg": "argon2id", "version": 19, "m_kib": 65536, "t": 3, "p": 4, "pepper": 1},
    {"alg": "pbkdf1", "rounds": 1},
])
def test_hostile_kdf_parameters_refused_before_kdf_runs(params, monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("KDF must not run on out-of-bounds parameters")

    kf, _ = _keyfile()
    monkeypatch.setattr(kdf, "Argon2id", boom)
    monkeypatch.setattr(kdf, "Scrypt", boom)
    obj = json.loads(kf.to_bytes())
    obj["kdf"] = dict(params, salt=obj["kdf"]["salt"])
    with pytest.raises(FormatError):
        KeyFile.from_bytes(json.dumps(obj).encode())


def test_new_keys_respect_owasp_floor() -> None:
    with pytest.raises(ValueError):
        KdfParams("argon2id", b"s" * 32, m_kib=8192, t=1, p=1).check_floor()
    p = kdf.new_params(os.urandom(32))
    assert (p.alg, p.m_kib, p.t, p.p) == ("argon2id", 65536, 4, 4)


def test_unknown_key_file_members_are_refused() -> None:
    kf, _ = _keyfile()
    obj = json.loads(kf.to_bytes())
    obj["note"] = "unauthenticated"
    with pytest.raises(FormatError):
        KeyFile.from_bytes(json.dumps(obj).encode())


def test_garbage_key_files_are_format_errors() -> None:
    for raw in (b"", b"{", b"[]", b'{"format":"sellerbak-key/1"}', b"\xff" * 10,
                b"x" * (65 * 1024)):
        with pytest.raises(FormatError):
            KeyFile.from_bytes(raw)


def _sealed(kind=Kind.BLOB, oid=b"\x01" * 32, data=b"payload" * 5000):
    key = os.urandom(32)
    return key, envelope.seal(key, REPO, kind, 1, oid, data), data


def test_envelope_roundtrip() -> None:
    key, blob, data = _sealed()
    assert envelope.open_sealed(key, REPO, Kind.BLOB, 1, b"\x01" * 32, blob, "t") == data


@pytest.mark.parametrize("change", ["repo", "kind", "id", "epoch-header", "key"])
def test_envelope_is_bound_to_its_place(change: str) -> None:
    key, blob, _ = _sealed()
    args = dict(key=key, repo_id=REPO, kind=Kind.BLOB, epoch=1, object_id=b"\x01" * 32,
                data=blob)
    if change == "repo":
        args["repo_id"] = os.urandom(16)
    elif change == "kind":
        args["kind"] = Kind.INDEX
    elif change == "id":
        args["object_id"] = b"\x02" * 32
    elif change == "key":
        args["key"] = os.urandom(32)
    else:
        args["data"] = blob[:4] + (2).to_bytes(4, "big") + blob[8:]
        args["epoch"] = 2
    with pytest.raises(IntegrityError):
        envelope.open_sealed(what="t", **args)


def test_envelope_truncation_extension_and_bitflips() -> None:
    key, blob, _ = _sealed(data=os.urandom(50_000))
    body_len = len(blob) - 8 - 56
    cut = 8 + 56 + (body_len // 16400) * 16400  # truncation exactly at a chunk boundary
    bad = [blob[:cut], blob[:-1], blob + b"\0", blob + blob[-200:],
           blob[:100] + bytes([blob[100] ^ 1]) + blob[101:], b"SBK0" + blob[4:], blob[:20]]
    for data in bad:
        with pytest.raises(IntegrityError):
            envelope.open_sealed(key, REPO, Kind.BLOB, 1, b"\x01" * 32, data, "t")
