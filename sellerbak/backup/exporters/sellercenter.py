"""Seller Center's own export files, read by the `files` source (spec section 8).

Two kinds are recognised by their content, not their names (Seller Center names files after
the filter and the time of the export):

* the orders export (Orders -> Manage orders -> Export), CSV or XLSX: one row per SKU line,
  a header row, and under it a row of field descriptions ("Platform unique order ID.") that is
  dropped. Rows are grouped into one `orders` record per platform `Order ID`:

      {"id": "576461413038785752", "seller_center": {order-level columns},
       "line_items": [{SKU-level columns}, ...]}

* the finance "Order details" XLSX (Finance -> export; sheet "Order details"): one
  `finance/transactions` record per row, keyed by the platform `Order/adjustment ID` (with the
  SKU ID, or a counter, added when the sheet has several rows for one id), with the
  `statement_id` beside the columns: {"id", "statement_id", "seller_center": {columns}}.

Column names are kept exactly as exported (they differ by market and have drifted, e.g.
`Order\\adjustment ID` became `Order/Adjustment ID` and `Type` became `Transaction type` in
2026), and every value is kept as text, as in the file. Several exports of one kind (say, one a
month) make one dataset; when an id appears in more than one, the file whose name sorts last
wins. Exports are bounded in size by Seller Center (tens of thousands of rows), so a dataset is
assembled in memory.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sellerbak.backup.exporters.base import DatasetExport, Record
from sellerbak.backup.exporters.xlsxlimits import open_checked
from sellerbak.errors import SourceError

ORDERS = "orders"
FINANCE = "finance/transactions"
ORDER_ID = "order id"
#: columns that describe one SKU line of an order, not the order (US export names)
LINE_COLUMNS = {
    "sku id", "seller sku", "product name", "variation", "quantity", "sku quantity of return",
    "sku unit original price", "sku subtotal before discount", "sku platform discount",
    "sku seller discount", "sku subtotal after discount", "product category", "weight(kg)",
    "package id", "normal or pre-order", "cancelation/return type", "order substatus",
}
FINANCE_SHEET = "order details"
FINANCE_IDS = {"order/adjustment id", "order\\adjustment id"}
HEADER_SCAN_ROWS = 10
#: Excel's own row limit, and far more columns and cells than a Seller Center export has
MAX_ROWS = 1_048_576
MAX_COLUMNS = 1024
MAX_CELLS = 50_000_000


def _norm(name: Any) -> str:
    return " ".join(str(name or "").split()).lower()


def _cell(value: Any) -> str:
    """A cell as the text Seller Center shows (ids never become floats)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


# ------------------------------------------------------------------ reading rows


def _csv_rows(file: Path) -> Iterator[list[str]]:
    # files.py imports this module
    from sellerbak.backup.exporters.files import bounded_lines, read_errors

    with read_errors(file.name, file), open(file, encoding="utf-8-sig", newline="") as fh:
        yield from csv.reader(bounded_lines(fh, file.name))


@contextmanager
def _workbook(file: Path) -> Iterator[Any]:
    """The workbook, read-only, once its zip archive passed the bounds of xlsxlimits.py (a
    small file can inflate to gigabytes); parsed from the very file that was checked."""
    import openpyxl

    with open_checked(file) as fh:
        try:
            wb = openpyxl.load_workbook(fh, read_only=True, data_only=True)
        except OSError as exc:
            raise SourceError(f"cannot read {file}: {exc.strerror}") from None
        except Exception:  # noqa: BLE001 - zipfile/XML errors of a damaged or foreign file
            raise SourceError(f"{file.name}: not a readable Excel (.xlsx) file") from None
        try:
            yield wb
        finally:
            wb.close()


def _sheet_rows(sheet: Any, file: Path) -> Iterator[list[str]]:
    """A worksheet's rows as text. Read lazily, so a damaged sheet (its XML or its compressed
    stream) fails here: that ends in a SourceError. The file's stated dimensions are ignored
    (they would pad every row to them), and rows, columns and cells are bounded: a forged sheet
    can number its rows a billion apart or put a cell at column XFD, and reading it would
    then spin for hours on a file of a few hundred bytes."""
    sheet.reset_dimensions()
    rows = sheet.iter_rows(values_only=True, max_row=MAX_ROWS + 1)
    cells = 0
    for n in itertools.count():
        try:
            row = next(rows, None)
        except Exception:  # noqa: BLE001 - zipfile/XML errors of a damaged file
            raise SourceError(f"{file.name}: not a readable Excel (.xlsx) file") from None
        if row is None:
            return
        cells += len(row)
        if n >= MAX_ROWS or len(row) > MAX_COLUMNS or cells > MAX_CELLS:
            raise SourceError(f"{file.name}: a worksheet is larger than a Seller Center export "
                              f"can be (at most {MAX_ROWS} rows of {MAX_COLUMNS} columns)")
        yield [_cell(v) for v in row]


def _header(rows: Iterator[list[str]], wanted: set[str]) -> tuple[list[str], int] | None:
    """The header row (the first of the first rows holding a wanted column) and its index."""
    for n, row in enumerate(rows):
        if n >= HEADER_SCAN_ROWS:
            return None
        if {_norm(c) for c in row} & wanted:
            return [c.strip() for c in row], n
    return None


def detect(file: Path) -> str | None:
    """The dataset a Seller Center export feeds, or None if the file is not one."""
    suffix = file.suffix.lower()
    if suffix == ".csv":
        found = _header(_csv_rows(file), {ORDER_ID})
        return ORDERS if found and "order status" in {_norm(c) for c in found[0]} else None
    if suffix != ".xlsx":
        return None
    with _workbook(file) as wb:
        names = {_norm(n): n for n in wb.sheetnames}
        if FINANCE_SHEET in names and _header(_sheet_rows(wb[names[FINANCE_SHEET]], file),
                                              FINANCE_IDS):
            return FINANCE
        for sheet in wb.worksheets:
            found = _header(_sheet_rows(sheet, file), {ORDER_ID})
            if found and "order status" in {_norm(c) for c in found[0]}:
                return ORDERS
        return None


def _table(file: Path, wanted: set[str], sheet_name: str | None = None
           ) -> Iterator[dict[str, str]]:
    """The data rows of an export as {column: text}, blank rows skipped."""
    if file.suffix.lower() == ".csv":
        yield from _rows_after_header(file, _csv_rows(file), wanted)
        return
    with _workbook(file) as wb:
        sheets = [wb[n] for n in wb.sheetnames if _norm(n) == sheet_name] if sheet_name \
            else wb.worksheets
        for sheet in sheets:
            rows = _sheet_rows(sheet, file)
            peek = _header(_sheet_rows(sheet, file), wanted)
            if peek is None:
                continue
            yield from _rows_after_header(file, rows, wanted)
            return


def _rows_after_header(file: Path, rows: Iterator[list[str]], wanted: set[str]
                       ) -> Iterator[dict[str, str]]:
    found = _header(rows, wanted)
    if found is None:
        raise SourceError(f"{file.name}: no header row with {' or '.join(sorted(wanted))}")
    header = found[0]
    while header and not header[-1]:
        header.pop()
    if len(set(header)) != len(header):
        raise SourceError(f"{file.name}: the header repeats a column name")
    for row in rows:
        if not any(c.strip() for c in row):
            continue
        if any(c.strip() for c in row[len(header):]):
            raise SourceError(f"{file.name}: a row has more fields than the header")
        yield {h: (row[i] if i < len(row) else "") for i, h in enumerate(header) if h}


# ------------------------------------------------------------------ the datasets


def _lost_digits(text: str) -> bool:
    """An id Excel turned into a number (5.764614130387858e+17): its digits are gone."""
    mantissa, _, exponent = text.lower().partition("e+")
    return bool(exponent) and exponent.isdigit() and mantissa.replace(".", "").isdigit()


def _id(file: Path, n: int, text: str, what: str, ok: bool) -> str | None:
    """The row's id; None for the row of field descriptions under the header."""
    if ok:
        return text
    if _lost_digits(text):
        raise SourceError(f"{file.name}: row {n + 2}: the {what} was saved as a number and lost "
                          "its last digits; export the file from Seller Center again without "
                          "opening and re-saving it in a spreadsheet program")
    if n == 0:
        return None
    raise SourceError(f"{file.name}: row {n + 2} has no {what}")


def _column(record: dict[str, str], names: set[str]) -> str | None:
    for key in record:
        if _norm(key) in names:
            return key
    return None


def _orders(files: list[Path]) -> list[Record]:
    orders: dict[str, Record] = {}
    for file in sorted(files, key=lambda f: f.name):
        mine: dict[str, Record] = {}
        for n, row in enumerate(_table(file, {ORDER_ID})):
            key = _column(row, {ORDER_ID})
            found = row[key].strip() if key else ""
            oid = _id(file, n, found, "platform Order ID", found.isdigit())
            if oid is None:
                continue  # the row of field descriptions under the header
            line = {k: v for k, v in row.items() if _norm(k) in LINE_COLUMNS}
            rec = mine.get(oid)
            if rec is None:
                rec = mine[oid] = {
                    "id": oid,
                    "seller_center": {k: v for k, v in row.items()
                                      if _norm(k) not in LINE_COLUMNS},
                    "line_items": []}
            rec["line_items"].append(line)
        orders.update(mine)
    return [orders[k] for k in sorted(orders)]


def _finance(files: list[Path]) -> list[Record]:
    out: dict[str, Record] = {}
    for file in sorted(files, key=lambda f: f.name):
        mine: dict[str, Record] = {}
        for n, row in enumerate(_table(file, FINANCE_IDS, FINANCE_SHEET)):
            key = _column(row, FINANCE_IDS)
            found = row[key].strip() if key else ""
            rid = _id(file, n, found, "Order/adjustment ID", found.isalnum())
            if rid is None:
                continue  # a row of field descriptions, if the export has one
            sku_key = _column(row, {"sku id"})
            if rid in mine and sku_key and row[sku_key].strip():
                rid = f"{rid}/{row[sku_key].strip()}"
            base, k = rid, 1
            while rid in mine:
                k += 1
                rid = f"{base}#{k}"
            st_key = _column(row, {"statement id"})
            rec: Record = {"id": rid, "seller_center": row}
            if st_key and row[st_key].strip():
                rec["statement_id"] = row[st_key].strip()
            mine[rid] = rec
        out.update(mine)
    return [out[k] for k in sorted(out)]


def export(name: str, files: list[Path]) -> DatasetExport:
    """The dataset `name` (orders or finance/transactions) from Seller Center exports."""
    records = _orders(files) if name == ORDERS else _finance(files)
    return DatasetExport(name, records, sorted=True,
                         meta={"seller_center_files": sorted(f.name for f in files)})
