"""Walking a stored dataset: its chunk references (from ref-list blobs), then its chunks."""

from __future__ import annotations

import itertools
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
    """(reference, verified plaintext) for every chunk of the dataset, in order."""
    refs_for_ids, refs = itertools.tee(iter_chunk_refs(reader, entry))
    plains = reader.read(r.chunk_id for r in refs_for_ids)
    for ref, plain in zip(refs, plains, strict=True):
        if plain.count(b"\n") != ref.records:
            raise IntegrityError(f"dataset {entry.name}: a chunk holds a different number of "
                                 "records than its reference says")
        yield ref, plain
