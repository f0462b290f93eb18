"""Seller Center's own exports read by the `files` source: the orders CSV and XLSX (with the row
of field descriptions under the header) and the finance "Order details" XLSX."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import openpyxl
import pytest

from sellerbak.backup.exporters.files import FilesSource
from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.errors import SourceError
from sellerbak.restore.restore import restore_snapshot
from sellerbak.storage.local import LocalStore
from tests.helpers import init_repo, open_repo

_US = (
    "Order ID|Order Status|Order Substatus|Cancelation/Return Type|Normal or Pre-order|SKU ID|"
    "Seller SKU|Product Name|Variation|Quantity|Sku Quantity of return|SKU Unit Original Price|"
    "SKU Subtotal Before Discount|SKU Platform Discount|SKU Seller Discount|"
    "SKU Subtotal After Discount|Shipping Fee After Discount|Original Shipping Fee|"
    "Shipping Fee Seller Discount|Shipping Fee Platform Discount|Payment platform discount|"
    "Retail Delivery Fee|Taxes|Order Amount|Order Refund Amount|Created Time|Paid Time|"
    "RTS Time|Shipped Time|Delivered Time|Cancelled Time|Cancel By|Cancel Reason|"
    "Fulfillment Type|Warehouse Name|Tracking ID|Delivery Option Type|Delivery Option|"
    "Shipping Provider Name|Buyer Message|Buyer Username|Recipient|Phone #|Country|State|City|"
    "Zipcode|Detail Address|Additional address information|House Name or Number|"
    "Delivery Instruction|Payment Method|Weight(kg)|Product Category|Package ID|Seller Note|"
    "Shipping Information")
US_COLUMNS = _US.split("|")  # the spec's list, verbatim


def order_rows() -> list[list[str]]:
    rows = []
    for oid, skus, status in (("576461413038785752", 2, "Completed"),
                              ("576461413038785999", 1, "To ship")):
        for s in range(skus):
            row = {c: "" for c in US_COLUMNS}
            row.update({"Order ID": oid, "Order Status": status, "SKU ID": f"17295929697{s}",
                        "Seller SKU": f"SOCK-{s}", "Product Name": "Short Boat Invisible Socks",
                        "Variation": ["Black", "White"][s], "Quantity": "1",
                        "SKU Unit Original Price": "12.50", "Order Amount": "31.38",
                        "Created Time": "01/15/2026 10:22:33 AM", "Recipient": "D*** K***",
                        "City": "San Jose", "Zipcode": "95110"})
            rows.append([row[c] for c in US_COLUMNS])
    return rows


def description_row() -> list[str]:
    return ["Platform unique order ID."] + [f"Description of {c}." for c in US_COLUMNS[1:]]


def write_xlsx(path: Path, sheet: str, rows: list[list[object]]) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = sheet
    for row in rows:
        ws.append(row)
    wb.save(path)


def test_seller_center_exports_map_to_datasets_with_platform_ids(tmp_path: Path) -> None:
    data = tmp_path / "exports"
    data.mkdir()
    with open(data / "All order-2026-01.csv", "w", newline="", encoding="utf-8-sig") as fh:
        w = csv.writer(fh)
        w.writerows([US_COLUMNS, description_row(), *order_rows()])
    later = order_rows()[2:]
    later[0][1] = "Shipped"  # the later export has the newer status of the second order
    later.append(list(later[0]))
    later[1][0], later[1][5] = "576461413038786000", "1729592969712"
    write_xlsx(data / "All order-2026-02.xlsx", "OrderSKUList",
               [list(US_COLUMNS), description_row(), *later])
    fin_header = ["Order/adjustment ID  ", "Type", "Order created time(UTC)",
                  "Order settled time", "Currency", "Total settlement amount", "Total Revenue",
                  "Total Fees", "Statement date", "Statement ID", "SKU ID", "Quantity"]
    write_xlsx(data / "income_20260201.xlsx", "Order details", [
        fin_header,
        ["576461413038785752", "Order", "2026/01/15", "2026/01/30", "USD", 27.41, 31.38, -3.97,
         "2026/01/30", "7238804564097517339", "172959296970", 1],
        ["576461413038785752", "Order", "2026/01/15", "2026/01/30", "USD", "10", "10", "0",
         "2026/01/30", "7238804564097517339", "172959296971", "1"],
        ["7301000048257020051", "Logistics reimbursement", "", "2026/01/30", "USD", "2.5",
         "0", "0", "2026/01/30", "7238804564097517339", "", ""],
    ])
    (data / "notes.xlsx").write_bytes(b"not a workbook")
    with pytest.raises(SourceError, match="notes.xlsx: not a readable Excel"):
        FilesSource("sc", data).datasets()
    (data / "notes.xlsx").unlink()
    # an id Excel turned into a float lost its digits: refused, never skipped or rounded
    write_xlsx(data / "resaved.xlsx", "Order details", [fin_header[:1],
                                                        [576461413038785752]])
    with pytest.raises(SourceError, match="resaved.xlsx: row 2: .* lost its last digits"):
        _ = [list(e.records) for e in FilesSource("sc", data).export({}, False)]
    (data / "resaved.xlsx").unlink()

    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    result = SnapshotRun(open_repo(store)).run(FilesSource("sc", data), [])
    assert sorted(result.manifest.datasets) == ["finance/transactions", "orders"]
    out = {r.name: [json.loads(x) for x in r.path.read_text().splitlines()]
           for r in restore_snapshot(open_repo(store), result.manifest, tmp_path / "out")}
    orders = out["orders"]
    assert [o["id"] for o in orders] == ["576461413038785752", "576461413038785999",
                                         "576461413038786000"]
    first = orders[0]
    assert first["seller_center"]["Order Status"] == "Completed"
    assert first["seller_center"]["Created Time"] == "01/15/2026 10:22:33 AM"
    assert [li["Variation"] for li in first["line_items"]] == ["Black", "White"]
    assert "Order Status" not in first["line_items"][0] and "SKU ID" not in first["seller_center"]
    assert orders[1]["seller_center"]["Order Status"] == "Shipped"  # the later file wins
    assert len(orders[1]["line_items"]) == 1
    assert not any("Description" in json.dumps(o) for o in orders)
    fin = out["finance/transactions"]
    assert [t["id"] for t in fin] == ["576461413038785752", "576461413038785752/172959296971",
                                      "7301000048257020051"]
    assert fin[0]["statement_id"] == "7238804564097517339"
    assert fin[0]["seller_center"]["Total settlement amount"] == "27.41"
    assert fin[0]["seller_center"]["Order/adjustment ID"] == "576461413038785752"
    assert fin[2]["seller_center"]["Type"] == "Logistics reimbursement"


def test_seller_center_export_clashing_with_a_plain_dataset(tmp_path: Path) -> None:
    data = tmp_path / "exports"
    data.mkdir()
    (data / "orders.jsonl").write_text('{"id": "1"}\n')
    with open(data / "export.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([US_COLUMNS, description_row(), *order_rows()])
    with pytest.raises(SourceError, match="would both be dataset orders"):
        FilesSource("sc", data).datasets()
