"""The exporter interface: what every source (demo, files, tiktok) gives the snapshot engine.

A source yields one `DatasetExport` per dataset. Each export is either a full dataset
(`mode="full"`: every record that exists) or a change set (`mode="changes"`: records added or
changed since the cursor the engine handed in, plus ids deleted). The engine merges change sets
by id into the previous snapshot's dataset, so every snapshot is complete on its own.

Records are JSON objects (dicts) with an `id` (string, or an integer kept as-is). They may come
in any order; the engine sorts them by `str(id)` without holding the dataset in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sellerbak.records import Line

Record = dict[str, Any]


@dataclass
class DatasetExport:
    name: str
    #: the records, or (with `encoded`) their canonical lines
    records: Iterable[Record] | Iterable[Line]
    mode: Literal["full", "changes"] = "full"
    #: ids removed since the cursor (only meaningful with mode="changes")
    deleted_ids: Iterable[str] = ()
    #: where the next incremental run should continue; stored in the manifest, JSON-serialisable.
    #: Read only after `records` has been consumed (a source may compute it while streaming).
    cursor: Any = None
    #: False when the source could not read everything; the snapshot is stored but flagged
    complete: bool = True
    #: why the dataset is incomplete, in one line without customer data
    problem: str | None = None
    #: extra facts kept in the manifest (e.g. CSV column order), JSON-serialisable
    meta: dict[str, Any] = field(default_factory=dict)
    #: the source guarantees ascending, unique ids: records stream straight through unsorted
    sorted: bool = False
    #: a way to read the records again from the start. With it the engine first assumes the
    #: records are sorted (the common case for export files) and only sorts, re-reading, if
    #: they turn out not to be; without it, unsorted input is sorted on the way in.
    reopen: Callable[[], Iterable[Record] | Iterable[Line]] | None = None
    #: `records` (and what `reopen` gives) are already (id, canonical line) pairs, as
    #: `records.encode_records` makes them: a source that parses JSON text encodes as it goes
    #: (`records.encode_text`), which lets it check exactness on the canonical form cheaply
    encoded: bool = False


class Source(Protocol):
    """A configured source of shop data."""

    name: str
    type: str

    def export(self, cursors: dict[str, Any], full: bool) -> Iterator[DatasetExport]:
        """Yield the datasets of this source.

        `cursors` maps dataset name to the cursor stored with the previous snapshot of this
        source (empty on the first run). With `full=True` or no cursor, a source must return
        `mode="full"` exports.
        """
        ...
