"""The snapshot run: source -> sorted canonical records -> chunks -> packs -> manifest.

Write order is what makes interruption harmless: packs first, then the index objects that list
them, and the manifest last. Until the manifest is written no snapshot is visible; whatever was
uploaded before a crash is found again by the next run (see Index.load(recover=True)) and reused.

Incremental datasets (`mode="changes"`) are merged by id into the previous snapshot's dataset at
chunk granularity: a previous chunk that no change touches is kept by reference (its bytes are
read back only to extend the dataset's SHA-256), and only the chunks around changes are re-cut.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from zstandard import ZstdCompressionDict, ZstdError, train_dictionary

from sellerbak import __version__
from sellerbak.backup.chunker import Chunk, Chunker
from sellerbak.backup.exporters.base import Source
from sellerbak.backup.streamhash import StreamHash
from sellerbak.backup.worker import ChunkerParams, ExportStream, RemoteDataset, Restart
from sellerbak.errors import IntegrityError, SourceError
from sellerbak.progress import SilentProgress
from sellerbak.records import (
    Line,
    merge_changes,
    parse_line,
    record_key,
)
from sellerbak.repository.dataset_names import DatasetNameError, DatasetNames, shown
from sellerbak.repository.datasets import iter_chunks
from sellerbak.repository.format import TYPE_CHUNK, TYPE_DICT, TYPE_REFLIST
from sellerbak.repository.index import Index
from sellerbak.repository.manifest import (
    ChunkRef,
    DatasetEntry,
    Manifest,
    RefListRef,
    format_time,
    load_manifests,
    new_manifest_id,
    write_manifest,
)
from sellerbak.repository.packs import (
    ZSTD_LEVEL,
    ChunkReader,
    PackWriter,
    WriteStats,
    load_dictionary,
)
from sellerbak.repository.repo import Repository
from sellerbak.repository.timeline import (
    Clock,
    check_new_snapshot_time,
    future_warning,
    split_future,
    system_clock,
)

#: ref-list blobs: about 40 chunk references each
REFLIST_TARGET = 4 * 1024
REFLIST_MAX = 32 * 1024
#: dictionary training: the first records of a dataset's first snapshot
DICT_SIZE = 64 * 1024
DICT_SAMPLES = 2000
DICT_MIN_RECORDS = 200
DICT_MIN_BYTES = 256 * 1024
log = logging.getLogger(__name__)


class Progress(Protocol):
    def dataset(self, source: str, name: str) -> None: ...
    def records(self, n: int) -> None: ...
    def uploaded(self, nbytes: int) -> None: ...


@dataclass
class SnapshotResult:
    manifest: Manifest
    stats: WriteStats
    seconds: float
    incomplete: list[str] = field(default_factory=list)


class _RefListWriter:
    """Cuts a dataset's chunk references into content-defined ref-list blobs."""

    def __init__(self, repo: Repository, writer: PackWriter) -> None:
        self.repo = repo
        self.writer = writer
        self.chunker = Chunker(repo.chunker_key, REFLIST_TARGET, REFLIST_MAX)
        self.refs: list[RefListRef] = []
        self._reset()

    def _reset(self) -> None:
        self._records = self._bytes = 0
        self._first: str | None = None

    def add(self, ref: ChunkRef) -> None:
        if self._first is None:
            self._first = ref.first_key
        self._records += ref.records
        self._bytes += ref.raw_len
        cut = self.chunker.feed(ref.chunk_id.hex(), ref.line())
        if cut is not None:
            self._emit(cut.data, cut.records, ref.last_key)

    def finish(self, last_key: str) -> None:
        cut = self.chunker.flush()
        if cut is not None:
            self._emit(cut.data, cut.records, last_key)

    def _emit(self, data: bytes, chunks: int, last_key: str) -> None:
        blob_id = self.repo.blob_id(TYPE_REFLIST, data)
        self.writer.add(blob_id, data, TYPE_REFLIST)
        assert self._first is not None
        self.refs.append(RefListRef(blob_id, chunks, self._records, self._bytes, self._first,
                                    last_key))
        self._reset()


class _DatasetBuilder:
    """Cuts one dataset's sorted lines into chunks and hands new chunks to the pack writer."""

    def __init__(self, repo: Repository, writer: PackWriter, progress: Progress,
                 zdict: ZstdCompressionDict | None = None) -> None:
        self.repo = repo
        self.writer = writer
        self.progress = progress
        self.zdict = zdict
        self.chunker = Chunker(repo.chunker_key, repo.chunk_target, repo.chunk_max)
        self.reflist = _RefListWriter(repo, writer)
        self.hasher = StreamHash()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.chunks = 0
        self.records = 0
        self.bytes = 0
        self.last_key = ""

    def feed(self, key: str, line: bytes) -> None:
        chunk = self.chunker.feed(key, line)
        if chunk is not None:
            self._emit(chunk)

    def add_chunk(self, chunk: Chunk) -> None:
        """A chunk cut elsewhere (by the export process) by the same boundary rule."""
        self._emit(chunk)

    def finish(self) -> None:
        chunk = self.chunker.flush()
        if chunk is not None:
            self._emit(chunk)
        self._hash_pending()
        self.reflist.finish(self.last_key)

    def _emit(self, chunk: Chunk) -> None:
        cid = chunk.chunk_id or self.repo.chunk_id(chunk.data)
        self.writer.add(cid, chunk.data, TYPE_CHUNK, self.zdict)
        self._account(ChunkRef(cid, chunk.records, len(chunk.data), chunk.first_key,
                               chunk.last_key), chunk.data)

    def reuse(self, ref: ChunkRef, plain: bytes) -> None:
        self.writer.stats.chunks_reused += 1
        self._account(ref, plain)

    def _hash_pending(self) -> None:
        if self._pending:
            self.hasher.update(b"".join(self._pending))
            self._pending, self._pending_size = [], 0

    def _account(self, ref: ChunkRef, data: bytes) -> None:
        # hashed in ~1 MiB pieces: per-call costs dominate at chunk size
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= 1 << 20:
            self._hash_pending()
        self.reflist.add(ref)
        self.chunks += 1
        self.records += ref.records
        self.bytes += ref.raw_len
        self.last_key = ref.last_key
        self.progress.records(ref.records)

    def entry(self, export: RemoteDataset, dict_id: bytes | None) -> DatasetEntry:
        sha256 = self.hasher.hexdigest()
        self.hasher.close()
        return DatasetEntry(export.name, self.records, self.bytes, sha256,
                            self.chunks, self.reflist.refs, dict_id, export.cursor,
                            export.complete, export.problem, dict(export.meta))


def _take_name(names: DatasetNames, source: str, name: str) -> None:
    """Refuse a dataset name restore would refuse (repository/dataset_names.py): stored, it
    would make a snapshot that never restores."""
    try:
        names.add(name)
    except DatasetNameError as exc:
        raise SourceError(f"source {source}: dataset {shown(name)} cannot be stored: {exc}") \
            from None


def _chunk_lines(plain: bytes, dataset: str) -> Iterator[Line]:
    for line in plain.splitlines(keepends=True):
        yield record_key(parse_line(line, dataset), dataset), line


class SnapshotRun:
    """One `sellerbak snapshot` invocation over one repository (possibly several sources)."""

    def __init__(self, repo: Repository, progress: Progress | None = None,
                 tmpdir: str | None = None,
                 before_commit: Callable[[], None] | None = None,
                 clock: Clock = system_clock,
                 warn: Callable[[str], None] | None = None) -> None:
        self.repo = repo
        #: "now": the machine's clock, or the time a test wants
        self.clock = clock
        #: where warnings go (the CLI prints them; by default they are logged)
        self.warn = warn or log.warning
        self.progress: Progress = progress or SilentProgress()
        self.tmpdir = tmpdir
        #: runs just before a manifest is written (the CLI checks the lock is still held)
        self.before_commit = before_commit
        self.index = Index.load(repo, recover=True)
        self.reader = ChunkReader(repo, self.index)
        self.problems: list[str] = []
        self.manifests = load_manifests(repo, self.problems)
        self._dicts: dict[bytes, ZstdCompressionDict] = {}
        self._trained_ids: set[int] = set()

    def previous(self, source: str, now: datetime | None = None) -> Manifest | None:
        """The newest snapshot of `source` not dated in the future: the next snapshot's parent.
        A future-dated one is skipped with a warning: its cursors lie ahead of the source's
        data, and an incremental export from them would find nothing new, night after night."""
        past, future = split_future([m for m in self.manifests if m.source == source],
                                    now or self.clock())
        for m in future:
            self.warn(future_warning(m, "not used as the parent of this snapshot"))
        return past[-1] if past else None

    def run(self, source: Source, tags: list[str], full: bool = False,
            at: datetime | None = None) -> SnapshotResult:
        started = time.monotonic()
        now = self.clock()
        if at is not None and at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        newest = self.previous(source.name, now)
        check_new_snapshot_time(at or now, now, newest, given=at is not None)
        prev = None if full else newest
        cursors: dict[str, Any] = {}
        if prev is not None:
            cursors = {n: d.cursor for n, d in prev.datasets.items()
                       if d.complete and d.cursor is not None}
        writer = PackWriter(self.repo, self.index, on_upload=self.progress.uploaded)
        datasets: dict[str, DatasetEntry] = {}
        names = DatasetNames()
        chunking = ChunkerParams(self.repo.chunker_key, self.repo.chunk_target,
                                 self.repo.chunk_max, self.repo.id_key)
        stream = ExportStream(source, cursors, full, chunking, self.tmpdir)
        try:
            for export in stream.datasets():
                if export.name in datasets:
                    raise SourceError(f"source {source.name} gave dataset {export.name} twice")
                _take_name(names, source.name, export.name)
                before = prev.datasets.get(export.name) if prev is not None else None
                self.progress.dataset(source.name, export.name,
                                      before.records if before is not None else None)
                datasets[export.name] = self._dataset(export, prev, writer)
            writer.flush()
            writer_stats = writer.stats
        finally:
            stream.close()
            writer.close()
        when = at or self.clock()
        if at is None:  # the clock may have been set back during the run
            check_new_snapshot_time(when, when, newest, given=False)
        manifest = Manifest(
            id=new_manifest_id(), time=format_time(when),
            source=source.name,
            source_type=source.type, hostname=socket.gethostname(), tags=sorted(set(tags)),
            datasets=datasets, parent=prev.id.hex() if prev else None)
        seconds = time.monotonic() - started
        manifest.summary = {
            "sellerbak_version": __version__,
            "seconds": round(seconds, 3),
            "chunks_new": writer_stats.chunks_new,
            "chunks_reused": writer_stats.chunks_reused,
            "bytes_raw_new": writer_stats.bytes_raw_new,
            "bytes_stored": writer_stats.bytes_stored,
        }
        if self.before_commit is not None:
            self.before_commit()
        write_manifest(self.repo, manifest)
        self.manifests.append(manifest)
        incomplete = [n for n, d in datasets.items() if not d.complete]
        return SnapshotResult(manifest, writer_stats, seconds, incomplete)

    def _dataset(self, export: RemoteDataset, prev: Manifest | None,
                 writer: PackWriter) -> DatasetEntry:
        base = prev.datasets.get(export.name) if prev else None
        if export.mode == "changes" and base is None:
            raise SourceError(f"dataset {export.name}: source sent changes but there is "
                              "no previous snapshot of it to apply them to")
        while True:
            try:
                return self._build(export, base, writer)
            except Restart:
                # the records were not sorted after all and come again, sorted; what was
                # already stored is deduplicated or left for prune
                continue

    def _build(self, export: RemoteDataset, base: DatasetEntry | None,
               writer: PackWriter) -> DatasetEntry:
        if export.mode == "changes":
            assert base is not None
            lines = export.lines()
            head = list(itertools.islice(lines, DICT_SAMPLES)) if base.dict_id is None else []
            dict_id, zdict = self._dictionary(base, [line for _key, line in head], writer)
            builder = _DatasetBuilder(self.repo, writer, self.progress, zdict)
            self._merge(builder, base, itertools.chain(head, lines), export)
        else:
            chunks = export.chunks()
            head_chunks: list[Chunk] = []
            samples: list[bytes] = []
            if base is None or base.dict_id is None:
                for chunk in chunks:
                    head_chunks.append(chunk)
                    samples.extend(chunk.data.splitlines(keepends=True))
                    if len(samples) >= DICT_SAMPLES:
                        break
            dict_id, zdict = self._dictionary(base, samples[:DICT_SAMPLES], writer)
            builder = _DatasetBuilder(self.repo, writer, self.progress, zdict)
            for chunk in itertools.chain(head_chunks, chunks):
                builder.add_chunk(chunk)
        builder.finish()
        return builder.entry(export, dict_id)

    def _dictionary(self, base: DatasetEntry | None, samples: list[bytes], writer: PackWriter
                    ) -> tuple[bytes | None, ZstdCompressionDict | None]:
        """The dataset's compression dictionary: the previous snapshot's, or one trained on
        sample records. Small chunks compress almost as well as large ones with it, which is
        what lets a night's scattered changes be stored in small pieces."""
        if base is not None and base.dict_id is not None:
            if base.dict_id not in self._dicts:
                try:
                    (raw,) = list(self.reader.read([base.dict_id], TYPE_DICT))
                    self._dicts[base.dict_id] = load_dictionary(raw)
                except (IntegrityError, ValueError, ZstdError):
                    return None, None  # dictionary gone: store without one
            return base.dict_id, self._dicts[base.dict_id]
        if len(samples) < DICT_MIN_RECORDS or sum(map(len, samples)) < DICT_MIN_BYTES:
            return None, None
        taken = self.reader.dictionary_ids() | self._trained_ids
        dict_id = secrets.randbelow(2**31 - 2**15) + 2**15
        while dict_id in taken:
            dict_id = secrets.randbelow(2**31 - 2**15) + 2**15
        try:
            zdict = train_dictionary(DICT_SIZE, samples, level=ZSTD_LEVEL, dict_id=dict_id)
        except ZstdError:
            return None, None
        self._trained_ids.add(dict_id)
        raw = zdict.as_bytes()
        blob_id = self.repo.blob_id(TYPE_DICT, raw)
        self._store_first(blob_id, raw, writer)
        self._dicts[blob_id] = load_dictionary(raw)
        return blob_id, self._dicts[blob_id]

    def _store_first(self, blob_id: bytes, raw: bytes, writer: PackWriter) -> None:
        """Store a new dictionary, in a pack of its own, before any chunk compressed with it is
        sealed. Packs go up in parallel and a run can fail between two of them; the packs that
        made it are reused by the next run. Left to the shared writer, the dictionary would go
        out with a later pack, and a failure in between would leave stored chunks nobody can
        decompress, which the next run would reuse into a snapshot that does not restore."""
        own = PackWriter(self.repo, self.index, on_upload=self.progress.uploaded)
        try:
            own.add(blob_id, raw, TYPE_DICT)
            own.flush()
        finally:
            own.close()
        writer.stats.bytes_raw_new += own.stats.bytes_raw_new
        writer.stats.bytes_stored += own.stats.bytes_stored
        writer.stats.packs += own.stats.packs

    def _merge(self, builder: _DatasetBuilder, base: DatasetEntry, changes: Iterator[Line],
               export: RemoteDataset) -> None:
        """Apply sorted changes to the previous dataset chunk by chunk: an untouched chunk is
        kept by reference when the chunker is at a boundary; chunks around changes are re-cut.
        The last chunk is re-cut whenever records follow it: it was cut by the end of the data,
        not by the boundary rule, and keeping it would leave a short chunk behind each night."""
        deleted = export.deleted_ids  # sorted strings
        di = 0
        pending = next(changes, None)
        base_chunks = iter_chunks(self.reader, base)
        current = next(base_chunks, None)
        while current is not None:
            ref, plain = current
            current = next(base_chunks, None)
            mine: list[Line] = []
            while pending is not None and pending[0] <= ref.last_key:
                mine.append(pending)
                pending = next(changes, None)
            dels: set[str] = set()
            while di < len(deleted) and deleted[di] <= ref.last_key:
                dels.add(deleted[di])
                di += 1
            is_tail = current is None and pending is not None
            if not mine and not dels and not is_tail and builder.chunker.empty:
                builder.reuse(ref, plain)
                continue
            for key, line in merge_changes(_chunk_lines(plain, export.name), iter(mine), dels):
                builder.feed(key, line)
        tail_deleted = set(deleted[di:])
        while pending is not None:
            if pending[0] not in tail_deleted:
                builder.feed(*pending)
            pending = next(changes, None)
