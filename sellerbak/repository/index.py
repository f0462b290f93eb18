"""The in-memory index: which pack holds each chunk, built from index objects and pack headers.

Packs are uploaded before the index objects that list them, so a run killed in between leaves
packs no index mentions. `Index.load(..., recover=True)` finds such packs and reads their
headers, so the next run reuses what was already uploaded instead of sending it again.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import FormatError, IntegrityError, ObjectNotFoundError
from sellerbak.repository.format import (
    TRAILER_LEN,
    BlobEntry,
    PackRecord,
    decode_index,
    decode_pack_header,
    decode_trailer,
    encode_index,
)
from sellerbak.repository.repo import Repository, index_name, pack_name, parse_hex_id


@dataclass(frozen=True, slots=True)
class Location:
    pack_id: bytes
    entry: BlobEntry


class Index:
    def __init__(self) -> None:
        self.chunks: dict[bytes, Location] = {}
        self.packs: dict[bytes, PackRecord] = {}
        self.index_ids: set[bytes] = set()
        #: packs found in storage that no index object lists (recovered from their headers)
        self.unindexed: list[PackRecord] = []

    def add_pack(self, pack: PackRecord) -> None:
        self.packs[pack.pack_id] = pack
        for entry in pack.blobs:
            self.chunks.setdefault(entry.chunk_id, Location(pack.pack_id, entry))

    def __contains__(self, chunk_id: bytes) -> bool:
        return chunk_id in self.chunks

    def locate(self, chunk_id: bytes) -> Location:
        try:
            return self.chunks[chunk_id]
        except KeyError:
            raise IntegrityError(
                f"chunk {chunk_id.hex()[:16]} is referenced but no index lists it") from None

    @classmethod
    def load(cls, repo: Repository, recover: bool = False, workers: int = 8) -> Index:
        index = cls()
        names = [(i.name, parse_hex_id(i.name, "index/")) for i in repo.store.list("index/")]
        names = [(n, iid) for n, iid in names if iid is not None]

        def fetch(item: tuple[str, bytes]) -> tuple[bytes, list[PackRecord], list[bytes]]:
            name, iid = item
            plain = repo.open_sealed(Kind.INDEX, iid, repo.store.get(name), name)
            packs, supersedes = decode_index(plain, name)
            return iid, packs, supersedes

        with ThreadPoolExecutor(workers) as pool:
            loaded = list(pool.map(fetch, names))
        # prune writes a consolidated index that names the ones it replaces, then deletes
        # them; until they are gone (or if prune was interrupted) they must be ignored, since
        # they may list packs that prune has deleted since
        superseded = {old for _iid, _packs, sup in loaded for old in sup}
        for iid, packs, _sup in loaded:
            if iid in superseded:
                continue
            index.index_ids.add(iid)
            for pack in packs:
                index.add_pack(pack)
        if recover:
            stored = {pid: info.size for info in repo.store.list("data/")
                      if (pid := parse_hex_id(info.name, "data/")) is not None}
            missing = [(pid, size) for pid, size in stored.items() if pid not in index.packs]

            def recover_one(item: tuple[bytes, int]) -> PackRecord | None:
                try:
                    return read_pack_record(repo, *item)
                except (IntegrityError, ObjectNotFoundError):
                    return None  # unreadable leftovers are prune's business, not ours

            with ThreadPoolExecutor(workers) as pool:
                for record in pool.map(recover_one, missing):
                    if record is not None:
                        index.add_pack(record)
                        index.unindexed.append(record)
        return index


def read_pack_record(repo: Repository, pack_id: bytes, size: int) -> PackRecord:
    """Read and authenticate a pack's header (two range reads from its end)."""
    name = pack_name(pack_id)
    if size < TRAILER_LEN:
        raise FormatError(f"{name}: pack too short")
    tail = repo.store.get_range(name, -TRAILER_LEN, TRAILER_LEN)
    header_len = decode_trailer(tail, size, name)
    header_start = size - TRAILER_LEN - header_len
    sealed = repo.store.get_range(name, header_start, header_len)
    if len(sealed) != header_len:
        raise FormatError(f"{name}: pack truncated")
    plain = repo.open_sealed(Kind.PACK_HEADER, pack_id, sealed, f"{name} header")
    entries = decode_pack_header(plain, size, header_start, name)
    return PackRecord(pack_id, size, tuple(entries))


def write_index(repo: Repository, packs: list[PackRecord],
                supersedes: list[bytes] | None = None) -> bytes:
    """Store one index object listing `packs`; returns its id."""
    index_id = os.urandom(32)
    plain = encode_index(packs, supersedes or [])
    repo.store.put(index_name(index_id), repo.seal(Kind.INDEX, index_id, plain))
    return index_id
