"""Walking a stored dataset: its chunk references (from ref-list blobs), then its chunks."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from sellerbak.errors import IntegrityError
from sellerbak.repository.format import TYPE_REFLIST
from sellerbak.repository.manifest import ChunkRef, DatasetEntry, parse_reflist
from sellerbak.repository.packs import ChunkReader


def iter_chunk_refs(reader: ChunkReader, entry: DatasetEntry) -> Iterator[ChunkRef]:
    """The dataset's chunk references in order, streamed from its ref-list blobs."""
    prev_last: str | None = None
    for rref, plain in zip(entry.reflist,
                           reader.read((r.blob_id for r in entry.reflist), TYPE_REFLIST),
                           strict=True):
        for ref in parse_reflist(plain, rref, f"dataset {entry.name}"):
            if prev_last is not None and ref.first_key <= prev_last:
                raise IntegrityError(f"dataset {entry.name}: chunk references are out of order")
            prev_last = ref.last_key
            yield ref


def iter_chunks(reader: ChunkReader, entry: DatasetEntry) -> Iterator[tuple[ChunkRef, bytes]]:
    """(reference, verified plaintext) for every chunk of the dataset, in order. The reader
    looks ahead over the references (to plan its reads), so they wait in a queue until their
    chunk comes back; it holds only what the reader has planned and not yet handed out."""
    planned: deque[ChunkRef] = deque()

    def chunk_ids() -> Iterator[bytes]:
        for ref in iter_chunk_refs(reader, entry):
            planned.append(ref)
            yield ref.chunk_id

    for plain in reader.read(chunk_ids()):
        ref = planned.popleft()
        if plain.count(b"\n") != ref.records:
            raise IntegrityError(f"dataset {entry.name}: a chunk holds a different number of "
                                 "records than its reference says")
        yield ref, plain


def iter_chunk_runs(reader: ChunkReader, entry: DatasetEntry) -> Iterator[tuple[int, bytes]]:
    """(records, plaintext) of runs of consecutive chunks, in order: the dataset's bytes
    handed out a stored group at a time rather than a chunk at a time (see
    ChunkReader.read_runs), for readers that want the bytes and the count, not the chunks. A
    run's lines are checked against its chunks' references together."""
    planned: deque[int] = deque()

    def chunk_ids() -> Iterator[bytes]:
        for ref in iter_chunk_refs(reader, entry):
            planned.append(ref.records)
            yield ref.chunk_id

    take = planned.popleft
    for chunks, plain, lines in reader.read_runs(chunk_ids()):
        records = take() if chunks == 1 else sum(take() for _ in range(chunks))
        if lines != records:
            raise IntegrityError(f"dataset {entry.name}: a chunk holds a different number of "
                                 "records than its reference says")
        yield records, plain
