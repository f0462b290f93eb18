"""TikTok Shop Open API request signing (v202309+), exactly as the platform documents it.

The gateway recomputes the signature from what it receives and rejects any difference with
106001, so the rules here are about bytes (see shared/research/tiktok-shop-api.md section 3):

* every query parameter except `sign` and `access_token`, with its *decoded* value, keys sorted
  by code point (ordinal: upper case before lower case), concatenated as `key + value`;
* the URL path in front (no host, no query);
* the raw request body bytes appended unless the media type is multipart/form-data -- the very
  bytes sent, never a re-serialisation;
* wrapped as `secret + string + secret`, HMAC-SHA256 keyed with the app secret, lower-case hex.

The query string that goes on the wire is built here too (`encode_query`), percent-encoding
every reserved character (a page token's `+` must travel as `%2B`, or the gateway decodes it as
a space and the signature no longer matches), so the signed values and the sent values cannot
drift apart.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import quote

#: never part of the signature (S1: the access token travels in a header and is not signed)
UNSIGNED_PARAMS = frozenset({"sign", "access_token"})


def string_to_sign(path: str, query: Iterable[tuple[str, str]], body: bytes = b"",
                   content_type: str = "application/json") -> bytes:
    """The bytes the HMAC covers (before wrapping in the secret). Query values are decoded."""
    pairs = sorted(((k, v) for k, v in query if k not in UNSIGNED_PARAMS),
                   key=lambda kv: kv[0])
    out = (path + "".join(k + v for k, v in pairs)).encode("utf-8")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if body and media_type != "multipart/form-data":
        out += body
    return out


def sign(app_secret: str, path: str, query: Iterable[tuple[str, str]], body: bytes = b"",
         content_type: str = "application/json") -> str:
    """The lower-case hex `sign` parameter of a request."""
    secret = app_secret.encode("utf-8")
    wrapped = secret + string_to_sign(path, query, body, content_type) + secret
    return hmac.new(secret, wrapped, hashlib.sha256).hexdigest()


def encode_query(params: Iterable[tuple[str, str]]) -> str:
    """`k=v&...` with everything but RFC 3986 unreserved characters percent-encoded.

    requests re-quotes a URL it is given but only *unquotes* unreserved characters (which this
    never encodes), so the string built here is the string sent.
    """
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
