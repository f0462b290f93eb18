"""The snapshot run: source -> sorted canonical records -> chunks -> packs -> manifest.

Write order is what makes interruption harmless: packs first, then the index objects that list
them, and the manifest last. Until the manifest is written no snapshot is visible; whatever was
uploaded before a crash is found again by the next run (see Index.load(recover=True)) and reused.

Incremental datasets (`mode="changes"`) are merged by id into the previous snapshot's dataset at
chunk granularity: a previous chunk that no change touches is kept by reference (its bytes are
read back only to extend the dataset's SHA-256), and only the chunks around changes are re-cut.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sellerbak import __version__
from sellerbak.backup.chunker import Chunk, Chunker
from sellerbak.backup.exporters.base import DatasetExport, Source
from sellerbak.errors import SourceError
from sellerbak.records import (
    Line,
    OutOfOrderError,
    encode_records,
    merge_changes,
    parse_line,
    record_key,
    require_sorted,
    sort_records,
)
from sellerbak.repository.index import Index
from sellerbak.repository.manifest import (
    ChunkRef,
    DatasetEntry,
    Manifest,
    load_manifests,
    new_manifest_id,
    now_rfc3339,
    write_manifest,
)
from sellerbak.repository.packs import ChunkReader, PackWriter, WriteStats
from sellerbak.repository.repo import Repository


class Progress(Protocol):
    def dataset(self, source: str, name: str) -> None: ...
    def records(self, n: int) -> None: ...
    def uploaded(self, nbytes: int) -> None: ...


class _NoProgress:
    def dataset(self, source: str, name: str) -> None:
        pass

    def records(self, n: int) -> None:
        pass

    def uploaded(self, nbytes: int) -> None:
        pass


@dataclass
class SnapshotResult:
    manifest: Manifest
    stats: WriteStats
    seconds: float
    incomplete: list[str] = field(default_factory=list)


class _DatasetBuilder:
    """Cuts one dataset's sorted lines into chunks and hands new chunks to the pack writer."""

    def __init__(self, repo: Repository, writer: PackWriter, progress: Progress) -> None:
        self.repo = repo
        self.writer = writer
        self.progress = progress
        self.chunker = Chunker(repo.chunker_key, repo.chunk_target, repo.chunk_max)
        self.hasher = hashlib.sha256()
        self.refs: list[ChunkRef] = []
        self.records = 0
        self.bytes = 0

    def feed(self, key: str, line: bytes) -> None:
        chunk = self.chunker.feed(key, line)
        if chunk is not None:
            self._emit(chunk)

    def finish(self) -> None:
        chunk = self.chunker.flush()
        if chunk is not None:
            self._emit(chunk)

    def _emit(self, chunk: Chunk) -> None:
        cid = self.repo.chunk_id(chunk.data)
        self.writer.add(cid, chunk.data)
        self._account(ChunkRef(cid, chunk.records, len(chunk.data), chunk.first_key,
                               chunk.last_key), chunk.data)

    def reuse(self, ref: ChunkRef, plain: bytes) -> None:
        self.writer.stats.chunks_reused += 1
        self._account(ref, plain)

    def _account(self, ref: ChunkRef, data: bytes) -> None:
        self.hasher.update(data)
        self.refs.append(ref)
        self.records += ref.records
        self.bytes += ref.raw_len
        self.progress.records(ref.records)


def _chunk_lines(plain: bytes, dataset: str) -> Iterator[Line]:
    for line in plain.splitlines(keepends=True):
        yield record_key(parse_line(line), dataset), line


class SnapshotRun:
    """One `sellerbak snapshot` invocation over one repository (possibly several sources)."""

    def __init__(self, repo: Repository, progress: Progress | None = None,
                 tmpdir: str | None = None) -> None:
        self.repo = repo
        self.progress: Progress = progress or _NoProgress()
        self.tmpdir = tmpdir
        self.index = Index.load(repo, recover=True)
        self.manifests = load_manifests(repo)

    def previous(self, source: str) -> Manifest | None:
        mine = [m for m in self.manifests if m.source == source]
        return mine[-1] if mine else None

    def run(self, source: Source, tags: list[str], full: bool = False,
            at: str | None = None) -> SnapshotResult:
        started = time.monotonic()
        prev = None if full else self.previous(source.name)
        cursors: dict[str, Any] = {}
        if prev is not None:
            cursors = {n: d.cursor for n, d in prev.datasets.items()
                       if d.complete and d.cursor is not None}
        writer = PackWriter(self.repo, self.index, on_upload=self.progress.uploaded)
        datasets: dict[str, DatasetEntry] = {}
        try:
            for export in source.export(cursors, full):
                if export.name in datasets:
                    raise SourceError(f"source {source.name} gave dataset {export.name} twice")
                self.progress.dataset(source.name, export.name)
                datasets[export.name] = self._dataset(export, prev, writer)
            writer.flush()
            writer_stats = writer.stats
        finally:
            writer.close()
        manifest = Manifest(
            id=new_manifest_id(), time=at or now_rfc3339(), source=source.name,
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
        write_manifest(self.repo, manifest)
        self.manifests.append(manifest)
        incomplete = [n for n, d in datasets.items() if not d.complete]
        return SnapshotResult(manifest, writer_stats, seconds, incomplete)

    def _dataset(self, export: DatasetExport, prev: Manifest | None,
                 writer: PackWriter) -> DatasetEntry:
        builder = _DatasetBuilder(self.repo, writer, self.progress)
        encoded = encode_records(export.records, export.name)
        if export.sorted or export.reopen is not None:
            lines = require_sorted(encoded, export.name)
        else:
            lines = sort_records(encoded, export.name, self.tmpdir)
        try:
            return self._build(builder, export, lines, prev)
        except OutOfOrderError:
            if export.reopen is None:
                raise
        # not sorted after all: start again from the top, sorting on the way in (what was
        # already stored is deduplicated or left for prune)
        builder = _DatasetBuilder(self.repo, writer, self.progress)
        lines = sort_records(encode_records(export.reopen(), export.name), export.name,
                             self.tmpdir)
        return self._build(builder, export, lines, prev)

    def _build(self, builder: _DatasetBuilder, export: DatasetExport, lines: Iterator[Line],
               prev: Manifest | None) -> DatasetEntry:
        if export.mode == "changes":
            base = prev.datasets.get(export.name) if prev else None
            if base is None:
                raise SourceError(f"dataset {export.name}: source sent changes but there is "
                                  "no previous snapshot of it to apply them to")
            self._merge(builder, base, lines, export)
        else:
            for key, line in lines:
                builder.feed(key, line)
        builder.finish()
        return DatasetEntry(export.name, builder.records, builder.bytes,
                            builder.hasher.hexdigest(), builder.refs, export.cursor,
                            export.complete, export.problem, dict(export.meta))

    def _merge(self, builder: _DatasetBuilder, base: DatasetEntry, changes: Iterator[Line],
               export: DatasetExport) -> None:
        deleted = sorted({str(d) for d in export.deleted_ids})
        di = 0
        pending = next(changes, None)
        reader = ChunkReader(self.repo, self.index)
        plains = reader.read(ref.chunk_id for ref in base.chunks)
        for ref, plain in zip(base.chunks, plains, strict=True):
            mine: list[Line] = []
            while pending is not None and pending[0] <= ref.last_key:
                mine.append(pending)
                pending = next(changes, None)
            dels: set[str] = set()
            while di < len(deleted) and deleted[di] <= ref.last_key:
                dels.add(deleted[di])
                di += 1
            if not mine and not dels and builder.chunker.empty:
                builder.reuse(ref, plain)
                continue
            for key, line in merge_changes(_chunk_lines(plain, export.name), iter(mine), dels):
                builder.feed(key, line)
        while pending is not None:
            builder.feed(*pending)
            pending = next(changes, None)
