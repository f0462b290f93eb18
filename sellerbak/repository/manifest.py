"""Snapshot manifests: the one object that makes a snapshot exist, written after its data.

A manifest lists, per dataset, the chunks in order (with each chunk's record count, raw length
and first/last record id, which lets the next night reuse untouched chunks without reading
them twice), the record count and SHA-256 of the dataset's canonical bytes (checked by restore
and drills), the source's cursor for the next incremental run, and whether the dataset is
complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import FormatError, ObjectNotFoundError, SnapshotNotFoundError
from sellerbak.repository.format import compress, decompress
from sellerbak.repository.repo import Repository, parse_hex_id, snapshot_name

MANIFEST_FORMAT = "sellerbak-snapshot/1"


@dataclass(frozen=True, slots=True)
class ChunkRef:
    chunk_id: bytes
    records: int
    raw_len: int
    first_key: str
    last_key: str

    def to_json(self) -> list[Any]:
        return [self.chunk_id.hex(), self.records, self.raw_len, self.first_key, self.last_key]

    @classmethod
    def from_json(cls, obj: Any) -> ChunkRef:
        cid, records, raw_len, first, last = obj
        ref = cls(bytes.fromhex(cid), int(records), int(raw_len), str(first), str(last))
        if len(ref.chunk_id) != 32 or ref.records < 1 or ref.raw_len < 1:
            raise ValueError("bad chunk reference")
        return ref


@dataclass
class DatasetEntry:
    name: str
    records: int
    bytes: int
    sha256: str
    chunks: list[ChunkRef]
    cursor: Any = None
    complete: bool = True
    problem: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"records": self.records, "bytes": self.bytes, "sha256": self.sha256,
                "chunks": [c.to_json() for c in self.chunks], "cursor": self.cursor,
                "complete": self.complete, "problem": self.problem, "meta": self.meta}

    @classmethod
    def from_json(cls, name: str, obj: dict[str, Any]) -> DatasetEntry:
        entry = cls(name, int(obj["records"]), int(obj["bytes"]), str(obj["sha256"]),
                    [ChunkRef.from_json(c) for c in obj["chunks"]], obj.get("cursor"),
                    bool(obj.get("complete", True)), obj.get("problem"),
                    dict(obj.get("meta") or {}))
        if sum(c.records for c in entry.chunks) != entry.records or \
                sum(c.raw_len for c in entry.chunks) != entry.bytes or len(entry.sha256) != 64:
            raise ValueError("dataset totals do not add up")
        return entry


@dataclass
class Manifest:
    id: bytes
    time: str
    source: str
    source_type: str
    hostname: str
    tags: list[str]
    datasets: dict[str, DatasetEntry]
    parent: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.id.hex()[:8]

    @property
    def complete(self) -> bool:
        return all(d.complete for d in self.datasets.values())

    @property
    def records(self) -> int:
        return sum(d.records for d in self.datasets.values())

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.datasets.values())

    @property
    def datetime(self) -> datetime:
        return datetime.fromisoformat(self.time.replace("Z", "+00:00"))

    def to_json(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "id": self.id.hex(), "time": self.time,
                "source": self.source, "source_type": self.source_type,
                "hostname": self.hostname, "tags": self.tags, "parent": self.parent,
                "complete": self.complete, "summary": self.summary,
                "datasets": {n: d.to_json() for n, d in sorted(self.datasets.items())}}

    @classmethod
    def from_json(cls, obj: Any, expected_id: bytes) -> Manifest:
        if not isinstance(obj, dict) or obj.get("format") != MANIFEST_FORMAT:
            raise ValueError("unknown manifest format")
        mid = bytes.fromhex(obj["id"])
        if mid != expected_id:
            raise ValueError("manifest id does not match its name")
        m = cls(mid, str(obj["time"]), str(obj["source"]), str(obj["source_type"]),
                str(obj.get("hostname", "")), [str(t) for t in obj.get("tags", [])],
                {str(n): DatasetEntry.from_json(str(n), d) for n, d in obj["datasets"].items()},
                obj.get("parent"), dict(obj.get("summary") or {}))
        m.datetime  # noqa: B018 - validates the time field
        return m


def new_manifest_id() -> bytes:
    return os.urandom(32)


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def write_manifest(repo: Repository, manifest: Manifest) -> None:
    plain = compress(json.dumps(manifest.to_json(), sort_keys=True,
                                separators=(",", ":")).encode())
    repo.store.put(snapshot_name(manifest.id), repo.seal(Kind.MANIFEST, manifest.id, plain))


def read_manifest(repo: Repository, snapshot_id: bytes) -> Manifest:
    name = snapshot_name(snapshot_id)
    try:
        data = repo.store.get(name)
    except ObjectNotFoundError:
        raise SnapshotNotFoundError(f"snapshot {snapshot_id.hex()[:8]} not found") from None
    plain = decompress(repo.open_sealed(Kind.MANIFEST, snapshot_id, data, name), name)
    try:
        return Manifest.from_json(json.loads(plain), snapshot_id)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"{name}: manifest does not parse ({exc})") from None


def list_snapshot_ids(repo: Repository) -> list[bytes]:
    return [sid for info in repo.store.list("snapshots/")
            if (sid := parse_hex_id(info.name, "snapshots/")) is not None]


def load_manifests(repo: Repository) -> list[Manifest]:
    """Every snapshot, oldest first."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        manifests = list(pool.map(lambda sid: read_manifest(repo, sid), list_snapshot_ids(repo)))
    return sorted(manifests, key=lambda m: (m.time, m.id))


def resolve_snapshot(repo: Repository, ref: str, source: str | None = None) -> Manifest:
    """`latest` (optionally of a source) or a unique hex prefix of a snapshot id."""
    if ref == "latest":
        manifests = [m for m in load_manifests(repo) if source is None or m.source == source]
        if not manifests:
            raise SnapshotNotFoundError("no snapshot found" + (f" of source {source}"
                                                               if source else ""))
        return manifests[-1]
    ref_l = ref.lower()
    if not ref_l or any(c not in "0123456789abcdef" for c in ref_l):
        raise SnapshotNotFoundError(f"{ref!r} is not a snapshot id (hex) or 'latest'")
    matches = [sid for sid in list_snapshot_ids(repo) if sid.hex().startswith(ref_l)]
    if not matches:
        raise SnapshotNotFoundError(f"snapshot {ref} not found")
    if len(matches) > 1:
        raise SnapshotNotFoundError(f"snapshot id prefix {ref} is ambiguous; give more digits")
    return read_manifest(repo, matches[0])
