"""`prune`: delete what no snapshot references, and repack packs that are mostly garbage.

The order of steps is what makes an interrupted prune harmless (the same order as restic's):

1. find every blob a snapshot needs: each manifest's ref-list blobs, the chunks they list,
   and every dictionary (kept always: a chunk names its dictionary only inside its zstd
   frame, and a dictionary is a few KiB);
2. copy the needed blobs out of packs that are mostly garbage into new packs (plus an index
   object for them), so until step 4 every needed blob exists at least twice;
3. write one consolidated index listing every pack that stays, which names all older index
   objects as superseded (readers ignore a superseded index from then on);
4. delete the superseded index objects, then the packs nothing needs any more.

Killed anywhere in 2-3, the repository still has its old indexes and packs, plus extra packs
the next run reuses or removes. Killed anywhere in 4, the new index already lists every
needed blob and the deleted objects were needed by nobody. Prune refuses to run when a
snapshot cannot be read, since it cannot know what such a snapshot needs.

The caller holds the exclusive lock. Objects under S3 Object Lock retention cannot be
deleted before it ends: prune leaves them and counts them; a later prune removes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import (
    IntegrityError,
    ObjectNotFoundError,
    SellerbakError,
)
from sellerbak.repository.datasets import iter_chunk_refs
from sellerbak.repository.format import (
    TYPE_CHUNK,
    TYPE_DICT,
    TYPE_REFLIST,
    PackRecord,
    blob_type,
    decode_index,
)
from sellerbak.repository.index import Index, read_pack_record, write_index
from sellerbak.repository.manifest import load_manifests
from sellerbak.repository.packs import ChunkReader, PackWriter
from sellerbak.repository.repo import (
    MAX_SEALED_BYTES,
    Repository,
    index_name,
    pack_name,
    parse_hex_id,
    snapshot_name,
)

log = logging.getLogger(__name__)

#: a pack whose unused share is above this is repacked (the rest is left: rewriting a pack to
#: free a little costs more requests and bytes than the space is worth)
DEFAULT_MAX_UNUSED = 0.5
#: index objects written by prune list at most this many packs each
INDEX_PACKS_PER_OBJECT = 2000
#: upload temporaries older than this are leftovers of a killed writer
PARTIAL_UPLOAD_AGE = timedelta(hours=1)


@dataclass
class PruneReport:
    dry_run: bool = False
    snapshots: int = 0
    blobs_used: int = 0
    packs_total: int = 0
    bytes_total: int = 0
    packs_deleted: int = 0
    bytes_deleted: int = 0
    packs_repacked: int = 0
    bytes_repacked: int = 0
    packs_written: int = 0
    bytes_written: int = 0
    unindexed_packs: int = 0
    indexes_deleted: int = 0
    indexes_written: int = 0
    partial_uploads_removed: int = 0
    #: objects whose Object Lock retention has not ended yet (left for a later prune)
    retained: int = 0
    #: live objects whose Object Lock retention was renewed
    retention_extended: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return self.bytes_deleted + self.bytes_repacked - self.bytes_written

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "snapshots": self.snapshots,
                "blobs_used": self.blobs_used, "packs_total": self.packs_total,
                "bytes_total": self.bytes_total, "packs_deleted": self.packs_deleted,
                "bytes_deleted": self.bytes_deleted, "packs_repacked": self.packs_repacked,
                "bytes_repacked": self.bytes_repacked, "packs_written": self.packs_written,
                "bytes_written": self.bytes_written, "bytes_freed": self.bytes_freed,
                "unindexed_packs": self.unindexed_packs,
                "indexes_deleted": self.indexes_deleted,
                "indexes_written": self.indexes_written,
                "partial_uploads_removed": self.partial_uploads_removed,
                "retained": self.retained, "retention_extended": self.retention_extended,
                "warnings": self.warnings}

    def summary_line(self) -> str:
        from sellerbak.records import human_bytes

        would = "would " if self.dry_run else ""
        return (f"prune: {would}free {human_bytes(max(self.bytes_freed, 0))} "
                f"({self.packs_deleted} packs deleted, {self.packs_repacked} repacked, "
                f"{self.snapshots} snapshots kept)")

    def describe(self) -> list[str]:
        from sellerbak.records import human_bytes

        would = "would " if self.dry_run else ""
        lines = [f"{self.snapshots} snapshots need {self.blobs_used} blobs in "
                 f"{self.packs_total - self.packs_deleted} of {self.packs_total} packs "
                 f"({human_bytes(self.bytes_total)} stored)",
                 f"{would}delete {self.packs_deleted} unused packs "
                 f"({human_bytes(self.bytes_deleted)})",
                 f"{would}repack {self.packs_repacked} mostly unused packs "
                 f"({human_bytes(self.bytes_repacked)})"
                 + ("" if self.dry_run else
                    f" into {self.packs_written} ({human_bytes(self.bytes_written)})"),
                 f"{would}free {human_bytes(max(self.bytes_freed, 0))}"]
        if self.retained:
            lines.append(f"{self.retained} objects are still under Object Lock retention; a "
                         "later prune removes them")
        return lines + [f"warning: {w}" for w in self.warnings]


@dataclass
class _Plan:
    """Which packs go, which get repacked, and which stay (with their index records)."""

    keep: dict[bytes, PackRecord] = field(default_factory=dict)
    delete: dict[bytes, int] = field(default_factory=dict)
    repack: dict[bytes, PackRecord] = field(default_factory=dict)
    #: blobs to copy out of the repacked packs: id -> blob type
    copy: dict[bytes, int] = field(default_factory=dict)
    index_ids: list[bytes] = field(default_factory=list)


def prune_repository(repo: Repository, *, dry_run: bool = False,
                     max_unused: float = DEFAULT_MAX_UNUSED, progress: Any = None,
                     before_delete: Callable[[], None] | None = None,
                     ignore: set[bytes] | frozenset[bytes] = frozenset()) -> PruneReport:
    """Remove unreferenced data; see the module docstring for why it is safe to interrupt.

    `before_delete` runs after the new index is written and before anything is deleted: the
    CLI passes a check that the exclusive lock is still held. Snapshots in `ignore` count as
    gone (only for dry runs: `forget --dry-run --prune` shows what the real run frees)."""
    if ignore and not dry_run:
        raise ValueError("ignoring snapshots is for dry runs only")
    report = PruneReport(dry_run=dry_run)
    records, index_ids = _load_packs(repo, report)
    index = Index()
    for record in records.values():
        index.add_pack(record)
    used, snapshot_ids = _used_blobs(repo, index, report, ignore)
    plan = _plan(records, used, max_unused, report)
    plan.index_ids = index_ids
    settled = (not plan.delete and not plan.repack and not report.unindexed_packs
               and len(index_ids) <= 1)
    if not dry_run and getattr(repo.store, "object_lock", None) is not None:
        # under Object Lock the live set stays protected only while its retention is renewed:
        # every object a kept snapshot needs (new packs and indexes get it when written)
        live = (["config"] + [i.name for i in repo.store.list("keys/")]
                + [snapshot_name(sid) for sid in snapshot_ids]
                + [pack_name(pid) for pid in plan.keep]
                + ([index_name(iid) for iid in index_ids] if settled else []))
        report.retention_extended = repo.store.extend_retention(live)
    if dry_run or settled:  # settled: nothing to free, and the index is one object already
        return report

    new_records = _repack(repo, index, plan, report)
    kept = list(plan.keep.values()) + new_records
    superseded = list(plan.index_ids)
    for start in range(0, max(len(kept), 1), INDEX_PACKS_PER_OBJECT):
        write_index(repo, kept[start:start + INDEX_PACKS_PER_OBJECT], superseded)
        report.indexes_written += 1
    if before_delete is not None:
        before_delete()
    report.indexes_deleted = _delete(repo, [index_name(i) for i in superseded], report)
    gone = [pack_name(p) for p in list(plan.delete) + list(plan.repack)]
    _delete(repo, gone, report)
    remover = getattr(repo.store, "remove_partial_uploads", None)
    if remover is not None:
        report.partial_uploads_removed = remover(PARTIAL_UPLOAD_AGE)
    return report


def _load_packs(repo: Repository, report: PruneReport
                ) -> tuple[dict[bytes, PackRecord], list[bytes]]:
    """Every stored pack with its blob list (from the live index objects, else its header),
    and the ids of every index object (all of which the new index supersedes)."""
    stored = {pid: info.size for info in repo.store.list("data/")
              if (pid := parse_hex_id(info.name, "data/")) is not None}
    names = [(info.name, iid) for info in repo.store.list("index/")
             if (iid := parse_hex_id(info.name, "index/")) is not None]

    def fetch(item: tuple[str, bytes]) -> tuple[bytes, list[PackRecord], list[bytes]]:
        name, iid = item
        plain = repo.open_sealed(Kind.INDEX, iid, repo.store.get(name, MAX_SEALED_BYTES), name)
        packs, supersedes = decode_index(plain, name)
        return iid, packs, supersedes

    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(fetch, names))
    superseded = {old for _iid, _packs, sup in loaded for old in sup}
    records: dict[bytes, PackRecord] = {}
    for iid, packs, _sup in loaded:
        if iid in superseded:
            continue
        for pack in packs:
            if pack.pack_id not in stored:
                continue  # listed but gone: only a problem if a snapshot needs it (see below)
            if stored[pack.pack_id] != pack.size:
                raise IntegrityError(f"{pack_name(pack.pack_id)} has size "
                                     f"{stored[pack.pack_id]}, the index says {pack.size}; "
                                     "refusing to prune a damaged repository (run "
                                     "'sellerbak check --read-data')")
            records.setdefault(pack.pack_id, pack)
    unindexed = [(pid, size) for pid, size in stored.items() if pid not in records]

    def header(item: tuple[bytes, int]) -> tuple[bytes, int, PackRecord | None]:
        try:
            return item[0], item[1], read_pack_record(repo, *item)
        except (IntegrityError, ObjectNotFoundError, SellerbakError):
            return item[0], item[1], None

    with ThreadPoolExecutor(8) as pool:
        for pid, size, record in pool.map(header, unindexed):
            report.unindexed_packs += 1
            # an unreadable pack no index lists is the remains of a killed upload
            records[pid] = record if record is not None else PackRecord(pid, size, ())
    report.packs_total = len(records)
    report.bytes_total = sum(r.size for r in records.values())
    return records, [iid for _name, iid in names]


def _used_blobs(repo: Repository, index: Index, report: PruneReport,
                ignore: set[bytes] | frozenset[bytes]) -> tuple[set[bytes], list[bytes]]:
    """The ids of every blob a snapshot needs, and the ids of those snapshots."""
    problems: list[str] = []
    manifests = [m for m in load_manifests(repo, problems) if m.id not in ignore]
    if problems:
        raise IntegrityError(f"refusing to prune: {len(problems)} snapshot(s) cannot be read "
                             f"({problems[0]}); run 'sellerbak check'")
    report.snapshots = len(manifests)
    reader = ChunkReader(repo, index)
    used: set[bytes] = set()
    seen_reflists: set[bytes] = set()
    for manifest in manifests:
        for entry in manifest.datasets.values():
            if entry.dict_id is not None:
                used.add(entry.dict_id)
            fresh = [r for r in entry.reflist if r.blob_id not in seen_reflists]
            if not fresh:
                continue
            seen_reflists.update(r.blob_id for r in fresh)
            used.update(r.blob_id for r in entry.reflist)
            missing = [r.blob_id for r in entry.reflist if r.blob_id not in index]
            if missing:
                raise IntegrityError(f"refusing to prune: snapshot {manifest.short_id} needs "
                                     f"blob {missing[0].hex()[:16]}, which no pack holds; run "
                                     "'sellerbak check'")
            for ref in iter_chunk_refs(reader, entry):
                used.add(ref.chunk_id)
    absent = [b for b in used if b not in index]
    if absent:
        raise IntegrityError(f"refusing to prune: a snapshot needs chunk {absent[0].hex()[:16]}"
                             ", which no pack holds; run 'sellerbak check'")
    report.blobs_used = len(used)
    return used, [m.id for m in manifests]


def _plan(records: dict[bytes, PackRecord], used: set[bytes], max_unused: float,
          report: PruneReport) -> _Plan:
    plan = _Plan()
    placed: set[bytes] = set()  # a blob stored twice is needed from one place only
    for pid in sorted(records):
        record = records[pid]
        needed_blobs: dict[bytes, int] = {}
        # measured in blob bytes, not group bytes: a group is kept whole, but repacking
        # copies only its needed blobs, so a group with one needed chunk of sixteen is waste
        total_raw = sum(e.raw_len for e in record.blobs) or 1
        needed_raw = 0
        for e in record.blobs:
            btype = blob_type(e.flags)
            if (e.chunk_id in used or btype == TYPE_DICT) and e.chunk_id not in placed:
                needed_blobs[e.chunk_id] = btype
                needed_raw += e.raw_len
        placed.update(needed_blobs)
        if not needed_blobs:
            plan.delete[pid] = record.size
            report.packs_deleted += 1
            report.bytes_deleted += record.size
        elif 1 - needed_raw / total_raw > max_unused:
            plan.repack[pid] = record
            plan.copy.update(needed_blobs)
            report.packs_repacked += 1
            report.bytes_repacked += record.size
        else:
            plan.keep[pid] = record
    return plan


def _repack(repo: Repository, index: Index, plan: _Plan, report: PruneReport
            ) -> list[PackRecord]:
    """Copy the needed blobs of mostly-unused packs into new packs; returns their records.
    Blobs are re-compressed without a dictionary: a repacked chunk must not depend on a
    dictionary that a later prune might find no snapshot naming."""
    if not plan.copy:
        return []
    reader = ChunkReader(repo, index)
    writer = PackWriter(repo, Index())
    try:
        for btype in (TYPE_DICT, TYPE_REFLIST, TYPE_CHUNK):
            ids = [b for b, t in plan.copy.items() if t == btype]
            for blob_id, plain in zip(ids, reader.read(ids, btype), strict=True):
                writer.add(blob_id, bytes(plain), btype)
        writer.flush()
    finally:
        writer.close()
    report.packs_written = writer.stats.packs
    report.bytes_written = writer.stats.bytes_stored
    plan.index_ids.extend(writer.index_ids)
    return list(_written_records(writer, plan))


def _written_records(writer: PackWriter, plan: _Plan) -> Iterable[PackRecord]:
    old = set(plan.keep) | set(plan.repack) | set(plan.delete)
    for pid, record in writer.index.packs.items():
        if pid not in old:
            yield record


def _delete(repo: Repository, names: list[str], report: PruneReport) -> int:
    """Delete objects in parallel; ones still under retention are left and counted."""
    from sellerbak import errors

    retention_error = getattr(errors, "RetentionError", None)

    def one(name: str) -> bool:
        try:
            repo.store.delete(name)
            return True
        except ObjectNotFoundError:
            return True
        except SellerbakError as exc:
            if retention_error is not None and isinstance(exc, retention_error):
                return False
            raise

    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(one, names))
    report.retained += done.count(False)
    return done.count(True)
