"""The compact in-memory index and the chunk reader's read planner.

The index keeps one row per blob entry in flat columns and finds rows through a hash table of
its own; these tests pin what callers rely on (lookups, the first listing of a duplicate wins,
unknown ids are unknown, pack views give back exactly the entries that went in, superseded index
objects are ignored) and that it stays compact. The reader tests pin that planning reads by
pack region keeps the output in the requested order, looks ahead only a bounded amount, merges
reads that alternate between packs into few requests, and still refuses damaged data.
"""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import pytest

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import IntegrityError
from sellerbak.repository.format import (
    TRAILER_LEN,
    TYPE_CHUNK,
    TYPE_DICT,
    TYPE_REFLIST,
    TYPE_SHIFT,
    BlobEntry,
    PackRecord,
    decode_index,
    encode_pack_header,
    encode_trailer,
)
from sellerbak.repository.index import Index, write_index
from sellerbak.repository.packs import GROUP_RAW, ChunkReader, PackWriter
from sellerbak.repository.repo import Repository, index_name, pack_name
from sellerbak.storage.local import LocalStore
from tests.helpers import init_repo

# ------------------------------------------------------------------------ the compact index


def _entries(n: int, per_group: int = 4, flags: int = 0x01) -> list[BlobEntry]:
    out = []
    for i in range(n):
        group, pos = divmod(i, per_group)
        out.append(BlobEntry(os.urandom(32), 1000 * group, 900, 100 * pos, 100, flags))
    return out


def _pack(entries: list[BlobEntry]) -> PackRecord:
    return PackRecord(os.urandom(32), 10_000_000, tuple(entries))


def test_every_listed_blob_is_found_where_its_pack_says() -> None:
    index = Index()
    packs = [_pack(_entries(50)), _pack(_entries(7, flags=TYPE_REFLIST << TYPE_SHIFT))]
    for p in packs:
        index.add_pack(p)
    for p in packs:
        assert index.packs[p.pack_id].blobs == p.blobs
        assert index.packs[p.pack_id].size == p.size
        for e in p.blobs:
            assert e.chunk_id in index
            loc = index.locate(e.chunk_id)
            assert (loc.pack_id, loc.entry) == (p.pack_id, e)
    assert index.blob_count == 57


def test_unknown_ids_are_not_found() -> None:
    index = Index()
    p = _pack(_entries(20))
    index.add_pack(p)
    known = p.blobs[3].chunk_id
    for unknown in (os.urandom(32), known[:31], known + b"\0", b"", known[:8] + bytes(24)):
        assert unknown not in index
        assert index.row(unknown) == -1
        with pytest.raises(IntegrityError, match="no index lists it"):
            index.locate(unknown)
    assert Index()  # an empty index is still an index (callers write `index or load()`)


def test_a_blob_in_two_packs_is_found_in_the_first() -> None:
    index = Index()
    first, second = _pack(_entries(10)), _pack(_entries(10))
    shared = first.blobs[4]
    moved = BlobEntry(shared.chunk_id, 5000, 700, 0, 100, 0x01)
    second = PackRecord(second.pack_id, second.size, second.blobs + (moved,))
    index.add_pack(first)
    index.add_pack(second)
    assert index.locate(shared.chunk_id) == index.locate(shared.chunk_id)
    assert index.locate(shared.chunk_id).pack_id == first.pack_id
    assert index.locate(shared.chunk_id).entry == shared
    assert index.packs[second.pack_id].blobs == second.blobs  # the pack still lists it
    assert index.blob_count == 20
    index.add_pack(first)  # a pack listed again (by another index object) is not doubled
    assert index.packs[first.pack_id].blobs == first.blobs and index.blob_count == 20


def test_ids_that_share_their_hash_bits_are_told_apart() -> None:
    """The table hashes on the first 8 bytes; ids equal there must still be distinct."""
    index = Index()
    prefix = os.urandom(8)
    entries = [BlobEntry(prefix + os.urandom(24), 0, 500, 10 * i, 10, 0x01) for i in range(40)]
    index.add_pack(_pack(entries))
    for e in entries:
        assert index.locate(e.chunk_id).entry == e
    assert prefix + os.urandom(24) not in index


def test_many_packs_grow_the_table_and_lose_nothing() -> None:
    index = Index()
    packs = [_pack(_entries(3000, per_group=16)) for _ in range(10)]
    for p in packs:
        index.add_pack(p)
    rng = random.Random(5)
    for p in rng.sample(packs, 4):
        for e in rng.sample(p.blobs, 200):
            assert index.locate(e.chunk_id) == index.locate(e.chunk_id)
            assert index.locate(e.chunk_id).entry == e
    assert sum(os.urandom(32) in index for _ in range(2000)) == 0
    assert index.blob_count == 30_000


def test_group_layout_follows_the_format() -> None:
    """§9.3: a group's sealing id is the last entry at raw_offset 0; its size is the largest
    raw_offset + raw_len; groups are kept in offset order whatever the entry order."""
    a, b, c = (os.urandom(32) for _ in range(3))
    entries = [BlobEntry(a, 5000, 300, 0, 40, 0x01), BlobEntry(b, 100, 200, 60, 30, 0x01),
               BlobEntry(c, 100, 200, 0, 60, 0x01)]
    index = Index()
    index.add_pack(_pack(entries))
    info = index.packs[next(iter(index.packs))]
    groups = range(info.first_group, info.first_group + info.groups)
    assert [index.group_offset[g] for g in groups] == [100, 5000]
    assert [index.blob_id(index.group_first[g]) for g in groups] == [c, a]
    assert [index.group_size[g] for g in groups] == [90, 40]


def test_dictionary_rows_are_listed() -> None:
    index = Index()
    dicts = _entries(2, flags=TYPE_DICT << TYPE_SHIFT)
    index.add_pack(_pack(_entries(5) + dicts))
    assert [index.blob_id(r) for r in index.dict_rows] == [e.chunk_id for e in dicts]


def test_rows_stay_compact() -> None:
    """About 60 bytes per blob (the id is 32 of them), where an object per entry costs ~350:
    the index is what grows with the shop, so this is what keeps memory flat."""
    packs = [_pack(_entries(10_000, per_group=16)) for _ in range(5)]
    tracemalloc.start()
    try:
        index = Index()
        for p in packs:
            index.add_pack(p)
        used, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.blob_count == 50_000
    assert used / 50_000 < 100


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return init_repo(LocalStore(tmp_path / "repo"))


def test_load_reads_index_objects_and_ignores_superseded_ones(repo: Repository) -> None:
    live, old, stale = _pack(_entries(6)), _pack(_entries(5)), _pack(_entries(4))
    old_id = write_index(repo, [old, stale])
    write_index(repo, [live, old], supersedes=[old_id])
    index = Index.load(repo)
    assert set(index.packs) == {live.pack_id, old.pack_id}
    assert old_id not in index.index_ids and len(index.index_ids) == 1
    assert all(e.chunk_id not in index for e in stale.blobs)
    assert index.packs[live.pack_id].blobs == live.blobs


def test_pack_views_are_written_back_as_they_were_read(repo: Repository) -> None:
    records = [_pack(_entries(9)), _pack(_entries(3))]
    index = Index()
    for r in records:
        index.add_pack(r)
    for packs in ([index.packs[r.pack_id] for r in records],
                  [index.packs[r.pack_id].record_view() for r in records]):
        index_id = write_index(repo, packs)
        sealed = repo.store.get(index_name(index_id))
        plain = repo.open_sealed(Kind.INDEX, index_id, sealed, "index")
        assert decode_index(plain, "index") == (records, [])


# ------------------------------------------------------------------------ the read planner


def _write_packs(repo: Repository, index: Index, packs: int, blobs: int,
                 size: int = 3000) -> list[list[tuple[bytes, bytes]]]:
    """`packs` packs of `blobs` incompressible chunks each (one flush per pack)."""
    out = []
    for _ in range(packs):
        writer = PackWriter(repo, index)
        try:
            mine = []
            for _ in range(blobs):
                plain = os.urandom(size // 2).hex().encode()[:size - 1] + b"\n"
                blob_id = repo.chunk_id(plain)
                writer.add(blob_id, plain)
                mine.append((blob_id, plain))
            writer.flush()
        finally:
            writer.close()
        out.append(mine)
    return out


class _CountingStore:
    """Counts range requests (and the bytes they ask for) on the way to a real store."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self.ranges: list[int] = []

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        self.ranges.append(length)
        return self._store.get_range(name, offset, length)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def _counting(repo: Repository) -> _CountingStore:
    counting = _CountingStore(repo.store)  # type: ignore[arg-type]
    repo.store = counting  # type: ignore[assignment]
    return counting


def test_blobs_come_back_in_the_order_asked_whatever_the_layout(repo: Repository) -> None:
    index = Index()
    stored = [b for pack in _write_packs(repo, index, 3, 120) for b in pack]
    wanted = stored + stored[::7]  # some twice, far apart
    random.Random(3).shuffle(wanted)
    reader = ChunkReader(repo, index)
    reader.WINDOW_RAW, reader.WINDOW_BLOBS, reader.WINDOWS = 64 * 1024, 25, 3
    assert list(reader.read(blob_id for blob_id, _ in wanted)) == [p for _, p in wanted]
    assert list(reader.read([])) == []


def test_reads_alternating_between_packs_take_one_request_per_pack(repo: Repository) -> None:
    """The latest snapshot after a night of changes alternates between the packs of both
    nights; planning by pack region reads each pack's run of groups at once."""
    index = Index()
    night0, night1 = _write_packs(repo, index, 2, 150)
    alternating = [b for pair in zip(night0, night1, strict=True) for b in pair]
    counting = _counting(repo)
    reader = ChunkReader(repo, index)
    assert list(reader.read(b for b, _ in alternating)) == [p for _, p in alternating]
    assert len(counting.ranges) == 2


def _growing_round_robin(index: Index, blobs: list[tuple[bytes, bytes]]
                         ) -> list[tuple[bytes, bytes]]:
    """Blobs taken one from each group in turn, over a growing set of groups: every window
    needs every group opened so far again, the worst case for what a reader keeps."""
    groups: dict[int, list[tuple[bytes, bytes]]] = {}
    for b in blobs:
        groups.setdefault(index.fields(index.row(b[0]))[0], []).append(b)
    active: list[list[tuple[bytes, bytes]]] = []
    out = []
    for members in groups.values():
        active.append(members)
        for a in active:
            if a:
                out.append(a.pop(0))
    while any(active):
        out.extend(a.pop(0) for a in active if a)
    return out


@pytest.mark.parametrize("order", ["stored", "growing round robin over groups"])
def test_plaintext_held_is_bounded(repo: Repository, monkeypatch: pytest.MonkeyPatch,
                                   order: str) -> None:
    """The reader holds group plaintext only for the windows it planned ahead, and plans
    ahead only while that stays under its budget: a dataset of any size, in any order, is
    read with bounded memory (and the ids are pulled lazily, not all at once)."""
    import weakref

    from sellerbak.repository import packs

    class Tracked(packs._Held):
        live: weakref.WeakSet[Tracked] = weakref.WeakSet()

        def __init__(self, *args: int) -> None:
            super().__init__(*args)
            Tracked.live.add(self)

    monkeypatch.setattr(packs, "_Held", Tracked)
    index = Index()
    stored = [b for pack in _write_packs(repo, index, 2, 300) for b in pack]
    if order != "stored":
        stored = _growing_round_robin(index, stored)
    reader = ChunkReader(repo, index)
    reader.WINDOW_RAW, reader.WINDOWS = 2 * GROUP_RAW, 2
    group_plain = GROUP_RAW + 3000
    pulled = 0

    def ids():
        nonlocal pulled
        for blob_id, _ in stored:
            pulled += 1
            yield blob_id

    most_held = most_ahead = 0
    for handed, plain in enumerate(reader.read(ids()), start=1):
        assert plain == stored[handed - 1][1]
        most_held = max(most_held, sum(h.size for h in list(Tracked.live)))
        most_ahead = max(most_ahead, pulled - handed)
    budget = reader.WINDOWS * reader.WINDOW_RAW
    assert 0 < most_held <= budget + reader.WINDOW_RAW + 2 * group_plain
    assert most_ahead < len(stored) // 2


def test_a_damaged_pack_is_refused(repo: Repository) -> None:
    index = Index()
    (blobs,) = _write_packs(repo, index, 1, 60)
    (pack_id,) = index.packs
    name = pack_name(pack_id)
    data = bytearray(repo.store.get(name))
    data[len(data) // 2] ^= 0x01
    repo.store.delete(name)
    repo.store.put(name, bytes(data))
    with pytest.raises(IntegrityError):
        list(ChunkReader(repo, index).read(b for b, _ in blobs))


def _forged_offsets(repo: Repository, blobs: list[bytes], wrong: bytes) -> Index:
    """One authentic group of `blobs`, listed by an index in which `wrong` points at its
    neighbour's bytes: the group opens, only the blob's own id check can notice."""
    plain = b"".join(blobs)
    ids = [repo.chunk_id(b) for b in blobs]
    sealed = repo.seal(Kind.BLOB, ids[0], plain)
    entries, pos = [], 0
    for blob_id, b in zip(ids, blobs, strict=True):
        entries.append(BlobEntry(blob_id, 0, len(sealed), pos, len(b), 0x00))
        pos += len(b)
    i = ids.index(wrong)
    e = entries[i]
    entries[i] = BlobEntry(e.chunk_id, 0, e.length, entries[i - 1].raw_offset, e.raw_len, 0)
    pack_id = os.urandom(32)
    header = repo.seal(Kind.PACK_HEADER, pack_id, encode_pack_header(entries))
    repo.store.put(pack_name(pack_id), sealed + header + encode_trailer(len(header)))
    index = Index()
    index.add_pack(PackRecord(pack_id, len(sealed) + len(header) + TRAILER_LEN,
                              tuple(entries)))
    return index


@pytest.mark.parametrize("where", ["opening thread", "later window"])
def test_a_blob_that_does_not_match_its_id_is_refused(repo: Repository, where: str) -> None:
    """Blobs are verified by the thread that opens their group, or, when a later window wants
    an already opened group again, by the consumer; both must check."""
    blobs = [(b"%d " % i + os.urandom(20).hex().encode()).ljust(59) + b"\n" for i in range(6)]
    ids = [repo.chunk_id(b) for b in blobs]
    index = _forged_offsets(repo, blobs, ids[3])
    reader = ChunkReader(repo, index)
    out = reader.read([ids[0], ids[3]])
    if where == "later window":  # the second blob is planned after its group was opened
        reader.WINDOW_BLOBS = 1
        assert next(out) == blobs[0]
    with pytest.raises(IntegrityError, match="does not match its id"):
        next(out)
    assert list(ChunkReader(repo, index).read([ids[0], ids[4]])) == [blobs[0], blobs[4]]


def test_a_reference_of_another_type_is_refused_before_reading(repo: Repository) -> None:
    index = Index()
    (blobs,) = _write_packs(repo, index, 1, 5)
    counting = _counting(repo)
    with pytest.raises(IntegrityError, match="type"):
        list(ChunkReader(repo, index).read([blobs[0][0]], TYPE_REFLIST))
    assert counting.ranges == []
    assert list(ChunkReader(repo, index).read([blobs[0][0]], TYPE_CHUNK)) == [blobs[0][1]]


def test_stopping_early_leaves_no_request_running(repo: Repository) -> None:
    """A read given up half way cancels what it queued and waits for what already runs: the
    caller may close the repository next. The reader stays usable."""
    import threading

    index = Index()
    (blobs,) = _write_packs(repo, index, 1, 200)
    in_flight = 0
    lock = threading.Lock()
    store = repo.store

    class Tracking:
        def get_range(self, name: str, offset: int, length: int) -> bytes:
            nonlocal in_flight
            with lock:
                in_flight += 1
            try:
                return store.get_range(name, offset, length)
            finally:
                with lock:
                    in_flight -= 1

        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

    repo.store = Tracking()  # type: ignore[assignment]
    reader = ChunkReader(repo, index)
    reader.WINDOW_BLOBS, reader.MAX_RANGE = 5, 4096
    out = reader.read(b for b, _ in blobs)
    assert next(out) == blobs[0][1]
    out.close()
    assert in_flight == 0
    assert list(reader.read(b for b, _ in blobs[::-1])) == [p for _, p in blobs[::-1]]


# ------------------------------------------------------------------------ the pack writer


def test_a_filling_pack_waits_on_disk_not_in_memory(repo: Repository) -> None:
    """Sealed groups of the pack being filled go to a temporary file: a run's memory holds
    the pack being uploaded, not also the next one filling up behind it."""
    index = Index()
    writer = PackWriter(repo, index)
    blobs = []
    try:
        tracemalloc.start()
        for _ in range(96):  # 12 MiB of incompressible chunks: less than one pack
            plain = os.urandom(128 * 1024)
            blobs.append((repo.chunk_id(plain), plain))
            writer.add(blobs[-1][0], plain)
            del plain
        writer._submit_batch()
        while writer._sealing:
            writer._collect_one()
        held, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        live = sum(len(p) for _, p in blobs)
        assert held - live < 4 << 20
        writer.flush()
    finally:
        tracemalloc.stop()
        writer.close()
    assert len(index.packs) == 1
    assert list(ChunkReader(repo, index).read(b for b, _ in blobs)) == [p for _, p in blobs]


def test_the_allocator_is_tuned_where_it_can_be() -> None:
    import platform

    from sellerbak import allocator

    assert allocator.tune() is (platform.libc_ver()[0] == "glibc")
