"""`check`: is every snapshot restorable from what is stored?

Structure (always): every manifest and index object decrypts and parses (one that does not
is reported: damage, or an object planted by someone without the key), every chunk a manifest
references is listed by an index, and every indexed pack exists with the size the index
records. With `read_data`, every pack is downloaded and every blob authenticated, decompressed
and its keyed id recomputed, so tampering, truncation, swaps and bit rot are found
before a restore needs the data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sellerbak.errors import IntegrityError, SellerbakError
from sellerbak.records import record_key
from sellerbak.repository.datasets import iter_chunk_refs
from sellerbak.repository.format import TYPE_CHUNK, PackRecord, blob_type
from sellerbak.repository.index import Index, read_pack_record
from sellerbak.repository.manifest import list_snapshot_ids, read_manifest
from sellerbak.repository.packs import ChunkReader
from sellerbak.repository.repo import Repository, pack_name, parse_hex_id, snapshot_name
from sellerbak.repository.unreadable import Unreadable


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
    index = Index.load(repo, warn=False)
    unreadable_at = len(report.errors)  # their lines go here, once we know if they matter
    stored = pack_sizes(repo)
    referenced: set[bytes] = set()
    #: with read_data: what each chunk's references claim about it, checked when it is read
    claimed_keys: dict[bytes, set[tuple[str, str, int, int]]] = {}
    reader = ChunkReader(repo, index)
    for sid in list_snapshot_ids(repo):
        try:
            manifest = read_manifest(repo, sid)
        except IntegrityError as exc:  # format errors included
            report.errors.append(Unreadable(snapshot_name(sid), str(exc)).describe())
            continue
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
                    if read_data:
                        claimed_keys.setdefault(ref.chunk_id, set()).add(
                            (ref.first_key, ref.last_key, ref.raw_len, ref.records))
                    if ref.chunk_id not in index:
                        report.errors.append(f"{where}: chunk {ref.chunk_id.hex()[:16]} is in "
                                             "no index")
            except SellerbakError as exc:
                report.errors.append(f"{where}: {exc}")
    report.chunks_referenced = len(referenced)
    report.errors[unreadable_at:unreadable_at] = _unreadable_indexes(
        index, needed=any(c not in index for c in referenced))
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
                  report, on_pack, claimed_keys)
    _report_hidden(repo, report)
    return report


def _report_hidden(repo: Repository, report: CheckReport) -> None:
    """An object hidden behind a delete marker is an attack (sellerbak never leaves one, see
    sellerbak.repository.hidden): one error line per object, naming it."""
    from sellerbak.repository.hidden import describe, find_hidden

    report.errors.extend(describe(hidden) for hidden in find_hidden(repo.store))


def _unreadable_indexes(index: Index, needed: bool) -> list[str]:
    """One error per index object the index left out. The blobs it lists are unknown, so when
    snapshots `needed` blobs no readable index lists, they may be there: the line says how to
    rebuild the index from the packs."""
    hint = "; 'sellerbak repair index' rebuilds the index from the packs" if needed else ""
    return [item.describe() + hint for item in index.unreadable]


def pack_sizes(repo: Repository) -> dict[bytes, int]:
    """Every stored pack and its size, from one listing."""
    return {pid: info.size for info in repo.store.list("data/")
            if (pid := parse_hex_id(info.name, "data/")) is not None}


def chunk_ref_problem(chunk_id: bytes, plain: bytes | memoryview,
                      claimed: set[tuple[str, str, int, int]]) -> str | None:
    """Whether a chunk is what its references claim (first and last record ids as
    `first_key`/`last_key`, its length as `raw_len`, its line count as `records`), or why not.
    Restore checks the line counts and the dataset's SHA-256 but never parses records; the
    keys steer the next incremental merge (a change goes to the first chunk whose `last_key`
    is not below its id), so keys that do not match the records would put changes next to the
    wrong chunk, and a wrong `raw_len` makes the manifest's byte counts wrong."""
    data = bytes(plain)
    try:  # json, not orjson: an integer id beyond 64 bits must keep its digits
        first = record_key(json.loads(data[:data.index(b"\n")]), "check")
        last = record_key(json.loads(data[data.rfind(b"\n", 0, len(data) - 1) + 1:]), "check")
    except (ValueError, RecursionError, SellerbakError):  # no newline, not JSON, no usable id
        return f"chunk {chunk_id.hex()[:16]}: its records have no readable ids"
    actual = (first, last, len(data), data.count(b"\n"))
    if any(ref[:2] != actual[:2] for ref in claimed):
        return (f"chunk {chunk_id.hex()[:16]}: its first and last record ids differ from the "
                "keys its reference gives")
    if any(ref != actual for ref in claimed):
        return (f"chunk {chunk_id.hex()[:16]}: its length or record count differs from its "
                "reference")
    return None


def _read_all(repo: Repository, index: Index, packs: list[PackRecord], report: CheckReport,
              on_pack: Callable[[int], None] | None,
              claimed_keys: dict[bytes, set[tuple[str, str, int, int]]] | None = None
              ) -> None:
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
                plain = reader.check_blob(name, e, groups[e.offset])
                claimed = (claimed_keys or {}).get(e.chunk_id)
                if claimed and blob_type(e.flags) == TYPE_CHUNK:
                    problem = chunk_ref_problem(e.chunk_id, plain, claimed)
                    if problem:
                        return f"{name} {problem}"
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
