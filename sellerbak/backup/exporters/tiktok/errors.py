"""TikTok Shop API errors, classified by what the seller (or sellerbak) must do about them.

The gateway reuses codes (36009004 covers a dozen validation errors) and sends errors both as
non-2xx and as HTTP 200 with `code != 0`, so classification looks at the HTTP status, the code
and, where the doc says to, the message keywords (spec section 6). Every message is one line
that ends with the action; none contains a token, a secret or customer data (the gateway's own
message is quoted only for unknown codes, shortened).
"""

from __future__ import annotations

import re

from sellerbak.errors import SourceError

#: the scope (Partner Center "package") each API category needs
SCOPES = {"product": "seller.product.basic", "order": "seller.order.info",
          "finance": "seller.finance.info", "authorization": "seller.authorization.info",
          "seller": "seller.shop.info"}
THROTTLED = {36009002}
TRANSIENT = {36009002, 36009003, 36009007}


class ApiError(SourceError):
    """A request failed for good: the whole source stops (nothing is stored, exit 1)."""

    def __init__(self, message: str, code: int | None = None, http: int | None = None) -> None:
        super().__init__(message)
        self.code, self.http = code, http


class DatasetError(ApiError):
    """Only this dataset cannot be read (missing scope, retired endpoint, retries exhausted):
    the other datasets go on and the snapshot is stored flagged incomplete (exit 3)."""


class TransientError(DatasetError):
    """Worth retrying with backoff (throttling, 5xx, timeouts, network errors)."""

    def __init__(self, message: str, code: int | None = None, http: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, code, http)
        self.retry_after = retry_after

    @property
    def throttled(self) -> bool:
        return self.http == 429 or self.code in THROTTLED


class ExpiredTokenError(ApiError):
    """105002: refresh the access token and retry once."""


class ClockSkewError(ApiError):
    """36009004 'Invalid timestamp': resynchronise with the server's Date header, retry once."""


#: what in a gateway message may be a record's id or a buyer's contact: runs of 6 or more
#: digits (order, product, statement ids; phone numbers) and words holding "@" (e-mail)
_RECORD_CONTENT = re.compile(r"\S*@\S*|\d{6,}")


def short(message: str, limit: int = 160) -> str:
    """The gateway's message on one line, without its 'For more details' link, and with what
    may be record content (ids, e-mail addresses) replaced by "<...>": the line reaches logs,
    the journal and webhooks."""
    text = " ".join(str(message).split())
    text = text.split(" For more details", 1)[0]
    text = _RECORD_CONTENT.sub("<...>", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_path(path: str) -> str:
    """An API path for an error line, a record's id in it (a product's, a statement's) shown
    as "{id}": /product/202309/products/{id}. Words and 6-digit versions are kept."""
    return "/".join(p if not p or re.fullmatch(r"[a-z_]+|\d{6}", p) else "{id}"
                    for p in path.split("/"))


def classify(source: str, path: str, http: int, code: int | None, message: str,
             retry_after: float | None = None) -> ApiError:
    """The error for a failed response; `code` is None when the body was not the envelope."""
    path = shown_path(path)
    category = path.strip("/").split("/", 1)[0]
    what = f"{category} data" if category else "the API"
    msg = message or ""
    low = msg.lower()
    where = f"source {source}: TikTok Shop"
    auth_again = f"authorize again: 'sellerbak auth {source} --code AUTH_CODE'"
    if code == 36009037:
        return ApiError(f"{where} says this test shop used up its hourly request quota "
                        "(36009037): run the backup again next hour", code, http)
    if http == 429 or code in TRANSIENT or http >= 500 or (code is None and http >= 500):
        label = {36009002: "throttled", 36009003: "internal error",
                 36009007: "gateway timeout"}.get(code or 0, f"HTTP {http}")
        return TransientError(f"{where} kept failing on {path} ({label}{_c(code)}); the next "
                              "run tries again", code, http, retry_after)
    if code == 105002 or (http == 401 and "expired" in low):
        return ExpiredTokenError(f"{where} says the access token expired (105002) even after "
                                 f"a refresh: {auth_again}", code, http)
    if code == 106001:
        return ApiError(f"{where} rejected the request signature (106001): check that "
                        "app_secret is the secret of app_key, and that this machine's clock "
                        "is right", code, http)
    if code == 105005:
        scope = SCOPES.get(category, "the needed")
        return DatasetError(f"{where} does not let the app read {what} (105005): enable the "
                            f"{scope} scope for the app in Partner Center, then re-authorize "
                            f"the app with it: 'sellerbak auth {source} --code AUTH_CODE'",
                            code, http)
    if code in (106013, 101000):
        return ApiError(f"{where} does not accept the shop for this authorization ({code}): "
                        f"set shop_cipher of source {source} to a shop the seller authorized "
                        "(listed by 'sellerbak auth'), or remove it to use the only shop",
                        code, http)
    if code == 36009043:
        return ApiError(f"{where} says the shop is deactivated or closing (36009043): nothing "
                        "can be read until the seller reactivates it in Seller Center", code,
                        http)
    if code == 36009044:
        return ApiError(f"{where} says the seller account is deactivated (36009044): nothing "
                        "can be read until the seller reactivates it", code, http)
    if code == 36009033:
        return ApiError(f"{where} refuses this machine's IP address (36009033): add it to the "
                        "app's IP allow list in Partner Center", code, http)
    if code in (36009009, 36009014) or (http == 404 and code is None):
        return DatasetError(f"{where} no longer serves {path} ({code or 'HTTP 404'}): "
                            "upgrade sellerbak", code, http)
    if code == 36009004:
        if "timestamp" in low:
            return ClockSkewError(f"{where} rejected the request time (36009004): set this "
                                  "machine's clock right (enable NTP time sync)", code, http)
        if "app_key" in low:
            return ApiError(f"{where} does not know the configured app_key (36009004): check "
                            f"app_key of source {source}", code, http)
        if "access_token" in low or "x-tts-access-token" in low:
            return ApiError(f"{where} rejected the access token (36009004): {auth_again}",
                            code, http)
        return DatasetError(f"{where} rejected a request for {what} (36009004: {short(msg)}): "
                            "upgrade sellerbak or report this", code, http)
    if code is None:
        return DatasetError(f"{where} answered {path} with HTTP {http} and no API response; "
                            "the next run tries again", code, http)
    return DatasetError(f"{where} refused a request for {what} ({code}: {short(msg)})", code,
                        http)


def _c(code: int | None) -> str:
    return f", code {code}" if code else ""
