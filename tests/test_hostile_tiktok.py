"""Hostile TikTok Shop API answers: bodies of any shape, through real HTTP.

Two servers: a raw one in this file that answers with whatever bytes, status and headers a
property chose (not JSON, deeply nested JSON, envelopes with wrong types), and the conformance
server of tests/tiktok_server.py whose real pages are altered one member at a time (a page token
that is a list, a total_count that is a string, an order without an id...). The client and the
exporter must answer with records or a SourceError (a dataset may end incomplete), never with a
traceback or an endless loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sellerbak.backup.exporters.tiktok.client import RETRY_AFTER_CAP, RetryPolicy, TikTokClient
from sellerbak.backup.exporters.tiktok.tokens import (
    AuthClient,
    TokenManager,
    TokenSet,
    TokenStore,
)
from sellerbak.errors import SourceError
from sellerbak.records import encode_records, sort_records
from tests.hostile import (
    EXAMPLES,
    HOSTILE,
    deep_json,
    json_text,
    json_values,
    watchdog,
)
from tests.tiktok_server import FakeTikTokShop, make_source


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    with watchdog():
        yield


# ------------------------------------------------------------------ a raw server


class RawServer:
    """Answers every request with the next queued (status, headers, body), then with the
    last one again."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: without this, Nagle's algorithm and
                # delayed ACKs add 40 ms to every answer
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with server.lock:
                    status, headers, body = (server.queue.pop(0) if len(server.queue) > 1
                                             else server.queue[0])
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, *responses: tuple[int, dict[str, str], bytes]) -> None:
        with self.lock:
            self.queue = list(responses)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def raw_server() -> Iterator[RawServer]:
    server = RawServer()
    yield server
    server.close()


NOW = 1_750_000_000


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    import requests

    with requests.Session() as s:
        yield s


@pytest.fixture
def client(raw_server: RawServer, session: Any, tmp_path: Path) -> TikTokClient:
    """A real client whose token is valid for years (no refresh unless an answer asks); its
    state is new for every test, and `fresh_client` renews it for every example."""
    return fresh_client(raw_server, session, tmp_path)


def fresh_client(raw_server: RawServer, session: Any, state: Path) -> TikTokClient:
    store = TokenStore(state, "shop")
    store.save(TokenSet("access", NOW + 10**8, "refresh", NOW + 10**8))
    auth = AuthClient("shop", raw_server.url, "key", lambda: "secret", session, 5.0,
                      lambda: NOW)
    tokens = TokenManager("shop", store, auth, None, lambda: NOW)
    return TikTokClient("shop", raw_server.url, "key", lambda: "secret", tokens, session,
                        shop_cipher="CIPHER", requests_per_second=1000, timeout=5.0,
                        retry=RetryPolicy(attempts=3, initial=0.0, maximum=0.0, jitter=0.0),
                        clock=lambda: NOW)


@pytest.fixture(autouse=True)
def no_auth_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The auth host's retries sleep 1, 2 and 4 s: recorded here instead."""
    import time
    import types

    from sellerbak.backup.exporters.tiktok import tokens

    waits: list[float] = []
    monkeypatch.setattr(tokens, "time", types.SimpleNamespace(sleep=waits.append,
                                                              time=time.time))
    return waits


def _record_waits(c: TikTokClient) -> list[float]:
    """Retry waits are recorded instead of slept (a Retry-After may say minutes)."""
    waits: list[float] = []
    c._sleep = waits.append  # type: ignore[method-assign]  # noqa: SLF001
    return waits


STATUSES = st.sampled_from([200, 200, 200, 400, 401, 404, 429, 500, 503])
HEADER_VALUES = st.sampled_from(["1", "0", "-5", "1e400", "nan", "inf", "99999999999",
                                 "Wed, 21 Oct 2015 07:28:00 GMT", "Mon, 99 Foo 10000 99:99:99",
                                 "Thu, 01 Jan 1970 00:00:00 +9999", "", "x" * 300])
ENVELOPE_MESSAGES = st.sampled_from(["Success", "Invalid timestamp.", "access_token expired",
                                     "app_key", "x-tts-access-token", ""]) | json_values
BODIES = (
    st.builds(lambda code, data, msg: json_text({"code": code, "data": data, "message": msg}),
              st.sampled_from([0, 105002, 105005, 106001, 36009004, 36009002, 36009003,
                               36009009, 36009037, 1]) | json_values,
              json_values | st.dictionaries(st.sampled_from(
                  ["shops", "next_page_token", "total_count", "orders"]), json_values),
              ENVELOPE_MESSAGES).map(str.encode)
    | json_values.map(lambda v: json_text(v).encode())
    | st.binary(max_size=200)
)


@st.composite
def responses(draw: st.DrawFn) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json"}
    for name in ("Retry-After", "Date"):
        if draw(st.booleans()):
            headers[name] = draw(HEADER_VALUES)
    return draw(STATUSES), headers, draw(BODIES)


@HOSTILE
@given(st.lists(responses(), min_size=1, max_size=4))
def test_client_call_any_answer(raw_server: RawServer, session: Any, tmp_path: Path,
                                answers: list[tuple[int, dict[str, str], bytes]]) -> None:
    """Answers to the call itself and, when one says the token expired, to the refresh."""
    raw_server.answer(*answers)
    client = fresh_client(raw_server, session, Path(tempfile.mkdtemp(dir=tmp_path)))
    waits = _record_waits(client)
    try:
        data = client.call("GET", "/order/202309/orders/search", {"page_size": 1})
    except SourceError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(data, dict)
    assert all(math.isfinite(w) and 0 <= w <= RETRY_AFTER_CAP + 1 for w in waits)


@HOSTILE
@given(st.lists(json_values, min_size=1, max_size=5))
def test_client_pages_with_any_page_tokens(client: TikTokClient, raw_server: RawServer,
                                           tokens: list[Any]) -> None:
    """Pages whose next_page_token is anything: the walk ends (a repeated token included)."""
    answers = [(200, {}, json.dumps({"code": 0, "data": {"next_page_token": t, "orders": []}})
                .encode()) for t in tokens]
    answers.append((200, {}, b'{"code":0,"data":{"next_page_token":""}}'))
    raw_server.answer(*answers)
    try:
        pages = list(client.pages("GET", "/order/202309/orders/search"))
    except SourceError:
        return
    assert 1 <= len(pages) <= len(answers)


@pytest.mark.parametrize("body", [deep_json("list"), deep_json("object"),
                                  '{"code":0,"data":' + deep_json() + "}",
                                  '{"code":0,"data":{"x":' + "9" * 5000 + "}}",
                                  '{"code":' + "9" * 5000 + "}", '{"code":1e400}',
                                  '{"code":NaN}', '{"code":0,"data":{"next_page_token":[1]}}'],
                         ids=["list", "object", "data", "digits", "code-digits", "code-inf",
                              "code-nan", "token-list"])
def test_client_targeted_bodies(client: TikTokClient, raw_server: RawServer, body: str) -> None:
    raw_server.answer((200, {"Content-Type": "application/json"}, body.encode()))
    _record_waits(client)
    try:
        list(client.pages("GET", "/order/202309/orders/search"))
    except SourceError as exc:
        assert "\n" not in str(exc)


@HOSTILE
@given(st.sampled_from([200, 400, 401, 404]), BODIES)
def test_auth_host_any_answer(client: TikTokClient, raw_server: RawServer, status: int,
                              body: bytes) -> None:
    """The token calls (their retries on 5xx/429 sleep, so those statuses are left out)."""
    raw_server.answer((status, {}, body))
    try:
        tokens = client.tokens.auth.refresh("refresh")
    except SourceError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(tokens.access_token, str) and isinstance(tokens.refresh_token, str)
    assert isinstance(tokens.access_token_expire_in, int)
    assert isinstance(tokens.refresh_token_expire_in, int)
    assert all(isinstance(s, str) for s in tokens.granted_scopes)


@HOSTILE
@given(st.fixed_dictionaries({}, optional={
    k: json_values | st.sampled_from([1e308, float("inf"), float("nan"), 10**30, -1])
    for k in ("access_token", "access_token_expire_in", "refresh_token",
              "refresh_token_expire_in", "open_id", "seller_name", "granted_scopes")}))
def test_auth_token_fields(client: TikTokClient, raw_server: RawServer,
                           data: dict[str, Any]) -> None:
    raw_server.answer((200, {}, json.dumps({"code": 0, "data": data}).encode()))
    with contextlib.suppress(SourceError):
        client.tokens.auth.get_token("code")


def test_auth_host_deep_body(client: TikTokClient, raw_server: RawServer) -> None:
    raw_server.answer((200, {}, deep_json().encode()))
    with pytest.raises(SourceError):
        client.tokens.auth.refresh("refresh")


# ------------------------------------------------------------------ altered real pages

#: members of the real pages worth breaking, and where the exporter reads them
TARGETS = ["next_page_token", "total_count", "products", "orders", "statements",
           "transactions", "payments", "withdrawals", "shops", "id", "update_time",
           "create_time", "statement_time", "status", "payment_status", "user_id",
           "buyer_email", "code", "data", "cipher"]
DATASET_GROUPS = [("products",), ("orders", "customers"), ("customers",),
                  ("finance/statements", "finance/transactions"), ("finance/payments",),
                  ("finance/withdrawals",)]
EXTREMES = st.sampled_from([float("inf"), float("nan"), 1e308, 10**30, -(10**30), 2**63, -1,
                            0, True, "", "0", "a" * 1000, [], {}, [[]], {"id": {}}])


def _alter(node: Any, target: str, value: Any, nth: int) -> bool:
    """Replace the nth (mod count) value of member `target` anywhere in `node`."""
    found: list[tuple[dict[str, Any], str]] = []

    def walk(n: Any) -> None:
        if isinstance(n, dict):
            for k, v in n.items():
                if k == target:
                    found.append((n, k))
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(node)
    if not found:
        return False
    parent, key = found[nth % len(found)]
    parent[key] = value
    return True


@pytest.fixture(scope="module")
def shop() -> Iterator[FakeTikTokShop]:
    with FakeTikTokShop(orders=30, night=0) as server:
        yield server


@settings(HOSTILE, max_examples=max(10, EXAMPLES // 2))  # a whole export per example
@given(datasets=st.sampled_from(DATASET_GROUPS), call=st.integers(min_value=0, max_value=6),
       target=st.sampled_from(TARGETS), value=json_values | EXTREMES,
       nth=st.integers(min_value=0, max_value=50))
def test_exporter_with_one_altered_answer(shop: FakeTikTokShop, datasets: tuple[str, ...],
                                          call: int, target: str, value: Any,
                                          nth: int) -> None:
    """A real export in which one API answer has one member replaced: records the engine
    can store, or a SourceError; a dataset may end incomplete with a one-line reason."""
    real = FakeTikTokShop.handle
    seen = [0]

    def handle(method: str, raw_path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, Any, dict[str, str]]:
        status, payload, extra = real(shop, method, raw_path, headers, body)
        if not raw_path.startswith("/api/v2/token/"):
            seen[0] += 1
            if seen[0] - 1 == call and isinstance(payload, dict):
                payload = json.loads(json.dumps(payload))
                _alter(payload, target, value, nth)
        return status, payload, extra

    shop.handle = handle  # type: ignore[method-assign]
    state = Path(tempfile.mkdtemp(prefix="sellerbak-hostile-tts-"))
    try:
        source = make_source(shop, state, datasets=datasets,
                             since=int(shop.clock()) - 400 * 86400,
                             retry=RetryPolicy(2, 0.0, 0.0, 0.0))
        try:
            for export in source.export({}, True):
                lines = list(sort_records(encode_records(export.records, export.name),
                                          export.name))
                assert all(line.endswith(b"\n") for _key, line in lines)
                if not export.complete:
                    assert export.problem and "\n" not in export.problem
        except SourceError as exc:
            assert "\n" not in str(exc)
    finally:
        del shop.handle
        import shutil

        shutil.rmtree(state, ignore_errors=True)


# ------------------------------------------------------------------ the token state file

TOKEN_DOC = {"access_token": "access", "access_token_expire_in": NOW + 10**6,
             "refresh_token": "refresh", "refresh_token_expire_in": NOW + 10**7,
             "open_id": "7010736057180325637", "seller_name": "Demo shop",
             "seller_base_region": "US", "granted_scopes": ["seller.order.info"],
             "obtained_at": NOW}


@HOSTILE
@given(st.data())
def test_token_file_mutations(raw_server: RawServer, session: Any, tmp_path: Path,
                              data: st.DataObject) -> None:
    """A damaged token file: the source says so (or refreshes), it does not crash later."""
    from sellerbak.errors import SellerbakError
    from tests.hostile import mutate_json

    state = Path(tempfile.mkdtemp(dir=tmp_path))
    raw_server.answer((400, {}, b'{"code":36004004,"message":"invalid refresh_token"}'))
    client = fresh_client(raw_server, session, state)
    (state / "tiktok" / "shop.json").write_text(json_text(mutate_json(TOKEN_DOC, data)))
    client.tokens._tokens = None  # noqa: SLF001 - read the damaged file, not the fresh one
    try:
        token = client.tokens.access_token()
    except SellerbakError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(token, str)


def test_token_file_deeply_nested(tmp_path: Path) -> None:
    (tmp_path / "tiktok").mkdir()
    (tmp_path / "tiktok" / "shop.json").write_text(deep_json())
    with pytest.raises(SourceError, match="damaged"):
        TokenStore(tmp_path, "shop").load()


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip-bomb"])
def test_an_answer_past_the_size_limit_is_not_read_whole(
        client: TikTokClient, raw_server: RawServer, monkeypatch: pytest.MonkeyPatch,
        gzipped: bool) -> None:
    """An answer larger than any real one (or a small gzip body that inflates past it) is
    dropped once the limit is passed, not held in memory: the call fails as transient (one
    line), and the auth host's answer likewise."""
    import gzip
    import tracemalloc

    from sellerbak.backup.exporters.tiktok import bodies

    monkeypatch.setattr(bodies, "MAX_BODY_BYTES", 1 << 20)
    big = b'{"code":0,"data":{"x":"' + b"a" * (24 << 20) + b'"}}'
    headers = {"Content-Type": "application/json"}
    if gzipped:
        big = gzip.compress(big)
        assert len(big) < 1 << 20
        headers["Content-Encoding"] = "gzip"
    raw_server.answer((200, headers, big))
    _record_waits(client)
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match="went on past 1 MiB") as api_error:
            client.call("GET", "/order/202309/orders/search", {"page_size": 1})
        with pytest.raises(SourceError, match="more than 1 MiB") as auth_error:
            client.tokens.auth.refresh("refresh")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(api_error.value) + str(auth_error.value)
    assert peak < 8 << 20, peak
