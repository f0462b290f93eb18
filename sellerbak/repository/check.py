"""`check`: is every snapshot restorable from what is stored?

Structure (always): every manifest decrypts and parses, every chunk it references is listed by
an index, and every indexed pack exists with the size the index records. With `read_data`, every
pack is downloaded and every blob authenticated, decompressed and its keyed id recomputed, so
tampering, truncation, swaps and bit rot are found before a restore needs the data.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sellerbak.errors import SellerbakError
from sellerbak.repository.datasets import iter_chunk_refs
from sellerbak.repository.format import PackRecord
from sellerbak.repository.index import Index, read_pack_record
from sellerbak.repository.manifest import list_snapshot_ids, read_manifest
from sellerbak.repository.packs import ChunkReader
from sellerbak.repository.repo import Repository, pack_name, parse_hex_id


@dataclass
class CheckReport:
    snapshots: int = 0
    packs: int = 0
    chunks_referenced: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)
    unreferenced_packs: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def check_repository(repo: Repository, read_data: bool = False,
                     on_pack: Callable[[int], None] | None = None) -> CheckReport:
    report = CheckReport()
    index = Index.load(repo)
    stored = pack_sizes(repo)
    referenced: set[bytes] = set()
    reader = ChunkReader(repo, index)
    for sid in list_snapshot_ids(repo):
        try:
            manifest = read_manifest(repo, sid)
        except SellerbakError as exc:
            report.errors.append(str(exc))
            continue
        report.snapshots += 1
        for ds in manifest.datasets.values():
            where = f"snapshot {manifest.short_id} dataset {ds.name}"
            meta = [r.blob_id for r in ds.reflist] + ([ds.dict_id] if ds.dict_id else [])
            referenced.update(meta)
            missing = [b for b in meta if b not in index]
            if missing:
                report.errors.append(f"{where}: blob {missing[0].hex()[:16]} is in no index")
                continue
            try:
                for ref in iter_chunk_refs(reader, ds):
                    referenced.add(ref.chunk_id)
                    if ref.chunk_id not in index:
                        report.errors.append(f"{where}: chunk {ref.chunk_id.hex()[:16]} is in "
                                             "no index")
            except SellerbakError as exc:
                report.errors.append(f"{where}: {exc}")
    report.chunks_referenced = len(referenced)
    needed_packs = {index.locate(c).pack_id for c in referenced if c in index}
    for pid, pack in index.packs.items():
        if pid not in stored:
            if pid in needed_packs:
                report.errors.append(f"{pack_name(pid)} is missing")
        elif stored[pid] != pack.size:
            report.errors.append(f"{pack_name(pid)} has size {stored[pid]}, index says "
                                 f"{pack.size} (truncated or replaced)")
    report.unreferenced_packs = len(set(stored) - needed_packs)
    report.packs = len(needed_packs)
    if read_data:
        _read_all(repo, index, [index.packs[p] for p in sorted(needed_packs) if p in stored],
                  report, on_pack)
    return report


def pack_sizes(repo: Repository) -> dict[bytes, int]:
    """Every stored pack and its size, from one listing."""
    return {pid: info.size for info in repo.store.list("data/")
            if (pid := parse_hex_id(info.name, "data/")) is not None}


def _read_all(repo: Repository, index: Index, packs: list[PackRecord], report: CheckReport,
              on_pack: Callable[[int], None] | None) -> None:
    reader = ChunkReader(repo, index)

    def verify(pack: PackRecord) -> str | None:
        name = pack_name(pack.pack_id)
        try:
            header = read_pack_record(repo, pack.pack_id, pack.size)
            if sorted(header.blobs, key=lambda b: b.offset) != sorted(pack.blobs,
                                                                      key=lambda b: b.offset):
                return f"{name}: header does not match the index"
            data = repo.store.get(name, pack.size)
            if len(data) != pack.size:
                return f"{name}: pack is truncated"
            groups: dict[int, bytes] = {}
            for e in pack.blobs:
                if e.offset not in groups:
                    groups[e.offset] = reader.open_group(name, pack.pack_id, e,
                                                         data[e.offset:e.offset + e.length])
                reader.check_blob(name, e, groups[e.offset])
        except SellerbakError as exc:
            return str(exc)
        finally:
            if on_pack:
                on_pack(pack.size)
        return None

    with ThreadPoolExecutor(4) as pool:
        for pack, problem in zip(packs, pool.map(verify, packs), strict=True):
            report.bytes_read += pack.size
            if problem:
                report.errors.append(problem)
