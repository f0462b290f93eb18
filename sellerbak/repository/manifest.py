"""Snapshot manifests: the one object that makes a snapshot exist, written after its data.

Per dataset, a manifest keeps the record count and SHA-256 of the dataset's canonical bytes
(checked by restore and drills), the source's cursor for the next incremental run, whether the
dataset is complete, its compression dictionary, and its chunk list.

The chunk list (each chunk's id, record count, raw length and first/last record id, which lets
the next night keep untouched chunks by reference) is not inline: it is itself cut into
content-defined "ref-list" blobs, stored like chunks, and the manifest lists those. A night
that changes a few records therefore stores only the few ref-list blobs around them, and the
manifest stays small however large the shop grows.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import (
    FormatError,
    IntegrityError,
    ObjectNotFoundError,
    SnapshotNotFoundError,
)
from sellerbak.repository.format import compress, decompress
from sellerbak.repository.repo import MAX_SEALED_BYTES, Repository, parse_hex_id, snapshot_name

MANIFEST_FORMAT = "sellerbak-snapshot/1"
#: bound of every count and length in a manifest (totals of larger ones would not add up
#: reliably, nor print: a snapshot listing divides them as floats)
MAX_COUNT = 1 << 63
log = logging.getLogger(__name__)


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
        if (len(ref.chunk_id) != 32 or not 1 <= ref.records < MAX_COUNT
                or not 1 <= ref.raw_len < MAX_COUNT):
            raise ValueError("bad chunk reference")
        return ref


    def line(self) -> bytes:
        """This reference as one line of a ref-list blob."""
        return orjson.dumps(self.to_json(), option=orjson.OPT_APPEND_NEWLINE)


@dataclass(frozen=True, slots=True)
class RefListRef:
    """One ref-list blob: which chunk references it holds, summarised."""

    blob_id: bytes
    chunks: int
    records: int
    raw_len: int
    first_key: str
    last_key: str

    def to_json(self) -> list[Any]:
        return [self.blob_id.hex(), self.chunks, self.records, self.raw_len, self.first_key,
                self.last_key]

    @classmethod
    def from_json(cls, obj: Any) -> RefListRef:
        bid, chunks, records, raw_len, first, last = obj
        ref = cls(bytes.fromhex(bid), int(chunks), int(records), int(raw_len), str(first),
                  str(last))
        if (len(ref.blob_id) != 32 or ref.chunks < 1 or not ref.chunks <= ref.records < MAX_COUNT
                or not 0 <= ref.raw_len < MAX_COUNT):
            raise ValueError("bad ref-list reference")
        return ref


def parse_reflist(plain: bytes, ref: RefListRef, what: str) -> list[ChunkRef]:
    """The chunk references in one ref-list blob, checked against its summary."""
    try:
        refs = [ChunkRef.from_json(orjson.loads(line)) for line in plain.splitlines()]
    except (ValueError, TypeError, OverflowError):
        raise FormatError(f"{what}: ref-list blob does not parse") from None
    if (len(refs) != ref.chunks or sum(r.records for r in refs) != ref.records
            or sum(r.raw_len for r in refs) != ref.raw_len
            or refs[0].first_key != ref.first_key or refs[-1].last_key != ref.last_key):
        raise FormatError(f"{what}: ref-list blob does not match its summary")
    return refs


@dataclass
class DatasetEntry:
    name: str
    records: int
    bytes: int
    sha256: str
    chunks: int
    reflist: list[RefListRef]
    dict_id: bytes | None = None
    cursor: Any = None
    complete: bool = True
    problem: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"records": self.records, "bytes": self.bytes, "sha256": self.sha256,
                "chunks": self.chunks, "reflist": [r.to_json() for r in self.reflist],
                "dict": self.dict_id.hex() if self.dict_id else None, "cursor": self.cursor,
                "complete": self.complete, "problem": self.problem, "meta": self.meta}

    @classmethod
    def from_json(cls, name: str, obj: dict[str, Any]) -> DatasetEntry:
        dict_hex = obj.get("dict")
        entry = cls(name, int(obj["records"]), int(obj["bytes"]), str(obj["sha256"]),
                    int(obj["chunks"]), [RefListRef.from_json(r) for r in obj["reflist"]],
                    bytes.fromhex(dict_hex) if dict_hex else None, obj.get("cursor"),
                    bool(obj.get("complete", True)), obj.get("problem"),
                    dict(obj.get("meta") or {}))
        if (sum(r.chunks for r in entry.reflist) != entry.chunks
                or sum(r.records for r in entry.reflist) != entry.records
                or sum(r.raw_len for r in entry.reflist) != entry.bytes
                or len(entry.sha256) != 64
                or (entry.dict_id is not None and len(entry.dict_id) != 32)
                or not all(0 <= n < MAX_COUNT for n in (entry.records, entry.bytes))
                or not (isinstance(entry.problem, str) or entry.problem is None)):
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
        if m.datetime.tzinfo is None:
            raise ValueError("manifest time has no time zone")
        if not (isinstance(m.parent, str) or m.parent is None):
            raise ValueError("manifest parent is not a snapshot id")
        return m


def new_manifest_id() -> bytes:
    return os.urandom(32)


def now_rfc3339() -> str:
    return format_time(datetime.now(UTC))


def format_time(when: datetime) -> str:
    """The one time format manifests use: UTC, microseconds, `Z`."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def write_manifest(repo: Repository, manifest: Manifest) -> None:
    plain = compress(json.dumps(manifest.to_json(), sort_keys=True,
                                separators=(",", ":")).encode())
    repo.store.put(snapshot_name(manifest.id), repo.seal(Kind.MANIFEST, manifest.id, plain))


def read_manifest(repo: Repository, snapshot_id: bytes) -> Manifest:
    name = snapshot_name(snapshot_id)
    try:
        data = repo.store.get(name, MAX_SEALED_BYTES)
    except ObjectNotFoundError:
        raise SnapshotNotFoundError(f"snapshot {snapshot_id.hex()[:8]} not found") from None
    plain = decompress(repo.open_sealed(Kind.MANIFEST, snapshot_id, data, name), name)
    try:
        return Manifest.from_json(json.loads(plain), snapshot_id)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
            RecursionError) as exc:  # OverflowError: int(1e400); RecursionError: deep nesting
        raise FormatError(f"{name}: manifest does not parse ({exc})") from None


def list_snapshot_ids(repo: Repository) -> list[bytes]:
    return [sid for info in repo.store.list("snapshots/")
            if (sid := parse_hex_id(info.name, "snapshots/")) is not None]


def load_manifests(repo: Repository, problems: list[str] | None = None) -> list[Manifest]:
    """Every readable snapshot, oldest first.

    A manifest that cannot be read (damaged, or planted by someone without the key) is left
    out and described in `problems` rather than stopping every backup and restore; `check`
    reports it as an error."""
    from concurrent.futures import ThreadPoolExecutor

    def one(sid: bytes) -> Manifest | str:
        try:
            return read_manifest(repo, sid)
        except (FormatError, IntegrityError, SnapshotNotFoundError) as exc:
            return str(exc)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, list_snapshot_ids(repo)))
    manifests = [r for r in results if isinstance(r, Manifest)]
    if problems is not None:
        problems.extend(r for r in results if isinstance(r, str))
    for r in results:
        if isinstance(r, str):
            log.warning("skipping unreadable snapshot: %s", r)
    return sorted(manifests, key=lambda m: (m.datetime, m.id))


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
