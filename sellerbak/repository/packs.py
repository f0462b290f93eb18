"""Writing blobs into packs, and reading them back in order.

Writing: new blobs are compressed (zstd, with the dataset's dictionary when it has one) and
sealed in worker threads, in batches (zstd releases the GIL, so both cores work), appended to the
current pack (filling in a temporary file), and a full pack is uploaded in the background while
the next one fills. Packs are named by a random 32-byte id, so concurrent writers never collide
and nothing is overwritten.

Reading: `ChunkReader` hands out blobs in the order given, planning its range requests over a
window of blobs ahead (by pack and offset, not in the order asked) and keeping the plaintext it
holds bounded. Every group is authenticated (AEAD bound to its first blob's id and its kind)
and every blob's keyed id recomputed from its plaintext.
"""

from __future__ import annotations

import bisect
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import IO, Any

import zstandard

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import IntegrityError, SellerbakError
from sellerbak.localfiles import disk_error
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
    zstd_frame_length,
)
from sellerbak.repository.index import Index, write_index
from sellerbak.repository.repo import Repository, pack_name

ZSTD_LEVEL = 3
#: packs per index object while a snapshot runs; the rest go in one final index
INDEX_EVERY_PACKS = 4
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
    uploaded packs.

    An uploaded pack goes into the in-memory index at once (its blobs are then known there,
    in compact rows, rather than in a set of ids and a list of entry objects); the index
    object that lists it follows every INDEX_EVERY_PACKS packs and at flush()."""

    def __init__(self, repo: Repository, index: Index, workers: int = 2,
                 upload_workers: int = 1, max_pending_batches: int = 8,
                 on_upload: Callable[[int], None] | None = None,
                 tmpdir: str | None = None) -> None:
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
        # every pack in flight holds its body (16 MiB) and the S3 client's copies of its parts:
        # one upload at a time (itself in parallel parts) keeps up while the next pack fills
        self._max_uploads = upload_workers
        self._tmpdir = tmpdir
        self._spool: IO[bytes] | None = None  # the pack being filled
        self._entries: list[BlobEntry] = []
        self._size = 0
        self._in_run: set[bytes] = set()
        self._uploaded: list[bytes] = []  # ids of uploaded packs no index object lists yet
        self._on_upload = on_upload
        self.index_ids: list[bytes] = []
        # packs found without an index (an earlier run was interrupted): list them in ours
        self._uploaded.extend(record.pack_id for record in index.unindexed)
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
            self._append(sealed)
            self._size += len(sealed)
            if self._size >= self.repo.pack_size:
                self._finish_pack()

    def _append(self, data: bytes) -> None:
        """Add to the pack being filled. It fills in a temporary file, not in memory: a pack
        takes a while to fill, and holding it would add its whole size to the run's memory
        next to the pack being uploaded."""
        try:
            if self._spool is None:
                self._spool = tempfile.TemporaryFile(  # noqa: SIM115 - closed by _upload/close
                    prefix="sellerbak-pack-", dir=self._tmpdir)
            self._spool.write(data)
        except OSError as exc:
            raise disk_error(f"a temporary pack file in {self._tmpdir or tempfile.gettempdir()}",
                             exc) from None

    def _finish_pack(self) -> None:
        if not self._entries:
            return
        pack_id = os.urandom(32)
        header = self.repo.seal(Kind.PACK_HEADER, pack_id, encode_pack_header(self._entries))
        self._append(header)
        self._append(encode_trailer(len(header)))
        record = PackRecord(pack_id, self._size + len(header) + 8, tuple(self._entries))
        spool, self._spool = self._spool, None
        assert spool is not None
        self._entries, self._size = [], 0
        while len(self._uploads) >= self._max_uploads:
            self._finish_upload()
        self._uploads.append(self._upload_pool.submit(self._upload, record, spool))

    def _upload(self, record: PackRecord, spool: IO[bytes]) -> PackRecord:
        with spool:
            spool.seek(0)
            try:
                body = spool.read()
            except OSError as exc:
                raise disk_error("a temporary pack file", exc) from None
        if len(body) != record.size:
            raise SellerbakError(f"a temporary pack file holds {len(body)} bytes, not "
                                 f"{record.size}")
        self.repo.store.put(pack_name(record.pack_id), body)
        return record

    def _finish_upload(self) -> None:
        record = self._uploads.popleft().result()
        self.stats.packs += 1
        self.stats.bytes_stored += record.size
        # known through the in-memory index from now on (compact rows instead of a set of ids
        # and a record per blob); the index object listing it follows within a few packs
        self.index.add_pack(record)
        for e in record.blobs:
            self._in_run.discard(e.chunk_id)
        self._uploaded.append(record.pack_id)
        if self._on_upload:
            self._on_upload(record.size)
        if len(self._uploaded) >= INDEX_EVERY_PACKS:
            self._write_index()

    def _write_index(self) -> None:
        if self._uploaded:
            # the index's own views of the packs: entries are built one by one while encoded
            packs = [self.index.packs[pid].record_view() for pid in self._uploaded]
            self.index_ids.append(write_index(self.repo, packs))
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
        if self._spool is not None:
            self._spool.close()
            self._spool = None


class _Gate:
    """What a wanted blob waits for before it is handed out: a task that verifies it (and, for
    the first blobs of a group, fetches and opens the group)."""

    __slots__ = ("future", "ready")

    def __init__(self) -> None:
        self.future: Future[None] | None = None
        self.ready = False  # set by the task when its blobs are verified


class _Held(_Gate):
    """One group a read needs: its sealed place, the blobs to verify when it is opened, and,
    once fetched, its plaintext. Dropped when the last blob that needs it has been handed
    out."""

    __slots__ = ("group", "offset", "length", "flags", "users", "check", "plain", "lines",
                 "size")

    def __init__(self, group: int, offset: int, length: int, flags: int, size: int) -> None:
        super().__init__()
        self.group = group
        self.offset = offset
        self.length = length
        self.flags = flags
        self.size = size  # of its plaintext
        self.users = 0
        #: (blob id, start, end in the plaintext) of the blobs verified when it is opened
        self.check: list[tuple[bytes, int, int]] = []
        self.plain = b""
        #: per verified chunk (by its start), its lines: counted by the verifying task, so
        #: that the thread handing chunks out does not have to
        self.lines: dict[int, int] = {}


#: one wanted blob: its group, where it is in the group's plaintext, and what to wait for
_Want = tuple[_Held, int, int, _Gate]


class ChunkReader:
    """Yields the plaintext of blobs in the given order, verified, with read-ahead.

    Reads are planned a window at a time rather than blob by blob: the ids ahead are looked
    up until their groups add up to WINDOW_RAW bytes of plaintext, the groups are sorted by
    pack and offset, neighbours (up to MAX_GAP apart) are merged into range requests of at
    most MAX_RANGE bytes, and the requests run on `workers` threads. Object storage answers
    each request after a fixed latency (milliseconds), so what counts is the number of
    requests and how many are in flight; a snapshot whose chunks alternate between the packs
    of several nights costs a few requests per window instead of one per pack switch.

    Memory stays bounded whatever the dataset's size: a group's plaintext is held only until
    its last wanted blob has been handed out (a group wanted again by a later window is shared,
    not fetched twice), and windows are planned ahead of the consumer only while the groups
    held add up to less than WINDOWS windows' worth: at most WINDOWS * WINDOW_RAW plus one
    window and one group.
    """

    #: plaintext of the groups a window newly needs (data compresses 5-10x, so bounding
    #: sealed bytes alone would let decompressed read-ahead balloon)
    WINDOW_RAW = 8 * 1024 * 1024
    #: blobs per window at most (tiny blobs would otherwise make the plan itself large)
    WINDOW_BLOBS = 4096
    #: windows planned ahead of the consumer (fewer when the groups held reach their worth)
    WINDOWS = 4
    #: sealed bytes of unwanted groups read through rather than starting another request
    MAX_GAP = 1024 * 1024
    MAX_RANGE = 4 * 1024 * 1024

    def __init__(self, repo: Repository, index: Index, workers: int = 8) -> None:
        self.repo = repo
        self.index = index
        self.workers = workers
        self._dicts: dict[int, list[zstandard.ZstdCompressionDict]] = {}
        self._dict_blobs: set[bytes] = set()
        self._dict_rows_scanned = 0
        self._dict_lock = threading.RLock()
        self._sizes: dict[bytes, int] | None = None
        self._sizes_checked: set[bytes] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _shared_pool(self) -> ThreadPoolExecutor:
        """Reads share one pool (a restore reads two streams per dataset, and starting
        threads for each costs). Loading a dictionary does not: it happens while a group is
        opened, in a thread of that pool, and must not wait on tasks queued behind it."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="read")
            return self._pool

    # ----- reading ------------------------------------------------------------------------

    def read(self, blob_ids: Iterable[bytes], btype: int = TYPE_CHUNK) -> Iterator[bytes]:
        """The blobs' plaintexts in order; each must be of type `btype` (a reference to a
        chunk can never be answered with a ref-list or a dictionary, whatever the index says)."""
        for _n, plain, _lines in self._read(blob_ids, btype, runs=False, own_pool=False):
            yield plain

    def read_runs(self, blob_ids: Iterable[bytes]) -> Iterator[tuple[int, bytes, int]]:
        """Like read() for chunks, but chunks that follow each other in one group's plaintext
        come back together: (how many chunks, their plaintexts joined, how many lines they
        hold). A dataset's chunks are stored in order, so this hands out a group at a time
        instead of a chunk at a time, which is what a restore's own thread would otherwise
        spend most of its time on."""
        return self._read(blob_ids, TYPE_CHUNK, runs=True, own_pool=False)

    def _read(self, blob_ids: Iterable[bytes], btype: int, runs: bool, own_pool: bool
              ) -> Iterator[tuple[int, bytes, int]]:
        ids = iter(blob_ids)
        held: dict[int, _Held] = {}
        windows: deque[list[_Want]] = deque()
        tasks: list[Future[None]] = []
        budget = [0]  # plaintext of the groups held (or being fetched)
        pool = (ThreadPoolExecutor(self.workers, thread_name_prefix="read-own") if own_pool
                else self._shared_pool())
        try:
            more = True
            while True:
                while (more and len(windows) < self.WINDOWS
                       and budget[0] < self.WINDOWS * self.WINDOW_RAW):
                    tasks = [t for t in tasks if not t.done()]
                    window, more = self._plan_window(ids, btype, held, pool, tasks, budget)
                    if window:
                        windows.append(window)
                if not windows:
                    return
                run: _Held | None = None
                run_start = run_end = count = lines = 0
                for h, start, end, gate in windows.popleft():
                    if not gate.ready:
                        assert gate.future is not None
                        gate.future.result()  # raises what went wrong in the task
                    if not runs:
                        yield 1, h.plain[start:end], 0
                    elif h is run and start == run_end:
                        run_end = end
                        count += 1
                        lines += h.lines[start]
                    else:
                        if run is not None:
                            yield count, run.plain[run_start:run_end], lines
                        run, run_start, run_end, count, lines = h, start, end, 1, h.lines[start]
                    h.users -= 1
                    if not h.users:
                        del held[h.group]
                        budget[0] -= h.size
                if run is not None:
                    yield count, run.plain[run_start:run_end], lines
        finally:
            # a read given up half way (an error, or the caller stopped) leaves no task behind
            for task in tasks:
                task.cancel()
            wait(tasks)
            if own_pool:
                pool.shutdown()

    def _plan_window(self, ids: Iterator[bytes], btype: int, held: dict[int, _Held],
                     pool: ThreadPoolExecutor, tasks: list[Future[None]], budget: list[int]
                     ) -> tuple[list[_Want], bool]:
        """Look up the next window of blobs and start fetching the groups it newly needs;
        returns the window and whether ids may remain. `budget` counts the plaintext of all
        groups held: a group stays held while a planned window still needs it (snapshots
        whose chunks come from many nights' packs keep returning to groups opened long
        before), so windows are planned only while the total is under WINDOWS windows'
        worth."""
        index = self.index
        row_of, fields = index.row, index.fields
        window: list[_Want] = []
        new: list[_Held] = []
        #: blobs of groups already fetched for an earlier window, verified by a task of their own
        late: dict[int, tuple[_Gate, list[tuple[bytes, int, int]]]] = {}
        raw = 0
        more = False
        for blob_id in ids:
            row = row_of(blob_id)
            if row < 0:
                raise index.not_listed(blob_id)
            group, length, raw_offset, raw_len, flags = fields(row)
            if (flags >> TYPE_SHIFT) & 0x03 != btype:
                raise IntegrityError(f"blob {blob_id.hex()[:16]} is not of the type its "
                                     "reference expects")
            h = held.get(group)
            if h is None:
                self._check_size(index.pack_id_of(group))
                size = index.group_size[group]
                h = held[group] = _Held(group, index.group_offset[group], length, flags, size)
                new.append(h)
                raw += size
                budget[0] += size
            end = raw_offset + raw_len
            gate: _Gate
            if h.future is None:  # verified by the task that opens the group
                h.check.append((blob_id, raw_offset, end))
                gate = h
            else:
                gate, checks = late.get(group) or late.setdefault(group, (_Gate(), []))
                checks.append((blob_id, raw_offset, end))
            h.users += 1
            window.append((h, raw_offset, end, gate))
            if raw >= self.WINDOW_RAW or len(window) >= self.WINDOW_BLOBS:
                more = True
                break
        for pack, run in self._ranges(new):
            future = pool.submit(self._fetch_range, pack, run)
            tasks.append(future)
            for h in run:
                h.future = future
        # queued after the fetches of the groups they need, so they never wait on a task that
        # no thread will run
        for group, (gate, checks) in late.items():
            gate.future = pool.submit(self._verify_late, held[group], gate, checks)
            tasks.append(gate.future)
        return window, more

    def _ranges(self, groups: list[_Held]) -> Iterator[tuple[bytes, list[_Held]]]:
        """Groups of one pack sorted by offset, cut into runs that one request can cover."""
        index = self.index
        groups.sort(key=lambda h: (index.group_pack[h.group], h.offset))
        run: list[_Held] = []
        start = end = 0
        pack = -1
        for h in groups:
            h_pack = index.group_pack[h.group]
            h_end = h.offset + h.length
            if (run and h_pack == pack and h.offset - end <= self.MAX_GAP
                    and max(end, h_end) - start <= self.MAX_RANGE):
                run.append(h)
                end = max(end, h_end)
                continue
            if run:
                yield index.pack_id_of(run[0].group), run
            run, pack, start, end = [h], h_pack, h.offset, h_end
        if run:
            yield index.pack_id_of(run[0].group), run

    def _fetch_range(self, pack_id: bytes, run: list[_Held]) -> None:
        """One range request for a run of groups; opens each group and verifies the blobs
        planned so far (in this thread: decompression runs in parallel)."""
        name = pack_name(pack_id)
        start = run[0].offset
        end = max(h.offset + h.length for h in run)
        data = self.repo.store.get_range(name, start, end - start)
        if len(data) != end - start:
            raise IntegrityError(f"{name}: pack is truncated")
        for h in run:
            h.plain = self._open(name, h.group, h.flags,
                                 data[h.offset - start: h.offset - start + h.length])
            for blob_id, raw_start, raw_end in h.check:
                self._verify(h, blob_id, raw_start, raw_end)
            h.check = []
            h.ready = True

    def _verify_late(self, h: _Held, gate: _Gate,
                     checks: list[tuple[bytes, int, int]]) -> None:
        assert h.future is not None
        h.future.result()
        for blob_id, start, end in checks:
            self._verify(h, blob_id, start, end)
        gate.ready = True

    def _verify(self, h: _Held, blob_id: bytes, start: int, end: int) -> None:
        plain = memoryview(h.plain)[start:end]
        btype = blob_type(h.flags)
        if len(plain) != end - start or self.repo.blob_id(btype, plain) != blob_id:
            name = pack_name(self.index.pack_id_of(h.group))
            raise IntegrityError(f"{name} blob {blob_id.hex()[:16]}: content does not match "
                                 "its id")
        if btype == TYPE_CHUNK:
            h.lines[start] = h.plain.count(b"\n", start, end)

    # ----- packs and groups -----------------------------------------------------------------

    def expect_sizes(self, sizes: dict[bytes, int]) -> None:
        """Check each pack against this listing (name -> size) before reading from it."""
        self._sizes = sizes
        self._sizes_checked = set()

    def _check_size(self, pack_id: bytes) -> None:
        if self._sizes is None or pack_id in self._sizes_checked:
            return
        name = pack_name(pack_id)
        stored = self._sizes.get(pack_id)
        if stored is None:
            raise IntegrityError(f"{name} is missing from the repository")
        if stored != self.index.packs[pack_id].size:
            raise IntegrityError(f"{name} has size {stored}, the index says "
                                 f"{self.index.packs[pack_id].size} (truncated or replaced)")
        self._sizes_checked.add(pack_id)

    def _group_at(self, pack_id: bytes, offset: int) -> int:
        """The group of a pack at `offset`, or -1."""
        info = self.index.packs.get(pack_id)
        if info is None:
            return -1
        lo, hi = info.first_group, info.first_group + info.groups
        g = bisect.bisect_left(self.index.group_offset, offset, lo, hi)
        return g if g < hi and self.index.group_offset[g] == offset else -1

    def open_group(self, name: str, pack_id: bytes, e: BlobEntry, sealed: bytes) -> bytes:
        """Authenticate and decompress one sealed group (the one at `e.offset`)."""
        return self._open(name, self._group_at(pack_id, e.offset), e.flags, sealed,
                          e.offset)

    def _open(self, name: str, group: int, flags: int, sealed: bytes,
              offset: int | None = None) -> bytes:
        index = self.index
        what = f"{name} group at {index.group_offset[group] if offset is None else offset}"
        btype = blob_type(flags)
        if btype not in KIND_OF_TYPE or flags & ~KNOWN_FLAGS:
            raise IntegrityError(f"{what}: unknown blob type or flags")
        first = index.group_first[group] if group >= 0 else -1
        if first < 0:
            raise IntegrityError(f"{what}: the index lists no first blob for it")
        first_id, size = index.blob_id(first), index.group_size[group]
        body = self.repo.open_sealed(KIND_OF_TYPE[btype], first_id, sealed, what)
        comp = flags & COMP_MASK
        try:
            if comp == COMP_ZSTD:
                plain = _decompress(_decompressor(None), body, size, what)
            elif comp == COMP_ZSTD_DICT:
                plain = self._decompress_with_dictionary(
                    body, (first_id, size, index.fields(first)[3]), btype, what)
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

    # ----- dictionaries -------------------------------------------------------------------

    def _load_dictionaries(self) -> None:
        """Load the dictionary blobs the index lists that are not loaded yet (the index grows
        while a snapshot runs). One that cannot be read is skipped: only groups that need it
        will fail, with a clear error."""
        with self._dict_lock:
            rows = self.index.dict_rows
            if len(rows) == self._dict_rows_scanned:
                return  # nothing new since the last scan: a missing dictionary stays missing
            start, self._dict_rows_scanned = self._dict_rows_scanned, len(rows)
            for row in rows[start:]:
                cid = self.index.blob_id(row)
                if (self.index.row(cid) != row or self.index.fields(row)[3] > MAX_DICT_BYTES
                        or cid in self._dict_blobs):
                    continue  # another copy of it is the one read
                self._dict_blobs.add(cid)
                try:
                    ((_n, raw, _lines),) = list(self._read([cid], TYPE_DICT, runs=False,
                                                           own_pool=True))
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
                plain = _decompress(_decompressor(zdict), body, size, what)
            except zstandard.ZstdError:
                continue
            if len(plain) == size and self.repo.blob_id(btype, plain[:first_len]) == first_id:
                return plain
        raise IntegrityError(f"{what} does not decompress to its blobs")


def _decompress(dctx: zstandard.ZstdDecompressor, body: bytes, size: int, what: str) -> bytes:
    """Decompress one frame into at most `size` bytes, allocating no more than it really
    produces. Always streamed, in pieces of at most 1 MiB: the one-shot decompressor allocates
    what the frame header declares, so a header that lies about its content size (and a
    listing that agrees with it) would decide the allocation. A declared size other than the
    group's is refused before anything is decompressed; zstd itself checks a declared size
    against the output at the end of the frame. The body must be exactly one frame
    (docs/FORMAT.md §9.4): a decoder reading on would take in further frames."""
    try:
        if zstd_frame_length(body) != len(body):
            raise IntegrityError(f"{what}: bytes after its zstd frame")
    except ValueError:
        raise IntegrityError(f"{what} is not one zstd frame") from None
    declared = zstandard.get_frame_parameters(body).content_size
    if declared not in (size, zstandard.CONTENTSIZE_UNKNOWN):
        raise IntegrityError(f"{what}: plaintext has the wrong size")
    out = bytearray()
    reader = dctx.stream_reader(body, read_across_frames=False)
    while part := reader.read(min(1 << 20, size + 1 - len(out))):
        out += part
        if len(out) > size:
            raise IntegrityError(f"{what}: plaintext has the wrong size")
    return bytes(out)


def _decompressor(zdict: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdDecompressor:
    return _per_thread("d", zdict, lambda: zstandard.ZstdDecompressor(dict_data=zdict))
