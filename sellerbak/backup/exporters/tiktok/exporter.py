"""`type: tiktok`: a seller's shop data from the TikTok Shop Open API, night after night.

Datasets (records exactly as the API returns them; ids are the platform's string ids):

* `products` -- Get Product (202309) for every product Search Products (202502) lists, asked
  twice: status ALL, then status DELETED (whether ALL includes DELETED is not documented);
* `orders` -- Get Order List (202309), full order objects;
* `customers` -- derived from orders (customers.py);
* `finance/statements` -- Get Statements (202309), each with the statement-level part of its
  Get Transactions by Statement answer under `statement_transactions` (payable and reserve
  amounts appear nowhere else);
* `finance/transactions` -- Get Transactions by Statement (202501), one record per
  transaction, with its `statement_id`;
* `finance/payments` -- Get Payments (202605); `finance/withdrawals` -- Get Withdrawals (202309).

Incremental runs. Each dataset's cursor records the upper bound `hi` of the range it covered (the
run's start time T) and, where records change after they are created, the earliest time still
pending. The next run asks only for `[lower, T')` with lower = hi - overlap, or earlier:

* orders by `update_time` (`_ge` inclusive, `_lt` exclusive), products by `update_time`
  (`_ge` and `_le`, both inclusive, so the range is asked for as `[lower, T' - 1]`);
* statements by `statement_time`: also from the oldest statement not yet PAID, and from just
  after the newest statement seen (statements appear after their statement_time);
* payments and withdrawals by `create_time`: also from the oldest one still PROCESSING.

The safety overlap (default 10 minutes) covers records that become visible a little after their
timestamp. Long ranges are split into windows: orders and products by halving a window while its
`total_count` exceeds `window_records`, finance lists in windows of a year.

Page tokens may be offsets (the doc's sample token is base64 "offset=0"), so a record that
leaves a filtered range during the scan (updated meanwhile) can shift a later record past the
page boundary. The run therefore finishes each scan with a catch-up query from T: a record seen
there *and* earlier in the scan moved mid-run, and the next run rescans from its old update
time, which covers anything it may have pushed out of view.

Errors: a missing scope or a retired endpoint stops only that dataset (stored incomplete, exit
3); credentials, signature, shop and account errors stop the source (nothing stored, exit 1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import RawArray
from pathlib import Path
from typing import Any

import requests

from sellerbak.backup.exporters.base import DatasetExport, Record
from sellerbak.backup.exporters.tiktok.client import ClientStats, RetryPolicy, TikTokClient
from sellerbak.backup.exporters.tiktok.customers import CustomerBook
from sellerbak.backup.exporters.tiktok.errors import ApiError, DatasetError
from sellerbak.backup.exporters.tiktok.paging import (
    ListingStopped,
    PageBound,
    Unusable,
    usable_id,
)
from sellerbak.backup.exporters.tiktok.tokens import AuthClient, TokenManager, TokenStore
from sellerbak.credentials import SecretRef
from sellerbak.errors import SourceError
from sellerbak.localfiles import private_dirs

log = logging.getLogger(__name__)

DATASETS = ("products", "orders", "customers", "finance/statements", "finance/transactions",
            "finance/payments", "finance/withdrawals")
FINANCE = tuple(d for d in DATASETS if d.startswith("finance/"))
CURSOR_VERSION = 1
#: finance data exists from 2023-07-01 (spec 5.3)
FINANCE_EPOCH = 1_688_169_600
#: default start of a full scan: 2020-01-01, before any TikTok Shop market opened
HISTORY_START = 1_577_836_800
FINANCE_WINDOW = 365 * 86_400
MIN_WINDOW = 3600
#: statements whose transactions listing stopped (paging.py) before the rest are not read: an
#: API that pages without end for one statement likely does for all (each up to MAX_PAGES)
MAX_STOPPED_LISTINGS = 3

P_SEARCH = "/product/202502/products/search"
P_PRODUCT = "/product/202309/products/{}"
P_ORDERS = "/order/202309/orders/search"
P_ORDER_DETAIL = "/order/202309/orders"
P_STATEMENTS = "/finance/202309/statements"
P_TRANSACTIONS = "/finance/202501/statements/{}/statement_transactions"
P_PAYMENTS = "/finance/202605/payments"
P_WITHDRAWALS = "/finance/202309/withdrawals"
P_SHOPS = "/authorization/202309/shops"


@dataclass
class TikTokOptions:
    app_key: str
    app_secret: SecretRef
    state_dir: Path
    refresh_token: SecretRef | None = None
    shop_cipher: str | None = None
    api_url: str = "https://open-api.tiktokglobalshop.com"
    auth_url: str = "https://auth.tiktok-shops.com"
    datasets: tuple[str, ...] = DATASETS
    requests_per_second: float = 1.0
    page_size: int = 50
    overlap_seconds: int = 600
    since: int = HISTORY_START
    window_records: int = 5000
    timeout_seconds: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class _Scan:
    """Bookkeeping of one time-filtered scan: dedup, and records that moved mid-run."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.seen: dict[str, int] = {}
        self.rescan_from: int | None = None

    def first_time(self, rec: Record) -> bool:
        rid = str(rec.get("id"))
        if rid in self.seen:
            return False
        t = rec.get(self.key)
        self.seen[rid] = t if isinstance(t, int) else 0
        return True

    def catch_up(self, rec: Record) -> None:
        old = self.seen.get(str(rec.get("id")))
        if old is not None and rec.get(self.key) != old:
            self.rescan_from = old if self.rescan_from is None else min(self.rescan_from, old)


class TikTokSource:
    """A configured TikTok Shop; see the module docstring."""

    type = "tiktok"

    def __init__(self, name: str, options: TikTokOptions, clock: Callable[[], float] = time.time,
                 session: requests.Session | None = None) -> None:
        self.name = name
        self.opts = options
        self.clock = clock
        self.session = session or requests.Session()
        self.progress: Any = None
        self._client: TikTokClient | None = None
        self._cipher: str | None = options.shop_cipher
        self._shared: Any = None

    # ------------------------------------------------------------------ plumbing
    def set_progress(self, progress: Any) -> None:
        """The snapshot's progress display. The export may run in a forked child process, so
        the counts travel through memory shared with it (created here, before the fork):
        requests, throttled answers, seconds waited, retries."""
        self.progress = progress
        self._shared = RawArray("d", 4)
        source = getattr(progress, "api_source", None)
        if source is not None:
            source(lambda: (int(self._shared[0]), int(self._shared[1]), self._shared[2]))

    def _on_request(self, stats: ClientStats) -> None:
        if self._shared is not None:
            self._shared[:] = [stats.requests, stats.throttled, stats.waited, stats.retries]

    @property
    def client(self) -> TikTokClient:
        if self._client is None:
            secret: Callable[[], str] = self.opts.app_secret.resolve
            auth = AuthClient(self.name, self.opts.auth_url, self.opts.app_key, secret,
                              self.session, self.opts.timeout_seconds, self.clock)
            tokens = TokenManager(self.name, TokenStore(self.opts.state_dir, self.name), auth,
                                  self.opts.refresh_token, self.clock)
            self._client = TikTokClient(
                self.name, self.opts.api_url, self.opts.app_key, secret, tokens, self.session,
                shop_cipher=self._cipher, requests_per_second=self.opts.requests_per_second,
                timeout=self.opts.timeout_seconds, retry=self.opts.retry, clock=self.clock,
                on_request=self._on_request)
        return self._client

    @property
    def stats(self) -> ClientStats:
        """What the client did (also when it ran in the export's child process)."""
        if self._shared is not None:
            r, t, w, n = self._shared
            return ClientStats(requests=int(r), throttled=int(t), waited=w, retries=int(n))
        return self._client.stats if self._client is not None else ClientStats()

    def summary(self) -> str:
        """One line for the snapshot summary: requests, and retries and waits if any."""
        s = self.stats
        text = f"{s.requests} API requests"
        if s.retries:
            text += f", {s.retries} retried ({s.throttled} throttled, {s.waited:.1f}s waiting)"
        return text

    def shops(self) -> list[dict[str, Any]]:
        """The shops this authorization covers (Get Authorized Shops)."""
        return _list(self.client.call("GET", P_SHOPS), "shops")

    def _shop(self) -> str:
        if self._cipher is None:
            shops = self.shops()
            if len(shops) != 1:
                listed = ", ".join(f"{s.get('cipher')} ({s.get('name')}, {s.get('region')})"
                                   for s in shops) or "none"
                raise SourceError(f"source {self.name}: the authorization covers "
                                  f"{len(shops)} shops: set shop_cipher to one of: {listed}")
            self._cipher = str(shops[0].get("cipher"))
        self.client.shop_cipher = self._cipher
        return self._cipher

    # ------------------------------------------------------------------ the export
    def export(self, cursors: dict[str, Any], full: bool) -> Iterator[DatasetExport]:
        wanted = set(self.opts.datasets)
        shop = self._shop()
        now = int(self.clock())
        lower = {ds: None if full else self._lower(cursors.get(ds), shop) for ds in DATASETS}
        if "products" in wanted:
            yield self._products(shop, now, lower["products"])
        if wanted & {"orders", "customers"}:
            yield from self._orders_and_customers(shop, now, lower, cursors, full, wanted)
        if wanted & {"finance/statements", "finance/transactions"}:
            yield from self._statements(shop, now, lower, wanted)
        if "finance/payments" in wanted:
            yield self._simple(shop, now, lower["finance/payments"], "finance/payments",
                               P_PAYMENTS, "payments", "create_time",
                               {"sort_field": "create_time", "sort_order": "ASC"})
        if "finance/withdrawals" in wanted:
            yield self._simple(shop, now, lower["finance/withdrawals"], "finance/withdrawals",
                               P_WITHDRAWALS, "withdrawals", "create_time",
                               {"types": "WITHDRAW,SETTLE,TRANSFER,REVERSE"})

    def _lower(self, cursor: Any, shop: str) -> int | None:
        """Where an incremental scan starts, or None for a full export."""
        if not isinstance(cursor, dict) or cursor.get("v") != CURSOR_VERSION \
                or cursor.get("shop") != shop or not isinstance(cursor.get("hi"), int):
            return None
        lo = cursor["hi"] - self.opts.overlap_seconds
        for key in ("pending", "rescan"):
            if isinstance(cursor.get(key), int):
                lo = min(lo, cursor[key])
        if isinstance(cursor.get("newest"), int):
            lo = min(lo, cursor["newest"] + 1)
        return max(lo, 0)

    def _cursor(self, shop: str, now: int, **extra: Any) -> dict[str, Any]:
        return {"v": CURSOR_VERSION, "shop": shop, "hi": now,
                **{k: v for k, v in extra.items() if v is not None}}

    def _guard(self, export: DatasetExport, records: Iterable[Record],
               unusable: Unusable | None = None) -> Iterator[Record]:
        """Stream records; a dataset-level error ends the dataset incomplete, with its one-line
        reason (the other datasets go on), and so do records left out for want of an id."""
        try:
            yield from records
        except DatasetError as exc:
            _incomplete(export, str(exc))
            log.info("%s", exc)
        problem = unusable.problem(self.name) if unusable is not None else None
        if problem is not None:
            _incomplete(export, problem)
            log.info("%s", problem)

    # ------------------------------------------------------------------ windows
    def _windowed(self, lo: int, hi: int, fetch: Callable[[int, int, str | None],
                  tuple[list[Any], Any, Any]], what: str, page_size: int,
                  fixed: int | None = None) -> Iterator[Any]:
        """Records with time in [lo, hi), window by window, oldest first. `fetch(a, b, token)`
        returns (records, next token, total_count or None). Without `fixed`, a window whose
        total_count exceeds `window_records` is halved (the first page is dropped). Each
        window's pages are bounded (paging.py): past the bounds, ListingStopped ends the
        dataset incomplete. Items may be anything the API sent: the caller checks them."""
        if fixed:
            stack = [(a, min(a + fixed, hi)) for a in range(lo, hi, fixed)][::-1]
        else:
            stack = [(lo, hi)]
        while stack:
            a, b = stack.pop()
            if a >= b:
                continue
            items, token, total = fetch(a, b, None)
            if not isinstance(total, int | float) or isinstance(total, bool):
                total = None  # not a count: read the window as it is
            # a window is halved only if its first page backs the count up (a next page): a
            # count that lies on every window would otherwise halve a history of years down
            # to hours, a request each
            backed = bool(token)
            if not fixed and total is not None and total > self.opts.window_records \
                    and b - a > MIN_WINDOW and backed:
                mid = a + (b - a) // 2
                stack += [(mid, b), (a, mid)]
                continue
            yield from items
            bound = PageBound(self.name, what, page_size, total)
            while (follow := bound.follow(token, len(items))) is not None:
                items, token, _total = fetch(a, b, follow)
                yield from items

    # ------------------------------------------------------------------ products
    def _products(self, shop: str, now: int, lower: int | None) -> DatasetExport:
        export = DatasetExport("products", (), mode="full" if lower is None else "changes")
        lo = self.opts.since if lower is None else lower
        scan = _Scan("update_time")
        client = self.client

        def search(status: str) -> Callable[[int, int, str | None],
                                           tuple[list[Record], str | None, int | None]]:
            def fetch(a: int, b: int, token: str | None) -> tuple[list[Record], str | None,
                                                                  int | None]:
                data = client.call("POST", P_SEARCH, {"page_size": 100, "page_token": token},
                                   {"status": status, "update_time_ge": a,
                                    "update_time_le": b - 1})
                return (_items(data, "products"), data.get("next_page_token") or None,
                        data.get("total_count"))
            return fetch

        def records() -> Iterator[Record]:
            for status in ("ALL", "DELETED"):
                for summary in self._windowed(lo, now, search(status), "products", 100):
                    if not unusable.keep(summary) or not scan.first_time(summary):
                        continue
                    detail = client.call("GET", P_PRODUCT.format(summary["id"]))
                    if detail and unusable.keep(detail):
                        yield detail
            end = int(self.clock()) + 60
            for status in ("ALL", "DELETED"):
                for summary in self._windowed(now, end, search(status), "products", 100):
                    if isinstance(summary, dict):
                        scan.catch_up(summary)
            export.cursor = self._cursor(shop, now, rescan=scan.rescan_from)

        unusable = Unusable("products")
        export.records = self._guard(export, records(), unusable)
        return export

    # ------------------------------------------------------------------ orders, customers
    def _order_pages(self, a: int, b: int, token: str | None
                     ) -> tuple[list[Record], str | None, int | None]:
        data = self.client.call("POST", P_ORDERS,
                                {"page_size": self.opts.page_size, "page_token": token,
                                 "sort_field": "update_time", "sort_order": "ASC"},
                                {"update_time_ge": a, "update_time_lt": b})
        return _items(data, "orders"), data.get("next_page_token") or None, \
            data.get("total_count")

    def _fetch_orders(self, ids: list[str]) -> Iterator[Record]:
        data = self.client.call("GET", P_ORDER_DETAIL, {"ids": ",".join(ids)})
        yield from (o for o in _list(data, "orders") if usable_id(o.get("id")))

    def _orders_and_customers(self, shop: str, now: int, lower: dict[str, int | None],
                              cursors: dict[str, Any], full: bool,
                              wanted: set[str]) -> Iterator[DatasetExport]:
        book_dir = self.opts.state_dir / "tiktok" / self.name
        prev_book = None
        if "customers" in wanted:
            c = cursors.get("customers") if not full else None
            prev_book = c.get("book") if isinstance(c, dict) and lower["customers"] is not None \
                else None
            if not CustomerBook.exists(book_dir, prev_book):
                prev_book = None
        lo = lower["orders"] if "orders" in wanted else lower["customers"]
        if "customers" in wanted and prev_book is None:
            lo = None  # no order book to update: every order is needed to count orders
        if "orders" in wanted and lower["orders"] is None:
            lo = None
        if "customers" in wanted:
            private_dirs(book_dir)
            CustomerBook.clean(book_dir, {prev_book} if prev_book else set())
        book = CustomerBook(book_dir, prev_book, lo is None) if "customers" in wanted else None
        export = DatasetExport("orders", (), mode="full" if lo is None else "changes")
        scan = _Scan("update_time")

        def records() -> Iterator[Record]:
            start = self.opts.since if lo is None else lo
            size = self.opts.page_size
            for order in self._windowed(start, now, self._order_pages, "orders", size):
                if unusable.keep(order) and scan.first_time(order):
                    if book is not None:
                        book.feed(order)
                    yield order
            end = int(self.clock()) + 60
            for order in self._windowed(now, end, self._order_pages, "orders", size):
                if isinstance(order, dict):
                    scan.catch_up(order)
            export.cursor = self._cursor(shop, now, rescan=scan.rescan_from)

        unusable = Unusable("orders")
        export.records = self._guard(export, records(), unusable)
        if "orders" in wanted:
            yield export
        else:
            for _ in export.records:
                pass
        if book is None:
            return
        cust = DatasetExport("customers", (), mode=export.mode, sorted=True)
        if not export.complete:
            book.close()
            cust.complete = False
            cust.problem = f"source {self.name}: orders could not all be read, so customers " \
                           "were not updated; the next run reads them again"
            yield cust
            return

        def customers() -> Iterator[Record]:
            try:
                yield from book.records(self._fetch_orders)
                cust.cursor = dict(export.cursor or {}, book=book.generation)
                if book.unusable:
                    _incomplete(cust, f"source {self.name}: TikTok Shop sent {book.unusable} "
                                "orders without a usable buyer id (user_id) or create_time; "
                                "their buyers' records were not updated")
            finally:
                book.close()

        cust.records = self._guard(cust, customers())
        yield cust

    # ------------------------------------------------------------------ finance
    def _finance_pages(self, path: str, key: str, time_key: str, params: dict[str, Any]
                       ) -> Callable[[int, int, str | None],
                                     tuple[list[Record], str | None, int | None]]:
        def fetch(a: int, b: int, token: str | None) -> tuple[list[Record], str | None,
                                                              int | None]:
            data = self.client.call("GET", path, dict(params, page_size=100, page_token=token,
                                                      **{f"{time_key}_ge": a,
                                                         f"{time_key}_lt": b}))
            return _items(data, key), data.get("next_page_token") or None, \
                data.get("total_count")
        return fetch

    def _finance_lower(self, lower: int | None) -> int:
        return max(self.opts.since, FINANCE_EPOCH) if lower is None else lower

    def _simple(self, shop: str, now: int, lower: int | None, name: str, path: str, key: str,
                time_key: str, params: dict[str, Any]) -> DatasetExport:
        """Payments and withdrawals: by create_time; PROCESSING ones are asked for again."""
        export = DatasetExport(name, (), mode="full" if lower is None else "changes")
        scan = _Scan(time_key)

        def records() -> Iterator[Record]:
            pending: int | None = None
            fetch = self._finance_pages(path, key, time_key, params)
            for rec in self._windowed(self._finance_lower(lower), now, fetch, key, 100,
                                      FINANCE_WINDOW):
                if not unusable.keep(rec) or not scan.first_time(rec):
                    continue
                if rec.get("status") == "PROCESSING" and isinstance(rec.get(time_key), int):
                    pending = rec[time_key] if pending is None else min(pending, rec[time_key])
                yield rec
            export.cursor = self._cursor(shop, now, pending=pending)

        unusable = Unusable(key)
        export.records = self._guard(export, records(), unusable)
        return export

    def _statements(self, shop: str, now: int, lower: dict[str, int | None],
                    wanted: set[str]) -> Iterator[DatasetExport]:
        """Statements first (buffered: one a day), then each one's transactions, then the
        statements with the statement-level part of their transactions answer."""
        mine = [d for d in ("finance/statements", "finance/transactions") if d in wanted]
        bounds = [lower[d] for d in mine]
        lo = None if any(b is None for b in bounds) else min(b for b in bounds if b is not None)
        mode = "full" if lo is None else "changes"
        statements: list[Record] = []
        state: dict[str, Any] = {}
        summaries: dict[str, dict[str, Any]] = {}
        problem: list[str] = []
        unusable_statements = Unusable("finance/statements")

        def scan_statements() -> None:
            if "scanned" in state:
                return
            state["scanned"] = True
            scan = _Scan("statement_time")
            pending = newest = None
            fetch = self._finance_pages(P_STATEMENTS, "statements", "statement_time",
                                        {"sort_field": "statement_time", "sort_order": "ASC"})
            try:
                for st in self._windowed(self._finance_lower(lo), now, fetch, "statements", 100,
                                         FINANCE_WINDOW):
                    if not unusable_statements.keep(st) or not scan.first_time(st):
                        continue
                    t = st.get("statement_time")
                    if isinstance(t, int):
                        newest = t if newest is None else max(newest, t)
                        if st.get("payment_status") != "PAID":
                            pending = t if pending is None else min(pending, t)
                    statements.append(st)
            except DatasetError as exc:
                problem.append(str(exc))
                return
            state["cursor"] = self._cursor(shop, now, pending=pending, newest=newest)

        if "finance/transactions" in wanted:
            tx = DatasetExport("finance/transactions", (), mode=mode)

            def transactions() -> Iterator[Record]:
                scan_statements()
                if problem:
                    raise DatasetError(problem[0])
                if unusable_statements.count:
                    _incomplete(tx, f"source {self.name}: the transactions of "
                                f"{unusable_statements.count} statements were not read: "
                                "TikTok Shop sent those statements without a usable id")
                stopped: list[str] = []
                for st in statements:
                    sid = st["id"]
                    seen: set[str] = set()
                    try:
                        for page in self.client.pages(
                                "GET", P_TRANSACTIONS.format(sid),
                                {"sort_field": "order_create_time", "sort_order": "ASC",
                                 "page_size": 100}, what="statement transactions"):
                            if sid not in summaries:
                                summaries[sid] = {k: v for k, v in page.items() if k not in
                                                  ("transactions", "next_page_token")}
                            for t in _items(page, "transactions"):
                                if unusable_tx.keep(t) and t["id"] not in seen:
                                    seen.add(t["id"])
                                    yield dict(t, statement_id=sid)
                    except ListingStopped as exc:  # this statement's listing only...
                        stopped.append(str(exc))
                        if len(stopped) >= MAX_STOPPED_LISTINGS:  # ...unless it is all of them
                            raise DatasetError(f"{exc} (and on {len(stopped) - 1} more "
                                               "statements; the others were not read)"
                                               ) from None
                if stopped:
                    _incomplete(tx, stopped[0] + ("" if len(stopped) == 1 else
                                                  f" (and on {len(stopped) - 1} more "
                                                  "statements)"))
                tx.cursor = state.get("cursor")

            unusable_tx = Unusable("finance/transactions")
            tx.records = self._guard(tx, transactions(), unusable_tx)
            yield tx
        if "finance/statements" in wanted:
            se = DatasetExport("finance/statements", (), mode=mode)

            def with_summaries() -> Iterator[Record]:
                scan_statements()
                if problem:
                    raise DatasetError(problem[0])
                for st in statements:
                    summary = summaries.get(str(st.get("id")))
                    yield dict(st, statement_transactions=summary) if summary else st
                se.cursor = state.get("cursor")

            se.records = self._guard(se, with_summaries(), unusable_statements)
            yield se


def _items(data: dict[str, Any], key: str) -> list[Any]:
    """The list `key` of an answer as sent: its records, and whatever else it holds (counted
    by the caller as records without a usable id)."""
    items = data.get(key) or []
    if not isinstance(items, list):
        raise ApiError(f"TikTok Shop's answer has no list '{key}'; upgrade sellerbak")
    return items


def _list(data: dict[str, Any], key: str) -> list[Record]:
    return [i for i in _items(data, key) if isinstance(i, dict)]


def _incomplete(export: DatasetExport, problem: str) -> None:
    """Mark a dataset incomplete; a second reason is added to the first, on the same line."""
    export.complete = False
    export.problem = problem if export.problem is None else f"{export.problem}; {problem}"
