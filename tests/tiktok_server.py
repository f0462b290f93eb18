"""A local TikTok Shop Open API conformance server (shared/research/tiktok-shop-api.md, section 7).

`FakeTikTokShop` is a threaded `http.server` on 127.0.0.1 (free port) that serves one simulated
shop -- the deterministic `DemoSource` shop, plus payments and withdrawals derived from its
statements -- and enforces what the spec says the gateway enforces:

* routing: only the documented paths, methods and current versions; anything else is 404/36009009
* signature: app_key, timestamp and sign required; HMAC recomputed over the *decoded* query
  minus sign/access_token, the raw body; 401/106001 on mismatch, 400/36009004 on a bad app_key
* timestamp window [now - 300 s, now + 30 s] against an injectable clock
* the `x-tts-access-token` header: missing/unknown 36009004, expired 105002 (HTTP 401 by
  default), missing scope 105005 (returned with HTTP 200, to exercise "HTTP 200 but code != 0")
* shop_cipher: required on /product, /order, /finance (106013), forbidden on /authorization and
  /seller (36009004 "Unexpected identifier"), unknown cipher 106013
* content-type application/json (violations are recorded in `content_type_violations`)
* page_size bounds, required sort_field/types, opaque base64 page tokens ("" at the end) bound
  to the filters they were issued for, ids <= 50
* filters with the documented inclusive/exclusive bounds
* a token bucket returning 429/36009002 with Retry-After, plus injected faults (429 bursts,
  5xx, 36009003, dropped connections) and a sandbox mode (36009037)
* the auth host's unsigned token endpoints with one-time auth codes, absolute-epoch expiries and
  (configurable) refresh-token rotation; `expire_access_tokens()` expires them mid-run.

Design choices where the spec leaves a gap (each marked [INF] there): product search with
status ALL leaves DELETED products out (so an exporter must ask for DELETED too); page tokens are
offsets (the doc sample `b2Zmc2V0PTAK` is base64 of "offset=0"), so records that leave a
filtered range mid-scan shift later pages, as they may on the real gateway.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sellerbak.backup.exporters.demo import DAY, T0, DemoSource
from sellerbak.backup.exporters.tiktok.signing import sign

APP_KEY = "29a39d"
APP_SECRET = "e59af819cc"
CIPHER = "GCP_XF90igAAAABh00qsWgtvOiGFNqyubMt3"
ALL_SCOPES = frozenset({"seller.order.info", "seller.product.basic", "seller.finance.info",
                        "seller.authorization.info", "seller.shop.info"})
MORE = " For more details: https://m.tiktok.shop/s/AIu6dbFhs2XW"
PRODUCT_STATUSES = {"ALL", "DRAFT", "PENDING", "FAILED", "ACTIVATE", "SELLER_DEACTIVATED",
                    "PLATFORM_DEACTIVATED", "FREEZE", "DELETED"}
SEARCH_KEYS = ("id", "title", "status", "skus", "sales_regions", "create_time", "update_time",
               "is_not_for_sale", "audit")
WITHDRAWAL_TYPES = {"WITHDRAW", "SETTLE", "TRANSFER", "REVERSE"}


class ApiFault(Exception):
    def __init__(self, http: int, code: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.http, self.code, self.message = http, code, message
        self.headers = headers or {}


def _bad(message: str) -> ApiFault:
    return ApiFault(400, 36009004, message + MORE)


@dataclass
class Logged:
    method: str
    path: str
    raw_query: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int = 0
    code: int = 0


@dataclass
class Shop:
    """The shop's records at one night, keyed by id, exactly as the API returns them."""

    now: int
    orders: dict[str, dict[str, Any]]
    products: dict[str, dict[str, Any]]
    statements: dict[str, dict[str, Any]]
    transactions: dict[str, list[dict[str, Any]]]  # statement id -> its transactions
    payments: dict[str, dict[str, Any]]
    withdrawals: dict[str, dict[str, Any]]


def build_shop(seed: int, orders: int, night: int) -> Shop:
    demo = DemoSource("fake", seed=seed, orders=orders, night=night)
    data: dict[str, list[dict[str, Any]]] = {}
    for export in demo.export({}, True):
        if export.name != "customers":
            data[export.name] = list(export.records)
    now = T0 + night * DAY
    statements = {s["id"]: s for s in data["finance/statements"]}
    transactions: dict[str, list[dict[str, Any]]] = {sid: [] for sid in statements}
    for tx in data["finance/transactions"]:
        rec = dict(tx)
        transactions[rec.pop("statement_id")].append(rec)
    payments: dict[str, dict[str, Any]] = {}
    for s in statements.values():
        day_end = s["statement_time"] + DAY
        if day_end + 3600 >= now:
            continue
        pid = demo._statement_ids((s["statement_time"] - T0) // DAY + 1)[1]  # noqa: SLF001
        money = {"currency": "USD", "value": s["settlement_amount"]}
        pay = {"id": pid, "create_time": day_end + 3600, "status": "PROCESSING",
               "amount": money, "settlement_amount": dict(money),
               "payment_amount_before_exchange": dict(money), "exchange_rate": "1.000000",
               "bank_account": "***********1234"}
        if s["payment_status"] == "PAID":
            pay.update(status="PAID", paid_time=s["payment_time"])
        payments[pid] = pay
    withdrawals: dict[str, dict[str, Any]] = {}
    for k in range(-28, night // 7 + 1):
        created = T0 + 7 * k * DAY + 5000
        if created >= now:
            continue
        wid = f"WD{seed:02d}{k + 1000:06d}X"
        withdrawals[wid] = {"id": wid, "type": "WITHDRAW", "amount": f"{900 + 37 * (k % 9)}.00",
                            "currency": "USD", "create_time": created,
                            "status": "PROCESSING" if created >= now - DAY else "SUCCESS"}
    return Shop(now, {o["id"]: o for o in data["orders"]},
                {p["id"]: p for p in data["products"]}, statements, transactions, payments,
                withdrawals)


@dataclass
class Grant:
    expires: int
    scopes: frozenset[str]


@dataclass
class Settings:
    expired_http_status: int = 401
    rotate_refresh_token: bool = True
    access_token_lifetime: int = 7 * DAY
    #: token bucket: None = unlimited; else (capacity, refill per second)
    rate: tuple[float, float] | None = None
    retry_after: str | None = "0"
    sandbox: bool = False
    deactivated: bool = False
    scopes: frozenset[str] = ALL_SCOPES
    #: a hostile auth host: every token call answers with this access token (None: a real one)
    hostile_access_token: str | None = None
    #: hostile pagination: path prefix -> "fresh" (every answer names a new page token, and a
    #: request with one gets the first page again: a listing without end) or "repeat" (every
    #: answer names the same token)
    hostile_pages: dict[str, str] = field(default_factory=dict)


@dataclass
class Counters:
    connections: int = 0
    requests: int = 0


class FakeTikTokShop:
    """The server. Use as a context manager; `url` is both the API and the auth base URL."""

    def __init__(self, seed: int = 1, orders: int = 3000, night: int = 0,
                 real_time: bool = False, settings: Settings | None = None) -> None:
        self.seed, self.order_count, self.night = seed, orders, night
        self.real_time = real_time
        self.settings = settings or Settings()
        self.shop = build_shop(seed, orders, night)
        self._mono0 = time.monotonic()
        self.clock_skew = 0.0
        #: seconds the shop's clock is ahead of the night's start (without changing its data)
        self.fast_forward = 0.0
        self.lock = threading.RLock()
        self.access: dict[str, Grant] = {}
        self.refresh: dict[str, Grant] = {}
        self.auth_codes: set[str] = set()
        self.log: list[Logged] = []
        self.counters = Counters()
        self.content_type_violations: list[str] = []
        self.faults: list[str] = []
        self.on_request: Callable[[FakeTikTokShop, Logged], None] | None = None
        #: changes a successful answer's data in place before it is sent: (path, data)
        self.rewrite: Callable[[str, dict[str, Any]], None] | None = None
        self._hostile_tokens = 0
        self._bucket: float | None = None
        self._bucket_at = time.monotonic()
        self.ciphers = {CIPHER: {"cipher": CIPHER, "code": "USLCGNVTEST", "id":
                                 "7000714532876273420", "name": "Demo shop", "region": "US",
                                 "seller_type": "LOCAL"}}
        handler = type("Handler", (_Handler,), {"shop": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ------------------------------------------------------------------ lifecycle and controls
    def __enter__(self) -> FakeTikTokShop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def clock(self) -> float:
        """The shop's 'now': a few seconds into night N of the simulation (or real time)."""
        if self.real_time:
            return time.time()
        return T0 + self.night * DAY + 1 + self.fast_forward + (time.monotonic() - self._mono0)

    def advance(self, nights: int = 1) -> None:
        with self.lock:
            self.night += nights
            self.shop = build_shop(self.seed, self.order_count, self.night)
            self._mono0 = time.monotonic()
            self.fast_forward = 0.0

    def issue_auth_code(self) -> str:
        code = "code-" + secrets.token_hex(8)
        self.auth_codes.add(code)
        return code

    def grant_tokens(self, scopes: frozenset[str] | None = None) -> dict[str, Any]:
        """Issue an access/refresh token pair directly (as /api/v2/token/get would)."""
        now = int(self.clock())
        access, refresh = "ROW_" + secrets.token_urlsafe(24), secrets.token_urlsafe(30)
        if self.settings.hostile_access_token is not None:
            access = self.settings.hostile_access_token
        s = scopes if scopes is not None else self.settings.scopes
        with self.lock:
            self.access[access] = Grant(now + self.settings.access_token_lifetime, s)
            self.refresh[refresh] = Grant(now + 100 * 365 * DAY, s)
        return {"access_token": access,
                "access_token_expire_in": now + self.settings.access_token_lifetime,
                "refresh_token": refresh, "refresh_token_expire_in": now + 100 * 365 * DAY,
                "open_id": "7010736057180325637", "seller_name": "Demo shop",
                "seller_base_region": "US", "user_type": 0, "granted_scopes": sorted(s)}

    def expire_access_tokens(self) -> None:
        with self.lock:
            for grant in self.access.values():
                grant.expires = 0

    def inject(self, *faults: str) -> None:
        """Fail the next requests, one fault each: '429', '500', '36009003', 'drop'."""
        with self.lock:
            self.faults.extend(faults)

    def calls(self, prefix: str = "/") -> list[Logged]:
        with self.lock:
            return [e for e in self.log if e.path.startswith(prefix) and e.code == 0]

    def reset_log(self) -> None:
        with self.lock:
            self.log.clear()

    # ------------------------------------------------------------------ the gateway
    def handle(self, method: str, raw_path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        parts = urlsplit(raw_path)
        path, raw_query = parts.path, parts.query
        query_pairs = parse_qsl(raw_query, keep_blank_values=True)
        entry = Logged(method, path, raw_query, dict(query_pairs), headers, body)
        with self.lock:
            self.log.append(entry)
            self.counters.requests += 1
            fault = self.faults.pop(0) if self.faults else None
        if self.on_request is not None:
            self.on_request(self, entry)
        try:
            if fault is not None:
                self._fault(fault)
            if path.startswith("/api/v2/token/"):
                data = self._token_endpoint(method, path, dict(query_pairs))
            else:
                data = self._api(method, path, query_pairs, headers, body)
        except ApiFault as f:
            entry.status, entry.code = f.http, f.code
            return f.http, {"code": f.code, "data": None, "message": f.message,
                            "request_id": _request_id(self.clock())}, f.headers
        data = self._hostile(path, data)
        entry.status = 200
        return 200, {"code": 0, "data": data, "message": "Success",
                     "request_id": _request_id(self.clock())}, {}

    def _hostile_mode(self, path: str) -> str | None:
        return next((mode for prefix, mode in self.settings.hostile_pages.items()
                     if path.startswith(prefix)), None)

    def _hostile(self, path: str, data: dict[str, Any]) -> dict[str, Any]:
        """Settings.hostile_pages and `rewrite`, applied to a successful answer."""
        mode = self._hostile_mode(path)
        if mode is not None and "next_page_token" in data:
            with self.lock:
                self._hostile_tokens += 1
                n = self._hostile_tokens
            data["next_page_token"] = "hostile-same" if mode == "repeat" else f"hostile-{n}"
        if self.rewrite is not None:
            self.rewrite(path, data)
        return data

    def _fault(self, fault: str) -> None:
        if fault == "429":
            raise ApiFault(429, 36009002, "Too many requests. You've made too many requests "
                           "in a short period of time." + MORE, self._retry_after())
        if fault == "500":
            raise ApiFault(500, 36009003, "Internal error. Please try again.")
        if fault == "36009003":
            raise ApiFault(200, 36009003, "Internal error. Please try again. If the issue "
                           "persists after multiple attempts, please contact platform support.")
        if fault == "drop":
            raise ConnectionAbortedError
        raise AssertionError(fault)

    def _retry_after(self) -> dict[str, str]:
        ra = self.settings.retry_after
        return {"Retry-After": ra} if ra is not None else {}

    def _rate_limit(self) -> None:
        if self.settings.sandbox:
            raise ApiFault(429, 36009037, "Too many requests. Current sandbox user made too "
                           "many requests in a short period of time." + MORE)
        if self.settings.rate is None:
            return
        capacity, refill = self.settings.rate
        with self.lock:
            now = time.monotonic()
            level = capacity if self._bucket is None else self._bucket
            self._bucket = min(capacity, level + (now - self._bucket_at) * refill)
            self._bucket_at = now
            if self._bucket < 1:
                raise ApiFault(429, 36009002, "Too many requests. You've made too many "
                               "requests in a short period of time." + MORE,
                               self._retry_after())
            self._bucket -= 1

    def _api(self, method: str, path: str, pairs: list[tuple[str, str]],
             headers: dict[str, str], body: bytes) -> dict[str, Any]:
        route = self._route(method, path)
        if route is None:
            raise ApiFault(404, 36009009, "Invalid path. The specified path does not match "
                           "any available endpoint." + MORE)
        handler, scope, shop_scoped, arg = route
        self._rate_limit()
        q = dict(pairs)
        if "app_key" not in q or "sign" not in q or "timestamp" not in q:
            raise _bad("Missing credentials. The request does not include a required "
                       "signature in the query.")
        if q["app_key"] != APP_KEY:
            raise _bad("Invalid credentials. Invalid 'app_key' query parameter.")
        ts = q["timestamp"]
        now = self.clock() + self.clock_skew
        if not (ts.isdigit() and len(ts) == 10):
            raise _bad("Invalid timestamp. The 'timestamp' query parameter is invalid.")
        if int(ts) < now - 300:
            raise _bad("Invalid timestamp. The value of the 'timestamp' query parameter must "
                       "not be earlier than 5 minutes before the current time.")
        if int(ts) > now + 30:
            raise _bad("Invalid timestamp. The value of the 'timestamp' query parameter must "
                       "not exceed the current time by more than 30 seconds.")
        ctype = headers.get("content-type", "")
        if sign(APP_SECRET, path, pairs, body, ctype) != q["sign"]:
            raise ApiFault(401, 106001, "Invalid credentials. The 'sign' query parameter is "
                           "invalid." + MORE)
        if ctype.split(";")[0].strip().lower() != "application/json":
            with self.lock:
                self.content_type_violations.append(f"{method} {path}: {ctype!r}")
        token = headers.get("x-tts-access-token")
        with self.lock:
            grant = self.access.get(token or "")
        if grant is None:
            raise _bad("Invalid credentials. The 'x-tts-access-token' header is invalid.")
        if grant.expires <= self.clock():
            raise ApiFault(self.settings.expired_http_status, 105002, "Expired credentials. "
                           "The 'x-tts-access-token' header has expired." + MORE)
        if self.settings.deactivated:
            raise ApiFault(401, 36009043, "Your shop has been deactivated or is closing. "
                           "Access denied." + MORE)
        if scope not in grant.scopes:
            raise ApiFault(200, 105005, "Access denied. The app is not authorized to access "
                           "the endpoint because the access scopes granted for the app or the "
                           "access token do not contain the required access scope for the "
                           "endpoint.")
        if "shop_id" in q:
            raise _bad("Invalid identifier. The 'shop_id' query parameter is invalid.")
        if shop_scoped:
            if "shop_cipher" not in q:
                raise ApiFault(400, 106013, "Missing identifier. The 'shop_cipher' query "
                               "parameter is required to identify the target shop." + MORE)
            if q["shop_cipher"] not in self.ciphers:
                raise ApiFault(400, 106013, "Invalid identifier. The 'shop_cipher' query "
                               "parameter is invalid." + MORE)
        elif "shop_cipher" in q:
            raise _bad("Unexpected identifier. The 'shop_cipher' query parameter is not "
                       "required for this request.")
        if len(pairs) != len(q):
            raise _bad("Invalid query. A query parameter is repeated.")
        if any(v == "" for v in q.values()):
            raise _bad("Invalid query. A query parameter is empty.")
        payload: dict[str, Any] = {}
        if method == "POST":
            try:
                payload = json.loads(body) if body else {}
            except ValueError:
                raise _bad("Invalid body. The request body is not valid JSON.") from None
            if not isinstance(payload, dict):
                raise _bad("Invalid body. The request body must be a JSON object.")
        with self.lock:
            shop = self.shop
        if self._hostile_mode(path) and q.get("page_token", "").startswith("hostile-"):
            q = {k: v for k, v in q.items() if k != "page_token"}  # the first page again
        return handler(shop, q, payload, arg)

    def _route(self, method: str, path: str) -> tuple[Callable, str, bool, str] | None:
        p = path.rstrip("/").split("/")
        fixed: dict[tuple[str, str], tuple[Callable, str, bool]] = {
            ("GET", "/authorization/202309/shops"): (self._shops, "seller.authorization.info",
                                                     False),
            ("GET", "/seller/202309/shops"): (self._shops, "seller.shop.info", False),
            ("POST", "/product/202502/products/search"): (self._product_search,
                                                          "seller.product.basic", True),
            ("POST", "/order/202309/orders/search"): (self._order_search, "seller.order.info",
                                                      True),
            ("GET", "/order/202309/orders"): (self._order_detail, "seller.order.info", True),
            ("GET", "/order/202507/orders"): (self._order_detail, "seller.order.info", True),
            ("GET", "/finance/202309/statements"): (self._statements, "seller.finance.info",
                                                    True),
            ("GET", "/finance/202605/payments"): (self._payments, "seller.finance.info", True),
            ("GET", "/finance/202309/withdrawals"): (self._withdrawals, "seller.finance.info",
                                                     True),
        }
        if (method, path) in fixed:
            h, scope, scoped = fixed[(method, path)]
            return h, scope, scoped, ""
        if method == "GET" and len(p) == 5 and p[1:4] == ["product", "202309", "products"]:
            return self._product_detail, "seller.product.basic", True, p[4]
        if (method == "GET" and len(p) == 6 and p[1:4] == ["finance", "202501", "statements"]
                and p[5] == "statement_transactions"):
            return self._statement_transactions, "seller.finance.info", True, p[4]
        return None

    # ------------------------------------------------------------------ pagination helpers
    @staticmethod
    def _page_size(q: dict[str, str], required: bool, default: int = 20) -> int:
        raw = q.get("page_size")
        if raw is None:
            if required:
                raise _bad("Invalid parameter. page_size is required.")
            return default
        if not raw.isdigit() or not 1 <= int(raw) <= 100:
            raise _bad("Invalid parameter. page_size must be between 1 and 100.")
        return int(raw)

    @staticmethod
    def _paginate(items: list[dict[str, Any]], q: dict[str, str], size: int,
                  filters: Any) -> tuple[list[dict[str, Any]], str]:
        fp = hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:12]
        offset = 0
        token = q.get("page_token")
        if token:
            try:
                text = base64.b64decode(token, validate=True).decode()
                kv = dict(x.split("=", 1) for x in text.strip().split(";"))
                offset = int(kv["offset"])
            except (ValueError, KeyError):
                raise _bad("Invalid parameter. page_token is invalid.") from None
            if kv.get("f") != fp:
                raise _bad("Invalid parameter. page_token does not belong to this query.")
        page = items[offset:offset + size]
        end = offset + size
        nxt = "" if end >= len(items) else \
            base64.b64encode(f"offset={end};f={fp}\n".encode()).decode()
        return page, nxt

    @staticmethod
    def _int(src: dict[str, Any], key: str) -> int | None:
        v = src.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).isdigit():
            raise _bad(f"Invalid parameter. {key} must be a Unix timestamp.")
        if len(str(int(v))) != 10:
            raise _bad(f"Invalid parameter. {key} must be a 10-digit Unix timestamp.")
        return int(v)

    def _time_filter(self, items: list[dict[str, Any]], src: dict[str, Any], field_: str,
                     upper: str) -> list[dict[str, Any]]:
        ge, hi = self._int(src, f"{field_}_ge"), self._int(src, f"{field_}_{upper}")
        out = []
        for r in items:
            t = r[field_]
            if ge is not None and t < ge:
                continue
            if hi is not None and (t > hi if upper == "le" else t >= hi):
                continue
            out.append(r)
        return out

    # ------------------------------------------------------------------ endpoints
    def _shops(self, shop: Shop, q: dict[str, str], body: dict[str, Any],
               arg: str) -> dict[str, Any]:
        return {"shops": list(self.ciphers.values())}

    def _order_search(self, shop: Shop, q: dict[str, str], body: dict[str, Any],
                      arg: str) -> dict[str, Any]:
        size = self._page_size(q, required=True)
        order = q.get("sort_order", "DESC")
        sort_field = q.get("sort_field", "create_time")
        if order not in ("ASC", "DESC") or sort_field not in ("create_time", "update_time"):
            raise _bad("Invalid parameter. sort_order or sort_field is invalid.")
        items = list(shop.orders.values())
        items = self._time_filter(items, body, "update_time", "lt")
        items = self._time_filter(items, body, "create_time", "lt")
        if body.get("order_status"):
            items = [o for o in items if o["status"] == body["order_status"]]
        if body.get("buyer_user_id"):
            items = [o for o in items if o["user_id"] == body["buyer_user_id"]]
        items.sort(key=lambda o: (o[sort_field], o["id"]), reverse=order == "DESC")
        page, nxt = self._paginate(items, q, size, [body, order, sort_field])
        return {"orders": page, "next_page_token": nxt, "total_count": len(items)}

    def _order_detail(self, shop: Shop, q: dict[str, str], body: dict[str, Any],
                      arg: str) -> dict[str, Any]:
        ids = [i for i in q.get("ids", "").split(",") if i]
        if not ids or len(ids) > 50:
            raise _bad("Invalid parameter. ids must hold 1 to 50 order ids.")
        return {"orders": [shop.orders[i] for i in ids if i in shop.orders]}

    def _product_search(self, shop: Shop, q: dict[str, str], body: dict[str, Any],
                        arg: str) -> dict[str, Any]:
        size = self._page_size(q, required=True)
        status = body.get("status", "ALL")
        if status not in PRODUCT_STATUSES:
            raise _bad("Invalid parameter. status is invalid.")
        items = list(shop.products.values())
        if status == "ALL":
            items = [p for p in items if p["status"] != "DELETED"]
        else:
            items = [p for p in items if p["status"] == status]
        items = self._time_filter(items, body, "update_time", "le")
        items = self._time_filter(items, body, "create_time", "le")
        items.sort(key=lambda p: (p["update_time"], p["id"]))
        page, nxt = self._paginate(items, q, size, body)
        return {"products": [{k: p[k] for k in SEARCH_KEYS if k in p} for p in page],
                "next_page_token": nxt, "total_count": len(items)}

    def _product_detail(self, shop: Shop, q: dict[str, str], body: dict[str, Any],
                        arg: str) -> dict[str, Any]:
        if arg not in shop.products:
            raise ApiFault(404, 12052048, "Product does not exist.")
        return shop.products[arg]

    def _finance_list(self, items: list[dict[str, Any]], q: dict[str, str],
                      time_field: str | None,
                      key: str, sort_field: str | None) -> tuple[list[dict[str, Any]], str]:
        size = self._page_size(q, required=False)
        if sort_field is not None and q.get("sort_field") != sort_field:
            raise _bad(f"Invalid parameter. sort_field is required and must be {sort_field}.")
        order = q.get("sort_order", "ASC")
        if order not in ("ASC", "DESC"):
            raise _bad("Invalid parameter. sort_order is invalid.")
        if time_field is not None:
            items = self._time_filter(items, q, time_field, "lt")
        items.sort(key=lambda r: (r[key], r["id"]), reverse=order == "DESC")
        filters = {k: v for k, v in q.items()
                   if k not in ("page_token", "sign", "timestamp", "page_size")}
        return self._paginate(items, q, size, filters)

    def _statements(self, shop: Shop, q: dict[str, str], body: dict[str, Any],
                    arg: str) -> dict[str, Any]:
        items = list(shop.statements.values())
        if q.get("payment_status"):
            items = [s for s in items if s["payment_status"] == q["payment_status"]]
        page, nxt = self._finance_list(items, q, "statement_time", "statement_time",
                                       "statement_time")
        return {"statements": page, "next_page_token": nxt}

    def _statement_transactions(self, shop: Shop, q: dict[str, str], body: dict[str, Any],
                                arg: str) -> dict[str, Any]:
        if arg not in shop.statements:
            raise _bad("Invalid parameter. statement_id is invalid.")
        txs = shop.transactions[arg]
        page, nxt = self._finance_list(list(txs), q, None, "order_create_time",
                                       "order_create_time")
        return dict(statement_summary(shop, arg), next_page_token=nxt, transactions=page)


    def _payments(self, shop: Shop, q: dict[str, str], body: dict[str, Any],
                  arg: str) -> dict[str, Any]:
        page, nxt = self._finance_list(list(shop.payments.values()), q, "create_time",
                                       "create_time", "create_time")
        return {"payments": page, "next_page_token": nxt}

    def _withdrawals(self, shop: Shop, q: dict[str, str], body: dict[str, Any],
                     arg: str) -> dict[str, Any]:
        types = q.get("types", "")
        if not types or not set(types.split(",")) <= WITHDRAWAL_TYPES:
            raise _bad("Invalid parameter. types is required.")
        items = [w for w in shop.withdrawals.values() if w["type"] in types.split(",")]
        page, nxt = self._finance_list(items, q, "create_time", "create_time", None)
        return {"withdrawals": page, "next_page_token": nxt, "total_count": len(items)}

    # ------------------------------------------------------------------ auth host
    def _token_endpoint(self, method: str, path: str, q: dict[str, str]) -> dict[str, Any]:
        def fail(message: str) -> ApiFault:
            return ApiFault(200, 100, message)

        if method != "GET":
            raise ApiFault(404, 36009009, "Invalid path.")
        if q.get("app_key") != APP_KEY or q.get("app_secret") != APP_SECRET:
            raise fail("invalid app_key or app_secret")
        if path == "/api/v2/token/get":
            if q.get("grant_type") != "authorized_code":
                raise fail("invalid grant_type")
            with self.lock:
                if q.get("auth_code") not in self.auth_codes:
                    raise fail("invalid or used auth_code")
                self.auth_codes.discard(q["auth_code"])
            return self.grant_tokens()
        if path == "/api/v2/token/refresh":
            if q.get("grant_type") != "refresh_token":
                raise fail("invalid grant_type")
            with self.lock:
                grant = self.refresh.get(q.get("refresh_token", ""))
                if grant is None or grant.expires <= self.clock():
                    raise fail("invalid refresh_token")
                if self.settings.rotate_refresh_token:
                    del self.refresh[q["refresh_token"]]
            return self.grant_tokens(grant.scopes)
        raise ApiFault(404, 36009009, "Invalid path.")


def _request_id(now: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(now)) + secrets.token_hex(9).upper()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    shop: FakeTikTokShop

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle's algorithm and delayed
        # ACKs add 40 ms to every response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.shop.lock:
            self.shop.counters.connections += 1

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(self.shop.clock() + self.shop.clock_skew, usegmt=True)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, payload, extra = self.shop.handle(self.command, self.path, headers, body)
        except ConnectionAbortedError:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if status >= 500:
            data = b"<html><body>502 Bad Gateway</body></html>"
            ctype = "text/html"
        else:
            data = json.dumps(payload, separators=(",", ":")).encode()
            ctype = "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


def statement_summary(shop: Shop, sid: str) -> dict[str, Any]:
    """The statement-level part of Get Transactions by Statement (202501)."""
    st, txs = shop.statements[sid], shop.transactions[sid]
    settle = sum(int(t["settlement_amount"].replace(".", "")) for t in txs)
    return {"id": sid, "create_time": st["statement_time"] + DAY,
            "status": st["payment_status"], "currency": st["currency"],
            "payable_amount": st["settlement_amount"], "total_reserve_amount": "0.00",
            "total_settlement_amount": f"{settle / 100:.2f}",
            "total_settlement_breakdown": {
                "total_revenue_amount": st["revenue_amount"],
                "total_shipping_cost_amount": st["shipping_cost_amount"],
                "total_fee_tax_amount": st["fee_amount"],
                "total_adjustment_amount": st["adjustment_amount"]},
            "total_count": len(txs)}


def expected_datasets(shop: Shop) -> dict[str, list[dict[str, Any]]]:
    """What a complete, exact backup of `shop` holds, dataset by dataset, sorted by id.

    Computed independently of the exporter: customers by the rule of the issue (one record per
    buyer user_id, contact fields of their newest order -- each field from the newest order
    that carries it --, order count, first and last order)."""
    def by_id(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(records, key=lambda r: r["id"])

    txs, statements = [], []
    for sid, st in shop.statements.items():
        for tx in shop.transactions[sid]:
            txs.append(dict(tx, statement_id=sid))
        statements.append(dict(st, statement_transactions=statement_summary(shop, sid)))
    buyers: dict[str, list[dict[str, Any]]] = {}
    for o in shop.orders.values():
        buyers.setdefault(o["user_id"], []).append(o)
    customers = []
    for uid, orders in buyers.items():
        orders.sort(key=lambda o: (o["create_time"], len(o["id"]), o["id"]))
        rec: dict[str, Any] = {"id": uid, "user_id": uid, "order_count": len(orders),
                               "first_order_id": orders[0]["id"],
                               "first_order_time": orders[0]["create_time"],
                               "last_order_id": orders[-1]["id"],
                               "last_order_time": orders[-1]["create_time"]}
        for f in ("buyer_email", "buyer_nickname", "cpf", "cpf_name", "recipient_address"):
            for o in reversed(orders):
                if o.get(f) not in (None, ""):
                    rec[f] = o[f]
                    break
        customers.append(rec)
    return {"products": by_id(list(shop.products.values())),
            "orders": by_id(list(shop.orders.values())),
            "customers": by_id(customers),
            "finance/statements": by_id(statements),
            "finance/transactions": by_id(txs),
            "finance/payments": by_id(list(shop.payments.values())),
            "finance/withdrawals": by_id(list(shop.withdrawals.values()))}


def make_source(server: FakeTikTokShop, state_dir: Any, name: str = "shop",
                tokens: bool = True, **options: Any) -> Any:
    """A TikTokSource for `server` with fast retries, its tokens already in `state_dir`."""
    import os
    from pathlib import Path

    from sellerbak.backup.exporters.tiktok import TikTokOptions, TikTokSource
    from sellerbak.backup.exporters.tiktok.client import RetryPolicy
    from sellerbak.backup.exporters.tiktok.tokens import TokenSet, TokenStore
    from sellerbak.credentials import SecretRef

    os.environ.setdefault("TTS_TEST_APP_SECRET", APP_SECRET)
    if tokens:
        TokenStore(Path(state_dir), name).save(
            TokenSet.from_api(server.grant_tokens(), int(server.clock())))
    opts = TikTokOptions(app_key=APP_KEY, state_dir=Path(state_dir),
                         app_secret=SecretRef("app_secret", "env", "TTS_TEST_APP_SECRET"),
                         api_url=server.url, auth_url=server.url, requests_per_second=1000,
                         retry=RetryPolicy(6, 0.01, 0.05, 0.01))
    for k, v in options.items():
        setattr(opts, k, v)
    return TikTokSource(name, opts, clock=server.clock)
