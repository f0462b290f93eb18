"""The TikTok Shop Open API source (`type: tiktok`).

signing.py   request signatures and the query string that goes on the wire
errors.py    API errors classified by what the seller must do
tokens.py    the auth host's token calls and the 0600 token state file
client.py    signed calls: rate cap, retries with backoff, token refresh, pagination
customers.py the derived customers dataset and its order book
exporter.py  the datasets and their incremental cursors

`parse_options` validates a config entry (called from the source registry); `authorize` is the
library side of `sellerbak auth NAME --code CODE`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from sellerbak.backup.exporters.tiktok.exporter import (
    DATASETS,
    HISTORY_START,
    TikTokOptions,
    TikTokSource,
)
from sellerbak.config import Config, SourceConfig, shown_key
from sellerbak.credentials import parse_secret_ref
from sellerbak.errors import ConfigError, SellerbakError

__all__ = ["TikTokSource", "TikTokOptions", "parse_options", "authorize", "TIKTOK_KEYS"]

TIKTOK_KEYS = {"app_key", "app_secret", "refresh_token", "shop_cipher", "api_url", "auth_url",
               "datasets", "requests_per_second", "page_size", "overlap_seconds", "since",
               "window_records", "timeout_seconds"}


def parse_options(config: Config, src: SourceConfig) -> TikTokOptions:
    """A `type: tiktok` entry as typed options; every error names the file and the key."""
    path, key = config.path, src.key
    o = src.options

    def err(name: str, text: str) -> ConfigError:
        return ConfigError(f"{path}: {key}.{name}: {text}")

    for name in o:
        if name not in TIKTOK_KEYS:
            raise err(shown_key(name), f"unknown key for a tiktok source (allowed: "
                            f"{', '.join(sorted(TIKTOK_KEYS))})")
    app_key = o.get("app_key")
    if not isinstance(app_key, (str, int)) or isinstance(app_key, bool) or not str(app_key):
        raise err("app_key", "missing: the app key from Partner Center")
    if "app_secret" not in o:
        raise err("app_secret", "missing: use {env: NAME}, {file: PATH} or {command: CMD}")
    secret = parse_secret_ref(o["app_secret"], f"{key}.app_secret", str(path), src.base_dir)
    refresh = None
    if o.get("refresh_token") is not None:
        refresh = parse_secret_ref(o["refresh_token"], f"{key}.refresh_token", str(path),
                                   src.base_dir)
    cipher = o.get("shop_cipher")
    if cipher is not None and (not isinstance(cipher, str) or not cipher.strip()
                               or not cipher.replace("_", "").replace("-", "").isalnum()):
        raise err("shop_cipher", "must be the shop's cipher, e.g. GCP_XF90igAAAABh...")
    opts = TikTokOptions(app_key=str(app_key), app_secret=secret, state_dir=config.state_dir,
                         refresh_token=refresh, shop_cipher=cipher)
    for name in ("api_url", "auth_url"):
        if name in o:
            setattr(opts, name, _url(o[name], lambda t, n=name: err(n, t)))
    if "datasets" in o:
        opts.datasets = _datasets(o["datasets"], lambda t: err("datasets", t))
    opts.requests_per_second = _number(o, "requests_per_second", 1.0, 0.01, 100, err)
    opts.timeout_seconds = _number(o, "timeout_seconds", 60.0, 1, 600, err)
    opts.page_size = int(_number(o, "page_size", 50, 1, 100, err, integer=True))
    opts.overlap_seconds = int(_number(o, "overlap_seconds", 600, 0, 7 * 86400, err,
                                       integer=True))
    opts.window_records = int(_number(o, "window_records", 5000, 100, 1_000_000, err,
                                      integer=True))
    opts.since = _since(o.get("since"), lambda t: err("since", t))
    return opts


def _url(value: Any, err: Callable[[str], ConfigError]) -> str:
    if not isinstance(value, str):
        raise err("must be a URL")
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise err("must be an https:// URL without a query") from None
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query:
        raise err("must be an https:// URL without a query")
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback:
            raise err("must be https:// (TikTok Shop refuses plain http)")
    return value.rstrip("/")


def _datasets(value: Any, err: Callable[[str], ConfigError]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise err("must be a list, e.g. [products, orders, customers, finance]")
    out: list[str] = []
    for item in value:
        names = [d for d in DATASETS if d.startswith("finance/")] if item == "finance" \
            else [item]
        for name in names:
            if name not in DATASETS:
                raise err(f"unknown dataset {repr(item)[:60]} (known: products, orders, customers, "
                          f"finance, {', '.join(d for d in DATASETS if '/' in d)})")
            if name not in out:
                out.append(name)
    return tuple(d for d in DATASETS if d in out)


def _number(o: dict[str, Any], name: str, default: float, lo: float, hi: float,
            err: Callable[[str, str], ConfigError], integer: bool = False) -> float:
    value = o.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (integer and not isinstance(value, int)) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise err(name, f"must be {kind} from {lo:g} to {hi:g}")
    return value


def _since(value: Any, err: Callable[[str], ConfigError]) -> int:
    if value is None:
        return HISTORY_START
    if isinstance(value, dt.datetime):
        return int(value.replace(tzinfo=value.tzinfo or dt.UTC).timestamp())
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp())
    if isinstance(value, str):
        try:
            return _since(dt.date.fromisoformat(value), err)
        except ValueError:
            pass
    raise err("must be a date (YYYY-MM-DD): the earliest data to read on a full export")


def authorize(config: Config, src: SourceConfig, code: str,
              clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Exchange an authorization code for tokens, store them, and list the shops they cover.

    Returns facts to show the seller (never the tokens)."""
    from sellerbak.backup.exporters.tiktok.tokens import AuthClient, TokenStore

    if src.type != "tiktok":
        raise ConfigError(f"{config.path}: source {src.name} is a {src.type} source; "
                          "'sellerbak auth' is for tiktok sources")
    code = code.strip()
    if not code:
        raise ConfigError("--code is empty: pass the code TikTok Shop's redirect carried")
    opts = parse_options(config, src)
    source = TikTokSource(src.name, opts, clock=clock)
    auth = AuthClient(src.name, opts.auth_url, opts.app_key, opts.app_secret.resolve,
                      source.session, opts.timeout_seconds, clock)
    tokens = auth.get_token(code)
    store = TokenStore(opts.state_dir, src.name)
    with store.locked():
        store.save(tokens)
    out: dict[str, Any] = {
        "source": src.name, "seller_name": tokens.seller_name,
        "seller_base_region": tokens.seller_base_region, "scopes": tokens.granted_scopes,
        "access_token_expires": _iso(tokens.access_token_expire_in),
        "refresh_token_expires": _iso(tokens.refresh_token_expire_in),
        "token_file": str(store.path)}
    try:
        out["shops"] = [{k: s.get(k) for k in ("cipher", "name", "region", "seller_type")}
                        for s in source.shops()]
    except SellerbakError as exc:
        out["shops_error"] = str(exc)
    return out


def _iso(epoch: int) -> str:
    try:
        return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return str(epoch)
