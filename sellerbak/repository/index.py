"""The in-memory index: which pack holds each blob, built from index objects and pack headers.

Packs are uploaded before the index objects that list them, so a run killed in between leaves
packs no index mentions. `Index.load(..., recover=True)` finds such packs and reads their
headers, so the next run reuses what was already uploaded instead of sending it again.

Memory is what shapes this module. A repository holds one entry per 8 KiB chunk, so a large
shop has millions of them, and a Python object per entry (plus a dict slot keyed by a bytes
object) costs about 350 bytes: the index would be the largest thing in a snapshot's or a
restore's memory, growing with the shop. Entries are therefore kept as rows of flat columns
(a bytearray of ids and `array`s of numbers, about 60 bytes a row) found through an
open-addressing hash table of row numbers (4 bytes a slot). Ids are keyed MACs, so their
leading bytes are already uniformly spread and serve as the hash; a lookup still compares the
whole id.
"""

from __future__ import annotations

import os
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import FormatError, IntegrityError, ObjectNotFoundError
from sellerbak.repository.format import _ENTRY as ENTRY  # the entry layout, read in place
from sellerbak.repository.format import (
    FORMAT_VERSION,
    INDEX_MAGIC,
    INDEX_VERSION_SUPERSEDES,
    TRAILER_LEN,
    TYPE_DICT,
    BlobEntry,
    PackRecord,
    blob_type,
    decode_pack_header,
    decode_trailer,
    decompress,
    encode_index,
)
from sellerbak.repository.repo import (
    MAX_SEALED_BYTES,
    Repository,
    index_name,
    pack_name,
    parse_hex_id,
)
from sellerbak.repository.unreadable import Unreadable, warn_once

ID_LEN = 32
_EMPTY = -1
_BYTEORDER = sys.byteorder  # of the table's hash: `array("Q")` words read in native order
_FIRST_SLOTS = 1024


@dataclass(frozen=True, slots=True)
class Location:
    pack_id: bytes
    entry: BlobEntry


class PackInfo:
    """One indexed pack: its id, its size, and its entries (rows `first_row` onwards).

    It stands in for a PackRecord (`pack_id`, `size`, `blobs`) without keeping one object per
    blob: `blobs` is built from the index's rows each time it is asked for."""

    __slots__ = ("pack_id", "size", "number", "first_row", "rows", "first_group", "groups",
                 "_index")

    def __init__(self, index: Index, pack_id: bytes, size: int, number: int) -> None:
        self._index = index
        self.pack_id = pack_id
        self.size = size
        self.number = number
        self.first_row = self.rows = self.first_group = self.groups = 0

    @property
    def blobs(self) -> tuple[BlobEntry, ...]:
        return tuple(self._entries())

    def _entries(self) -> Iterator[BlobEntry]:
        return map(self._index.entry, range(self.first_row, self.first_row + self.rows))

    def record_view(self) -> PackRecord:
        """A PackRecord for encoding (write_index) whose entries are made one at a time as
        they are encoded, not all at once: a few packs' worth of entry objects would be the
        largest transient allocation of a snapshot."""
        return PackRecord(self.pack_id, self.size, _EntryView(self))  # type: ignore[arg-type]


class _EntryView:
    """The entries of a pack as a sized iterable (what encode_index needs)."""

    __slots__ = ("_pack",)

    def __init__(self, pack: PackInfo) -> None:
        self._pack = pack

    def __len__(self) -> int:
        return self._pack.rows

    def __iter__(self) -> Iterator[BlobEntry]:
        return self._pack._entries()


class Index:
    """Rows (one per blob entry of every indexed pack, in pack order) and groups (one per
    distinct offset of a pack, in offset order), plus a hash table from blob id to the row of
    the first pack that lists it."""

    def __init__(self) -> None:
        self.packs: dict[bytes, PackInfo] = {}
        self.index_ids: set[bytes] = set()
        #: packs found in storage that no index object lists (recovered from their headers)
        self.unindexed: list[PackRecord] = []
        #: index objects that did not open or parse, left out (see `load`)
        self.unreadable: list[Unreadable] = []
        self._pack_ids: list[bytes] = []
        # rows
        self._ids = bytearray()
        self._row_group = array("I")
        self._length = array("I")
        self._raw_offset = array("I")
        self._raw_len = array("I")
        self._flags = bytearray()
        # groups
        self.group_pack = array("I")
        self.group_offset = array("I")
        self.group_first = array("i")  # the row of its sealing id (raw_offset 0), or -1
        self.group_size = array("Q")  # plaintext size: largest raw_offset + raw_len
        #: rows of dictionary blobs (few; a reader looks them all up by zstd dictID)
        self.dict_rows: list[int] = []
        self._slots = array("i", [_EMPTY]) * _FIRST_SLOTS
        self._unique = 0

    # ----- lookups --------------------------------------------------------------------------

    @property
    def blob_count(self) -> int:
        """Distinct blob ids (not `__len__`: an empty index must not be falsy, callers write
        `index or Index.load(repo)`)."""
        return self._unique

    def __contains__(self, blob_id: bytes) -> bool:
        return self.row(blob_id) >= 0

    def row(self, blob_id: bytes) -> int:
        """The row of `blob_id` (its first listing), or -1. Linear probing from the slot its
        first 8 bytes pick, comparing whole ids."""
        slots, ids = self._slots, self._ids
        mask = len(slots) - 1
        slot = int.from_bytes(blob_id[:8], _BYTEORDER) & mask
        while True:
            row = slots[slot]
            if row == _EMPTY:
                return _EMPTY
            if ids[row * ID_LEN: row * ID_LEN + ID_LEN] == blob_id:
                return row
            slot = (slot + 1) & mask

    def locate(self, blob_id: bytes) -> Location:
        row = self.row(blob_id)
        if row < 0:
            raise self.not_listed(blob_id)
        return Location(self._pack_ids[self.group_pack[self._row_group[row]]], self.entry(row))

    def not_listed(self, blob_id: bytes) -> IntegrityError:
        """The error for a referenced blob this index lacks; when index objects were left out
        as unreadable, it names them (the blob may be listed only there) and the way back."""
        message = f"chunk {blob_id.hex()[:16]} is referenced but no index lists it"
        if self.unreadable:
            first = self.unreadable[0].name
            more = len(self.unreadable) - 1
            message += (f"; {first}" + (f" and {more} more index objects" if more else "")
                        + " cannot be read: run 'sellerbak repair index' to rebuild the index "
                        "from the packs")
        return IntegrityError(message)

    def entry(self, row: int) -> BlobEntry:
        g = self._row_group[row]
        return BlobEntry(self.blob_id(row), self.group_offset[g], self._length[row],
                         self._raw_offset[row], self._raw_len[row], self._flags[row])

    def blob_id(self, row: int) -> bytes:
        return bytes(self._ids[row * ID_LEN: (row + 1) * ID_LEN])

    def fields(self, row: int) -> tuple[int, int, int, int, int]:
        """(group, sealed length, raw_offset, raw_len, flags) of a row, without objects."""
        return (self._row_group[row], self._length[row], self._raw_offset[row],
                self._raw_len[row], self._flags[row])

    def pack_id_of(self, group: int) -> bytes:
        return self._pack_ids[self.group_pack[group]]

    # ----- adding ---------------------------------------------------------------------------

    def add_pack(self, pack: PackRecord) -> None:
        self.add_entries(pack.pack_id, pack.size,
                         ((e.chunk_id, e.offset, e.length, e.raw_offset, e.raw_len, e.flags)
                          for e in pack.blobs))

    def add_entries(self, pack_id: bytes, size: int,
                    entries: Iterable[tuple[bytes, int, int, int, int, int]]) -> None:
        """Add one pack's entries (blob id, offset, length, raw_offset, raw_len, flags). A
        pack that is already indexed is skipped: every listing of a pack is identical, and
        the first one stays (docs/FORMAT.md §10)."""
        if pack_id in self.packs:
            return
        columns = tuple(zip(*entries, strict=True)) or ((),) * 6
        ids, offsets, lengths, raw_offsets, raw_lens, flags = columns
        if any(len(i) != ID_LEN for i in ids):
            raise FormatError(f"{pack_name(pack_id)}: blob id of the wrong length")
        info = PackInfo(self, pack_id, size, len(self._pack_ids))
        info.first_row, info.rows = len(self._raw_len), len(ids)
        info.first_group = len(self.group_offset)
        # group layout (docs/FORMAT.md §9.3): the sealing row is the last entry at raw_offset
        # 0; the plaintext size is the largest raw_offset + raw_len
        first: dict[int, int] = {}
        plain_size: dict[int, int] = {}
        row = info.first_row
        for offset, raw_offset, raw_len in zip(offsets, raw_offsets, raw_lens, strict=True):
            if raw_offset == 0:
                first[offset] = row
            end = raw_offset + raw_len
            if end > plain_size.get(offset, -1):
                plain_size[offset] = end
            row += 1
        group_of: dict[int, int] = {}
        for offset in sorted(plain_size):
            group_of[offset] = len(self.group_offset)
            self.group_pack.append(info.number)
            self.group_offset.append(offset)
            self.group_first.append(first.get(offset, _EMPTY))
            self.group_size.append(plain_size[offset])
        info.groups = len(group_of)
        self._ids += b"".join(ids)
        self._row_group.extend(group_of[o] for o in offsets)
        self._length.extend(lengths)
        self._raw_offset.extend(raw_offsets)
        self._raw_len.extend(raw_lens)
        self._flags.extend(flags)
        self.dict_rows.extend(r for r, f in enumerate(flags, info.first_row)
                              if blob_type(f) == TYPE_DICT)
        self._pack_ids.append(pack_id)
        self.packs[pack_id] = info
        self._insert(info.first_row, ids)

    def _insert(self, first_row: int, ids: tuple[bytes, ...]) -> None:
        """Put rows first_row.. (holding `ids`) in the table; an id already there keeps its
        first row (a blob listed again, in another pack). One loop with everything local: it
        runs once per blob of every pack loaded."""
        self.reserve(self._unique + len(ids))
        slots, stored = self._slots, self._ids
        mask = len(slots) - 1
        words = array("Q")
        words.frombytes(b"".join(i[:8] for i in ids))  # the hash: each id's first 8 bytes
        added = 0
        for row, key, blob_id in zip(range(first_row, first_row + len(ids)), words, ids,
                                     strict=True):
            slot = key & mask
            while True:
                other = slots[slot]
                if other == _EMPTY:
                    slots[slot] = row
                    added += 1
                    break
                if stored[other * ID_LEN: other * ID_LEN + ID_LEN] == blob_id:
                    break
                slot = (slot + 1) & mask
        self._unique += added

    def reserve(self, blobs: int) -> None:
        """Size the table for this many distinct ids (loading knows how many are coming:
        growing step by step would rehash everything each time)."""
        size = len(self._slots)
        while blobs * 2 > size:
            size *= 2
        if size != len(self._slots):
            self._grow(size)

    def _grow(self, size: int) -> None:
        old = self._slots
        slots = self._slots = array("i", [_EMPTY]) * size
        mask = len(slots) - 1
        with memoryview(self._ids) as view, view.cast("Q") as words:
            for row in old:
                if row == _EMPTY:
                    continue
                slot = words[row * (ID_LEN // 8)] & mask
                while slots[slot] != _EMPTY:
                    slot = (slot + 1) & mask
                slots[slot] = row

    # ----- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, repo: Repository, recover: bool = False, workers: int = 8,
             warn: bool = True) -> Index:
        """The index of the repository: every readable, not superseded index object, plus
        (with `recover`) the headers of packs none of them lists.

        An index object that does not open or parse is left out (`unreadable`), with one
        warning unless `warn` is off (check reports it itself): a planted object must not stop
        every backup and restore. Leaving it out is safe because nothing is ever taken from
        it: a blob only it lists is not in this index, so a snapshot run stores that data
        again (or finds it in the pack's authenticated header) and a restore that needs it
        fails naming the unreadable object."""
        index = cls()
        loaded, index.unreadable = read_index_objects(repo, workers)
        if warn:
            for item in index.unreadable:
                warn_once(item)
        # prune writes a consolidated index that names the ones it replaces, then deletes
        # them; until they are gone (or if prune was interrupted) they must be ignored, since
        # they may list packs that prune has deleted since
        superseded = {old for obj in loaded for old in obj.supersedes}
        index.reserve(sum(obj.entries for obj in loaded if obj.index_id not in superseded))
        while loaded:  # each object's plaintext is dropped once it is in the index
            obj = loaded.pop(0)
            if obj.index_id in superseded:
                continue
            index.index_ids.add(obj.index_id)
            for pack_id, size, entries in _index_packs(obj.plain, obj.name):
                index.add_entries(pack_id, size, entries)
        if recover:
            stored = {pid: info.size for info in repo.store.list("data/")
                      if (pid := parse_hex_id(info.name, "data/")) is not None}
            missing = [(pid, size) for pid, size in stored.items() if pid not in index.packs]

            def recover_one(item: tuple[bytes, int]) -> PackRecord | None:
                try:
                    return read_pack_record(repo, *item)
                except (IntegrityError, ObjectNotFoundError):
                    return None  # unreadable leftovers are prune's business, not ours

            with ThreadPoolExecutor(workers) as pool:
                for record in pool.map(recover_one, missing):
                    if record is not None:
                        index.add_pack(record)
                        index.unindexed.append(record)
        return index


class IndexVersionError(FormatError):
    """An index object that opened under the key but carries a version this reader does not
    know. Only a key holder (a newer sellerbak) writes one, and it may supersede others, so it
    stops the run rather than being skipped: skipping it would trust the index objects it
    replaces, which may list deleted packs (docs/FORMAT.md §2, §10)."""


@dataclass(slots=True)
class IndexObject:
    """One index object that opened and whose layout checked out, not yet decoded."""

    index_id: bytes
    name: str
    plain: bytes
    supersedes: list[bytes]
    entries: int

    def pack_records(self) -> list[PackRecord]:
        """Its pack records, decoded in full (prune's way; loading builds rows instead)."""
        return [PackRecord(pack_id, size, tuple(BlobEntry(*e) for e in entries))
                for pack_id, size, entries in _index_packs(self.plain, self.name)]


def read_index_objects(repo: Repository, workers: int = 8
                       ) -> tuple[list[IndexObject], list[Unreadable]]:
    """Every `index/` object in name order: the readable ones, and the ones that do not open
    (junk, truncated, another key, sealed for another name) or do not parse."""
    names = sorted((i.name, parse_hex_id(i.name, "index/")) for i in repo.store.list("index/"))

    def fetch(item: tuple[str, bytes]) -> IndexObject | Unreadable:
        name, iid = item
        try:
            plain = decompress(repo.open_sealed(Kind.INDEX, iid,
                                                repo.store.get(name, MAX_SEALED_BYTES), name),
                               name)
            supersedes, entries = _index_layout(plain, name)
        except IndexVersionError:
            raise
        except IntegrityError as exc:  # FormatError included
            return Unreadable(name, str(exc))
        return IndexObject(iid, name, plain, supersedes, entries)

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(fetch, [(n, iid) for n, iid in names if iid is not None]))
    return ([r for r in results if isinstance(r, IndexObject)],
            [r for r in results if isinstance(r, Unreadable)])


def _index_header(plain: bytes, what: str) -> int:
    if len(plain) < 9 or plain[:4] != INDEX_MAGIC:
        raise FormatError(f"{what}: bad index magic")
    if plain[4] not in (FORMAT_VERSION, INDEX_VERSION_SUPERSEDES):
        raise IndexVersionError(f"{what}: unsupported index version {plain[4]} (written by "
                                "a newer sellerbak?)")
    return int.from_bytes(plain[5:9], "big")


def _index_layout(plain: bytes, what: str) -> tuple[list[bytes], int]:
    """Check an index plaintext's layout (as format.decode_index does) without decoding its
    entries: its supersedes list, and how many entries it holds."""
    pos = 9
    entries = 0
    for _ in range(_index_header(plain, what)):
        if pos + 44 > len(plain):
            raise FormatError(f"{what}: pack table runs past the end")
        count = int.from_bytes(plain[pos + 40: pos + 44], "big")
        entries += count
        pos += 44 + count * ENTRY.size
        if pos > len(plain):
            raise FormatError(f"{what}: entry table runs past the end")
    if pos + 4 > len(plain):
        raise FormatError(f"{what}: index truncated")
    nsup = int.from_bytes(plain[pos: pos + 4], "big")
    pos += 4
    if pos + ID_LEN * nsup != len(plain):
        raise FormatError(f"{what}: index supersedes list has the wrong length")
    return [plain[pos + ID_LEN * i: pos + ID_LEN * (i + 1)] for i in range(nsup)], entries


def _index_packs(plain: bytes, what: str
                 ) -> Iterator[tuple[bytes, int, Iterable[tuple[bytes, int, int, int, int, int]]]]:
    """(pack id, size, entry tuples) for each pack record of a checked index plaintext; the
    entries are unpacked one by one, never all at once."""
    view = memoryview(plain)
    pos = 9
    for _ in range(_index_header(plain, what)):
        pack_id = plain[pos: pos + ID_LEN]
        size = int.from_bytes(plain[pos + 32: pos + 40], "big")
        count = int.from_bytes(plain[pos + 40: pos + 44], "big")
        pos += 44
        end = pos + count * ENTRY.size
        yield pack_id, size, ENTRY.iter_unpack(view[pos:end])
        pos = end


def read_pack_record(repo: Repository, pack_id: bytes, size: int) -> PackRecord:
    """Read and authenticate a pack's header (two range reads from its end)."""
    name = pack_name(pack_id)
    if size < TRAILER_LEN:
        raise FormatError(f"{name}: pack too short")
    tail = repo.store.get_range(name, -TRAILER_LEN, TRAILER_LEN)
    header_len = decode_trailer(tail, size, name)
    header_start = size - TRAILER_LEN - header_len
    sealed = repo.store.get_range(name, header_start, header_len)
    if len(sealed) != header_len:
        raise FormatError(f"{name}: pack truncated")
    plain = repo.open_sealed(Kind.PACK_HEADER, pack_id, sealed, f"{name} header")
    entries = decode_pack_header(plain, size, header_start, name)
    return PackRecord(pack_id, size, tuple(entries))


def write_index(repo: Repository, packs: Sequence[PackRecord | PackInfo],
                supersedes: list[bytes] | None = None) -> bytes:
    """Store one index object listing `packs`; returns its id."""
    index_id = os.urandom(32)
    plain = encode_index(packs, supersedes or [])  # type: ignore[arg-type]  # same fields
    repo.store.put(index_name(index_id), repo.seal(Kind.INDEX, index_id, plain))
    return index_id
