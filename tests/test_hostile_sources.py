"""Hostile export files (JSONL, CSV, Seller Center CSV/XLSX) and restored record lines.

A `files` source reads whatever lands in its directory. Every file must end in records the
engine can store exactly (restore gives back what went in) or in a SourceError naming the file
and line; never in a traceback, a silent change of a value, or an unbounded allocation.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sellerbak.backup.exporters.files import FilesSource
from sellerbak.errors import IntegrityError, SellerbakError, SourceError
from sellerbak.records import canonical_line, encode_records, parse_json, sort_records
from tests.hostile import (
    HOSTILE,
    RAW_NUMBERS,
    deep_json,
    flips,
    json_text,
    json_values,
    truncations,
    watchdog,
)


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    with watchdog():
        yield


def _strict(value: Any) -> str:
    """A spelling that tells 1 from 1.0 and True from 1 (== does not)."""
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _stdlib(line: bytes) -> Any:
    """What a line means: the standard library's reading, exact for any integer."""
    def refuse(token: str) -> Any:
        raise ValueError(token)

    return json.loads(line, parse_constant=refuse)


def _export(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """Every dataset of a files source, through the engine's encode and sort, as records."""
    out: dict[str, list[dict[str, Any]]] = {}
    for export in FilesSource("files", directory).export({}, True):
        encoded = export.records if export.encoded else encode_records(export.records,
                                                                       export.name)
        lines = sort_records(encoded, export.name)
        out[export.name] = [parse_json(line) for _key, line in lines]
    return out


def _export_or_error(directory: Path) -> dict[str, list[dict[str, Any]]] | None:
    try:
        return _export(directory)
    except SourceError as exc:
        assert "\n" not in str(exc)
        return None


@pytest.fixture
def exports(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "exports"
    directory.mkdir()
    yield directory


def _fresh(directory: Path) -> Path:
    for f in directory.iterdir():
        f.unlink()
    return directory


# ------------------------------------------------------------------ parse_json (records.py)


@HOSTILE
@given(st.binary(max_size=300))
def test_parse_json_any_bytes(data: bytes) -> None:
    """The shared parser raises ValueError (which its callers map) and nothing else."""
    with contextlib.suppress(ValueError):
        parse_json(data)


@HOSTILE
@given(json_values)
def test_parse_json_is_exact(value: Any) -> None:
    """Any JSON document parses to what it means, or is refused; a value that the canonical
    form cannot hold (beyond a double's range) is refused, never rounded or nulled."""
    text = json_text(value).encode()
    try:
        expected = _stdlib(text)
    except ValueError:  # NaN/Infinity, or more than 4300 digits
        with pytest.raises(ValueError):
            parse_json(text)
        return
    try:
        got = parse_json(text)
    except ValueError:
        assert _has_nonfinite(expected)
        return
    assert _strict(got) == _strict(expected)


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nonfinite(v) for v in value)
    return False


@pytest.mark.parametrize("token", RAW_NUMBERS)
def test_parse_json_numbers(token: str) -> None:
    line = ('{"id":"a","n":' + token + "}").encode()
    try:
        expected = _stdlib(line)
    except ValueError:
        expected = None
    try:
        got = parse_json(line)
    except ValueError:
        assert expected is None or _has_nonfinite(expected)
        return
    assert expected is not None and _strict(got) == _strict(expected)
    # what is stored is what was read
    assert _strict(parse_json(canonical_line(got))) == _strict(got)


@pytest.mark.parametrize("kind", ["list", "object"])
def test_parse_json_deep_nesting(kind: str) -> None:
    with pytest.raises(ValueError):
        parse_json(deep_json(kind).encode())


# ------------------------------------------------------------------ JSONL files


@HOSTILE
@given(st.binary(max_size=400))
def test_jsonl_any_bytes(exports: Path, data: bytes) -> None:
    (_fresh(exports) / "d.jsonl").write_bytes(data)
    _export_or_error(exports)


@HOSTILE
@given(st.lists(json_values | st.dictionaries(st.sampled_from(["id", "a", "b"]), json_values,
                                              max_size=3), max_size=6))
def test_jsonl_records_roundtrip(exports: Path, values: list[Any]) -> None:
    """Lines of any JSON: either refused, or stored exactly as they mean (restore gives back
    equal records: canonical lines parse back to the same values)."""
    lines = [json_text(v).encode() for v in values]
    (_fresh(exports) / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    got = _export_or_error(exports)
    if got is None:
        return
    expected = [_stdlib(line) for line in lines if line.strip()]
    assert sorted(map(_strict, got.get("d", []))) == sorted(map(_strict, expected))


@pytest.mark.parametrize("line", [
    deep_json("list"), deep_json("object"), '{"id":' + deep_json() + "}",
    '{"id":"a","x":' + "[" * 300 + "]" * 300 + "}",  # orjson's encoder stops at 255 levels
    '{"id":"a","x":1e400}', '{"id":"a","x":NaN}', '{"id":18446744073709551616}',
    '{"id":"a","x":' + "9" * 5000 + "}", '{"id":"a","id":"b"}', '{"id":""}', '{"id":true}',
    '{"id":1.5}', '{"id":null}', "[]", '"x"', "{", "\xff\xfe", '{"id":"\\ud800"}',
    '{"id":"a"}\n{"id":"a"}', '{"id":"' + "x" * 200_000 + '"}',
], ids=lambda s: s[:20])
def test_jsonl_targeted_lines(exports: Path, line: str) -> None:
    (exports / "d.jsonl").write_bytes(line.encode("utf-8", "surrogatepass") + b"\n")
    got = _export_or_error(exports)
    if got is not None:
        for record in got["d"]:
            assert _strict(parse_json(canonical_line(record))) == _strict(record)


@pytest.mark.parametrize("spacing", ["", " ", "\t", "\r "])
def test_wide_integers_anywhere_in_a_large_file_keep_every_digit(
        exports: Path, monkeypatch: pytest.MonkeyPatch, spacing: str) -> None:
    """Lines are read and checked for integers beyond 64 bits a block at a time: a wide
    integer in any block, in any position (first in a line, after a comma, a colon or a
    bracket, split across two blocks), still reaches the record exactly. Digit runs inside
    strings stay strings."""
    from sellerbak.backup.exporters import files

    monkeypatch.setattr(files, "BLOCK", 4096)
    big, small = 2**64, -(2**63) - 1
    lines = []
    for i in range(2000):
        value = (f'{{"id":"r{i:05d}",{spacing}"v":{spacing}{big + i},"w":[{spacing}{small - i}]}}'
                 if i % 97 == 0 else
                 f'{{"id":"r{i:05d}","t":"{"9" * 22}","v":{i}}}')
        lines.append(value)
    (exports / "d.jsonl").write_text("\n".join(lines))  # the last line has no line break
    got = {r["id"]: r for r in _export(exports)["d"]}
    assert len(got) == 2000
    for i in range(0, 2000, 97):
        assert got[f"r{i:05d}"]["v"] == big + i and type(got[f"r{i:05d}"]["v"]) is int
        assert got[f"r{i:05d}"]["w"] == [small - i]
    assert got["r00001"] == {"id": "r00001", "t": "9" * 22, "v": 1}


@pytest.mark.parametrize("value", [2**63, 2**64, -(2**63) - 1, 10**20, -(10**30), 10**300])
def test_an_integer_read_as_a_float_shows_an_exponent_in_the_canonical_form(value: int) -> None:
    """encode_text re-reads a line exactly only when its canonical form holds "e+": that is
    how orjson writes every float of magnitude 2^63 or more, which is what it makes of an
    integer it cannot hold. Should orjson ever write them otherwise, this fails."""
    import orjson

    from sellerbak.records import encode_text

    assert b"e+" in canonical_line({"x": float(value)})
    assert orjson.loads(str(value)) == float(value)  # still read as a float, digits lost
    text = f'{{"id":"a","x":{value},"y":[{value}]}}'.encode()
    assert encode_text(text, "d") == ("a", canonical_line({"id": "a", "x": value,
                                                            "y": [value]}))
    assert encode_text(f'{{"id":{value}}}'.encode(), "d") == (str(value),
                                                             canonical_line({"id": value}))


@pytest.mark.parametrize("text", ["12345678901234567890", " -1234567890123456789",
                                  '{"a":[1,\n18446744073709551616]}', "[ 99999999999999999999]"])
def test_wide_integer_tokens_are_found(text: str) -> None:
    from sellerbak.records import may_hold_wide_int

    assert may_hold_wide_int(text) and may_hold_wide_int(text.encode())


@pytest.mark.parametrize("text", ["1234567890123456789", "-123456789012345678",
                                  '{"a":"12345678901234567890123","b":1.5}', '{"a":-1,"b":[2]}'])
def test_narrow_texts_are_passed_to_the_fast_parser(text: str) -> None:
    from sellerbak.records import may_hold_wide_int

    assert not may_hold_wide_int(text) and not may_hold_wide_int(text.encode())


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "orders.csv"])
def test_line_without_end_is_refused_without_reading_it_whole(
        exports: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A file with no line break (any size) is refused after MAX_LINE bytes, not loaded."""
    import tracemalloc

    from sellerbak.backup.exporters import files

    monkeypatch.setattr(files, "MAX_LINE", 1 << 20)
    head = b"Order ID,Order Status\n" if name == "orders.csv" else b""
    (exports / name).write_bytes(head + b'{"id":"' + b"x" * (16 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match="longer than"):
            _export(exports)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


# ------------------------------------------------------------------ CSV files


@HOSTILE
@given(st.binary(max_size=400))
def test_csv_any_bytes(exports: Path, data: bytes) -> None:
    (_fresh(exports) / "d.csv").write_bytes(b"id,a\n" + data)
    _export_or_error(exports)
    (_fresh(exports) / "e.csv").write_bytes(data)
    _export_or_error(exports)


cells = st.text(max_size=12) | st.sampled_from(["", "id", "\x00", "\r", '"', "\ufeff", "a,b"])


@HOSTILE
@given(st.lists(st.lists(cells, min_size=1, max_size=4), min_size=1, max_size=6))
def test_csv_rows_roundtrip(exports: Path, rows: list[list[str]]) -> None:
    """Any table: either refused with a reason, or every row kept exactly, keyed by header."""
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    (_fresh(exports) / "d.csv").write_text(buf.getvalue(), encoding="utf-8", newline="")
    got = _export_or_error(exports)
    if got is None:
        return
    # a leading U+FEFF is a byte order mark to a CSV reader (Excel writes one)
    table = list(csv.reader(io.StringIO(buf.getvalue().removeprefix("\ufeff"))))
    header, body = table[0], [r for r in table[1:] if r]
    expected = [dict(zip(header, r, strict=True)) for r in body]
    assert sorted(map(_strict, got.get("d", []))) == sorted(map(_strict, expected))


def test_csv_huge_field_is_refused(exports: Path) -> None:
    (exports / "d.csv").write_text("id,a\n1," + "x" * 200_000 + "\n")
    with pytest.raises(SourceError):
        _export(exports)


# ------------------------------------------------------------------ Seller Center exports

SC_HEADER = ["Order ID", "Order Status", "SKU ID", "Quantity", "Recipient"]


@HOSTILE
@given(st.lists(st.lists(cells | st.sampled_from(["576461413038785752", "5.7646e+17"]),
                         max_size=6), max_size=6))
def test_seller_center_csv_rows(exports: Path, rows: list[list[str]]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows([SC_HEADER, ["Platform unique order ID."], *rows])
    (_fresh(exports) / "orders.csv").write_text(buf.getvalue(), encoding="utf-8-sig",
                                                newline="")
    _export_or_error(exports)


def _workbook_bytes(rows: list[list[object]], sheet: str = "OrderSKUList") -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = sheet
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


XLSX = _workbook_bytes([SC_HEADER, ["Platform unique order ID."],
                        ["576461413038785752", "Completed", "1729", "1", "D*** K***"],
                        ["576461413038785753", "To ship", "1730", "2", "A*** B***"]])
FINANCE_XLSX = _workbook_bytes([["Order/adjustment ID", "Statement ID", "SKU ID"],
                                ["576461413038785752", "7238804564097517339", "1729"]],
                               "Order details")


def test_real_workbooks_read(exports: Path) -> None:
    (exports / "orders.xlsx").write_bytes(XLSX)
    (exports / "income.xlsx").write_bytes(FINANCE_XLSX)
    got = _export(exports)
    assert [r["id"] for r in got["orders"]] == ["576461413038785752", "576461413038785753"]
    assert [r["id"] for r in got["finance/transactions"]] == ["576461413038785752"]


#: large enough that its sheet is read in several pieces, lazily, after the workbook opened
BIG_XLSX = _workbook_bytes([SC_HEADER, ["Platform unique order ID."],
                            *([str(576461413038785752 + i), "Completed", str(i), "1",
                               "x" * (i % 37)] for i in range(100))])


def _sample(items: Iterator[bytes], n: int, seed: int) -> list[bytes]:
    population = list(items)
    return random.Random(seed).sample(population, min(n, len(population)))


def _sheet_span(blob: bytes) -> tuple[int, int]:
    """Where the first worksheet's compressed bytes are in a workbook."""
    info = zipfile.ZipFile(io.BytesIO(blob)).getinfo("xl/worksheets/sheet1.xml")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    return start, start + info.compress_size


@pytest.mark.parametrize("name,blob", [("orders.xlsx", XLSX), ("income.xlsx", FINANCE_XLSX),
                                       ("big.xlsx", BIG_XLSX)], ids=["orders", "income", "big"])
def test_workbook_truncations_and_flips(exports: Path, name: str, blob: bytes) -> None:
    """Damaged workbooks: truncations and bit flips anywhere, and flips in the worksheet's
    compressed stream (found only while rows are read). A sample; all of them at fuzz scale."""
    from tests.hostile import EXAMPLES

    start, end = _sheet_span(blob)
    n = min(EXAMPLES, 250)
    whole = [] if blob is BIG_XLSX else [*_sample(truncations(blob), n, 1),
                                         *_sample(flips(blob), n, 2)]
    in_sheet = [blob[:start] + f + blob[end:] for f in _sample(flips(blob[start:end]), n, 3)]
    for data in (*whole, *in_sheet):
        (_fresh(exports) / name).write_bytes(data)
        _export_or_error(exports)


def _forged(blob: bytes, old: bytes, new: bytes) -> bytes:
    """The workbook with one piece of its first worksheet's XML replaced."""
    src = zipfile.ZipFile(io.BytesIO(blob))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "xl/worksheets/sheet1.xml":
                assert old in data
                data = data.replace(old, new, 1)
            dst.writestr(info, data)
    return out.getvalue()


@pytest.mark.parametrize("old,new", [
    (b'<row r="3">', b'<row r="999999999">'),  # a billion empty rows in between
    (b'<row r="4">', b'<row r="4"><c r="XFD4" t="inlineStr"><is><t>x</t></is></c>'),
    (b'<dimension ref="', b'<dimension ref="A1:XFD1048576" x="'),
    (b'<row r="3">', b'<row r="3"><c r="A3" t="n"><v>1e400</v></c>'),
    (b'<row r="3">', b'<row r="3"><c r="A3" t="d"><v>99999-99-99</v></c>'),
    (b'<row r="3">', b'<row r="3"><c r="A3" t="s"><v>999999</v></c>'),
    (b'<row r="3">', b'<row r="3"><c r="A3" t="b"><v>maybe</v></c>'),
    (b'<row r="3">', b'<row r="3"><c r="ZZZZZZ3"><v>1</v></c>'),
    (b'<row r="3">', b'<row r="-3">'),
    (b'<row r="3">', b'<row r="x">'),
], ids=["row-gap", "column-xfd", "dimension", "inf", "date", "shared-string", "bool",
        "column-beyond", "row-negative", "row-text"])
def test_forged_worksheets(exports: Path, old: bytes, new: bytes) -> None:
    """Well-formed workbooks saying odd things: they read, or fail with a SourceError, and
    finish (the watchdog ends a run that spins)."""
    (exports / "orders.xlsx").write_bytes(_forged(XLSX, old, new))
    _export_or_error(exports)


@HOSTILE
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=len(XLSX)))
def test_workbook_splices(exports: Path, data: bytes, pos: int) -> None:
    (_fresh(exports) / "orders.xlsx").write_bytes(XLSX[:pos] + data + XLSX[pos + len(data):])
    _export_or_error(exports)


@HOSTILE
@given(st.lists(st.lists(st.none() | st.booleans() | st.integers() | st.floats() | cells
                         | st.dates() | st.datetimes(), max_size=5), max_size=5))
def test_workbook_cell_values(exports: Path, rows: list[list[object]]) -> None:
    """Any cell types under a real header (numbers, dates, NaN, infinities, booleans)."""
    clean = [[c for c in r if not isinstance(c, str) or c.isprintable()] for r in rows]
    (_fresh(exports) / "orders.xlsx").write_bytes(_workbook_bytes([SC_HEADER, *clean]))
    _export_or_error(exports)


# ------------------------------------------------------------------ restored lines


def _store_lines(repo: Any, lines: bytes, dataset: str = "d",
                 meta: dict[str, Any] | None = None) -> Any:
    """A snapshot whose one chunk holds `lines`, written with the real writer and a manifest
    that matches it (what a key holder, or a bug, could store)."""
    import hashlib

    from sellerbak.repository.format import TYPE_REFLIST
    from sellerbak.repository.index import Index
    from sellerbak.repository.manifest import (
        ChunkRef,
        DatasetEntry,
        Manifest,
        RefListRef,
        new_manifest_id,
        now_rfc3339,
        write_manifest,
    )
    from sellerbak.repository.packs import PackWriter

    records = lines.count(b"\n")
    cid = repo.chunk_id(lines)
    reflist = ChunkRef(cid, records, len(lines), "a", "z").line()
    rid = repo.blob_id(TYPE_REFLIST, reflist)
    writer = PackWriter(repo, Index.load(repo))
    try:
        writer.add(cid, lines)
        writer.add(rid, reflist, TYPE_REFLIST)
        writer.flush()
    finally:
        writer.close()
    entry = DatasetEntry(dataset, records, len(lines), hashlib.sha256(lines).hexdigest(), 1,
                         [RefListRef(rid, 1, records, len(lines), "a", "z")], meta=meta or {})
    manifest = Manifest(new_manifest_id(), now_rfc3339(), "s", "files", "h", [],
                        {dataset: entry})
    write_manifest(repo, manifest)
    return manifest


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from sellerbak.storage.local import LocalStore
    from tests.helpers import init_repo

    return init_repo(LocalStore(tmp_path_factory.mktemp("hostile-restore")))


@pytest.mark.parametrize("lines", [
    b'{"id":"a"}\n[1,2]\n', b'{"id":"a"}\n"text"\n', b'{"id":"a"}\nnot json\n',
    b'{"id":"a"}\n' + deep_json().encode() + b"\n", b'{"id":"a","x":[{"k":1}]}\n{"a":{}}\n',
    b'\xff\n', b'{"id":"a"}\n{"\\ud800":1}\n',
], ids=["list", "string", "garbage", "deep", "nested", "not-utf8", "surrogate"])
def test_restore_csv_of_hostile_lines(repo: Any, tmp_path: Path, lines: bytes) -> None:
    """Authentic chunks whose lines are not records: restore to CSV refuses them clearly (and
    leaves no file behind); JSONL restores the bytes as stored."""
    from sellerbak.restore.restore import restore_snapshot

    manifest = _store_lines(repo, lines)
    (done,) = restore_snapshot(repo, manifest, tmp_path / "jsonl", fmt="jsonl")
    assert done.path.read_bytes() == lines
    try:
        (done,) = restore_snapshot(repo, manifest, tmp_path / "csv", fmt="csv")
    except IntegrityError:
        assert not any(p.is_file() for p in (tmp_path / "csv").rglob("*"))
        return
    except SellerbakError as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}")
    assert done.path.is_file()


@pytest.mark.parametrize("columns", [5, "id", ["id", 1], [["id"]], {"id": 1}, [None], True],
                         ids=["int", "str", "mixed", "nested", "dict", "none", "bool"])
def test_restore_csv_with_hostile_column_list(repo: Any, tmp_path: Path, columns: Any) -> None:
    """The manifest's CSV column order (meta.columns) is whatever a key holder wrote."""
    from sellerbak.restore.restore import restore_snapshot

    manifest = _store_lines(repo, b'{"id":"a","x":1}\n', meta={"columns": columns})
    try:
        (done,) = restore_snapshot(repo, manifest, tmp_path / "csv", fmt="csv")
    except IntegrityError:
        return
    assert done.path.read_text().splitlines()[0].startswith("id")
