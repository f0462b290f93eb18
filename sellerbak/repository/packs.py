"""Writing blobs into packs, and reading them back in order.

Writing: new blobs are compressed (zstd, with the dataset's dictionary when it has one) and
sealed in worker threads, in batches (zstd releases the GIL, so both cores work), appended to the
current pack, and a full pack is uploaded in the background while the next one fills. Packs are
named by a random 32-byte id, so concurrent writers never collide and nothing is overwritten.

Reading: `ChunkReader` fetches blobs in the order given, grouping neighbours in the same pack
into one range request and keeping a bounded number of requests in flight. Every blob is
authenticated (AEAD bound to its id and kind) and its keyed id recomputed from the plaintext.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zstandard

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import IntegrityError
from sellerbak.repository.format import (
    COMP_MASK,
    COMP_NONE,
    COMP_ZSTD,
    COMP_ZSTD_DICT,
    TYPE_CHUNK,
    TYPE_DICT,
    TYPE_REFLIST,
    TYPE_SHIFT,
    BlobEntry,
    PackRecord,
    blob_type,
    encode_pack_header,
    encode_trailer,
)
from sellerbak.repository.index import Index, write_index
from sellerbak.repository.repo import Repository, pack_name

ZSTD_LEVEL = 3
#: packs per index object while a snapshot runs; the rest go in one final index
INDEX_EVERY_PACKS = 8
#: blobs handed to a worker at once (per-task overhead would otherwise dominate small chunks)
BATCH_BLOBS = 64
BATCH_BYTES = 1 << 20
MAX_DICT_BYTES = 1 << 20

KIND_OF_TYPE = {TYPE_CHUNK: Kind.BLOB, TYPE_REFLIST: Kind.REFLIST, TYPE_DICT: Kind.DICT}
KNOWN_FLAGS = COMP_MASK | (0x03 << TYPE_SHIFT)

_tls = threading.local()


def _per_thread(kind: str, zdict: zstandard.ZstdCompressionDict | None,
                make: Callable[[], Any]) -> Any:
    """One zstd context per thread and dictionary: contexts are not thread-safe, and building
    one (above all with a dictionary) costs more than compressing a chunk."""
    cache: dict[tuple[str, int], Any] = getattr(_tls, "contexts", None) or {}
    _tls.contexts = cache
    key = (kind, id(zdict) if zdict is not None else 0)
    ctx = cache.get(key)
    if ctx is None:
        ctx = cache[key] = make()
    return ctx


def _compressor(zdict: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdCompressor:
    return _per_thread("c", zdict, lambda: zstandard.ZstdCompressor(
        level=ZSTD_LEVEL, dict_data=zdict, write_content_size=True))


def load_dictionary(raw: bytes) -> zstandard.ZstdCompressionDict:
    zdict = zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_FULLDICT)
    zdict.precompute_compress(level=ZSTD_LEVEL)
    return zdict


@dataclass
class WriteStats:
    chunks_new: int = 0
    chunks_reused: int = 0
    bytes_raw_new: int = 0
    bytes_stored: int = 0
    packs: int = 0


_Item = tuple[bytes, int, bytes, "zstandard.ZstdCompressionDict | None"]
#: a group is a run of blobs of one type and dictionary, compressed and sealed as one message
GROUP_RAW = 128 * 1024


class PackWriter:
    """Accepts new blobs; seals them in groups; uploads them in packs; writes index objects for
    uploaded packs."""

    def __init__(self, repo: Repository, index: Index, workers: int = 2,
                 upload_workers: int = 3, max_pending_batches: int = 8,
                 on_upload: Callable[[int], None] | None = None) -> None:
        self.repo = repo
        self.index = index
        self.stats = WriteStats()
        self._seal_pool = ThreadPoolExecutor(workers, thread_name_prefix="seal")
        self._upload_pool = ThreadPoolExecutor(upload_workers, thread_name_prefix="upload")
        self._groups: dict[tuple[int, int], list[_Item]] = {}
        self._group_raw: dict[tuple[int, int], int] = {}
        self._batch: list[list[_Item]] = []
        self._batch_bytes = 0
        self._sealing: deque[Future[list[tuple[list[BlobEntry], bytes]]]] = deque()
        self._uploads: deque[Future[PackRecord]] = deque()
        self._max_pending = max_pending_batches
        self._max_uploads = upload_workers + 1
        self._blobs: list[bytes] = []
        self._entries: list[BlobEntry] = []
        self._size = 0
        self._in_run: set[bytes] = set()
        self._uploaded: list[PackRecord] = []
        self._on_upload = on_upload
        self.index_ids: list[bytes] = []
        # packs found without an index (an earlier run was interrupted): list them in ours
        self._uploaded.extend(index.unindexed)
        index.unindexed = []

    def knows(self, blob_id: bytes) -> bool:
        return blob_id in self.index or blob_id in self._in_run

    def add(self, blob_id: bytes, plaintext: bytes, btype: int = TYPE_CHUNK,
            zdict: zstandard.ZstdCompressionDict | None = None) -> bool:
        """Store a blob unless the repository already has it; returns True if it is new."""
        if self.knows(blob_id):
            if btype == TYPE_CHUNK:
                self.stats.chunks_reused += 1
            return False
        self._in_run.add(blob_id)
        if btype == TYPE_CHUNK:
            self.stats.chunks_new += 1
        self.stats.bytes_raw_new += len(plaintext)
        key = (btype, id(zdict) if zdict is not None else 0)
        if key in self._groups and self._group_raw[key] + len(plaintext) > GROUP_RAW:
            self._close_group(key)
        self._groups.setdefault(key, []).append((blob_id, btype, plaintext, zdict))
        self._group_raw[key] = self._group_raw.get(key, 0) + len(plaintext)
        return True

    def _close_group(self, key: tuple[int, int]) -> None:
        self._batch.append(self._groups.pop(key))
        self._batch_bytes += self._group_raw.pop(key)
        if self._batch_bytes >= BATCH_BYTES:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._sealing.append(self._seal_pool.submit(self._seal_batch, batch))
        while len(self._sealing) > self._max_pending:
            self._collect_one()

    def _seal_batch(self, batch: list[list[_Item]]) -> list[tuple[list[BlobEntry], bytes]]:
        out = []
        for items in batch:
            btype, zdict = items[0][1], items[0][3]
            plaintext = b"".join(item[2] for item in items)
            body = _compressor(zdict).compress(plaintext)
            comp = COMP_ZSTD_DICT if zdict is not None else COMP_ZSTD
            if len(body) >= len(plaintext):
                body, comp = plaintext, COMP_NONE
            # a group is sealed under the id of its first blob (see docs/FORMAT.md)
            sealed = self.repo.seal(KIND_OF_TYPE[btype], items[0][0], body)
            flags = comp | (btype << TYPE_SHIFT)
            entries, raw_offset = [], 0
            for blob_id, _t, plain, _d in items:
                entries.append(BlobEntry(blob_id, 0, len(sealed), raw_offset, len(plain), flags))
                raw_offset += len(plain)
            out.append((entries, sealed))
        return out

    def _collect_one(self) -> None:
        for entries, sealed in self._sealing.popleft().result():
            for e in entries:
                self._entries.append(BlobEntry(e.chunk_id, self._size, e.length, e.raw_offset,
                                               e.raw_len, e.flags))
            self._blobs.append(sealed)
            self._size += len(sealed)
            if self._size >= self.repo.pack_size:
                self._finish_pack()

    def _finish_pack(self) -> None:
        if not self._entries:
            return
        pack_id = os.urandom(32)
        header = self.repo.seal(Kind.PACK_HEADER, pack_id, encode_pack_header(self._entries))
        self._blobs.append(header)
        self._blobs.append(encode_trailer(len(header)))
        record = PackRecord(pack_id, self._size + len(header) + 8, tuple(self._entries))
        body = b"".join(self._blobs)
        self._blobs, self._entries, self._size = [], [], 0
        while len(self._uploads) >= self._max_uploads:
            self._finish_upload()
        self._uploads.append(self._upload_pool.submit(self._upload, record, body))

    def _upload(self, record: PackRecord, body: bytes) -> PackRecord:
        self.repo.store.put(pack_name(record.pack_id), body)
        return record

    def _finish_upload(self) -> None:
        record = self._uploads.popleft().result()
        self.stats.packs += 1
        self.stats.bytes_stored += record.size
        self._uploaded.append(record)
        if self._on_upload:
            self._on_upload(record.size)
        if len(self._uploaded) >= INDEX_EVERY_PACKS:
            self._write_index()

    def _write_index(self) -> None:
        if self._uploaded:
            self.index_ids.append(write_index(self.repo, self._uploaded))
            for record in self._uploaded:
                self.index.add_pack(record)
                for e in record.blobs:  # now known through the index
                    self._in_run.discard(e.chunk_id)
            self._uploaded = []

    def flush(self) -> None:
        """Upload everything pending and index it; after this, every added blob is stored."""
        for key in list(self._groups):
            self._close_group(key)
        self._submit_batch()
        while self._sealing:
            self._collect_one()
        self._finish_pack()
        while self._uploads:
            self._finish_upload()
        self._write_index()
        self._in_run.clear()

    def close(self) -> None:
        self._seal_pool.shutdown(wait=True, cancel_futures=True)
        self._upload_pool.shutdown(wait=True, cancel_futures=True)


class ChunkReader:
    """Yields the plaintext of blobs in the given order, verified, with read-ahead."""

    #: a request covers at most this many bytes of *plaintext* (data compresses 5-10x, so
    #: bounding compressed bytes alone would let decompressed read-ahead balloon)
    MAX_REQUEST_RAW = 4 * 1024 * 1024
    MAX_REQUEST = 4 * 1024 * 1024
    MAX_GAP = 256 * 1024
    #: recently opened groups (up to 128 KiB of plaintext each): a snapshot whose chunks
    #: alternate between older and newer packs comes back to the same group again and again
    CACHE_GROUPS = 48
    READ_THROUGH = 1024 * 1024
    SEALED_CACHE_GROUPS = 256

    def __init__(self, repo: Repository, index: Index, workers: int = 4,
                 read_ahead: int = 6) -> None:
        self.repo = repo
        self.index = index
        self.workers = workers
        self.read_ahead = read_ahead
        self._dicts: dict[int, list[zstandard.ZstdCompressionDict]] = {}
        self._dict_blobs: set[bytes] = set()
        self._dicts_scanned = -1
        self._dict_lock = threading.RLock()
        self._layout_lock = threading.Lock()
        self._layouts: dict[bytes, dict[int, tuple[bytes, int, int]]] = {}
        self._sizes: dict[bytes, int] | None = None
        self._cache: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._sealed_cache: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._spans: dict[bytes, list[tuple[int, int]]] = {}

    def _plan(self, blob_ids: Iterable[bytes]) -> Iterator[tuple[bytes, list[BlobEntry]]]:
        """Group consecutive blobs stored near each other in one pack into one request."""
        group: list[BlobEntry] = []
        group_pack: bytes | None = None
        raw = 0
        for cid in blob_ids:
            loc = self.index.locate(cid)
            e = loc.entry
            if group and loc.pack_id == group_pack:
                last = group[-1]
                end = last.offset + last.length
                same_group = e.offset == last.offset
                gap_ok = same_group or (e.offset >= end and e.offset - end <= self.MAX_GAP)
                if (gap_ok and e.offset + e.length - group[0].offset <= self.MAX_REQUEST
                        and raw + e.raw_len <= self.MAX_REQUEST_RAW) or same_group:
                    group.append(e)
                    raw += e.raw_len
                    continue
            if group:
                assert group_pack is not None
                yield group_pack, group
            group, group_pack, raw = [e], loc.pack_id, e.raw_len
        if group:
            assert group_pack is not None
            yield group_pack, group

    def expect_sizes(self, sizes: dict[bytes, int]) -> None:
        """Check each pack against this listing (name -> size) before reading from it."""
        self._sizes = sizes

    def _check_size(self, pack_id: bytes, name: str) -> None:
        if self._sizes is None:
            return
        stored = self._sizes.get(pack_id)
        if stored is None:
            raise IntegrityError(f"{name} is missing from the repository")
        if stored != self.index.packs[pack_id].size:
            raise IntegrityError(f"{name} has size {stored}, the index says "
                                 f"{self.index.packs[pack_id].size} (truncated or replaced)")

    def _fetch(self, pack_id: bytes, entries: list[BlobEntry]) -> list[memoryview]:
        name = pack_name(pack_id)
        self._check_size(pack_id, name)
        groups: dict[int, bytes] = {}
        missing: list[BlobEntry] = []
        with self._cache_lock:
            for e in entries:
                if e.offset in groups:
                    continue
                cached = self._cache.get((pack_id, e.offset))
                if cached is not None:
                    self._cache.move_to_end((pack_id, e.offset))
                    groups[e.offset] = cached
                elif not missing or missing[-1].offset != e.offset:
                    missing.append(e)
        if missing:
            sealed = self._sealed_groups(pack_id, name, missing)
            for e in missing:
                if e.offset not in groups:
                    groups[e.offset] = self.open_group(name, pack_id, e, sealed[e.offset])
            with self._cache_lock:
                for e in missing:
                    self._cache[(pack_id, e.offset)] = groups[e.offset]
                while len(self._cache) > self.CACHE_GROUPS:
                    self._cache.popitem(last=False)
        return [self.check_blob(name, e, groups[e.offset]) for e in entries]

    def _sealed_groups(self, pack_id: bytes, name: str, missing: list[BlobEntry]
                       ) -> dict[int, bytes]:
        """The sealed bytes of the groups in `missing`, from the cache or one range read. The
        read goes on through the pack's next groups (up to READ_THROUGH bytes): a snapshot
        whose chunks alternate between packs needs them next, and without this every group
        would cost a request of its own."""
        out: dict[int, bytes] = {}
        with self._cache_lock:
            for e in missing:
                hit = self._sealed_cache.pop((pack_id, e.offset), None)
                if hit is not None:
                    out[e.offset] = hit
        need = [e for e in missing if e.offset not in out]
        if not need:
            return out
        start = min(e.offset for e in need)
        end = max(e.offset + e.length for e in need)
        spans = self.group_spans(pack_id)
        i = bisect.bisect_right(spans, (end, -1))
        while i < len(spans) and spans[i][0] == end and end - start < self.READ_THROUGH:
            end += spans[i][1]
            i += 1
        data = self.repo.store.get_range(name, start, end - start)
        if len(data) != end - start:
            raise IntegrityError(f"{name}: pack is truncated")
        wanted = {e.offset for e in need}
        extra: list[tuple[int, bytes]] = []
        for offset, length in spans[bisect.bisect_left(spans, (start, -1)):]:
            if offset + length > end:
                break
            piece = data[offset - start: offset - start + length]
            if offset in wanted:
                out[offset] = piece
            else:
                extra.append((offset, piece))
        for e in need:  # a group the layout does not list would be a damaged index
            if e.offset not in out:
                out[e.offset] = data[e.offset - start: e.offset - start + e.length]
        with self._cache_lock:
            for offset, piece in extra:
                self._sealed_cache[(pack_id, offset)] = piece
            while len(self._sealed_cache) > self.SEALED_CACHE_GROUPS:
                self._sealed_cache.popitem(last=False)
        return out

    def group_spans(self, pack_id: bytes) -> list[tuple[int, int]]:
        """(offset, sealed length) of every group in a pack, in pack order."""
        with self._layout_lock:
            spans = self._spans.get(pack_id)
            if spans is None:
                spans = sorted({(e.offset, e.length) for e in self.index.packs[pack_id].blobs})
                self._spans[pack_id] = spans
            return spans

    def group_layout(self, pack_id: bytes) -> dict[int, tuple[bytes, int, int]]:
        """Per group offset in a pack: the id of its first blob (the group's sealing id), the
        size of its plaintext, and the first blob's length."""
        with self._layout_lock:
            layout = self._layouts.get(pack_id)
            if layout is None:
                layout = {}
                for e in self.index.packs[pack_id].blobs:
                    first, size, first_len = layout.get(e.offset, (b"", 0, 0))
                    if e.raw_offset == 0:
                        first, first_len = e.chunk_id, e.raw_len
                    layout[e.offset] = (first, max(size, e.raw_offset + e.raw_len), first_len)
                self._layouts[pack_id] = layout
            return layout

    def open_group(self, name: str, pack_id: bytes, e: BlobEntry, sealed: bytes) -> bytes:
        """Authenticate and decompress one sealed group."""
        what = f"{name} group at {e.offset}"
        btype = blob_type(e.flags)
        if btype not in KIND_OF_TYPE or e.flags & ~KNOWN_FLAGS:
            raise IntegrityError(f"{what}: unknown blob type or flags")
        layout = self.group_layout(pack_id).get(e.offset, (b"", 0, 0))
        first, size, _first_len = layout
        if not first:
            raise IntegrityError(f"{what}: the index lists no first blob for it")
        body = self.repo.open_sealed(KIND_OF_TYPE[btype], first, sealed, what)
        comp = e.flags & COMP_MASK
        try:
            if comp == COMP_ZSTD:
                plain = _decompressor(None).decompress(body, max_output_size=size)
            elif comp == COMP_ZSTD_DICT:
                plain = self._decompress_with_dictionary(body, layout, btype, what)
            elif comp == COMP_NONE:
                plain = body
            else:
                raise IntegrityError(f"{what}: unknown compression")
        except zstandard.ZstdError:
            raise IntegrityError(f"{what} does not decompress") from None
        if len(plain) != size:
            raise IntegrityError(f"{what}: plaintext has the wrong size")
        return plain

    def check_blob(self, name: str, e: BlobEntry, group_plain: bytes) -> memoryview:
        """One blob out of its group's plaintext (a view, not a copy), its keyed id
        recomputed."""
        plain = memoryview(group_plain)[e.raw_offset: e.raw_offset + e.raw_len]
        if len(plain) != e.raw_len or self.repo.blob_id(blob_type(e.flags), plain) != e.chunk_id:
            raise IntegrityError(f"{name} blob {e.chunk_id.hex()[:16]}: content does not match "
                                 "its id")
        return plain

    def _load_dictionaries(self) -> None:
        """Load the dictionary blobs the index lists that are not loaded yet (the index grows
        while a snapshot runs). One that cannot be read is skipped: only groups that need it
        will fail, with a clear error."""
        with self._dict_lock:
            if len(self.index.chunks) == self._dicts_scanned:
                return  # nothing new since the last scan: a missing dictionary stays missing
            self._dicts_scanned = len(self.index.chunks)
            for cid, loc in list(self.index.chunks.items()):
                e = loc.entry
                if (blob_type(e.flags) != TYPE_DICT or e.raw_len > MAX_DICT_BYTES
                        or cid in self._dict_blobs):
                    continue
                self._dict_blobs.add(cid)
                try:
                    (raw,) = list(self.read([cid], TYPE_DICT))
                    zdict = load_dictionary(raw)
                except (IntegrityError, zstandard.ZstdError, ValueError):
                    continue
                self._dicts.setdefault(zdict.dict_id(), []).append(zdict)

    def dictionary_ids(self) -> set[int]:
        """zstd dictIDs already used in this repository (a new dictionary picks another)."""
        self._load_dictionaries()
        return set(self._dicts)

    def _decompress_with_dictionary(self, body: bytes, layout: tuple[bytes, int, int],
                                    btype: int, what: str) -> bytes:
        """Decompress a frame made with a dictionary. The frame names the dictionary by its
        32-bit dictID; should two dictionaries ever share one, each is tried, and the right one
        is the one whose output gives the group's first blob its id back."""
        first_id, size, first_len = layout
        dict_id = zstandard.get_frame_parameters(body).dict_id
        if dict_id not in self._dicts:
            self._load_dictionaries()
        candidates = self._dicts.get(dict_id, [])
        if not candidates:
            raise IntegrityError(f"{what}: its compression dictionary is missing")
        for zdict in candidates:
            try:
                plain = _decompressor(zdict).decompress(body, max_output_size=size)
            except zstandard.ZstdError:
                continue
            if len(plain) == size and self.repo.blob_id(btype, plain[:first_len]) == first_id:
                return plain
        raise IntegrityError(f"{what} does not decompress to its blobs")

    def read(self, blob_ids: Iterable[bytes], btype: int = TYPE_CHUNK) -> Iterator[bytes]:
        """The blobs' plaintexts in order; each must be of type `btype` (a reference to a
        chunk can never be answered with a ref-list or a dictionary, whatever the index says)."""
        pending: deque[Future[list[memoryview]]] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="read") as pool:
            try:
                for pack_id, entries in self._plan(blob_ids):
                    for e in entries:
                        if blob_type(e.flags) != btype:
                            raise IntegrityError(f"blob {e.chunk_id.hex()[:16]} is not of the "
                                                 "type its reference expects")
                    pending.append(pool.submit(self._fetch, pack_id, entries))
                    while len(pending) > self.read_ahead:
                        # copied out of the group only when taken: read-ahead holds each
                        # group's plaintext once, not twice
                        for view in pending.popleft().result():
                            yield view.tobytes()
                while pending:
                    for view in pending.popleft().result():
                        yield view.tobytes()
            finally:
                for fut in pending:
                    fut.cancel()


def _decompressor(zdict: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdDecompressor:
    return _per_thread("d", zdict, lambda: zstandard.ZstdDecompressor(dict_data=zdict))
