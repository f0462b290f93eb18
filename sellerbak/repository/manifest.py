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
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from sellerbak.crypto.envelope import Kind
from sellerbak.errors import (
    FormatError,
    IntegrityError,
    ObjectNotFoundError,
    SellerbakError,
    SnapshotNotFoundError,
)
from sellerbak.repository.dataset_names import DatasetNameError, check_names
from sellerbak.repository.format import compress, decompress
from sellerbak.repository.repo import MAX_SEALED_BYTES, Repository, parse_hex_id, snapshot_name
from sellerbak.repository.timeline import future_warning, split_future
from sellerbak.repository.unreadable import Unreadable, warn_once

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "sellerbak-snapshot/1"
#: bound of every count and length in a manifest (totals of larger ones would not add up
#: reliably, nor print: a snapshot listing divides them as floats)
MAX_COUNT = 1 << 63

#: the one RFC 3339 subset manifests may use (docs/FORMAT.md §12.1): upper-case `T` and `Z`, at
#: most 6 fractional digits (what every reader can compare exactly), a zone always
_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
                   r"(?:(Z)|([+-])(\d\d):(\d\d))", re.ASCII)
_LOWER_HEX = re.compile(r"[0-9a-f]*", re.ASCII)


def parse_time(text: object) -> datetime:
    """A manifest `time` as an aware datetime; ValueError unless it is exactly the subset of
    RFC 3339 that docs/FORMAT.md allows. `datetime.fromisoformat` alone would also take
    spaces, week dates, basic format and naive times, which another reader would refuse, and
    then two readers would disagree on which snapshot is latest."""
    match = _TIME.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("manifest time is not an RFC 3339 time with a zone")
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = match.groups()
    if int(off_h or 0) > 23 or int(off_m or 0) > 59:
        raise ValueError("manifest time has a bad zone offset")
    offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
    zone = UTC if zulu else timezone(-offset if sign == "-" else offset)
    when = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                    int((frac or "0").ljust(6, "0")), tzinfo=zone)
    try:
        when.astimezone(UTC)  # an offset may put the instant outside years 1 to 9999
    except OverflowError:
        raise ValueError("manifest time is out of range") from None
    return when


def parse_hex(value: object, length: int) -> bytes:
    """`length` bytes written as lower-case hex in JSON; ValueError otherwise. bytes.fromhex
    would also take upper case and spaces, and readers must agree on what is malformed."""
    if (not isinstance(value, str) or len(value) != 2 * length
            or not _LOWER_HEX.fullmatch(value)):
        raise ValueError("not lower-case hex of the right length")
    return bytes.fromhex(value)


def _integer(value: object, low: int = 0) -> int:
    """A JSON integer in [low, MAX_COUNT): `true`, `1.0` and `"1"` are not integers."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < MAX_COUNT:
        raise ValueError("not an integer in range")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def _optional(obj: dict[str, Any], name: str, kind: type | tuple[type, ...],
              default: Any) -> Any:
    """An optional member: absent means `default`; present, it must have the type given."""
    if name not in obj:
        return default
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"member {name} has the wrong type")
    return value


def dataset_name_problem(names: list[str]) -> str | None:
    """Why these dataset names cannot all be restored side by side, or None: the one rule of
    sellerbak.repository.dataset_names, which the snapshot writer and restore apply too, so a
    manifest no restore could write is unreadable to every reader alike."""
    try:
        check_names(names)
    except DatasetNameError as exc:
        return str(exc)
    return None


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
        if not isinstance(obj, list) or len(obj) != 5:
            raise ValueError("a chunk reference is not a 5-element array")
        cid, records, raw_len, first, last = obj
        ref = cls(parse_hex(cid, 32), _integer(records, 1), _integer(raw_len, 1),
                  _string(first), _string(last))
        if ref.first_key > ref.last_key:
            raise ValueError("a chunk reference's first key is after its last key")
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
        if not isinstance(obj, list) or len(obj) != 6:
            raise ValueError("a ref-list reference is not a 6-element array")
        bid, chunks, records, raw_len, first, last = obj
        ref = cls(parse_hex(bid, 32), _integer(chunks, 1), _integer(records, 1),
                  _integer(raw_len), _string(first), _string(last))
        if ref.records < ref.chunks or ref.first_key > ref.last_key:
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
    def from_json(cls, name: str, obj: Any) -> DatasetEntry:
        """One dataset entry (docs/FORMAT.md §12.1): every type is checked, not coerced, so
        that every reader finds the same entries malformed. Unknown members are ignored."""
        if not isinstance(obj, dict):
            raise ValueError("a dataset entry is not an object")
        dict_hex = _optional(obj, "dict", (str, type(None)), None)
        reflist = obj["reflist"]
        if not isinstance(reflist, list):
            raise ValueError("reflist is not an array")
        entry = cls(name, _integer(obj["records"]), _integer(obj["bytes"]),
                    _string(obj["sha256"]), _integer(obj["chunks"]),
                    [RefListRef.from_json(r) for r in reflist],
                    None if dict_hex is None else parse_hex(dict_hex, 32), obj.get("cursor"),
                    _optional(obj, "complete", bool, True),
                    _optional(obj, "problem", (str, type(None)), None),
                    _optional(obj, "meta", dict, {}))
        parse_hex(entry.sha256, 32)
        if (sum(r.chunks for r in entry.reflist) != entry.chunks
                or sum(r.records for r in entry.reflist) != entry.records
                or sum(r.raw_len for r in entry.reflist) != entry.bytes):
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
        return parse_time(self.time)

    def to_json(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "id": self.id.hex(), "time": self.time,
                "source": self.source, "source_type": self.source_type,
                "hostname": self.hostname, "tags": self.tags, "parent": self.parent,
                "complete": self.complete, "summary": self.summary,
                "datasets": {n: d.to_json() for n, d in sorted(self.datasets.items())}}

    @classmethod
    def from_json(cls, obj: Any, expected_id: bytes) -> Manifest:
        """A manifest (docs/FORMAT.md §12.1), or ValueError/KeyError if it is malformed: a
        missing required member, a member of the wrong type (nothing is coerced), hex that
        is not lower case, a time outside the RFC 3339 subset, or dataset names that cannot
        be restored side by side. Unknown members are ignored; `complete` is not read (it is
        recomputed from the datasets)."""
        if not isinstance(obj, dict) or obj.get("format") != MANIFEST_FORMAT:
            raise ValueError("unknown manifest format")
        mid = parse_hex(obj["id"], 32)
        if mid != expected_id:
            raise ValueError("manifest id does not match its name")
        parse_time(obj["time"])
        tags = _optional(obj, "tags", list, [])
        datasets = obj["datasets"]
        if not isinstance(datasets, dict):
            raise ValueError("datasets is not an object")
        problem = dataset_name_problem(list(datasets))
        if problem:
            raise ValueError(f"a dataset name {problem}")
        parent = _optional(obj, "parent", (str, type(None)), None)
        if parent is not None:
            parse_hex(parent, 32)
        _optional(obj, "complete", bool, True)
        return cls(mid, obj["time"], _string(obj["source"]), _string(obj["source_type"]),
                   _optional(obj, "hostname", str, ""), [_string(t) for t in tags],
                   {n: DatasetEntry.from_json(n, d) for n, d in datasets.items()},
                   parent, _optional(obj, "summary", dict, {}))


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


class ManifestParseError(FormatError):
    """A manifest that opened under the key but does not decompress or parse. Only a key
    holder writes one (a newer sellerbak, a development build): unlike a planted or damaged
    object it may well be a snapshot, so prune refuses to run past it."""


def read_manifest(repo: Repository, snapshot_id: bytes) -> Manifest:
    name = snapshot_name(snapshot_id)
    try:
        data = repo.store.get(name, MAX_SEALED_BYTES)
    except ObjectNotFoundError:
        raise SnapshotNotFoundError(f"snapshot {snapshot_id.hex()[:8]} not found") from None
    sealed_plain = repo.open_sealed(Kind.MANIFEST, snapshot_id, data, name)
    try:
        plain = decompress(sealed_plain, name)
    except FormatError as exc:
        raise ManifestParseError(str(exc)) from None
    try:
        return Manifest.from_json(json.loads(plain), snapshot_id)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
            RecursionError) as exc:  # OverflowError: int(1e400); RecursionError: deep nesting
        raise ManifestParseError(f"{name}: manifest does not parse ({exc})") from None


def list_snapshot_ids(repo: Repository) -> list[bytes]:
    return [sid for info in repo.store.list("snapshots/")
            if (sid := parse_hex_id(info.name, "snapshots/")) is not None]


def load_manifests(repo: Repository, problems: list[str] | None = None,
                   authentic: list[str] | None = None, warn: bool = True) -> list[Manifest]:
    """Every readable snapshot, oldest first.

    A manifest that cannot be read (damaged, or planted by someone without the key) is not a
    snapshot (docs/FORMAT.md §12.3): it is left out with one warning and described in
    `problems` rather than stopping every backup and restore; `check` reports it as an error.
    Those among them that opened under the key but do not parse are also described in
    `authentic` (a key holder wrote them: prune must not treat their data as garbage).
    `warn` off: the caller reports `problems` itself."""
    from concurrent.futures import ThreadPoolExecutor

    def one(sid: bytes) -> Manifest | SellerbakError:
        try:
            return read_manifest(repo, sid)
        except (FormatError, IntegrityError, SnapshotNotFoundError) as exc:
            return exc

    sids = list_snapshot_ids(repo)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, sids))
    manifests = [r for r in results if isinstance(r, Manifest)]
    for sid, r in zip(sids, results, strict=True):
        if isinstance(r, Manifest):
            continue
        if isinstance(r, SnapshotNotFoundError):  # gone since the listing: forgotten
            if problems is not None:
                problems.append(str(r))
            continue
        item = Unreadable(snapshot_name(sid), str(r))
        if problems is not None:
            problems.append(item.describe())
        if authentic is not None and isinstance(r, ManifestParseError):
            authentic.append(item.describe())
        if warn:
            warn_once(item)
    return sorted(manifests, key=lambda m: (m.datetime, m.id))


def resolve_snapshot(repo: Repository, ref: str, source: str | None = None, *,
                     now: datetime | None = None,
                     manifests: list[Manifest] | None = None) -> Manifest:
    """`latest` (optionally of a source) or a unique hex prefix of a snapshot id.

    `latest` is the newest snapshot not dated in the future (see repository.timeline): one
    taken with the clock ahead would otherwise stay `latest` for good. Such snapshots are
    named in a warning; `now` defaults to the machine's clock, `manifests` to the
    repository's (a caller that has loaded them passes them)."""
    if ref == "latest":
        if manifests is None:
            manifests = load_manifests(repo)
        mine = [m for m in manifests if source is None or m.source == source]
        past, future = split_future(mine, now or datetime.now(UTC))
        for m in future:
            log.warning("%s", future_warning(m, "not taken as 'latest'"))
        if not past:
            raise SnapshotNotFoundError(
                "no snapshot found" + (f" of source {source}" if source else "")
                + (f" that is not dated in the future ({len(future)} are)" if future else ""))
        return past[-1]
    ref_l = ref.lower()
    if not ref_l or any(c not in "0123456789abcdef" for c in ref_l):
        raise SnapshotNotFoundError(f"{ref!r} is not a snapshot id (hex) or 'latest'")
    matches = [sid for sid in list_snapshot_ids(repo) if sid.hex().startswith(ref_l)]
    if not matches:
        raise SnapshotNotFoundError(f"snapshot {ref} not found")
    if len(matches) > 1:
        raise SnapshotNotFoundError(f"snapshot id prefix {ref} is ambiguous; give more digits")
    return read_manifest(repo, matches[0])
