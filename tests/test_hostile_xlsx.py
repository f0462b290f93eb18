"""Zip bombs in .xlsx files: every .xlsx in a files source's folder is opened (to recognise a
Seller Center export), so a small file that inflates to gigabytes must be refused from its zip
directory, before openpyxl parses it (its read-only mode loads the shared strings whole)."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import openpyxl
import pytest

from sellerbak.backup.exporters.files import FilesSource
from sellerbak.errors import SourceError
from tests.helpers import run_cli, write_config

SC_HEADER = ["Order ID", "Order Status", "SKU ID", "Quantity", "Recipient"]
SHARED_STRINGS_TYPE = \
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"


def _workbook() -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "OrderSKUList"
    for row in (SC_HEADER, ["Platform unique order ID."],
                ["576461413038785752", "Completed", "1729", "1", "D*** K***"]):
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _rebuilt(extra: dict[str, int], shared_strings: int = 0) -> bytes:
    """A real workbook plus members of the given sizes (streamed, never held whole), and
    optionally a declared shared-strings table holding one string of `shared_strings` bytes."""
    src = zipfile.ZipFile(io.BytesIO(_workbook()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "[Content_Types].xml" and shared_strings:
                data = data.replace(b"</Types>", (
                    '<Override PartName="/xl/sharedStrings.xml" ContentType="'
                    f'{SHARED_STRINGS_TYPE}"/></Types>').encode())
            dst.writestr(info, data)
        members = dict(extra)
        if shared_strings:
            members["xl/sharedStrings.xml"] = shared_strings
        for name, size in members.items():
            with dst.open(name, "w", force_zip64=False) as fh:
                if name.endswith("sharedStrings.xml"):
                    fh.write(b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/'
                             b'2006/main" count="1" uniqueCount="1"><si><t>')
                block = b"A" * (1 << 20)
                left = size
                while left > 0:
                    fh.write(block[:left])
                    left -= len(block)
                if name.endswith("sharedStrings.xml"):
                    fh.write(b"</t></si></sst>")
    return out.getvalue()


def _export_all(directory: Path) -> None:
    for export in FilesSource("files", directory).export({}, True):
        list(export.records)


def test_the_workbook_itself_still_reads(tmp_path: Path) -> None:
    (tmp_path / "orders.xlsx").write_bytes(_rebuilt({}, shared_strings=1000))
    exports = list(FilesSource("files", tmp_path).export({}, True))
    assert [e.name for e in exports] == ["orders"]
    assert [r["id"] for r in exports[0].records] == ["576461413038785752"]


@pytest.mark.parametrize("extra,shared,why", [
    ({}, 200 << 20, "shared strings inflate to more than 64 MiB"),
    ({f"xl/media/x{i}.bin": 1 for i in range(1200)}, 0, "more than 1000 parts"),
    ({"docProps/custom.xml": 8 << 20}, 0, "compressed more than 200 times"),
    ({"xl/styles2.xml": 40 << 20}, 0, "a part inflates to more than 16 MiB"),
], ids=["shared-strings", "members", "ratio", "part"])
def test_bombs_are_refused_before_parsing(tmp_path: Path, extra: dict[str, int], shared: int,
                                          why: str) -> None:
    """A file of a few hundred KiB that would inflate to hundreds of MiB: refused with one
    line naming it, its memory never allocated (on the old code, openpyxl held the whole
    shared string)."""
    blob = _rebuilt(extra, shared)
    assert len(blob) < 2 << 20
    (tmp_path / "monthly export.xlsx").write_bytes(blob)
    tracemalloc.start()
    try:
        with pytest.raises(SourceError) as caught:
            _export_all(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text = str(caught.value)
    assert "\n" not in text and text.startswith("monthly export.xlsx: refused"), text
    assert why in text
    assert peak < 16 << 20, peak


def test_a_bomb_fails_the_files_source_naming_the_file(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "orders.jsonl").write_text('{"id":"1"}\n')
    (exports / "Income_20260101.xlsx").write_bytes(_rebuilt({}, 200 << 20))
    cfg = write_config(tmp_path, "./repo", [{"name": "files", "type": "files",
                                             "path": str(exports)}])
    assert run_cli("-c", str(cfg), "init").returncode == 0
    proc = run_cli("-c", str(cfg), "snapshot")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Income_20260101.xlsx: refused" in lines[0], proc.stderr
