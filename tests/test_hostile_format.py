"""Hostile pack trailers, pack headers, index objects and compressed bodies.

The byte layouts of docs/FORMAT.md are parsed from storage; these properties check that any
bytes end in a parse result that respects the layout's invariants, or in a FormatError /
IntegrityError, and that decompression never allocates far beyond the bound its caller gives.
"""

from __future__ import annotations

import os
import struct
import tracemalloc
from collections.abc import Iterator

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import FormatError, IntegrityError
from sellerbak.repository import format as fmt
from sellerbak.repository.format import (
    COMP_ZSTD,
    MAX_PACK_HEADER,
    TRAILER_LEN,
    BlobEntry,
    PackRecord,
    decode_index,
    decode_pack_header,
    decode_trailer,
    decompress,
    encode_index,
    encode_pack_header,
    encode_trailer,
)
from sellerbak.repository.index import Index, read_pack_record
from sellerbak.repository.packs import ChunkReader, PackWriter
from sellerbak.repository.repo import Repository, pack_name
from sellerbak.storage.local import LocalStore
from tests.helpers import init_repo
from tests.hostile import HOSTILE, flips, truncations, watchdog


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    with watchdog():
        yield


u32 = st.integers(min_value=0, max_value=2**32 - 1)
entries = st.builds(BlobEntry, st.binary(min_size=32, max_size=32), u32, u32, u32, u32,
                    st.integers(min_value=0, max_value=255))
records = st.builds(PackRecord, st.binary(min_size=32, max_size=32),
                    st.integers(min_value=0, max_value=2**64 - 1),
                    st.lists(entries, max_size=4).map(tuple))


# ------------------------------------------------------------------ trailer


@HOSTILE
@given(st.binary(min_size=0, max_size=16), st.integers(min_value=-1, max_value=2**65))
def test_trailer(tail: bytes, pack_size: int) -> None:
    try:
        length = decode_trailer(tail, pack_size, "pack")
    except FormatError:
        return
    assert 0 <= length <= MAX_PACK_HEADER and length + TRAILER_LEN <= pack_size


@HOSTILE
@given(u32, st.integers(min_value=0, max_value=2**40))
def test_trailer_lengths(length: int, pack_size: int) -> None:
    try:
        got = decode_trailer(encode_trailer(length), pack_size, "pack")
    except FormatError:
        assert length > MAX_PACK_HEADER or length + TRAILER_LEN > pack_size
        return
    assert got == length


# ------------------------------------------------------------------ pack header plaintext


def _check_header(plain: bytes, pack_size: int, header_start: int) -> list[BlobEntry] | None:
    try:
        got = decode_pack_header(plain, pack_size, header_start, "pack")
    except FormatError:
        return None
    for e in got:
        assert e.offset + e.length <= header_start
    return got


@HOSTILE
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=2**40),
       st.integers(min_value=0, max_value=2**40))
def test_pack_header_bytes(plain: bytes, pack_size: int, header_start: int) -> None:
    _check_header(plain, pack_size, header_start)
    _check_header(fmt.PACK_HEADER_MAGIC + b"\x01" + plain, pack_size, header_start)


@HOSTILE
@given(st.lists(entries, max_size=6), st.integers(min_value=0, max_value=2**34), st.data())
def test_pack_header_mutations(items: list[BlobEntry], header_start: int,
                               data: st.DataObject) -> None:
    plain = encode_pack_header(items)
    pos = data.draw(st.integers(min_value=0, max_value=len(plain)))
    cut = data.draw(st.integers(min_value=pos, max_value=len(plain)))
    insert = data.draw(st.binary(max_size=60))
    _check_header(plain, header_start + 8, header_start)
    _check_header(plain[:pos] + insert + plain[cut:], header_start + 8, header_start)


def test_pack_header_huge_count_is_refused_without_allocating() -> None:
    """A count of 2^32-1 entries in a 9-byte header is refused before any list is built."""
    plain = fmt.PACK_HEADER_MAGIC + b"\x01" + struct.pack(">I", 2**32 - 1)
    with pytest.raises(FormatError):
        decode_pack_header(plain, 10**9, 10**9, "pack")


# ------------------------------------------------------------------ index objects


def _check_index(data: bytes) -> None:
    try:
        packs, supersedes = decode_index(data, "index")
    except FormatError:
        return
    assert all(len(s) == 32 for s in supersedes)
    assert all(len(p.pack_id) == 32 for p in packs)


@HOSTILE
@given(st.lists(records, max_size=4), st.lists(st.binary(min_size=32, max_size=32),
                                               max_size=3))
def test_index_roundtrip(packs: list[PackRecord], supersedes: list[bytes]) -> None:
    assert decode_index(encode_index(packs, supersedes), "index") == (packs, supersedes)


@HOSTILE
@given(st.binary(max_size=1000))
def test_index_bytes(data: bytes) -> None:
    _check_index(data)
    _check_index(fmt.compress(data))
    _check_index(fmt.compress(fmt.INDEX_MAGIC + b"\x01" + data))


@HOSTILE
@given(st.lists(records, max_size=3), st.data())
def test_index_plaintext_mutations(packs: list[PackRecord], data: st.DataObject) -> None:
    plain = decompress(encode_index(packs, []), "index")
    pos = data.draw(st.integers(min_value=0, max_value=len(plain)))
    cut = data.draw(st.integers(min_value=pos, max_value=len(plain)))
    _check_index(fmt.compress(plain[:pos] + data.draw(st.binary(max_size=60)) + plain[cut:]))


def test_index_truncations_and_flips() -> None:
    items = [PackRecord(os.urandom(32), 1 << 20, (BlobEntry(os.urandom(32), 0, 500, 0, 99, 0x01),
                                                  BlobEntry(os.urandom(32), 0, 500, 99, 7, 0x01)))]
    compressed = encode_index(items, [os.urandom(32)])
    plain = decompress(compressed, "index")
    for data in (*truncations(compressed), *flips(compressed)):
        _check_index(data)
    for data in (*truncations(plain), *flips(plain)):
        _check_index(fmt.compress(data))


# ------------------------------------------------------------------ decompression


@HOSTILE
@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=1 << 16))
def test_decompress_bytes(data: bytes, limit: int) -> None:
    for blob in (data, fmt.compress(data), zstandard.FRAME_HEADER + data):
        try:
            out = decompress(blob, "object", max_size=limit)
        except FormatError:
            continue
        assert len(out) <= limit


BOMB_RAW = 64 << 20
BOMB = zstandard.ZstdCompressor(level=3).compress(bytes(BOMB_RAW))  # ~2 KiB, content size set


def _peak(fn: object) -> int:
    """Peak bytes allocated through Python's allocators while `fn` runs (all threads)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            fn()  # type: ignore[operator]
        finally:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak


def test_decompress_bomb_stays_within_its_bound() -> None:
    assert len(BOMB) < 4096

    def run() -> None:
        with pytest.raises(FormatError, match="more than"):
            decompress(BOMB, "object", max_size=1 << 20)

    assert _peak(run) < 8 << 20


def _frame_declaring(size: int) -> bytes:
    """A zstd frame whose header declares `size` bytes of content, followed by one empty
    last block (RFC 8878: frame header descriptor with an 8-byte content size field)."""
    return zstandard.FRAME_HEADER + bytes([0xC0, 0x50]) + struct.pack("<Q", size) + b"\x01\0\0"


def test_decompress_of_a_frame_declaring_one_tib() -> None:
    try:
        out = decompress(_frame_declaring(1 << 40), "object")
    except FormatError:
        return
    assert out == b""


# ------------------------------------------------------------------ packs in a repository


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return init_repo(LocalStore(tmp_path_factory.mktemp("hostile-format")))


@pytest.fixture(scope="module")
def real_pack(repo: Repository) -> tuple[PackRecord, bytes]:
    """A small pack written by PackWriter."""
    index = Index()
    writer = PackWriter(repo, index)
    try:
        for i in range(4):
            plain = b'{"id":"%d","n":"%s"}\n' % (i, os.urandom(40).hex().encode())
            writer.add(repo.chunk_id(plain), plain)
        writer.flush()
    finally:
        writer.close()
    (info,) = repo.store.list("data/")
    pack_id = bytes.fromhex(info.name.rsplit("/", 1)[1])
    return read_pack_record(repo, pack_id, info.size), repo.store.get(info.name)


def _store_as(repo: Repository, pack_id: bytes, data: bytes) -> None:
    repo.store.delete(pack_name(pack_id))
    repo.store.put(pack_name(pack_id), data)


def _read_record(repo: Repository, record: PackRecord, data: bytes) -> PackRecord | None:
    """Read a pack stored as `data` under the real pack's name; an accepted header must be the
    real one (it is authenticated)."""
    _store_as(repo, record.pack_id, data)
    try:
        got = read_pack_record(repo, record.pack_id, len(data))
    except IntegrityError:
        return None
    assert got.blobs == record.blobs
    return got


@HOSTILE
@given(st.data())
def test_pack_splices(repo: Repository, real_pack: tuple[PackRecord, bytes],
                      data: st.DataObject) -> None:
    record, pack = real_pack
    pos = data.draw(st.integers(min_value=0, max_value=len(pack)))
    cut = data.draw(st.integers(min_value=pos, max_value=min(len(pack), pos + 64)))
    try:
        _read_record(repo, record, pack[:pos] + data.draw(st.binary(max_size=64)) + pack[cut:])
    finally:
        _store_as(repo, record.pack_id, pack)


@HOSTILE
@given(st.binary(max_size=300))
def test_pack_garbage(repo: Repository, real_pack: tuple[PackRecord, bytes],
                      data: bytes) -> None:
    record, pack = real_pack
    try:
        assert _read_record(repo, record, data) is None
    finally:
        _store_as(repo, record.pack_id, pack)


def test_pack_truncated_at_every_offset_of_its_header(repo: Repository,
                                                      real_pack: tuple[PackRecord, bytes]
                                                      ) -> None:
    record, pack = real_pack
    header_len = decode_trailer(pack[-TRAILER_LEN:], len(pack), "pack")
    start = len(pack) - TRAILER_LEN - header_len
    try:
        for n in range(max(0, start - 64), len(pack)):
            assert _read_record(repo, record, pack[:n]) is None
        for data in flips(pack[start:]):
            _read_record(repo, record, pack[:start] + data)
    finally:
        _store_as(repo, record.pack_id, pack)


def _pack_with_group(repo: Repository, body: bytes, raw_len: int) -> tuple[Index, bytes]:
    """An index and a pack holding one zstd group whose sealed body is `body`, listed with a
    plaintext of `raw_len` bytes: what a damaged or forged (but authentic) index could say."""
    pack_id, first = os.urandom(32), os.urandom(32)
    sealed = repo.seal(Kind.BLOB, first, body)
    entries = [BlobEntry(first, 0, len(sealed), 0, raw_len, COMP_ZSTD)]
    header = repo.seal(Kind.PACK_HEADER, pack_id, encode_pack_header(entries))
    repo.store.put(pack_name(pack_id), sealed + header + encode_trailer(len(header)))
    index = Index()
    index.add_pack(PackRecord(pack_id, len(sealed) + len(header) + TRAILER_LEN,
                              tuple(entries)))
    return index, first


def test_chunk_reader_refuses_a_frame_declaring_one_tib(repo: Repository) -> None:
    """A group whose zstd frame declares 1 TiB of content while the index lists 100 bytes
    must be refused as damaged, not attempted (zstandard's one-shot decompress sizes its
    output buffer from the frame header and ignores max_output_size when the header has a
    content size)."""
    index, first = _pack_with_group(repo, _frame_declaring(1 << 40), 100)
    with pytest.raises(IntegrityError):
        list(ChunkReader(repo, index).read([first]))


def test_chunk_reader_bomb_stays_within_the_listed_size(repo: Repository) -> None:
    """A 2 KiB group that inflates to 64 MiB, listed as 100 bytes of plaintext, is refused
    without allocating anywhere near 64 MiB."""
    index, first = _pack_with_group(repo, BOMB, 100)

    def run() -> None:
        with pytest.raises(IntegrityError):
            list(ChunkReader(repo, index).read([first]))

    assert _peak(run) < 16 << 20


def test_chunk_reader_group_listed_huge_without_content_size(repo: Repository) -> None:
    """A frame without a content size, in a group the index lists as 4 GiB of plaintext: the
    one-shot decompressor would size its output buffer by that listing, so a damaged or
    forged index could make every read allocate gigabytes. Real groups hold at most
    GROUP_RAW bytes plus one chunk."""
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100)
    index, first = _pack_with_group(repo, frame, 2**32 - 1)

    def run() -> None:
        with pytest.raises(IntegrityError):
            list(ChunkReader(repo, index).read([first]))

    assert _peak(run) < 64 << 20
