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

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

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


def _compressor(zdict: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = getattr(_tls, "cctx", None) or {}
    _tls.cctx = cache
    key = id(zdict) if zdict is not None else 0
    cctx = cache.get(key)
    if cctx is None:
        cctx = cache[key] = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=zdict,
                                                     write_content_size=True)
    return cctx


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


class PackWriter:
    """Accepts new blobs; uploads them in packs; writes index objects for uploaded packs."""

    def __init__(self, repo: Repository, index: Index, workers: int = 2,
                 upload_workers: int = 3, max_pending_batches: int = 8,
                 on_upload: Callable[[int], None] | None = None) -> None:
        self.repo = repo
        self.index = index
        self.stats = WriteStats()
        self._seal_pool = ThreadPoolExecutor(workers, thread_name_prefix="seal")
        self._upload_pool = ThreadPoolExecutor(upload_workers, thread_name_prefix="upload")
        self._batch: list[_Item] = []
        self._batch_bytes = 0
        self._sealing: deque[Future[list[tuple[BlobEntry, bytes]]]] = deque()
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
        self._batch.append((blob_id, btype, plaintext, zdict))
        self._batch_bytes += len(plaintext)
        if len(self._batch) >= BATCH_BLOBS or self._batch_bytes >= BATCH_BYTES:
            self._submit_batch()
        return True

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._sealing.append(self._seal_pool.submit(self._seal_batch, batch))
        while len(self._sealing) > self._max_pending:
            self._collect_one()

    def _seal_batch(self, batch: list[_Item]) -> list[tuple[BlobEntry, bytes]]:
        out = []
        for blob_id, btype, plaintext, zdict in batch:
            body = _compressor(zdict).compress(plaintext)
            comp = COMP_ZSTD_DICT if zdict is not None else COMP_ZSTD
            if len(body) >= len(plaintext):
                body, comp = plaintext, COMP_NONE
            sealed = self.repo.seal(KIND_OF_TYPE[btype], blob_id, body)
            entry = BlobEntry(blob_id, 0, len(sealed), len(plaintext),
                              comp | (btype << TYPE_SHIFT))
            out.append((entry, sealed))
        return out

    def _collect_one(self) -> None:
        for entry, sealed in self._sealing.popleft().result():
            self._entries.append(BlobEntry(entry.chunk_id, self._size, entry.length,
                                           entry.raw_len, entry.flags))
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
            self._uploaded = []

    def flush(self) -> None:
        """Upload everything pending and index it; after this, every added blob is stored."""
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
    MAX_REQUEST_RAW = 2 * 1024 * 1024
    MAX_REQUEST = 4 * 1024 * 1024
    MAX_GAP = 256 * 1024

    def __init__(self, repo: Repository, index: Index, workers: int = 4,
                 read_ahead: int = 4) -> None:
        self.repo = repo
        self.index = index
        self.workers = workers
        self.read_ahead = read_ahead
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._dicts_loaded = False
        self._dict_lock = threading.Lock()

    def _plan(self, blob_ids: Iterable[bytes]) -> Iterator[tuple[bytes, list[BlobEntry]]]:
        """Group consecutive blobs stored near each other in one pack into one request."""
        group: list[BlobEntry] = []
        group_pack: bytes | None = None
        raw = 0
        for cid in blob_ids:
            loc = self.index.locate(cid)
            e = loc.entry
            if group and loc.pack_id == group_pack:
                end = group[-1].offset + group[-1].length
                gap_ok = e.offset >= end and e.offset - end <= self.MAX_GAP
                if (gap_ok and e.offset + e.length - group[0].offset <= self.MAX_REQUEST
                        and raw + e.raw_len <= self.MAX_REQUEST_RAW):
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

    def _fetch(self, pack_id: bytes, entries: list[BlobEntry]) -> list[bytes]:
        name = pack_name(pack_id)
        start = entries[0].offset
        end = entries[-1].offset + entries[-1].length
        data = self.repo.store.get_range(name, start, end - start)
        if len(data) != end - start:
            raise IntegrityError(f"{name}: pack is truncated")
        return [self.open_blob(name, e, data[e.offset - start: e.offset - start + e.length])
                for e in entries]

    def open_blob(self, name: str, e: BlobEntry, sealed: bytes) -> bytes:
        what = f"{name} blob {e.chunk_id.hex()[:16]}"
        btype = blob_type(e.flags)
        if btype not in KIND_OF_TYPE or e.flags & ~KNOWN_FLAGS:
            raise IntegrityError(f"{what}: unknown blob type or flags")
        body = self.repo.open_sealed(KIND_OF_TYPE[btype], e.chunk_id, sealed, what)
        comp = e.flags & COMP_MASK
        try:
            if comp == COMP_ZSTD:
                plain = _decompressor(None).decompress(body, max_output_size=e.raw_len)
            elif comp == COMP_ZSTD_DICT:
                zdict = self._dictionary(zstandard.get_frame_parameters(body).dict_id, what)
                plain = _decompressor(zdict).decompress(body, max_output_size=e.raw_len)
            elif comp == COMP_NONE:
                plain = body
            else:
                raise IntegrityError(f"{what}: unknown compression")
        except zstandard.ZstdError:
            raise IntegrityError(f"{what} does not decompress") from None
        if len(plain) != e.raw_len or self.repo.blob_id(btype, plain) != e.chunk_id:
            raise IntegrityError(f"{what}: content does not match its id")
        return plain

    def _dictionary(self, dict_id: int, what: str) -> zstandard.ZstdCompressionDict:
        """The dictionary a frame names, found among the repository's dictionary blobs (a
        chunk may have been stored by another snapshot, with that snapshot's dictionary)."""
        with self._dict_lock:
            if dict_id not in self._dicts and not self._dicts_loaded:
                ids = [cid for cid, loc in self.index.chunks.items()
                       if blob_type(loc.entry.flags) == TYPE_DICT
                       and loc.entry.raw_len <= MAX_DICT_BYTES]
                for raw in self.read(ids):
                    zdict = load_dictionary(raw)
                    self._dicts[zdict.dict_id()] = zdict
                self._dicts_loaded = True
            try:
                return self._dicts[dict_id]
            except KeyError:
                raise IntegrityError(f"{what}: its compression dictionary is missing") from None

    def read(self, blob_ids: Iterable[bytes]) -> Iterator[bytes]:
        pending: deque[Future[list[bytes]]] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="read") as pool:
            try:
                for pack_id, entries in self._plan(blob_ids):
                    pending.append(pool.submit(self._fetch, pack_id, entries))
                    while len(pending) > self.read_ahead:
                        yield from pending.popleft().result()
                while pending:
                    yield from pending.popleft().result()
            finally:
                for fut in pending:
                    fut.cancel()


def _decompressor(zdict: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdDecompressor:
    cache: dict[int, zstandard.ZstdDecompressor] = getattr(_tls, "dctx", None) or {}
    _tls.dctx = cache
    key = id(zdict) if zdict is not None else 0
    dctx = cache.get(key)
    if dctx is None:
        dctx = cache[key] = zstandard.ZstdDecompressor(dict_data=zdict)
    return dctx
