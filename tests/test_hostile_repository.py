"""Hostile manifests, ref-list blobs, locks and repository configs.

Manifests, ref-lists and locks are sealed, so only a key holder (or a bug) can produce hostile
plaintext; the repository config is cleartext (its MAC is checked only after a key opened).
Either way the readers must answer with a well-typed result or one of sellerbak's errors: a
snapshot listing, a restore or an unlock must never die on a traceback.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import (
    FormatError,
    LockHeldError,
    NoRepositoryError,
    WrongPassphraseError,
)
from sellerbak.repository.format import compress
from sellerbak.repository.locks import LockInfo, RepositoryLock, list_locks
from sellerbak.repository.manifest import (
    ChunkRef,
    DatasetEntry,
    Manifest,
    RefListRef,
    parse_reflist,
    read_manifest,
)
from sellerbak.repository.repo import Repository, lock_name, snapshot_name
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


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    with watchdog():
        yield


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return init_repo(LocalStore(tmp_path_factory.mktemp("hostile-repo")))


# ------------------------------------------------------------------ a real manifest

CHUNKS = [ChunkRef(os.urandom(32), 3, 300, "a1", "a3"), ChunkRef(os.urandom(32), 2, 150, "b1",
                                                                 "b2")]
REFLIST_PLAIN = b"".join(c.line() for c in CHUNKS)
RREF = RefListRef(os.urandom(32), 2, 5, 450, "a1", "b2")
ENTRY = DatasetEntry("orders", 5, 450, "ab" * 32, 2, [RREF], os.urandom(32), {"hi": 7}, True,
                     None, {"columns": ["id", "x"]})
MANIFEST_ID = os.urandom(32)
MANIFEST = Manifest(MANIFEST_ID, "2025-01-02T03:04:05.000006Z", "shop", "files", "host",
                    ["nightly"], {"orders": ENTRY},
                    os.urandom(32).hex(), {"seconds": 1.5})
MANIFEST_DOC = MANIFEST.to_json()


def _valid_entry(d: DatasetEntry) -> None:
    assert isinstance(d.name, str)
    for n in (d.records, d.bytes, d.chunks):
        assert isinstance(n, int) and 0 <= n < 2**63
    assert isinstance(d.sha256, str) and len(d.sha256) == 64
    assert all(isinstance(r, RefListRef) for r in d.reflist)
    for r in d.reflist:
        assert len(r.blob_id) == 32 and isinstance(r.first_key, str)
        assert all(0 <= n < 2**63 for n in (r.chunks, r.records, r.raw_len))
    assert d.dict_id is None or len(d.dict_id) == 32
    assert isinstance(d.complete, bool)
    assert d.problem is None or isinstance(d.problem, str)
    assert isinstance(d.meta, dict)


def _valid_manifest(m: Manifest) -> None:
    """What the snapshot listing, restore and the next snapshot rely on."""
    for s in (m.time, m.source, m.source_type, m.hostname):
        assert isinstance(s, str)
    assert m.datetime.tzinfo is not None
    assert all(isinstance(t, str) for t in m.tags)
    assert m.parent is None or isinstance(m.parent, str)
    assert isinstance(m.summary, dict)
    for name, d in m.datasets.items():
        assert isinstance(name, str) and d.name == name
        _valid_entry(d)
    # the listing's columns
    m.datetime.strftime("%Y-%m-%d %H:%M:%S")
    str(m.records)
    from sellerbak.records import human_bytes

    human_bytes(m.bytes)


def _read(repo: Repository, plain: bytes) -> Manifest | None:
    """Store `plain` as the validly sealed manifest of MANIFEST_ID and read it back."""
    name = snapshot_name(MANIFEST_ID)
    repo.store.delete(name)
    repo.store.put(name, repo.seal(Kind.MANIFEST, MANIFEST_ID, plain))
    try:
        m = read_manifest(repo, MANIFEST_ID)
    except FormatError:
        return None
    _valid_manifest(m)
    return m


def test_real_manifest_reads_back(repo: Repository) -> None:
    m = _read(repo, compress(json.dumps(MANIFEST_DOC).encode()))
    assert m is not None and m.to_json() == MANIFEST_DOC


@HOSTILE
@given(st.data())
def test_manifest_mutations(repo: Repository, data: st.DataObject) -> None:
    _read(repo, compress(json_text(mutate_json(MANIFEST_DOC, data)).encode()))


def test_manifest_every_member_replaced(repo: Repository) -> None:
    for text in replacements(MANIFEST_DOC):
        _read(repo, compress(text.encode()))


@HOSTILE
@given(json_values)
def test_manifest_any_json(repo: Repository, value: object) -> None:
    assert _read(repo, compress(json_text(value).encode())) is None


@HOSTILE
@given(st.binary(max_size=500))
def test_manifest_any_bytes(repo: Repository, plain: bytes) -> None:
    assert _read(repo, plain) is None
    assert _read(repo, compress(plain)) is None


@pytest.mark.parametrize("kind", ["list", "object"])
def test_manifest_deeply_nested(repo: Repository, kind: str) -> None:
    doc = json.dumps(MANIFEST_DOC).replace('"seconds": 1.5', '"seconds": ' + deep_json(kind))
    assert _read(repo, compress(doc.encode())) is None


def test_manifest_truncations_and_flips(repo: Repository) -> None:
    text = json.dumps(MANIFEST_DOC).encode()
    for plain in (*truncations(text), *flips(text)):
        _read(repo, compress(plain))


# ------------------------------------------------------------------ ref-list blobs


def _reflist(plain: bytes, ref: RefListRef = RREF) -> list[ChunkRef] | None:
    try:
        refs = parse_reflist(plain, ref, "dataset orders")
    except FormatError:
        return None
    assert len(refs) == ref.chunks and sum(r.records for r in refs) == ref.records
    assert all(len(r.chunk_id) == 32 and r.records >= 1 for r in refs)
    return refs


def test_real_reflist_parses() -> None:
    assert _reflist(REFLIST_PLAIN) == CHUNKS


@HOSTILE
@given(st.lists(json_values, max_size=4), st.data())
def test_reflist_lines(lines: list[object], data: st.DataObject) -> None:
    ref = RefListRef(os.urandom(32), max(1, len(lines)), max(1, len(lines)) * 3, 10,
                     data.draw(st.text(max_size=4)), data.draw(st.text(max_size=4)))
    _reflist(b"\n".join(json_text(v).encode() for v in lines), ref)


@HOSTILE
@given(st.binary(max_size=600))
def test_reflist_bytes(plain: bytes) -> None:
    _reflist(plain)
    _reflist(REFLIST_PLAIN + plain)


def test_reflist_every_member_replaced() -> None:
    lines = [c.line() for c in CHUNKS]
    for i, ref in enumerate(CHUNKS):
        for text in replacements(ref.to_json()):
            _reflist(b"".join(lines[:i]) + text.encode() + b"\n" + b"".join(lines[i + 1:]))


def test_reflist_truncations_flips_and_nesting() -> None:
    for plain in (*truncations(REFLIST_PLAIN), *flips(REFLIST_PLAIN)):
        _reflist(plain)
    assert _reflist(deep_json().encode()) is None


# ------------------------------------------------------------------ locks


def _put_lock(repo: Repository, plain: bytes) -> bytes:
    lid = os.urandom(32)
    repo.store.put(lock_name(lid), repo.seal(Kind.LOCK, lid, plain))
    return lid


def _check_locks(repo: Repository) -> list[LockInfo]:
    locks = list_locks(repo)
    for lock in locks:
        assert isinstance(lock.pid, int) and isinstance(lock.hostname, str)
        assert isinstance(lock.time, datetime) and lock.time.tzinfo is not None
        lock.is_stale()
        lock.describe()
    return locks


def _clear_locks(repo: Repository) -> None:
    for info in list(repo.store.list("locks/")):
        repo.store.delete(info.name)


LOCK_DOC = {"exclusive": False, "hostname": socket.gethostname(), "pid": os.getpid(),
            "time": "2025-01-01T00:00:00+00:00"}


@HOSTILE
@given(st.data())
def test_lock_mutations(repo: Repository, data: st.DataObject) -> None:
    doc = mutate_json(LOCK_DOC, data)
    _put_lock(repo, json_text(doc).encode())
    try:
        _check_locks(repo)
    finally:
        _clear_locks(repo)


@HOSTILE
@given(st.binary(max_size=300))
def test_lock_bytes(repo: Repository, plain: bytes) -> None:
    _put_lock(repo, plain)
    repo.store.put(lock_name(os.urandom(32)), plain)  # not even sealed
    try:
        locks = _check_locks(repo)
        assert len(locks) == 2
    finally:
        _clear_locks(repo)


def test_lock_every_member_replaced(repo: Repository) -> None:
    for text in replacements(LOCK_DOC):
        _put_lock(repo, text.encode())
    try:
        _check_locks(repo)
    finally:
        _clear_locks(repo)


def test_lock_deeply_nested(repo: Repository) -> None:
    _put_lock(repo, deep_json().encode())
    try:
        (lock,) = _check_locks(repo)
        assert not lock.readable
    finally:
        _clear_locks(repo)


def test_taking_a_lock_next_to_hostile_ones(repo: Repository) -> None:
    """A shared lock is taken (or refused as held) whatever other lock objects hold."""
    for text in replacements(LOCK_DOC):
        _put_lock(repo, text.encode())
    try:
        try:
            with RepositoryLock(repo, exclusive=False):
                pass
        except LockHeldError:
            pass
    finally:
        _clear_locks(repo)


# ------------------------------------------------------------------ repository config


CONFIG_DOC = {"format": "sellerbak-repo/1", "version": 1, "repo_id": "00" * 16,
              "created": "2025-01-01T00:00:00Z", "chunker": {"target": 8192, "max": 65536},
              "pack_size": 16 << 20, "mac": "0" * 64}


def _config(tmp: LocalStore, raw: bytes) -> dict[str, object] | None:
    tmp.delete("config")
    tmp.put("config", raw)
    try:
        config = Repository.read_config(tmp)
    except FormatError:
        return None
    # what Repository() derives from it must work
    assert len(bytes.fromhex(config["repo_id"])) == 16  # type: ignore[arg-type]
    int(config["chunker"]["target"])  # type: ignore[index, call-overload]
    int(config["chunker"]["max"])  # type: ignore[index, call-overload]
    int(config["pack_size"])  # type: ignore[call-overload]
    return config


@pytest.fixture(scope="module")
def config_store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    return LocalStore(tmp_path_factory.mktemp("hostile-config"))


@HOSTILE
@given(st.data())
def test_repo_config_mutations(config_store: LocalStore, data: st.DataObject) -> None:
    _config(config_store, json_text(mutate_json(CONFIG_DOC, data)).encode())


@HOSTILE
@given(st.binary(max_size=400))
def test_repo_config_bytes(config_store: LocalStore, raw: bytes) -> None:
    assert _config(config_store, raw) is None


def test_repo_config_every_member_replaced_and_nesting(config_store: LocalStore) -> None:
    for text in replacements(CONFIG_DOC):
        _config(config_store, text.encode())
    for kind in ("list", "object"):
        assert _config(config_store, deep_json(kind).encode()) is None
    text = json.dumps(CONFIG_DOC).encode()
    for raw in (*truncations(text), *flips(text)):
        _config(config_store, raw)
    with pytest.raises(NoRepositoryError):
        config_store.delete("config")
        Repository.read_config(config_store)


def test_open_with_hostile_config_and_key_files(repo: Repository,
                                                tmp_path_factory: pytest.TempPathFactory
                                                ) -> None:
    """A real repository's key with a config whose members are replaced (MAC included), and
    garbage key files beside it: no changed config opens, and refusing it is a clear error."""
    store = LocalStore(tmp_path_factory.mktemp("hostile-open"))
    for info in repo.store.list("keys/"):
        store.put(info.name, repo.store.get(info.name))
    store.put("keys/" + "0" * 32, b"[" * 5000)
    store.put("keys/" + "1" * 32, json.dumps({"format": "sellerbak-key/1"}).encode())
    real = repo.store.get("config")
    store.put("config", real)
    Repository.open(store, lambda: PASSPHRASE)
    for text in replacements(json.loads(real)):
        store.delete("config")
        store.put("config", text.encode())
        with pytest.raises((FormatError, WrongPassphraseError, NoRepositoryError)):
            Repository.open(store, lambda: PASSPHRASE)
