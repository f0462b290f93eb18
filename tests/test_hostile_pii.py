"""No record content in error lines: they go to stderr, the journal, notify commands and
webhooks. Ids (a CSV keyed by e-mail address) and field values are fed through every error
path of the files source, the record encoder and the TikTok error classifier; errors name
positions (file, line, record number) and counts instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sellerbak.backup.exporters.tiktok.errors import classify
from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.errors import SourceError
from sellerbak.storage.local import LocalStore
from tests.helpers import ListSource, init_repo, run_cli, write_config

EMAIL = "jane.doe@example.com"
PHONE = "+15550100223"
NAME = "Jane Q. Doe"
PII = (EMAIL, PHONE, NAME, "jane.doe")


def _files_snapshot(tmp_path: Path, name: str, text: str) -> str:
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / name).write_text(text)
    cfg = write_config(tmp_path, "./repo", [{"name": "files", "type": "files",
                                             "path": str(exports)}])
    assert run_cli("-c", str(cfg), "init").returncode == 0
    proc = run_cli("-c", str(cfg), "snapshot")
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


def _jsonl(*records: str) -> str:
    return "".join(r + "\n" for r in records)


@pytest.mark.parametrize("name,text,says", [
    # sorted input, a repeated id: found as the records stream in
    ("customers.jsonl", _jsonl(f'{{"id":"{EMAIL}","name":"{NAME}"}}',
                               f'{{"id":"{EMAIL}","phone":"{PHONE}"}}'),
     "record 2 has the same id as the record before it"),
    # unsorted input, a repeated id: found after sorting
    ("customers.csv", f"id,name,phone\nzz@example.com,{NAME},{PHONE}\n"
                      f"{EMAIL},{NAME},{PHONE}\n{EMAIL},{NAME},1\n",
     "two records have the same id"),
    ("customers.jsonl", _jsonl(f'{{"id":{{"email":"{EMAIL}"}},"name":"{NAME}"}}'),
     "customers.jsonl line 1: dataset customers: a record has no usable 'id'"),
    ("customers.jsonl", _jsonl(f'{{"id":"{EMAIL}","n":1e400,"name":"{NAME}"}}'),
     "customers.jsonl line 1: not valid JSON"),
    ("customers.csv", f"id,name\n{EMAIL},{NAME},{PHONE}\n", "line 2: has 3 fields"),
    ("orders.csv", f"Order ID,Order Status,Buyer\n{EMAIL},Completed,{NAME}\n"
                   f"{PHONE},Completed,{NAME}\n", "row 3 has no platform Order ID"),
], ids=["duplicate-sorted", "duplicate-unsorted", "unusable-id", "out-of-range", "fields",
        "seller-center-id"])
def test_files_source_errors_carry_no_record_content(tmp_path: Path, name: str, text: str,
                                                     says: str) -> None:
    stderr = _files_snapshot(tmp_path, name, text)
    assert says in stderr, stderr
    for pii in PII:
        assert pii not in stderr, stderr


class _Opaque:
    """A value JSON cannot hold, whose text is customer data."""

    def __repr__(self) -> str:
        return EMAIL

    __str__ = __repr__


def _circular() -> dict[str, Any]:
    record: dict[str, Any] = {"id": EMAIL, "name": NAME}
    record["self"] = record
    return record


@pytest.mark.parametrize("records,says", [
    ([{"id": EMAIL, "name": NAME}, {"id": EMAIL, "phone": PHONE}],
     "two records have the same id"),
    ([{"id": "1"}, {"id": EMAIL, "v": _Opaque()}], "record 2 holds a value of a type JSON"),
    ([{"id": EMAIL, "v": {1, 2}}], "record 1 holds a value of a type JSON"),
    ([_circular()], "record 1 holds a value JSON cannot hold"),
    ([{"id": EMAIL, "v": "\ud800" + NAME}], "record 1 holds a value JSON cannot hold"),
    ([{"id": "1"}, {"id": None, "email": EMAIL}], "record 2 has no usable 'id'"),
    ([{"id": [EMAIL]}], "record 1 has no usable 'id'"),
], ids=["duplicate", "opaque", "set", "circular", "surrogate", "no-id", "list-id"])
def test_engine_errors_carry_no_record_content(tmp_path: Path, records: list[dict[str, Any]],
                                               says: str) -> None:
    repo = init_repo(LocalStore(tmp_path / "repo"))
    with pytest.raises(SourceError) as caught:
        SnapshotRun(repo).run(ListSource("list", {"customers": records}), tags=[])
    text = str(caught.value)
    assert says in text and "\n" not in text, text
    for pii in PII:
        assert pii not in text, text


@pytest.mark.parametrize("path,http,code,message", [
    ("/order/202309/orders", 200, 12019999, f"Order 576461413038785752 of {EMAIL} not found"),
    ("/product/202309/products/1731233245091444495", 500, 36009003, "Internal error"),
    ("/finance/202501/statements/7238428642416319513/statement_transactions", 200, 36009004,
     f"Invalid parameter: buyer {PHONE} ({EMAIL})"),
    ("/product/202309/products/1731233245091444495", 404, None, ""),
])
def test_api_errors_carry_no_ids(path: str, http: int, code: int | None, message: str) -> None:
    """The gateway's own message (quoted for unknown codes) and the request path lose what
    may be an id, a phone number or an e-mail address."""
    text = str(classify("shop", path, http, code, message))
    assert "\n" not in text
    for content in (EMAIL, PHONE, "576461413038785752", "1731233245091444495",
                    "7238428642416319513"):
        assert content not in text, text
