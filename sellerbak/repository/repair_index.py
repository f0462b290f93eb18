"""`repair index`: rebuild the index from the packs' own headers.

When an index object is lost, damaged or replaced by junk, the blobs it listed are unknown to
readers, and a restore of a snapshot that needs them fails. Every pack carries an
authenticated header listing its blobs (docs/FORMAT.md §9.3), so the index can be rebuilt
from `data/` alone, as restic's `repair index` does:

1. list `data/` and read every pack's header (two range reads from its end);
2. write new index objects listing every pack found, naming every readable index object in
   `supersedes` (so they are version 2, docs/FORMAT.md §10);
3. delete the superseded index objects.

Killed before 2 ends, the old index objects still stand; killed after, readers ignore the
superseded ones. A pack whose header does not open keeps the record a readable index object
has for it (same size), so a damaged header loses no blob that was still findable; one that
no readable index lists is reported and left alone. Unreadable index objects are neither
superseded nor deleted (nothing in them can be trusted, and under Object Lock they could not
be deleted): they are left in place, and `check` keeps reporting them.

The caller holds the exclusive lock: no snapshot may add packs while the index is rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sellerbak.errors import IntegrityError, ObjectNotFoundError, RetentionError
from sellerbak.repository.format import PackRecord
from sellerbak.repository.index import read_index_objects, read_pack_record, write_index
from sellerbak.repository.repo import Repository, index_name, pack_name, parse_hex_id

#: index objects written by the repair list at most this many packs each (as prune's do)
PACKS_PER_INDEX = 2000


@dataclass
class RepairIndexReport:
    dry_run: bool = False
    #: packs stored in data/
    packs: int = 0
    #: packs the new index lists, from their header or (header unreadable) an old record
    packs_indexed: int = 0
    packs_from_old_index: int = 0
    #: packs neither a header nor a readable index describes (left alone, not indexed)
    unreadable_packs: list[str] = field(default_factory=list)
    indexes_superseded: int = 0
    indexes_written: int = 0
    indexes_deleted: int = 0
    #: superseded index objects still under Object Lock retention (readers ignore them)
    retained: int = 0
    #: index objects that do not open or parse (left in place)
    unreadable_indexes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "packs": self.packs,
                "packs_indexed": self.packs_indexed,
                "packs_from_old_index": self.packs_from_old_index,
                "unreadable_packs": self.unreadable_packs,
                "indexes_superseded": self.indexes_superseded,
                "indexes_written": self.indexes_written,
                "indexes_deleted": self.indexes_deleted, "retained": self.retained,
                "unreadable_indexes": self.unreadable_indexes}

    def describe(self) -> list[str]:
        would = "would " if self.dry_run else ""
        lines = [f"{self.packs} packs stored; {would}index {self.packs_indexed} of them"
                 + (f" ({self.packs_from_old_index} from the old index: header unreadable)"
                    if self.packs_from_old_index else ""),
                 f"{would}replace {self.indexes_superseded} index objects"
                 + ("" if self.dry_run else f" by {self.indexes_written}")]
        if self.retained:
            lines.append(f"{self.retained} replaced index objects are still under Object Lock "
                         "retention (ignored by readers; a later prune removes them)")
        lines += [f"warning: {name}: header cannot be read and no readable index lists it; "
                  "not indexed (run 'sellerbak check --read-data')"
                  for name in self.unreadable_packs]
        lines += [f"warning: {problem}; left in place" for problem in self.unreadable_indexes]
        return lines

    def summary_line(self) -> str:
        would = "would " if self.dry_run else ""
        return (f"repair index: {would}index {self.packs_indexed} of {self.packs} packs"
                + (f", {len(self.unreadable_packs)} unreadable" if self.unreadable_packs
                   else ""))


def repair_index(repo: Repository, *, dry_run: bool = False,
                 before_delete: Callable[[], None] | None = None,
                 workers: int = 8) -> RepairIndexReport:
    """Rebuild the index from the pack headers; see the module docstring for the steps.

    `before_delete` runs after the new index is written and before the old index objects
    are deleted: the CLI passes a check that the exclusive lock is still held."""
    report = RepairIndexReport(dry_run=dry_run)
    stored = {pid: info.size for info in repo.store.list("data/")
              if (pid := parse_hex_id(info.name, "data/")) is not None}
    report.packs = len(stored)
    loaded, unreadable = read_index_objects(repo, workers)
    report.unreadable_indexes = [item.describe() for item in unreadable]
    old_records: dict[bytes, PackRecord] = {}
    superseded = {old for obj in loaded for old in obj.supersedes}
    for obj in loaded:
        if obj.index_id not in superseded:
            for record in obj.pack_records():
                old_records.setdefault(record.pack_id, record)

    def header(item: tuple[bytes, int]) -> PackRecord | None:
        try:
            return read_pack_record(repo, *item)
        except (IntegrityError, ObjectNotFoundError):
            return None

    records: list[PackRecord] = []
    items = sorted(stored.items())
    with ThreadPoolExecutor(workers) as pool:
        for (pid, size), record in zip(items, pool.map(header, items), strict=True):
            if record is None:
                old = old_records.get(pid)
                if old is None or old.size != size:
                    report.unreadable_packs.append(pack_name(pid))
                    continue
                record = old
                report.packs_from_old_index += 1
            records.append(record)
    report.packs_indexed = len(records)
    replaced = [obj.index_id for obj in loaded]
    report.indexes_superseded = len(replaced)
    if dry_run or (not records and not replaced):
        return report
    for start in range(0, max(len(records), 1), PACKS_PER_INDEX):
        write_index(repo, records[start:start + PACKS_PER_INDEX], replaced)
        report.indexes_written += 1
    if before_delete is not None:
        before_delete()
    _delete_replaced(repo, replaced, report, workers)
    return report


def _delete_replaced(repo: Repository, index_ids: list[bytes], report: RepairIndexReport,
                     workers: int) -> None:
    """Delete the superseded index objects; ones under retention stay (readers ignore them)."""

    def one(index_id: bytes) -> bool:
        try:
            repo.store.delete(index_name(index_id))
        except ObjectNotFoundError:
            pass
        except RetentionError:
            return False
        return True

    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(one, index_ids))
    report.indexes_deleted = done.count(True)
    report.retained = done.count(False)
