"""Canonical record encoding and sorted, bounded-memory record streams.

Canonical form of a record (docs/FORMAT.md): UTF-8 JSON with sorted keys, no insignificant
spaces, non-ASCII characters as themselves, one record per line ending in "\\n", as orjson
writes it with OPT_SORT_KEYS (numbers in their shortest round-trip form). Records orjson cannot
encode (integers beyond 64 bits, nesting 255 levels or deeper) fall back to the standard
library's encoder with the same settings. A dataset is its records' lines sorted by `str(id)`
(code-point order, which is also UTF-8 byte order), ids unique. orjson is used because encoding
and parsing every record is the hot loop of a snapshot: it is two to three times faster than
the standard library.

Sources may yield records in any order, so `sort_records` does an external merge sort: runs of
at most `run_bytes` are sorted in memory and spilled to temporary files, then merged. Memory stays
bounded whatever the shop's size.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import orjson

from sellerbak.errors import IntegrityError, SourceError

#: a record as it travels through the engine: (sort key, canonical line with trailing newline)
Line = tuple[str, bytes]

_FRAME = struct.Struct(">II")
DEFAULT_RUN_BYTES = 64 * 1024 * 1024


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


_ORJSON_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


def canonical_line(record: dict[str, Any]) -> bytes:
    """The canonical bytes of one record, newline included."""
    try:
        return orjson.dumps(record, option=_ORJSON_OPTS)
    except orjson.JSONEncodeError:
        pass
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8") + b"\n"


def _which(position: int | None) -> str:
    """A record named by its position in the source's order (never by its id or values: error
    lines reach logs, the journal and webhooks, and ids may be e-mail addresses)."""
    return "a record" if position is None else f"record {position}"


def record_key(record: Any, dataset: str, position: int | None = None) -> str:
    """The sort/merge key of a record: its `id` as a string. Raises SourceError if absent."""
    if not isinstance(record, dict):
        raise SourceError(f"dataset {dataset}: {_which(position)} is not a JSON object")
    rid = record.get("id")
    if isinstance(rid, str) and rid:
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool):
        return str(rid)
    raise SourceError(f"dataset {dataset}: {_which(position)} has no usable 'id' "
                      "(string or integer)")


#: an integer orjson would read as a float (below -2^63, or above 2^64 - 1), losing digits: a
#: number token of 20 digits, or 19 after a minus sign. A number token starts the document or
#: follows one of `:,[` or JSON whitespace, so the text is translated (every digit to `d`, each
#: of those characters to NUL) and searched for two plain substrings. Digits inside strings
#: (tracking numbers, ids) follow a quote or a letter and do not match; a regex here doubled
#: the cost of parsing a line, and searching for bare runs of 20 digits matched most orders.
_DIGITS = b"0123456789"
_BEFORE_NUMBER = b":,[ \t\n\r"
_WIDE_TABLE_B = bytes.maketrans(_DIGITS + _BEFORE_NUMBER,
                                b"d" * len(_DIGITS) + b"\0" * len(_BEFORE_NUMBER))
_WIDE_TABLE_S = str.maketrans(_DIGITS.decode() + _BEFORE_NUMBER.decode(),
                              "d" * len(_DIGITS) + "\0" * len(_BEFORE_NUMBER))
_WIDE_S = ("\0" + "d" * 20, "\0-" + "d" * 19)
_WIDE_B = tuple(w.encode() for w in _WIDE_S)
_WIDE_HEAD_S = tuple(w[1:] for w in _WIDE_S)
_WIDE_HEAD_B = tuple(w[1:] for w in _WIDE_B)


def may_hold_wide_int(data: bytes | str) -> bool:
    """True if the text may hold an integer token beyond 64 bits (false positives only cost
    speed: the standard library then parses the line)."""
    if isinstance(data, bytes):
        text = data.translate(_WIDE_TABLE_B)
        return (_WIDE_B[0] in text or _WIDE_B[1] in text
                or text.startswith(_WIDE_HEAD_B))
    text_s = data.translate(_WIDE_TABLE_S)
    return (_WIDE_S[0] in text_s or _WIDE_S[1] in text_s
            or text_s.startswith(_WIDE_HEAD_S))


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: the canonical form would turn it into null
        raise ValueError(f"number {text[:40]} is beyond the range of a double")
    return value


def parse_json(data: bytes | str) -> Any:
    """Parse one JSON document exactly, or raise ValueError (UnicodeDecodeError included).

    NaN and Infinity are refused (they are not JSON), and so are numbers beyond a double's
    range (the canonical form could not hold them). orjson reads integers beyond 64 bits as
    floats, silently dropping digits, so a document that may hold one goes to the standard
    library instead (text inside a string that looks like one only costs speed)."""
    if not may_hold_wide_int(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # let the stdlib decide, and say why
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:  # orjson stops at 1024 levels, the stdlib at the stack's end
        raise ValueError("nested too deeply") from None


def parse_line(line: bytes, dataset: str = "?") -> dict[str, Any]:
    """A stored (canonical) record line: authenticated, yet refused with an IntegrityError,
    not a crash, if it is not a JSON object."""
    try:
        record = parse_json(line)
    except ValueError:
        raise IntegrityError(f"dataset {dataset}: a stored record is not JSON") from None
    if not isinstance(record, dict):
        raise IntegrityError(f"dataset {dataset}: a stored record is not a JSON object")
    return record


def encode_record(record: dict[str, Any], dataset: str, position: int | None = None) -> Line:
    """A source's record as the engine carries it: (its id, its canonical line). The error
    names the kind of failure, not its text, which may quote a value."""
    try:
        line = canonical_line(record)
    except (TypeError, ValueError) as exc:
        why = "a value of a type JSON cannot hold" if isinstance(exc, TypeError) else \
            "a value JSON cannot hold (not finite, not valid Unicode, or circular)"
        raise SourceError(f"dataset {dataset}: {_which(position)} holds {why}") from None
    return record_key(record, dataset, position), line


def encode_records(records: Iterable[dict[str, Any]], dataset: str) -> Iterator[Line]:
    """(id, canonical line) of each record; an error names the record by its position."""
    for position, record in enumerate(records, 1):
        yield encode_record(record, dataset, position)


def _has_exponent(line: bytes) -> bool:
    """Whether a canonical line holds "e+" (how orjson writes every exponent). Found through
    the "+" signs (memchr, which is several times faster than a substring search)."""
    i = line.find(b"+")
    while i > 0:
        if line[i - 1] == 0x65:  # "e"
            return True
        i = line.find(b"+", i + 1)
    return False


def encode_text(text: bytes, dataset: str) -> Line | None:
    """One JSON text (a line of an export file) as (id, canonical line); None if the text is
    not a JSON object; ValueError if it is not JSON at all.

    Exact, and cheaper than `parse_json` then `encode_record`: orjson parses first, unchecked.
    An integer it could not hold (beyond 64 bits) comes back as a float of magnitude 2^63 or
    more, which the canonical form always writes with an exponent (`1.8446744073709552e+19`);
    only a line whose canonical form holds "e+" is checked for such an integer, and re-read
    exactly if it may hold one."""
    # the hot loop of a files snapshot: orjson called directly, the general paths only on
    # what it refuses
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError:
        record = parse_json(text)  # the stdlib decides, and says why
    if not isinstance(record, dict):
        return None
    try:
        line = orjson.dumps(record, option=_ORJSON_OPTS)
    except orjson.JSONEncodeError:
        return encode_record(record, dataset)
    if _has_exponent(line) and may_hold_wide_int(text):
        return encode_record(parse_json(text), dataset)
    rid = record.get("id")
    if type(rid) is str and rid:
        return rid, line
    return record_key(record, dataset), line


class OutOfOrderError(SourceError):
    """Records arrived out of id order where the source promised sorted output."""


def require_sorted(lines: Iterable[Line], dataset: str) -> Iterator[Line]:
    """Pass already-sorted records straight through (no buffering); raise at the first record
    out of order or repeated."""
    prev: str | None = None
    for position, (key, line) in enumerate(lines, 1):
        if prev is not None and key <= prev:
            if key == prev:
                raise SourceError(f"dataset {dataset}: record {position} has the same id as "
                                  "the record before it (duplicate ids are refused)")
            raise OutOfOrderError(f"dataset {dataset}: records are not sorted by id")
        prev = key
        yield key, line


def sort_records(lines: Iterable[Line], dataset: str, tmpdir: str | None = None,
                 run_bytes: int = DEFAULT_RUN_BYTES) -> Iterator[Line]:
    """Sort by key with bounded memory; raise SourceError on a duplicate id.

    Already-sorted input (the common case: APIs and our own datasets are ordered by id) is
    detected per run and costs no extra sort work.
    """
    runs: list[BinaryIO] = []
    buf: list[Line] = []
    size = 0
    try:
        for item in lines:
            buf.append(item)
            size += len(item[1]) + len(item[0]) + 100
            if size >= run_bytes:
                runs.append(_spill(buf, tmpdir))
                buf, size = [], 0
        buf.sort(key=lambda kv: kv[0])
        if not runs:
            yield from _check_unique(iter(buf), dataset)
            return
        if buf:
            runs.append(_spill(buf, tmpdir))
            buf = []
        merged = heapq.merge(*(_read_run(f) for f in runs), key=lambda kv: kv[0])
        yield from _check_unique(merged, dataset)
    finally:
        for f in runs:
            f.close()


def _spill(buf: list[Line], tmpdir: str | None) -> BinaryIO:
    buf.sort(key=lambda kv: kv[0])
    f = tempfile.TemporaryFile(dir=tmpdir, prefix="sellerbak-sort-")  # noqa: SIM115
    os.chmod(f.fileno(), 0o600)
    write = f.write
    for key, line in buf:
        kb = key.encode("utf-8")
        write(_FRAME.pack(len(kb), len(line)))
        write(kb)
        write(line)
    f.flush()
    f.seek(0)
    return f  # type: ignore[return-value]


def _read_run(f: BinaryIO) -> Iterator[Line]:
    read = f.read
    while True:
        head = read(_FRAME.size)
        if not head:
            return
        klen, llen = _FRAME.unpack(head)
        yield read(klen).decode("utf-8"), read(llen)


def _check_unique(items: Iterator[Line], dataset: str) -> Iterator[Line]:
    """Sorted records, refusing a repeated id. The error gives no id and no position: the
    records are in id order here, so a position would not find the record in the source."""
    prev: str | None = None
    for key, line in items:
        if key == prev:
            raise SourceError(f"dataset {dataset}: two records have the same id (duplicate ids "
                              "are refused)")
        prev = key
        yield key, line


def merge_changes(base: Iterator[Line], changes: Iterator[Line],
                  deleted: set[str]) -> Iterator[Line]:
    """Merge a sorted change set into a sorted base: changed ids replace, new ids insert,
    deleted ids drop. Both inputs must be sorted by key with unique keys."""
    b = next(base, None)
    c = next(changes, None)
    while b is not None and c is not None:
        if c[0] <= b[0]:
            if c[0] == b[0]:
                b = next(base, None)
            if c[0] not in deleted:
                yield c
            c = next(changes, None)
        else:
            if b[0] not in deleted:
                yield b
            b = next(base, None)
    rest, item = (base, b) if b is not None else (changes, c)
    while item is not None:
        if item[0] not in deleted:
            yield item
        item = next(rest, None)


def human_bytes(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    exp = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024 ** exp:.1f} {'KMGT'[exp - 1]}iB"
