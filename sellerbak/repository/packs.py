"""Writing chunks into packs, and reading them back in order.

Writing: each new chunk is compressed (zstd) and sealed in a worker thread (zstd releases the
GIL, so both cores work), appended to the current pack, and a full pack is uploaded in the
background while the next one fills. Packs are named by a random 32-byte id, so concurrent
writers never collide and nothing is overwritten.

Reading: `ChunkReader` fetches chunks in the order a dataset lists them, grouping neighbours in
the same pack into one range request and keeping a bounded number of requests in flight. Each
chunk is authenticated (AEAD bound to its chunk id) and its keyed id recomputed.
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
    FLAG_ZSTD,
    BlobEntry,
    PackRecord,
    encode_pack_header,
    encode_trailer,
)
from sellerbak.repository.index import Index, write_index
from sellerbak.repository.repo import Repository, pack_name

ZSTD_LEVEL = 3
#: packs per index object while a snapshot runs; the rest go in one final index
INDEX_EVERY_PACKS = 8

_tls = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    cctx = getattr(_tls, "cctx", None)
    if cctx is None:
        cctx = _tls.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_tls, "dctx", None)
    if dctx is None:
        dctx = _tls.dctx = zstandard.ZstdDecompressor()
    return dctx


@dataclass
class WriteStats:
    chunks_new: int = 0
    chunks_reused: int = 0
    bytes_raw_new: int = 0
    bytes_stored: int = 0
    packs: int = 0


class PackWriter:
    """Accepts new chunks; uploads them in packs; writes index objects for uploaded packs."""

    def __init__(self, repo: Repository, index: Index, workers: int = 2,
                 upload_workers: int = 3, max_pending: int = 64,
                 on_upload: Callable[[int], None] | None = None) -> None:
        self.repo = repo
        self.index = index
        self.stats = WriteStats()
        self._seal_pool = ThreadPoolExecutor(workers, thread_name_prefix="seal")
        self._upload_pool = ThreadPoolExecutor(upload_workers, thread_name_prefix="upload")
        self._sealing: deque[tuple[bytes, int, Future[tuple[bytes, int]]]] = deque()
        self._uploads: deque[Future[PackRecord]] = deque()
        self._max_pending = max_pending
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

    def knows(self, chunk_id: bytes) -> bool:
        return chunk_id in self.index or chunk_id in self._in_run

    def add(self, chunk_id: bytes, plaintext: bytes) -> bool:
        """Store a chunk unless the repository already has it; returns True if it is new."""
        if self.knows(chunk_id):
            self.stats.chunks_reused += 1
            return False
        self._in_run.add(chunk_id)
        self.stats.chunks_new += 1
        self.stats.bytes_raw_new += len(plaintext)
        fut = self._seal_pool.submit(self._seal, chunk_id, plaintext)
        self._sealing.append((chunk_id, len(plaintext), fut))
        while len(self._sealing) > self._max_pending:
            self._collect_one()
        return True

    def _seal(self, chunk_id: bytes, plaintext: bytes) -> tuple[bytes, int]:
        compressed = _compressor().compress(plaintext)
        flags = FLAG_ZSTD
        if len(compressed) >= len(plaintext):
            compressed, flags = plaintext, 0
        return self.repo.seal(Kind.BLOB, chunk_id, compressed), flags

    def _collect_one(self) -> None:
        chunk_id, raw_len, fut = self._sealing.popleft()
        blob, flags = fut.result()
        self._entries.append(BlobEntry(chunk_id, self._size, len(blob), raw_len, flags))
        self._blobs.append(blob)
        self._size += len(blob)
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
        """Upload everything pending and index it; after this, every added chunk is stored."""
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
    """Yields the plaintext of chunks in the given order, verified, with read-ahead."""

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

    def _plan(self, chunk_ids: Iterable[bytes]) -> Iterator[tuple[bytes, list[BlobEntry]]]:
        """Group consecutive chunks stored near each other in one pack into one request."""
        group: list[BlobEntry] = []
        group_pack: bytes | None = None
        for cid in chunk_ids:
            loc = self.index.locate(cid)
            e = loc.entry
            if group and loc.pack_id == group_pack:
                start = group[0].offset
                end = max(g.offset + g.length for g in group)
                lo, hi = min(start, e.offset), max(end, e.offset + e.length)
                gap_ok = e.offset >= end and e.offset - end <= self.MAX_GAP
                raw = sum(g.raw_len for g in group) + e.raw_len
                if gap_ok and hi - lo <= self.MAX_REQUEST and raw <= self.MAX_REQUEST_RAW:
                    group.append(e)
                    continue
            if group:
                assert group_pack is not None
                yield group_pack, group
            group, group_pack = [e], loc.pack_id
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
        what = f"{name} chunk {e.chunk_id.hex()[:16]}"
        body = self.repo.open_sealed(Kind.BLOB, e.chunk_id, sealed, what)
        if e.flags & FLAG_ZSTD:
            try:
                plain = _decompressor().decompress(body, max_output_size=e.raw_len)
            except zstandard.ZstdError:
                raise IntegrityError(f"{what} does not decompress") from None
        else:
            plain = body
        if len(plain) != e.raw_len or self.repo.chunk_id(plain) != e.chunk_id:
            raise IntegrityError(f"{what}: content does not match its id")
        return plain

    def read(self, chunk_ids: Iterable[bytes]) -> Iterator[bytes]:
        pending: deque[Future[list[bytes]]] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="read") as pool:
            try:
                for pack_id, entries in self._plan(chunk_ids):
                    pending.append(pool.submit(self._fetch, pack_id, entries))
                    while len(pending) > self.read_ahead:
                        yield from pending.popleft().result()
                while pending:
                    yield from pending.popleft().result()
            finally:
                for fut in pending:
                    fut.cancel()
