"""Rules of docs/FORMAT.md that the real code and the independent reader of
`tests/test_format_reader.py` must apply alike: which manifests are malformed (so that both agree
on which snapshots exist and which is latest), the key order of chunk references, and
decompression that never trusts a frame header's content size.

Every repository here is written by the real code; anything only a key holder could write is
sealed with the real repository's keys.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import zstandard

from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.crypto.envelope import Kind
from sellerbak.crypto.keys import Keyring
from sellerbak.errors import FormatError, IntegrityError
from sellerbak.repository.check import check_repository
from sellerbak.repository.datasets import iter_chunk_refs
from sellerbak.repository.format import TYPE_REFLIST, compress
from sellerbak.repository.index import Index
from sellerbak.repository.manifest import (
    ChunkRef,
    Manifest,
    RefListRef,
    load_manifests,
    read_manifest,
    resolve_snapshot,
    write_manifest,
)
from sellerbak.repository.packs import ChunkReader, PackWriter, _decompress
from sellerbak.repository.repo import Repository, snapshot_name
from sellerbak.restore.restore import restore_snapshot
from sellerbak.storage.local import LocalStore
from tests.helpers import ListSource, init_repo, open_repo
from tests.test_format_reader import PASSPHRASE, FormatReader, ReaderError


@dataclass
class Shop:
    root: Path
    snapshot_id: bytes


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    """One snapshot of two datasets, `orders` cut into several chunks."""
    rng = random.Random(10)
    root = tmp_path_factory.mktemp("rules") / "repo"
    init_repo(LocalStore(root))
    orders = [{"id": f"o-{n:05d}", "total": rng.randint(1, 10_000),
               "note": "x" * rng.randint(40, 90)} for n in range(800)]
    data = {"orders": orders,
            "finance/statements": [{"id": n, "amount": n * 3} for n in range(40)]}
    manifest = SnapshotRun(open_repo(LocalStore(root))).run(ListSource("shop", data), []).manifest
    return Shop(root, manifest.id)


@pytest.fixture
def root(shop: Shop, tmp_path: Path) -> Path:
    """A private copy of the shop's repository, for tests that change it."""
    copy = tmp_path / "repo"
    shutil.copytree(shop.root, copy)
    return copy


def _repo(root: Path) -> Repository:
    return open_repo(LocalStore(root))


def _reader(root: Path) -> FormatReader:
    reader = FormatReader(root)
    reader.unlock(PASSPHRASE)
    return reader


def _plain_manifest(root: Path, snapshot_id: bytes) -> dict[str, Any]:
    repo = _repo(root)
    name = snapshot_name(snapshot_id)
    sealed = repo.open_sealed(Kind.MANIFEST, snapshot_id, repo.store.get(name), name)
    return json.loads(zstandard.ZstdDecompressor().decompress(sealed))


def _put_manifest(root: Path, obj: dict[str, Any]) -> bytes:
    """Store `obj` as a new manifest (a new id, which `obj` names unless it already spells it
    otherwise), sealed with the repository's keys: what only a key holder could write."""
    repo = _repo(root)
    snapshot_id = os.urandom(32)
    if obj.get("id") == "<id>":
        obj = dict(obj, id=snapshot_id.hex())
    if obj.get("id") == "<ID>":
        obj = dict(obj, id=snapshot_id.hex().upper())
    repo.store.put(snapshot_name(snapshot_id),
                   repo.seal(Kind.MANIFEST, snapshot_id, compress(json.dumps(obj).encode())))
    return snapshot_id


def _both_read(root: Path, snapshot_id: bytes) -> tuple[bool, bool]:
    """(the real code reads the manifest, the independent reader reads it)."""
    try:
        read_manifest(_repo(root), snapshot_id)
        real = True
    except FormatError:
        real = False
    try:
        _reader(root).read_manifest(snapshot_id)
        independent = True
    except ReaderError as exc:
        assert exc.kind == "format"
        independent = False
    return real, independent


Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    """An edit setting the member at `path` (`/`-separated member names)."""
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = m
        for part in parents:
            target = target[part]
        target[last] = value
    return edit


def _rename_dataset(old: str, new: str, keep: bool = True) -> Edit:
    def edit(m: dict[str, Any]) -> None:
        m["datasets"][new] = m["datasets"][old] if keep else m["datasets"].pop(old)
    return edit


def _swap_keys(m: dict[str, Any]) -> None:
    ref = m["datasets"]["orders"]["reflist"][0]
    ref[4], ref[5] = ref[5], ref[4]


MALFORMED: dict[str, Edit] = {
    "id in upper case": _set("id", "<ID>"),
    "records as a string": lambda m: m["datasets"]["orders"].update(
        records=str(m["datasets"]["orders"]["records"])),
    "bytes as a float": lambda m: m["datasets"]["orders"].update(
        bytes=float(m["datasets"]["orders"]["bytes"])),
    "ref-list count as a float": lambda m: m["datasets"]["orders"]["reflist"][0].__setitem__(
        1, float(m["datasets"]["orders"]["reflist"][0][1])),
    "sha256 in upper case": lambda m: m["datasets"]["orders"].update(
        sha256=m["datasets"]["orders"]["sha256"].upper()),
    "dict in upper case": _set("datasets/orders/dict", "AB" * 32),
    "parent not a snapshot id": _set("parent", "yesterday"),
    "parent in upper case": _set("parent", "CD" * 32),
    "time with a space": _set("time", "2026-12-02 17:00:00.000000Z"),
    "time in basic format": _set("time", "20261202T170000Z"),
    "time as a week date": _set("time", "2026-W49-3T17:00:00Z"),
    "time with 7 fractional digits": _set("time", "2026-12-02T17:00:00.1234567Z"),
    "time with a compact offset": _set("time", "2026-12-02T17:00:00+0100"),
    "time in lower case": _set("time", "2026-12-02t17:00:00z"),
    "time without a zone": _set("time", "2026-12-02T17:00:00"),
    "time with a leap second": _set("time", "2016-12-31T23:59:60Z"),
    "time with non-ASCII digits": _set("time", "\u0662026-12-02T17:00:00Z"),
    "time before year 1 in UTC": _set("time", "0001-01-01T00:30:00+01:00"),
    "time after year 9999 in UTC": _set("time", "9999-12-31T23:30:00-01:00"),
    "time on a day that does not exist": _set("time", "2026-02-29T12:00:00Z"),
    "time with a zone offset of 24 hours": _set("time", "2026-12-02T17:00:00+24:00"),
    "source not a string": _set("source", 5),
    "hostname null": _set("hostname", None),
    "tags a string": _set("tags", "nightly"),
    "complete a string": _set("complete", "yes"),
    "dataset complete a string": _set("datasets/orders/complete", "false"),
    "meta an array": _set("datasets/orders/meta", []),
    "summary an array": _set("summary", [["seconds", 1]]),
    "ref-list ref first_key after last_key": _swap_keys,
    "dataset name with a backslash": _rename_dataset("orders", "sales\\orders"),
    "dataset name with a NUL": _rename_dataset("orders", "sales\x00orders"),
    "dataset name with a tab": _rename_dataset("orders", "sales\torders"),
    "dataset name '.'": _rename_dataset("orders", "finance/."),
    "dataset names equal ignoring case": _rename_dataset("orders", "Orders"),
    "dataset name a directory of another": _rename_dataset("orders", "finance"),
}

READABLE: dict[str, Edit] = {
    "unknown members": lambda m: (m.update(future={"x": 1}),
                                  m["datasets"]["orders"].update(future=[1])),
    "time with an offset": _set("time", "2026-12-02T18:30:00+01:30"),
    "time without a fraction": _set("time", "2026-12-02T17:00:00Z"),
    "time with 3 fractional digits": _set("time", "2026-12-02T17:00:00.123-05:00"),
    "time with the zone -00:00": _set("time", "2026-12-02T17:00:00-00:00"),
    "time at the start of year 1": _set("time", "0001-01-01T00:00:00Z"),
    "optional members absent": lambda m: [m.pop(k) for k in ("hostname", "tags", "parent",
                                                             "summary", "complete")],
    "optional dataset members absent": lambda m: [m["datasets"]["orders"].pop(k) for k in
                                                  ("dict", "cursor", "complete", "problem",
                                                   "meta")],
    "complete false but every dataset complete": _set("complete", False),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_both_readers_refuse_the_same_malformed_manifests(root: Path, shop: Shop,
                                                          case: str) -> None:
    """§12.1: a missing member, a type error (nothing is coerced), upper-case hex, a time
    outside the RFC 3339 subset or dataset names that cannot be restored side by side make a
    manifest unreadable, for sellerbak (which then skips it) and for the reader alike."""
    manifest = _plain_manifest(root, shop.snapshot_id)
    manifest["id"] = "<id>"
    MALFORMED[case](manifest)
    bad = _put_manifest(root, manifest)
    assert _both_read(root, bad) == (False, False)
    problems: list[str] = []
    assert [m.id for m in load_manifests(_repo(root), problems)] == [shop.snapshot_id]
    assert len(problems) == 1 and "manifest does not parse" in problems[0]
    assert [m["id"] for m in _reader(root).snapshots(skip_unreadable=True)] == [
        shop.snapshot_id.hex()]


@pytest.mark.parametrize("case", sorted(READABLE))
def test_both_readers_accept_the_same_variations(root: Path, shop: Shop, case: str) -> None:
    """§12.1: unknown members are ignored, optional members may be absent, `complete` is
    recomputed from the datasets, and every time in the subset parses."""
    manifest = _plain_manifest(root, shop.snapshot_id)
    manifest["id"] = "<id>"
    READABLE[case](manifest)
    good = _put_manifest(root, manifest)
    assert _both_read(root, good) == (True, True)
    real = read_manifest(_repo(root), good)
    assert real.complete is _reader(root).read_manifest(good)["complete"] is True


def test_times_order_as_instants_and_ties_by_id(root: Path, shop: Shop) -> None:
    """§12.3: snapshots are ordered by (time as an instant, id as bytes) in both readers; one
    instant written in two zones is a tie, which the id breaks."""
    manifest = _plain_manifest(root, shop.snapshot_id)
    times = ["2030-01-01T12:00:00Z", "2030-01-01T13:00:00+01:00", "2030-01-01T07:00:00-05:00",
             "2030-01-01T11:59:59.999999Z", "2030-01-01T12:00:00.000001+00:00"]
    ids = {t: _put_manifest(root, dict(manifest, id="<id>", time=t)) for t in times}
    tie = sorted(ids[t] for t in times[:3])
    expected = [shop.snapshot_id, ids[times[3]], *tie, ids[times[4]]]
    assert [m.id for m in load_manifests(_repo(root))] == expected
    assert [bytes.fromhex(m["id"]) for m in _reader(root).snapshots()] == expected
    later = datetime(2031, 1, 1, tzinfo=UTC)  # so that none of them is dated in the future
    assert resolve_snapshot(_repo(root), "latest", now=later).id == ids[times[4]]
    (root / "snapshots" / ids[times[4]].hex()).unlink()
    assert resolve_snapshot(_repo(root), "latest", now=later).id == tie[-1]
    assert bytes.fromhex(_reader(root).snapshots()[-1]["id"]) == tie[-1]


# ----- chunk-ref keys ---------------------------------------------------------------------


def _rewrite_chunk_list(root: Path, snapshot_id: bytes, dataset: str,
                        edit: Callable[[list[ChunkRef]], list[ChunkRef]]) -> bytes:
    """A new snapshot like `snapshot_id` whose `dataset` has its chunk refs edited, stored in
    one new ref-list blob written by the real writer. The old snapshot is removed."""
    repo = _repo(root)
    manifest = read_manifest(repo, snapshot_id)
    index = Index.load(repo)
    entry = manifest.datasets[dataset]
    refs = edit(list(iter_chunk_refs(ChunkReader(repo, index), entry)))
    body = b"".join(r.line() for r in refs)
    blob_id = repo.blob_id(TYPE_REFLIST, body)
    writer = PackWriter(repo, index)
    try:
        writer.add(blob_id, body, TYPE_REFLIST)
        writer.flush()
    finally:
        writer.close()
    summary = RefListRef(blob_id, len(refs), sum(r.records for r in refs),
                         sum(r.raw_len for r in refs), refs[0].first_key, refs[-1].last_key)
    new: Manifest = replace(manifest, id=os.urandom(32),
                            datasets={**manifest.datasets,
                                      dataset: replace(entry, reflist=[summary])})
    write_manifest(repo, new)
    (root / "snapshots" / snapshot_id.hex()).unlink()
    return new.id


def test_a_chunk_ref_whose_first_key_is_after_its_last_is_refused(root: Path, shop: Shop,
                                                                   tmp_path: Path) -> None:
    """§12.2: first_key <= last_key in every chunk ref. Swapping one ref's keys keeps the
    order between refs intact, so only this rule finds it: restore, `check` and the reader
    all refuse the ref-list."""
    def swap(refs: list[ChunkRef]) -> list[ChunkRef]:
        assert len(refs) >= 3 and refs[1].first_key < refs[1].last_key
        refs[1] = replace(refs[1], first_key=refs[1].last_key, last_key=refs[1].first_key)
        return refs

    sid = _rewrite_chunk_list(root, shop.snapshot_id, "orders", swap)
    repo = _repo(root)
    with pytest.raises(FormatError, match="ref-list blob does not parse"):
        restore_snapshot(repo, read_manifest(repo, sid), tmp_path / "out")
    report = check_repository(repo)
    assert len(report.errors) == 1 and "orders" in report.errors[0]
    reader = _reader(root)
    with pytest.raises(ReaderError) as exc:
        reader.read_dataset(reader.read_manifest(sid), "orders")
    assert exc.value.kind == "format"


def test_check_read_data_compares_chunk_keys_with_their_records(root: Path,
                                                                shop: Shop) -> None:
    """§12.2: the keys of a chunk ref are the ids of the chunk's first and last records. A
    last_key moved past the chunk's last record keeps every order rule (so a restore still
    succeeds), but `check --read-data` reads the records and reports it; so does the reader."""
    def stretch(refs: list[ChunkRef]) -> list[ChunkRef]:
        refs[-1] = replace(refs[-1], last_key=refs[-1].last_key + "~")
        return refs

    sid = _rewrite_chunk_list(root, shop.snapshot_id, "orders", stretch)
    repo = _repo(root)
    assert check_repository(repo).errors == []
    errors = check_repository(repo, read_data=True).errors
    assert len(errors) == 1 and "record ids differ from the keys" in errors[0]
    reader = _reader(root)
    manifest = reader.read_manifest(sid)
    refs = reader.chunk_refs(manifest["datasets"]["orders"])
    chunks = [reader.read_blob(*reader.locate(bytes.fromhex(r[0])), expect=0) for r in refs]
    assert [reader.chunk_keys_match(c, r) for c, r in zip(chunks, refs, strict=True)] == [
        True] * (len(refs) - 1) + [False]
    intact = _reader(root)  # the unedited dataset passes the same check
    statements = intact.read_manifest(sid)["datasets"]["finance/statements"]
    for ref in intact.chunk_refs(statements):
        chunk = intact.read_blob(*intact.locate(bytes.fromhex(ref[0])), expect=0)
        assert intact.chunk_keys_match(chunk, ref)


# ----- decompression ----------------------------------------------------------------------


def _frame_claiming(data: bytes, claimed: int) -> bytes:
    """A zstd frame of `data` whose header declares `claimed` bytes of content: a frame
    written without a content size (and not single-segment), with a 4-byte
    Frame_Content_Size spliced in after its Window_Descriptor (RFC 8878 §3.1.1.1)."""
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = cobj.compress(data) + cobj.flush()
    descriptor = frame[4]
    assert descriptor & 0xE3 == 0 and descriptor & 0x20 == 0  # no FCS, no dictID, windowed
    lying = (frame[:4] + bytes([descriptor | 0x80]) + frame[5:6]
             + claimed.to_bytes(4, "little") + frame[6:])
    assert zstandard.get_frame_parameters(lying).content_size == claimed
    return lying


def test_a_frame_header_that_lies_about_its_size_decides_no_allocation() -> None:
    """§9.4 step 6: groups are stream-decompressed with a cap. A frame claiming 3 GiB (with a
    group size that agrees, as a key holder could write) but holding a few KiB allocates at
    most a 1 MiB piece, and fails as an integrity error once zstd sees the lie; one-shot
    decompression would have allocated the 3 GiB the header claims."""
    claimed = 3 << 30
    frame = _frame_claiming(b"x" * 1000 + bytes(range(256)) * 8, claimed)
    tracemalloc.start()
    try:
        with pytest.raises((IntegrityError, zstandard.ZstdError)):
            _decompress(zstandard.ZstdDecompressor(), frame, claimed, "group")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    with pytest.raises(IntegrityError, match="wrong size"):  # a claim other than the group's
        _decompress(zstandard.ZstdDecompressor(), frame, 4096, "group")
    honest = _frame_claiming(b"y" * 5000, 5000)
    assert _decompress(zstandard.ZstdDecompressor(), honest, 5000, "group") == b"y" * 5000
    with pytest.raises((IntegrityError, zstandard.ZstdError)):  # more than it claims
        _decompress(zstandard.ZstdDecompressor(), _frame_claiming(b"y" * 5000, 4000), 4000,
                    "group")


# ----- keyring ----------------------------------------------------------------------------


_KEY = base64.b64encode(bytes(range(32))).decode()
_KEY2 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(("keyring", "valid"), [
    ({"current": 1, "epochs": {"1": _KEY}}, True),
    ({"current": 2, "epochs": {"1": _KEY, "2": _KEY2}}, True),
    ({"current": 4294967295, "epochs": {"1": _KEY, "4294967295": _KEY2}}, True),
    ({"current": 1, "epochs": {"1": _KEY}, "note": "x"}, False),
    ({"epochs": {"1": _KEY}}, False),
    ({"current": "1", "epochs": {"1": _KEY}}, False),
    ({"current": True, "epochs": {"1": _KEY}}, False),
    ({"current": 1.0, "epochs": {"1": _KEY}}, False),
    ({"current": 1, "epochs": {"01": _KEY}}, False),
    ({"current": 1, "epochs": {"+1": _KEY}}, False),
    ({"current": 1, "epochs": {" 1": _KEY}}, False),
    ({"current": 1, "epochs": {"1_0": _KEY, "1": _KEY}}, False),
    ({"current": 1, "epochs": {"1": _KEY, "4294967296": _KEY2}}, False),
    ({"current": 1, "epochs": {"\u0661": _KEY}}, False),
    ({"current": 1, "epochs": {"1": _KEY.rstrip("=")}}, False),
    ({"current": 1, "epochs": {"1": _KEY[:-4]}}, False),
    ({"current": 2, "epochs": {"1": _KEY}}, False),
    ({"current": 2, "epochs": {"2": _KEY}}, False),
    ({"current": 1, "epochs": [_KEY]}, False),
])
def test_both_readers_agree_on_the_keyring(keyring: dict[str, Any], valid: bool) -> None:
    """§5.1: a keyring has exactly `current` and `epochs`, epochs are decimal u32 without sign
    or leading zeros, keys are padded b64 of 32 bytes; nothing is coerced. The real code used
    to read `"01"`, `"+1"`, `" 1"` and `"1_0"` as epochs and `"1"`, `true` or `1.0` as the
    current one, and ignored unknown members, which no other reader need do."""
    raw = json.dumps(keyring).encode()
    try:
        Keyring.from_bytes(raw)
        real = True
    except FormatError:
        real = False
    try:
        FormatReader.parse_keyring(raw)
        independent = True
    except ReaderError as exc:
        assert exc.kind == "format"
        independent = False
    assert (real, independent) == (valid, valid)


# ----- exactly one zstd frame -------------------------------------------------------------


_SKIPPABLE = b"\x50\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"abc"


@pytest.mark.parametrize("shape", ["trailing bytes", "a second frame", "a skippable frame first",
                                   "a skippable frame after"])
def test_a_manifest_is_exactly_one_zstd_frame(root: Path, shop: Shop, shape: str) -> None:
    """§10, §12: the envelope plaintext is one zstd frame and nothing else. A stream decoder
    reads on into a second frame and skips skippable ones; both readers refuse them."""
    manifest = dict(_plain_manifest(root, shop.snapshot_id), id="<id>")
    repo = _repo(root)
    snapshot_id = os.urandom(32)
    frame = compress(json.dumps(dict(manifest, id=snapshot_id.hex())).encode())
    body = {"trailing bytes": frame + b"\0\0\0", "a second frame": frame + compress(b" "),
            "a skippable frame first": _SKIPPABLE + frame,
            "a skippable frame after": frame + _SKIPPABLE}[shape]
    repo.store.put(snapshot_name(snapshot_id), repo.seal(Kind.MANIFEST, snapshot_id, body))
    assert _both_read(root, snapshot_id) == (False, False)


@pytest.mark.parametrize("extra", [compress(b"more"), _SKIPPABLE, b"\0"])
def test_a_group_is_exactly_one_zstd_frame(extra: bytes) -> None:
    """§9.4 step 6: a group's compressed body is one zstd frame; whatever follows it (even a
    frame whose output would still fit the group size) makes the group fail."""
    frame = zstandard.ZstdCompressor().compress(b"g" * 4000)
    assert _decompress(zstandard.ZstdDecompressor(), frame, 4000, "group") == b"g" * 4000
    with pytest.raises(IntegrityError, match="after its zstd frame"):
        _decompress(zstandard.ZstdDecompressor(), frame + extra, 4004, "group")
    with pytest.raises(IntegrityError, match="not one zstd frame"):
        _decompress(zstandard.ZstdDecompressor(), _SKIPPABLE + frame, 4000, "group")
    assert FormatReader.frame_length(frame) == len(frame)
    with pytest.raises(ReaderError):
        FormatReader.zstd_frame(frame + extra, 4004, "group", kind="integrity")


def test_check_read_data_compares_chunk_lengths_with_their_refs(root: Path, shop: Shop,
                                                                tmp_path: Path) -> None:
    """§15: restore checks line counts and SHA-256, not the byte counts; `check --read-data`
    compares every chunk's length with its ref's `raw_len`. Two refs with lengths moved from
    one to the other keep every sum of the manifest, so only that comparison finds it."""
    def shift(refs: list[ChunkRef]) -> list[ChunkRef]:
        refs[0] = replace(refs[0], raw_len=refs[0].raw_len + 1)
        refs[1] = replace(refs[1], raw_len=refs[1].raw_len - 1)
        return refs

    sid = _rewrite_chunk_list(root, shop.snapshot_id, "orders", shift)
    repo = _repo(root)
    restore_snapshot(repo, read_manifest(repo, sid), tmp_path / "out")
    assert check_repository(repo).errors == []
    errors = check_repository(repo, read_data=True).errors
    assert errors and all("length or record count differs" in e for e in errors)
