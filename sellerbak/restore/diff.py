"""What changed between two snapshots: per dataset, records added, removed and changed (by id).

Datasets are stored sorted by id, so two of them compare by a streaming merge-join in constant
memory. Most of a nightly diff is never decrypted at all:

- equal dataset digests (SHA-256 of the canonical bytes) mean equal datasets: nothing is read;
- a ref-list blob both snapshots list holds the same chunk references on both sides, so it is
  not even read;
- a chunk both snapshots reference has the same content on both sides (chunk ids are keyed
  MACs of the plaintext), so its records are unchanged and it is skipped on both sides. Since
  ids are unique in a dataset, none of its records can appear in any other chunk of either
  side, so the merge-join of the remaining records alone is exact.

A night that changes a few records therefore decrypts a few chunks, whatever the shop's size;
`records_compared` counts the records that were decoded.

The report names ids and field names only, never field values: it is meant for logs and
tickets, and values are customer data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sellerbak.errors import IntegrityError, SourceError, UsageError
from sellerbak.records import parse_line, record_key
from sellerbak.repository.format import TYPE_REFLIST
from sellerbak.repository.index import Index
from sellerbak.repository.manifest import ChunkRef, DatasetEntry, Manifest, parse_reflist
from sellerbak.repository.packs import ChunkReader
from sellerbak.repository.repo import Repository


@dataclass
class ChangedRecord:
    id: str
    #: top-level fields whose values differ, sorted; a field on one side only counts
    fields: list[str]


@dataclass
class DatasetDiff:
    name: str
    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0
    #: "a" or "b" when the dataset is in one snapshot only
    only_in: str | None = None
    #: sides ("a", "b") where the source stopped early: removals may be records not exported
    incomplete: list[str] = field(default_factory=list)
    added_ids: list[str] = field(default_factory=list)
    removed_ids: list[str] = field(default_factory=list)
    changed_records: list[ChangedRecord] = field(default_factory=list)
    #: chunks skipped because both snapshots reference them, and chunks decrypted
    chunks_shared: int = 0
    chunks_read: int = 0
    #: ref-list blobs read (those both snapshots list are skipped unread)
    reflists_read: int = 0
    records_compared: int = 0

    def to_json(self, with_ids: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"added": self.added, "removed": self.removed,
                               "changed": self.changed, "unchanged": self.unchanged,
                               "only_in": self.only_in, "incomplete": self.incomplete,
                               "chunks_shared": self.chunks_shared,
                               "chunks_read": self.chunks_read,
                               "reflists_read": self.reflists_read,
                               "records_compared": self.records_compared}
        if with_ids:
            out["added_ids"] = self.added_ids
            out["removed_ids"] = self.removed_ids
            out["changed_records"] = [{"id": c.id, "fields": c.fields}
                                      for c in self.changed_records]
        return out


@dataclass
class DiffReport:
    a: Manifest
    b: Manifest
    datasets: list[DatasetDiff]
    with_ids: bool

    @property
    def records_compared(self) -> int:
        return sum(d.records_compared for d in self.datasets)

    @property
    def added(self) -> int:
        return sum(d.added for d in self.datasets)

    @property
    def removed(self) -> int:
        return sum(d.removed for d in self.datasets)

    @property
    def changed(self) -> int:
        return sum(d.changed for d in self.datasets)

    def dataset(self, name: str) -> DatasetDiff:
        return next(d for d in self.datasets if d.name == name)

    def to_json(self) -> dict[str, Any]:
        def side(m: Manifest) -> dict[str, Any]:
            return {"id": m.id.hex(), "time": m.time, "source": m.source, "tags": m.tags}

        return {"a": side(self.a), "b": side(self.b),
                "added": self.added, "removed": self.removed, "changed": self.changed,
                "records_compared": self.records_compared,
                "datasets": {d.name: d.to_json(self.with_ids) for d in self.datasets}}


def diff_snapshots(repo: Repository, a: Manifest, b: Manifest,
                   datasets: Sequence[str] | None = None, with_ids: bool = True,
                   index: Index | None = None) -> DiffReport:
    """Compare snapshot `a` (before) with `b` (after), dataset by dataset."""
    names = sorted(set(a.datasets) | set(b.datasets))
    if datasets:
        unknown = [d for d in datasets if d not in names]
        if unknown:
            raise UsageError(f"neither snapshot has a dataset {unknown[0]!r} "
                             f"(they have: {', '.join(names)})")
        names = [n for n in names if n in datasets]
    reader: ChunkReader | None = None

    def get_reader() -> ChunkReader:
        nonlocal reader
        if reader is None:
            reader = ChunkReader(repo, index or Index.load(repo))
        return reader

    out = []
    for name in names:
        ea, eb = a.datasets.get(name), b.datasets.get(name)
        diff = DatasetDiff(name, incomplete=[s for s, e in (("a", ea), ("b", eb))
                                             if e is not None and not e.complete])
        if ea is not None and eb is not None:
            if ea.sha256 == eb.sha256 and ea.records == eb.records:
                diff.unchanged = eb.records  # same canonical bytes: nothing to read
            else:
                _diff_dataset(get_reader(), ea, eb, diff, with_ids)
        elif eb is not None:
            diff.only_in, diff.added = "b", eb.records
            if with_ids:
                diff.added_ids = list(_ids(get_reader(), eb, diff))
        elif ea is not None:
            diff.only_in, diff.removed = "a", ea.records
            if with_ids:
                diff.removed_ids = list(_ids(get_reader(), ea, diff))
        out.append(diff)
    return DiffReport(a, b, out, with_ids)


def _diff_dataset(reader: ChunkReader, ea: DatasetEntry, eb: DatasetEntry, diff: DatasetDiff,
                  with_ids: bool) -> None:
    same_lists = {r.blob_id for r in ea.reflist} & {r.blob_id for r in eb.reflist}
    refs_a = _chunk_refs(reader, ea, same_lists, diff)
    refs_b = _chunk_refs(reader, eb, same_lists, diff)
    shared = {r.chunk_id for r in refs_a} & {r.chunk_id for r in refs_b}
    rest_a = [r for r in refs_a if r.chunk_id not in shared]
    rest_b = [r for r in refs_b if r.chunk_id not in shared]
    diff.chunks_shared = (sum(r.chunks for r in ea.reflist if r.blob_id in same_lists)
                          + len(shared))
    diff.unchanged = (sum(r.records for r in ea.reflist if r.blob_id in same_lists)
                      + sum(r.records for r in refs_a if r.chunk_id in shared))
    side_a = _records(reader, rest_a, ea.name, diff)
    side_b = _records(reader, rest_b, ea.name, diff)
    ra, rb = next(side_a, None), next(side_b, None)
    while ra is not None or rb is not None:
        if rb is None or (ra is not None and ra[0] < rb[0]):
            assert ra is not None
            diff.removed += 1
            if with_ids:
                diff.removed_ids.append(ra[0])
            ra = next(side_a, None)
        elif ra is None or rb[0] < ra[0]:
            diff.added += 1
            if with_ids:
                diff.added_ids.append(rb[0])
            rb = next(side_b, None)
        else:
            if ra[1] == rb[1]:  # canonical lines: equal bytes, equal records
                diff.unchanged += 1
            else:
                diff.changed += 1
                if with_ids:
                    diff.changed_records.append(ChangedRecord(ra[0],
                                                              changed_fields(ra[2], rb[2])))
            ra, rb = next(side_a, None), next(side_b, None)


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Top-level fields that differ, compared in canonical form (so 1 and 1.0, or 1 and true,
    differ as they do in the stored bytes)."""
    return sorted(k for k in before.keys() | after.keys()
                  if k not in before or k not in after
                  or _canonical(before[k]) != _canonical(after[k]))


def _canonical(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # integers beyond 64 bits
        return json.dumps(value, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode()


def _chunk_refs(reader: ChunkReader, entry: DatasetEntry, skip: set[bytes],
                diff: DatasetDiff) -> list[ChunkRef]:
    """The dataset's chunk references, in order, leaving out the ref-list blobs in `skip`
    (those both snapshots share). References only: a few dozen bytes per chunk."""
    wanted = [r for r in entry.reflist if r.blob_id not in skip]
    diff.reflists_read += len(wanted)
    refs: list[ChunkRef] = []
    for rref, plain in zip(wanted, reader.read((r.blob_id for r in wanted), TYPE_REFLIST),
                           strict=True):
        for ref in parse_reflist(plain, rref, f"dataset {entry.name}"):
            if refs and ref.first_key <= refs[-1].last_key:
                raise IntegrityError(f"dataset {entry.name}: chunk references are out of order")
            refs.append(ref)
    return refs


def _records(reader: ChunkReader, refs: list[ChunkRef], dataset: str,
             diff: DatasetDiff) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """(id, canonical line, record) of every record in these chunks, in order, checked
    sorted."""
    prev: str | None = None
    for ref, plain in zip(refs, reader.read(r.chunk_id for r in refs), strict=True):
        lines = plain.split(b"\n")
        if lines.pop() != b"" or len(lines) != ref.records:
            raise IntegrityError(f"dataset {dataset}: a chunk holds a different number of "
                                 "records than its reference says")
        diff.chunks_read += 1
        for line in lines:
            record = parse_line(line, dataset)
            try:
                key = record_key(record, dataset)
            except SourceError:
                raise IntegrityError(f"dataset {dataset}: a stored record has no id") from None
            diff.records_compared += 1
            if prev is not None and key <= prev:
                raise IntegrityError(f"dataset {dataset}: records are not sorted by id")
            prev = key
            yield key, line, record


def _ids(reader: ChunkReader, entry: DatasetEntry, diff: DatasetDiff) -> Iterable[str]:
    refs = _chunk_refs(reader, entry, set(), diff)
    for key, _line, _record in _records(reader, refs, entry.name, diff):
        yield key


