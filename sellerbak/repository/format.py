"""Byte layouts of packs, pack headers and index objects (normative text: docs/FORMAT.md).

Every parser here reads untrusted bytes: lengths are checked against the buffer before use and
counts are bounded by the bytes present, so malformed input ends in FormatError, never in a
crash, a hang or a large allocation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import zstandard

from sellerbak.errors import FormatError

PACK_HEADER_MAGIC = b"SBPH"
PACK_TRAILER_MAGIC = b"SBPK"
INDEX_MAGIC = b"SBIX"
FORMAT_VERSION = 1
#: index objects written by prune: same layout, a non-empty `supersedes` list that readers obey
INDEX_VERSION_SUPERSEDES = 2

# BlobEntry.flags: low two bits say how the blob body is compressed, bits 4-5 what it holds
COMP_MASK = 0x03
COMP_NONE = 0x00
COMP_ZSTD = 0x01
COMP_ZSTD_DICT = 0x02  # zstd frame made with a dictionary; the frame header names its dictID
TYPE_SHIFT = 4
TYPE_CHUNK = 0  # a run of canonical record lines
TYPE_REFLIST = 1  # a run of a dataset's chunk references
TYPE_DICT = 2  # a zstd dictionary trained on a dataset


def blob_type(flags: int) -> int:
    return (flags >> TYPE_SHIFT) & 0x03

# chunk id, group offset, group length, offset in the group's plaintext, raw length, flags
_ENTRY = struct.Struct(">32sIIIIB")
_TRAILER = struct.Struct(">I4s")  # length of the sealed header, magic
TRAILER_LEN = _TRAILER.size
MAX_PACK_HEADER = 64 * 1024 * 1024
MAX_DECOMPRESSED = 1 << 30


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """Where one blob (chunk, ref-list or dictionary) lives inside a pack.

    Blobs are stored in groups: a run of blobs of one type (and one dictionary) compressed and
    sealed together as one message, so per-message costs are paid per group, not per 8 KiB
    chunk. `offset`/`length` locate the sealed group in the pack; `raw_offset`/`raw_len` locate
    this blob in the group's plaintext."""

    chunk_id: bytes
    offset: int
    length: int
    raw_offset: int
    raw_len: int
    flags: int


@dataclass(frozen=True, slots=True)
class PackRecord:
    """One pack as an index lists it."""

    pack_id: bytes
    size: int
    blobs: tuple[BlobEntry, ...]


def encode_entries(entries: list[BlobEntry] | tuple[BlobEntry, ...]) -> bytes:
    return b"".join(_ENTRY.pack(e.chunk_id, e.offset, e.length, e.raw_offset, e.raw_len,
                                e.flags) for e in entries)


def _decode_entries(buf: bytes, pos: int, count: int, what: str) -> tuple[list[BlobEntry], int]:
    end = pos + count * _ENTRY.size
    if count < 0 or end > len(buf):
        raise FormatError(f"{what}: entry table runs past the end")
    entries = [BlobEntry(*_ENTRY.unpack_from(buf, pos + i * _ENTRY.size)) for i in range(count)]
    return entries, end


def encode_pack_header(entries: list[BlobEntry]) -> bytes:
    return (PACK_HEADER_MAGIC + bytes([FORMAT_VERSION]) + struct.pack(">I", len(entries))
            + encode_entries(entries))


def decode_pack_header(plain: bytes, pack_size: int, header_start: int,
                       what: str) -> list[BlobEntry]:
    """Parse a pack header and check every blob lies inside the pack's data area."""
    if len(plain) < 9 or plain[:4] != PACK_HEADER_MAGIC:
        raise FormatError(f"{what}: bad pack header magic")
    if plain[4] != FORMAT_VERSION:
        raise FormatError(f"{what}: unsupported pack header version {plain[4]}")
    (count,) = struct.unpack_from(">I", plain, 5)
    entries, end = _decode_entries(plain, 9, count, what)
    if end != len(plain):
        raise FormatError(f"{what}: trailing bytes in pack header")
    groups: dict[int, tuple[int, int]] = {}
    for e in entries:
        if e.offset + e.length > header_start:
            raise FormatError(f"{what}: a blob extends past the pack's data area")
        if groups.setdefault(e.offset, (e.length, e.flags)) != (e.length, e.flags):
            raise FormatError(f"{what}: blobs of one group disagree on its length or flags")
    return entries


def encode_trailer(sealed_header_len: int) -> bytes:
    return _TRAILER.pack(sealed_header_len, PACK_TRAILER_MAGIC)


def decode_trailer(tail: bytes, pack_size: int, what: str) -> int:
    """Length of the sealed pack header, from the last 8 bytes of a pack."""
    if len(tail) != TRAILER_LEN:
        raise FormatError(f"{what}: pack too short")
    length, magic = _TRAILER.unpack(tail)
    if magic != PACK_TRAILER_MAGIC:
        raise FormatError(f"{what}: bad pack trailer (truncated or not a pack)")
    if length > MAX_PACK_HEADER or length + TRAILER_LEN > pack_size:
        raise FormatError(f"{what}: pack header length out of range")
    return length


def encode_index(packs: list[PackRecord], supersedes: list[bytes]) -> bytes:
    # an index that supersedes others is version 2: a version-1 reader, which loads every
    # index object, would also trust superseded ones listing packs prune has deleted
    version = INDEX_VERSION_SUPERSEDES if supersedes else FORMAT_VERSION
    parts = [INDEX_MAGIC, bytes([version]), struct.pack(">I", len(packs))]
    for p in packs:
        parts.append(struct.pack(">32sQI", p.pack_id, p.size, len(p.blobs)))
        parts.append(encode_entries(p.blobs))
    parts.append(struct.pack(">I", len(supersedes)))
    parts.extend(supersedes)
    return compress(b"".join(parts))


def decode_index(data: bytes, what: str) -> tuple[list[PackRecord], list[bytes]]:
    plain = decompress(data, what)
    if len(plain) < 9 or plain[:4] != INDEX_MAGIC:
        raise FormatError(f"{what}: bad index magic")
    if plain[4] not in (FORMAT_VERSION, INDEX_VERSION_SUPERSEDES):
        raise FormatError(f"{what}: unsupported index version {plain[4]}")
    (npacks,) = struct.unpack_from(">I", plain, 5)
    pos = 9
    packs: list[PackRecord] = []
    for _ in range(npacks):
        if pos + 44 > len(plain):
            raise FormatError(f"{what}: pack table runs past the end")
        pack_id, size, count = struct.unpack_from(">32sQI", plain, pos)
        entries, pos = _decode_entries(plain, pos + 44, count, what)
        packs.append(PackRecord(pack_id, size, tuple(entries)))
    if pos + 4 > len(plain):
        raise FormatError(f"{what}: index truncated")
    (nsup,) = struct.unpack_from(">I", plain, pos)
    pos += 4
    if pos + 32 * nsup != len(plain):
        raise FormatError(f"{what}: index supersedes list has the wrong length")
    supersedes = [plain[pos + 32 * i: pos + 32 * (i + 1)] for i in range(nsup)]
    return packs, supersedes


_CCTX = zstandard.ZstdCompressor(level=3)


def compress(data: bytes, level: int = 3) -> bytes:
    if level == 3:
        return _CCTX.compress(data)
    return zstandard.ZstdCompressor(level=level).compress(data)


ZSTD_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_frame_length(data: bytes | memoryview) -> int:
    """The length of the zstd frame `data` starts with (RFC 8878 §3.1.1), from its header and
    block headers alone; ValueError if `data` does not start with a whole zstd frame. A
    stream decoder would go on into a second frame, skip skippable frames, and stop at
    trailing bytes only with an error that says nothing: readers take exactly one frame
    (docs/FORMAT.md §10), so its end is found here instead."""
    if len(data) < 5 or bytes(data[:4]) != ZSTD_FRAME_MAGIC:
        raise ValueError("not a zstd frame")
    descriptor = data[4]
    single_segment = bool(descriptor & 0x20)
    fcs = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 0x03] + fcs
    while True:
        if pos + 3 > len(data):
            raise ValueError("zstd frame is truncated")
        header = int.from_bytes(data[pos:pos + 3], "little")
        block_type, size = (header >> 1) & 0x03, header >> 3
        if block_type == 3:
            raise ValueError("zstd block of a reserved type")
        pos += 3 + (1 if block_type == 1 else size)
        if header & 0x01:  # Last_Block
            break
    pos += 4 if descriptor & 0x04 else 0  # Content_Checksum
    if pos > len(data):
        raise ValueError("zstd frame is truncated")
    return pos


def decompress(data: bytes, what: str, max_size: int = MAX_DECOMPRESSED) -> bytes:
    """zstd-decompress untrusted data with an output cap (no decompression bombs). The data
    must be exactly one zstd frame: nothing before it (no skippable frame), nothing after."""
    try:
        if zstd_frame_length(data) != len(data):
            raise FormatError(f"{what}: bytes after its zstd frame")
    except ValueError as exc:
        raise FormatError(f"{what}: does not decompress ({exc})") from None
    dctx = zstandard.ZstdDecompressor()
    parts: list[bytes] = []
    total = 0
    try:
        reader = dctx.stream_reader(data, read_across_frames=False)
        while True:
            part = reader.read(1 << 20)
            if not part:
                break
            total += len(part)
            if total > max_size:
                raise FormatError(f"{what}: decompresses to more than {max_size} bytes")
            parts.append(part)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what}: does not decompress ({exc})") from None
    return b"".join(parts)
