"""Bounds on a listing's pages, and on the ids of the records it gives.

Why: a list call is followed page by page through `next_page_token` for as long as the API sends
one. An answer that always sends a fresh token (a gateway fault, or a hostile endpoint) would be
followed for ever, and a repeated token used to stop the whole source. A listing (one chain of
page tokens) now stops, and only its dataset ends incomplete, when

* a page token comes a second time, or is not text;
* it runs far past the `total_count` its first page gave (when the API gives one): more than
  2 x ceil(total / records per page) + TOTAL_SLACK_PAGES pages, with records per page the
  smaller of the page size asked for and the largest page seen;
* it reaches MAX_PAGES pages (a million records at 100 a page: more than any one listing of a
  shop's history or of one statement).

Records are keyed by their platform id, which also goes into request paths (a product's, a
statement's): an id that is not text of 1 to MAX_ID_LENGTH ASCII letters and digits (platform
ids are 18-19 digits) is unusable. Such records are left out and counted, and their dataset ends
incomplete, with the count (never the ids) in its problem line.
"""

from __future__ import annotations

import math
from typing import Any

from sellerbak.backup.exporters.tiktok.errors import DatasetError

MAX_PAGES = 10_000
TOTAL_SLACK_PAGES = 10
MAX_ID_LENGTH = 64


class ListingStopped(DatasetError):
    """A listing's pages stopped making sense; what was read is kept, its dataset incomplete."""


class PageBound:
    """One listing's page tokens, checked as they come (see the module docstring)."""

    def __init__(self, source: str, what: str, page_size: int, total: Any) -> None:
        self.source = source
        self.what = what
        self.page_size = max(1, page_size)
        total_ok = isinstance(total, int | float) and not isinstance(total, bool) \
            and math.isfinite(total) and total >= 0
        self.total: int | None = int(total) if total_ok else None
        self.pages = 1
        self.largest = 0
        self.seen: set[str] = set()

    def _stopped(self, why: str) -> ListingStopped:
        return ListingStopped(f"source {self.source}: TikTok Shop {why} while listing "
                              f"{self.what}; stopped reading them after {self.pages} pages, "
                              "the next run tries again")

    def follow(self, token: Any, items: int) -> str | None:
        """The page token to ask for next after a page of `items` records that named `token`,
        or None at the end; ListingStopped when the listing has to stop."""
        self.largest = max(self.largest, items)
        if token is None or token == "":
            return None
        if not isinstance(token, str):
            raise self._stopped("sent a page token that is not text")
        if token in self.seen:
            raise self._stopped("repeated a page token")
        self.seen.add(token)
        if self.pages >= MAX_PAGES:
            raise self._stopped(f"sent more than {MAX_PAGES} pages")
        if self.total is not None:
            per_page = max(1, min(self.page_size, self.largest))
            allowed = 2 * math.ceil(self.total / per_page) + TOTAL_SLACK_PAGES
            if self.pages >= allowed:
                raise self._stopped(f"kept sending pages past the {self.total} records it "
                                    "counted")
        self.pages += 1
        return token


def usable_id(value: Any) -> bool:
    """Whether a record's id can key it (and go into a request path)."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isascii()
            and value.isalnum())


class Unusable:
    """Records of one dataset left out for want of a usable id (or for not being objects)."""

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self.count = 0

    def keep(self, record: Any) -> bool:
        """True for a record to keep; counts one left out."""
        if isinstance(record, dict) and usable_id(record.get("id")):
            return True
        self.count += 1
        return False

    def problem(self, source: str) -> str | None:
        if not self.count:
            return None
        return (f"source {source}: TikTok Shop sent {self.count} record"
                f"{'' if self.count == 1 else 's'} of {self.dataset} without a usable id (1 to "
                f"{MAX_ID_LENGTH} letters and digits); left out of this snapshot")
