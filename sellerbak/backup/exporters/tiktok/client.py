"""The signed TikTok Shop Open API client: one worker per shop, polite, and exact about bytes.

* HTTP goes through one `requests.Session` (connection reuse, (connect, read) timeouts).
* Every call carries `app_key`, a 10-digit `timestamp`, `sign`, the `x-tts-access-token` header
  and `content-type: application/json` (even on GET, spec 3.2); `shop_cipher` only on
  shop-scoped paths (/product, /order, /finance), never on /authorization or /seller.
* The query string is built once (`signing.encode_query`) from the same decoded pairs that are
  signed, and a JSON body is serialised once, compactly; those bytes are both signed and sent.
* A request-rate cap spaces calls (`requests_per_second`), because the gateway's quota is
  dynamic and unpublished and the spec's advice is to start low.
* Errors follow the spec's table (errors.py): backoff with jitter (tenacity) on 429/36009002,
  36009003, 36009007, 5xx and network errors, honouring `Retry-After`; one refresh and retry on
  an expired token; one clock resynchronisation on a timestamp rejection; no retry otherwise.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from sellerbak.backup.exporters.tiktok.bodies import BodyTooLarge, read_body
from sellerbak.backup.exporters.tiktok.errors import (
    ApiError,
    ClockSkewError,
    DatasetError,
    ExpiredTokenError,
    TransientError,
    classify,
    shown_path,
)
from sellerbak.backup.exporters.tiktok.paging import PageBound
from sellerbak.backup.exporters.tiktok.signing import encode_query, sign
from sellerbak.backup.exporters.tiktok.tokens import (
    TokenManager,
    quiet_http_debug_log,
    usable_token,
)

#: categories whose calls identify the shop by shop_cipher (spec 3.2)
SHOP_SCOPED = ("product", "order", "finance")
#: the longest Retry-After honoured as given
RETRY_AFTER_CAP = 300.0


@dataclass
class ClientStats:
    """What the client did, for progress display and the run summary."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    waited: float = 0.0
    refreshes: int = 0


@dataclass
class RetryPolicy:
    """Spec section 6: base 1 s, doubling, jitter 0-0.5 s, cap 60 s, at most 5 retries."""

    attempts: int = 6
    initial: float = 1.0
    maximum: float = 60.0
    jitter: float = 0.5


class RateLimiter:
    """Spaces calls at most `rate` per second (a token bucket of depth one)."""

    def __init__(self, rate: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.sleep = sleep
        self._next = 0.0

    def wait(self) -> float:
        now = time.monotonic()
        delay = self._next - now
        if delay > 0:
            self.sleep(delay)
            now += delay
        self._next = now + self.interval
        return max(delay, 0.0)


class TikTokClient:
    def __init__(self, source: str, api_url: str, app_key: str, app_secret: Callable[[], str],
                 tokens: TokenManager, session: requests.Session, *,
                 shop_cipher: str | None = None, requests_per_second: float = 1.0,
                 timeout: float = 60.0, retry: RetryPolicy | None = None,
                 clock: Callable[[], float] = time.time,
                 on_request: Callable[[ClientStats], None] | None = None) -> None:
        self.source = source
        self.api_url = api_url.rstrip("/")
        self.app_key = app_key
        self._secret_ref = app_secret
        self._secret: str | None = None
        self.tokens = tokens
        self.session = session
        self.shop_cipher = shop_cipher
        self.limiter = RateLimiter(requests_per_second)
        self.timeout = (min(10.0, timeout), timeout)
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.clock_offset = 0.0
        self.stats = ClientStats()
        self.on_request = on_request
        quiet_http_debug_log()

    @property
    def app_secret(self) -> str:
        if self._secret is None:
            self._secret = self._secret_ref()
        return self._secret

    # ------------------------------------------------------------------ one call
    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `data` object of a successful call; raises ApiError (errors.py) otherwise."""
        retrying = Retrying(retry=retry_if_exception_type(TransientError),
                            stop=stop_after_attempt(self.retry.attempts), wait=self._wait,
                            sleep=self._sleep, reraise=True)
        return retrying(self._call_once, method, path, params or {}, body)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            # the server said how long: wait that (bounded), not the backoff's guess
            return min(RETRY_AFTER_CAP,
                       max(0.0, exc.retry_after) + random.uniform(0, self.retry.jitter))
        backoff = self.retry.initial * 2 ** max(0, state.attempt_number - 1)
        return min(self.retry.maximum, backoff) + random.uniform(0, self.retry.jitter)

    def _sleep(self, seconds: float) -> None:
        self.stats.retries += 1
        self.stats.waited += seconds
        self._notify()
        time.sleep(seconds)

    def _call_once(self, method: str, path: str, params: dict[str, Any],
                   body: dict[str, Any] | None) -> dict[str, Any]:
        refreshed = resynced = False
        while True:
            try:
                return self._send(method, path, params, body)
            except ExpiredTokenError:
                if refreshed:
                    raise
                refreshed = True
                self.tokens.refresh(self._last_token)
                self.stats.refreshes += 1
            except ClockSkewError as exc:
                server = getattr(exc, "server_time", None)
                if resynced or server is None:
                    raise
                resynced = True
                self.clock_offset = server - self.clock()

    def _send(self, method: str, path: str, params: dict[str, Any],
              body: dict[str, Any] | None) -> dict[str, Any]:
        token = self.tokens.access_token()
        if not usable_token(token):  # checked when obtained and loaded; a header must never
            # carry CR/LF or fail to encode, whatever path a token took to get here
            raise ApiError(f"source {self.source}: the access token cannot be sent in a "
                           "request header: authorize again: 'sellerbak auth "
                           f"{self.source} --code AUTH_CODE'")
        self._last_token = token
        shown = shown_path(path)  # for error lines: no record id
        pairs = [("app_key", self.app_key),
                 ("timestamp", str(int(self.clock() + self.clock_offset)))]
        if path.strip("/").split("/", 1)[0] in SHOP_SCOPED:
            if not self.shop_cipher:
                raise ApiError(f"source {self.source}: no shop_cipher for {shown}")
            pairs.append(("shop_cipher", self.shop_cipher))
        for key, value in params.items():
            if value is None or value == "":
                continue  # never send empty parameters (spec 3.1 edge rules)
            pairs.append((key, _text(value)))
        try:
            data = orjson.dumps(body) if body is not None else b""
            signature = sign(self.app_secret, path, pairs, data, "application/json")
            url = f"{self.api_url}{path}?{encode_query(pairs + [('sign', signature)])}"
        except (UnicodeEncodeError, orjson.JSONEncodeError):
            # a value taken from an earlier answer (a page token, an id) that is not valid
            # Unicode (a lone surrogate): it cannot be signed or sent
            raise DatasetError(f"source {self.source}: TikTok Shop's answer held text that "
                               "cannot be sent back in a request; the next run tries "
                               "again") from None
        headers = {"content-type": "application/json", "x-tts-access-token": token}
        self.limiter.wait()  # our own pacing; `waited` counts only the server's throttling
        self.stats.requests += 1
        self._notify()
        try:
            resp = self.session.request(method, url, data=data or None, headers=headers,
                                        timeout=self.timeout, allow_redirects=False,
                                        stream=True)
            read_body(resp)
        except requests.RequestException as exc:
            # never str(exc): it quotes the URL
            raise TransientError(f"source {self.source}: TikTok Shop could not be reached for "
                                 f"{shown} ({type(exc).__name__}); the next run tries again"
                                 ) from None
        except BodyTooLarge as exc:
            raise TransientError(f"source {self.source}: TikTok Shop's answer to {shown} went "
                                 f"on past {exc.mib} MiB and was not read; the "
                                 "next run tries again") from None
        try:
            envelope = resp.json()
        except (ValueError, RecursionError):  # not JSON, or nested past the stack
            envelope = None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("code"), int):
            if resp.status_code == 200:
                raise TransientError(f"source {self.source}: TikTok Shop answered {shown} with "
                                     "something that is not an API response; the next run "
                                     "tries again", None, 200)
            raise self._error(resp, path, None, "")
        code = envelope["code"]
        if resp.status_code == 200 and code == 0:
            result = envelope.get("data")
            return result if isinstance(result, dict) else {}
        raise self._error(resp, path, code, str(envelope.get("message") or ""))

    def _error(self, resp: requests.Response, path: str, code: int | None,
               message: str) -> ApiError:
        err = classify(self.source, path, resp.status_code, code, message,
                       _retry_after(resp.headers.get("Retry-After")))
        if isinstance(err, TransientError) and err.throttled:
            self.stats.throttled += 1
            self._notify()
        if isinstance(err, ClockSkewError):
            err.server_time = _server_time(resp.headers.get("Date"))  # type: ignore[attr-defined]
        return err

    def _notify(self) -> None:
        if self.on_request is not None:
            self.on_request(self.stats)

    # ------------------------------------------------------------------ pagination
    def pages(self, method: str, path: str, params: dict[str, Any] | None = None,
              body: dict[str, Any] | None = None, what: str = "records"
              ) -> Iterator[dict[str, Any]]:
        """Every page of a list call (page_token in the query; filters kept identical), the
        pages bounded as paging.py says: past the bounds, ListingStopped (a DatasetError)."""
        params = dict(params or {})
        size = params.get("page_size")
        bound: PageBound | None = None
        token: str | None = None
        while True:
            data = self.call(method, path, dict(params, page_token=token), body)
            yield data
            items = next((v for v in data.values() if isinstance(v, list)), [])
            if bound is None:
                bound = PageBound(self.source, what, size if isinstance(size, int) else 100,
                                  data.get("total_count"))
            token = bound.follow(data.get("next_page_token") or None, len(items))
            if token is None:
                return


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)  # lists travel comma-joined (spec 3.1)
    return str(value)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _server_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
