"""Hostile key files, KDF parameters, keyrings and sealed objects.

Key files sit in storage anyone with write access can edit, so their parser must turn every
byte string into a KeyFile or a FormatError, and refuse out-of-bounds KDF parameters (a key file
asking for 1 TiB of Argon2 memory) before any KDF work or passphrase prompt happens.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.cobblestone import Cobblestone256Encryptor
from hypothesis import given
from hypothesis import strategies as st

from sellerbak.crypto import envelope, kdf
from sellerbak.crypto.envelope import Kind
from sellerbak.crypto.kdf import KdfParams
from sellerbak.crypto.keyfile import KeyFile
from sellerbak.crypto.keys import Keyring
from sellerbak.errors import (
    FormatError,
    IntegrityError,
    WrongPassphraseError,
)
from sellerbak.repository.repo import Repository
from sellerbak.storage.local import LocalStore
from tests.helpers import PASSPHRASE, init_repo
from tests.hostile import (
    HOSTILE,
    deep_json,
    flips,
    json_text,
    json_values,
    mutate_json,
    replacements,
    truncations,
    watchdog,
)

REPO_ID = bytes(range(16))
#: the cheapest parameters a key file may carry (check_bounds), so that bit-flip tests can run
#: the real KDF on every surviving variant; new keys are refused below the OWASP floor anyway
WEAK = KdfParams("argon2id", b"salt" * 8, m_kib=64, t=1, p=1)
TIB_KIB = 1 << 30  # 1 TiB in KiB


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    with watchdog():
        yield


def _weak_keyfile(ring: Keyring) -> KeyFile:
    """A key file as KeyFile.create writes it, with the weakest readable parameters."""
    kf = KeyFile(REPO_ID, "ab" * 16, "2025-01-01T00:00:00Z", "host", WEAK, b"")
    enc = Cobblestone256Encryptor(WEAK.derive(PASSPHRASE), kf.context())
    kf.wrapped = enc.update(ring.to_bytes()) + enc.finalize()
    return kf


RING = Keyring.generate()
KEYFILE = _weak_keyfile(RING).to_bytes()


class KdfCalled(AssertionError):
    pass


@pytest.fixture
def no_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any use of Argon2id or scrypt fail the test."""
    def boom(*_a: object, **_k: object) -> None:
        raise KdfCalled("the KDF ran on parameters that should have been refused")

    monkeypatch.setattr(kdf, "Argon2id", boom)
    monkeypatch.setattr(kdf, "Scrypt", boom)


def _parse(raw: bytes) -> KeyFile | None:
    try:
        kf = KeyFile.from_bytes(raw)
    except FormatError:
        return None
    # whatever is accepted is within bounds and can be used
    p = kf.kdf
    assert kdf.MIN_SALT <= len(p.salt) <= kdf.MAX_SALT
    if p.alg == "argon2id":
        assert 1 <= p.p <= kdf.MAX_LANES and 1 <= p.t <= kdf.MAX_ARGON2_T
        assert 8 * p.p <= p.m_kib <= kdf.MAX_ARGON2_M_KIB
    else:
        assert p.alg == "scrypt" and 128 * p.r * (1 << p.log_n) <= kdf.MAX_ARGON2_M_KIB * 1024
    assert len(kf.repo_id) == 16 and len(kf.key_id) == 32
    kf.context()  # the authenticated context can be built from what was accepted
    return kf


# ------------------------------------------------------------------ key files


@HOSTILE
@given(st.binary(max_size=2048))
def test_keyfile_bytes(raw: bytes) -> None:
    _parse(raw)


@HOSTILE
@given(st.data())
def test_keyfile_json_mutations(data: st.DataObject) -> None:
    """One member of a real key file (anywhere, kdf included) replaced, removed or added."""
    doc = mutate_json(json.loads(KEYFILE), data)
    _parse(json_text(doc).encode())


@HOSTILE
@given(alg=st.sampled_from(["argon2id", "scrypt"]) | json_values,
       members=st.dictionaries(st.sampled_from(["version", "m_kib", "t", "p", "log_n", "r"]),
                               st.integers(min_value=-(2**80), max_value=2**80) | json_values))
@pytest.mark.usefixtures("no_kdf")
def test_kdf_params_never_run_the_kdf(alg: object, members: dict[str, object]) -> None:
    """from_json only parses and bounds-checks: it never derives anything."""
    obj = dict(members, alg=alg, salt=base64.b64encode(b"s" * 16).decode())
    try:
        params = KdfParams.from_json(obj)
    except FormatError:
        return
    params.check_bounds()


def test_keyfile_every_member_replaced() -> None:
    """Each member of a real key file, in turn, replaced by each type- and range-breaking
    value."""
    for text in replacements(json.loads(KEYFILE)):
        _parse(text.encode())


def test_keyfile_truncated_at_every_offset() -> None:
    for raw in truncations(KEYFILE):
        kf = _parse(raw)
        # only dropping the final newline leaves a key file
        assert kf is None or raw == KEYFILE.rstrip()


def test_keyfile_bit_flips() -> None:
    """No single-bit change yields a key file that opens yet means something else."""
    original = KeyFile.from_bytes(KEYFILE)
    for raw in flips(KEYFILE):
        kf = _parse(raw)
        if kf is None:
            continue
        try:
            ring = kf.unwrap(PASSPHRASE)
        except WrongPassphraseError:
            continue
        # the flip hit something the parser normalises away (hex or base64 spelling)
        assert kf.public_fields() == original.public_fields()
        assert ring.epochs == RING.epochs and ring.current == RING.current


@pytest.mark.parametrize("doc", [deep_json("list"), deep_json("object"),
                                 '{"format":"sellerbak-key/1","kdf":' + deep_json() + "}"],
                         ids=["list", "object", "kdf"])
def test_keyfile_deeply_nested(doc: str) -> None:
    with pytest.raises(FormatError):
        KeyFile.from_bytes(doc.encode())


def _with_kdf(params: dict[str, object]) -> bytes:
    obj = json.loads(KEYFILE)
    obj["kdf"] = dict(params, salt=obj["kdf"]["salt"])
    return json.dumps(obj).encode()


TIB_ARGON2 = {"alg": "argon2id", "version": 19, "m_kib": TIB_KIB, "t": 1, "p": 1}


@pytest.mark.usefixtures("no_kdf")
def test_one_tib_argon2_key_file_is_refused_before_the_kdf() -> None:
    with pytest.raises(FormatError, match="out of bounds"):
        KeyFile.from_bytes(_with_kdf(TIB_ARGON2))
    # also when the parameters reach derive() some other way
    with pytest.raises(FormatError):
        KdfParams("argon2id", b"s" * 16, m_kib=TIB_KIB, t=1, p=1).derive(PASSPHRASE)


@pytest.mark.usefixtures("no_kdf")
def test_repository_with_only_a_one_tib_key_file_opens_nothing(tmp_path: Path) -> None:
    """Opening skips the key file without asking for the passphrase or running the KDF."""
    store = LocalStore(tmp_path)
    store.put("config", json.dumps({"format": "sellerbak-repo/1", "version": 1,
                                    "repo_id": REPO_ID.hex(),
                                    "chunker": {"target": 8192, "max": 65536},
                                    "pack_size": 16 << 20, "mac": "0" * 64}).encode())
    obj = json.loads(_with_kdf(TIB_ARGON2))
    store.put(f"keys/{obj['key_id']}", json.dumps(obj).encode())
    asked: list[bool] = []

    def passphrase() -> str:
        asked.append(True)
        return PASSPHRASE

    with pytest.raises(WrongPassphraseError, match="no usable key file"):
        Repository.open(store, passphrase)
    assert not asked


# ------------------------------------------------------------------ keyrings (inside a key file)


@HOSTILE
@given(json_values)
def test_keyring_json(value: object) -> None:
    try:
        ring = Keyring.from_bytes(json_text(value).encode())
    except FormatError:
        return
    assert ring.current in ring.epochs and all(len(k) == 32 for k in ring.epochs.values())


@HOSTILE
@given(st.data())
def test_keyring_mutations(data: st.DataObject) -> None:
    doc = mutate_json(json.loads(RING.to_bytes()), data)
    try:
        ring = Keyring.from_bytes(json_text(doc).encode())
    except FormatError:
        return
    assert ring.current in ring.epochs and 1 in ring.epochs


def test_keyring_every_member_replaced() -> None:
    for text in replacements(json.loads(RING.to_bytes())):
        with contextlib.suppress(FormatError):
            Keyring.from_bytes(text.encode())


def test_keyring_deeply_nested() -> None:
    for doc in (deep_json("list"), deep_json("object")):
        with pytest.raises(FormatError):
            Keyring.from_bytes(doc.encode())


# ------------------------------------------------------------------ sealed objects

KEY = os.urandom(32)
OID = os.urandom(32)
SEALED = envelope.seal(KEY, REPO_ID, Kind.MANIFEST, 1, OID, b"manifest body " * 8)


def _open(data: bytes, kind: Kind = Kind.MANIFEST, oid: bytes = OID) -> bytes | None:
    try:
        return envelope.open_sealed(KEY, REPO_ID, kind, 1, oid, data, "object")
    except IntegrityError:
        return None


@HOSTILE
@given(st.binary(max_size=4096))
def test_sealed_garbage(data: bytes) -> None:
    assert _open(data) is None
    assert _open(envelope.MAGIC + b"\0\0\0\1" + data) is None


@HOSTILE
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=len(SEALED)),
       st.binary(max_size=64))
def test_sealed_splices(prefix: bytes, cut: int, suffix: bytes) -> None:
    """Bytes around or instead of part of a real sealed object never verify."""
    data = SEALED[:cut] + suffix if prefix == b"" else prefix + SEALED[cut:]
    if data != SEALED:
        assert _open(data) is None


def test_sealed_truncations_and_flips() -> None:
    assert _open(SEALED) == b"manifest body " * 8
    for data in (*truncations(SEALED), *flips(SEALED)):
        assert _open(data) is None


@pytest.mark.parametrize("kind", [k for k in Kind if k != Kind.MANIFEST])
def test_sealed_wrong_context(kind: Kind) -> None:
    assert _open(SEALED, kind=kind) is None
    assert _open(SEALED, oid=bytes(32)) is None


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return init_repo(LocalStore(tmp_path_factory.mktemp("hostile-crypto")))


@HOSTILE
@given(epoch=st.integers(min_value=0, max_value=2**32 - 1), body=st.binary(max_size=200))
def test_repository_open_sealed_unknown_epoch(repo: Repository, epoch: int,
                                              body: bytes) -> None:
    """An envelope naming any epoch (known or not) ends in an IntegrityError."""
    data = envelope.MAGIC + epoch.to_bytes(4, "big") + body + bytes(envelope.OVERHEAD)
    with pytest.raises(IntegrityError):
        repo.open_sealed(Kind.INDEX, OID, data, "index")
