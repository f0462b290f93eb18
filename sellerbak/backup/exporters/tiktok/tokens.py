"""OAuth tokens for one TikTok Shop source: the auth host's token calls and their state file.

Tokens live in `state_dir/tiktok/<source>.json`, mode 0600 in a 0700 directory, replaced
atomically (write a temporary file, fsync, rename) so a crash never leaves half a token file.
The refresh token from the config only bootstraps: once a refresh happened, the state file's
(possibly rotated) refresh token is the one that works. Refreshes take an exclusive lock on the
state file, so two runs of the same source never spend one refresh token twice.

Nothing here logs or prints a token: error messages name the source and the action, and the
HTTP library's own debug log (which prints request URLs, and the token calls carry app_secret
and the refresh token in the query) is held at INFO.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from sellerbak.backup.exporters.tiktok.bodies import BodyTooLarge, read_body
from sellerbak.backup.exporters.tiktok.errors import ApiError, TransientError, short
from sellerbak.credentials import SecretRef
from sellerbak.errors import ConfigError, SourceError
from sellerbak.localfiles import disk_error, private_dirs

log = logging.getLogger(__name__)
#: refresh this long before the access token expires (it lasts about 7 days)
REFRESH_MARGIN = 3600
#: TikTok's tokens are about 100 characters; a longer one is not a token
MAX_TOKEN_LENGTH = 4096
#: what a token may consist of: visible ASCII, nothing that could end or split a header line
_TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7f))


def usable_token(token: str) -> bool:
    """True if `token` can go into the `x-tts-access-token` header and the query unchanged.

    The auth host's answer is untrusted: a token with a character outside Latin-1 makes
    http.client fail with UnicodeEncodeError, one with CR/LF or another control character would
    split the header (requests refuses it as InvalidHeader) and a huge one bloats every
    request. Real tokens are short visible ASCII, so only that is accepted."""
    return 0 < len(token) <= MAX_TOKEN_LENGTH and all(c in _TOKEN_CHARS for c in token)


def quiet_http_debug_log() -> None:
    """urllib3 logs every request line at DEBUG, query included; ours carry secrets."""
    logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)


@dataclass
class TokenSet:
    access_token: str
    access_token_expire_in: int
    refresh_token: str
    refresh_token_expire_in: int
    open_id: str = ""
    seller_name: str = ""
    seller_base_region: str = ""
    granted_scopes: list[str] = field(default_factory=list)
    obtained_at: int = 0

    @classmethod
    def from_api(cls, data: Any, now: int) -> TokenSet:
        try:
            tokens = cls(access_token=str(data["access_token"]),
                         access_token_expire_in=int(data["access_token_expire_in"]),
                         refresh_token=str(data["refresh_token"]),
                         refresh_token_expire_in=int(data["refresh_token_expire_in"]),
                         open_id=str(data.get("open_id") or ""),
                         seller_name=str(data.get("seller_name") or ""),
                         seller_base_region=str(data.get("seller_base_region") or ""),
                         granted_scopes=[str(s) for s in data.get("granted_scopes") or []],
                         obtained_at=now)
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: int(1e400)
            raise SourceError("TikTok Shop's token response lacks the tokens; try again "
                              "later") from None
        if not (usable_token(tokens.access_token) and usable_token(tokens.refresh_token)):
            raise SourceError("TikTok Shop's auth host answered with a token that cannot be "
                              "used (not a short string of visible ASCII); try again later")
        return tokens


def _check_types(tokens: TokenSet) -> None:
    """A token file edited or damaged on disk: every member must have its type, or the first
    comparison with the clock would fail far from here."""
    for name, kind in (("access_token", str), ("refresh_token", str), ("open_id", str),
                       ("seller_name", str), ("seller_base_region", str),
                       ("access_token_expire_in", int), ("refresh_token_expire_in", int),
                       ("obtained_at", int), ("granted_scopes", list)):
        value = getattr(tokens, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(name)
    if not (usable_token(tokens.access_token) and usable_token(tokens.refresh_token)):
        raise ValueError("token")


class TokenStore:
    """The state file of one source."""

    def __init__(self, state_dir: Path, source: str) -> None:
        self.dir = Path(state_dir) / "tiktok"
        self.path = self.dir / f"{source}.json"
        self.source = source

    def load(self) -> TokenSet | None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            tokens = TokenSet(**raw)
            _check_types(tokens)
            return tokens
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, RecursionError):
            raise SourceError(f"source {self.source}: the token file {self.path} is damaged: "
                              f"authorize again: 'sellerbak auth {self.source} --code "
                              "AUTH_CODE'") from None

    def save(self, tokens: TokenSet) -> None:
        try:
            private_dirs(self.dir)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.dir)
        except OSError as exc:
            raise disk_error(f"the tokens of source {self.source} ({self.path})", exc) from None
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(asdict(tokens), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):  # a full disk: one line, the old file still in place
                raise disk_error(f"the tokens of source {self.source} ({self.path})",
                                 exc) from None
            raise
        with contextlib.suppress(OSError):
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        private_dirs(self.dir)
        fd = os.open(self.dir / f".{self.path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class AuthClient:
    """The auth host's two unsigned GET calls (spec section 2)."""

    def __init__(self, source: str, auth_url: str, app_key: str, app_secret: Callable[[], str],
                 session: requests.Session, timeout: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.source, self.auth_url = source, auth_url.rstrip("/")
        self.app_key, self.app_secret = app_key, app_secret
        self.session, self.timeout, self.clock = session, timeout, clock
        quiet_http_debug_log()

    def get_token(self, auth_code: str) -> TokenSet:
        return self._call("/api/v2/token/get", {"auth_code": auth_code,
                                                "grant_type": "authorized_code"})

    def refresh(self, refresh_token: str) -> TokenSet:
        return self._call("/api/v2/token/refresh", {"refresh_token": refresh_token,
                                                    "grant_type": "refresh_token"})

    def _call(self, path: str, params: dict[str, str]) -> TokenSet:
        query = {"app_key": self.app_key, "app_secret": self.app_secret(), **params}
        what = "exchange the authorization code" if "auth_code" in params else \
            "refresh the access token"
        last: Exception | None = None
        for attempt in range(4):
            if attempt:
                time.sleep(min(8.0, 0.5 * 2 ** attempt))
            try:
                resp = self.session.get(self.auth_url + path, params=query,
                                        headers={"content-type": "application/json"},
                                        timeout=self.timeout, stream=True)
                read_body(resp)
            except BodyTooLarge as exc:
                last = TransientError(f"source {self.source}: TikTok Shop's auth host answered "
                                      f"with more than {exc.mib} MiB to {what}; "
                                      "try again later")
                continue
            except requests.RequestException as exc:
                # never str(exc): it quotes the URL, secret and refresh token included
                last = TransientError(f"source {self.source}: cannot reach TikTok Shop's auth "
                                      f"host to {what} ({type(exc).__name__}); check the "
                                      "network and try again")
                continue
            if resp.status_code >= 500 or resp.status_code == 429:
                last = TransientError(f"source {self.source}: TikTok Shop's auth host failed "
                                      f"(HTTP {resp.status_code}) to {what}; try again later")
                continue
            try:
                body = resp.json()
            except (ValueError, RecursionError):  # not JSON, or nested past the stack
                body = None
            if not isinstance(body, dict) or body.get("code") != 0 or \
                    not isinstance(body.get("data"), dict):
                code = body.get("code") if isinstance(body, dict) else f"HTTP {resp.status_code}"
                message = short(body.get("message", "")) if isinstance(body, dict) else ""
                action = ("get a new authorization code from the app's authorization link and "
                          f"run 'sellerbak auth {self.source} --code AUTH_CODE'")
                if "auth_code" in params:
                    raise ApiError(f"source {self.source}: TikTok Shop refused the "
                                   f"authorization code ({code}: {message}): {action}")
                raise ApiError(f"source {self.source}: TikTok Shop refused to refresh the "
                               f"access token ({code}: {message}): authorize again: {action}")
            return TokenSet.from_api(body["data"], int(self.clock()))
        assert last is not None
        raise last


class TokenManager:
    """Hands out a valid access token: from memory, the state file, or a refresh."""

    def __init__(self, source: str, store: TokenStore, auth: AuthClient,
                 bootstrap: SecretRef | None, clock: Callable[[], float] = time.time,
                 margin: int = REFRESH_MARGIN) -> None:
        self.source, self.store, self.auth = source, store, auth
        self.bootstrap, self.clock, self.margin = bootstrap, clock, margin
        self._tokens: TokenSet | None = None
        self.refreshes = 0

    def access_token(self) -> str:
        tokens = self._tokens or self._load()
        if tokens.access_token_expire_in - self.margin <= self.clock():
            tokens = self.refresh(tokens.access_token)
        return tokens.access_token

    def _load(self) -> TokenSet:
        tokens = self.store.load()
        if tokens is None:
            if self.bootstrap is None:
                raise ConfigError(f"source {self.source} is not authorized yet: open the app's "
                                  "authorization link as the seller, then run 'sellerbak auth "
                                  f"{self.source} --code AUTH_CODE' (or set refresh_token)")
            with self.store.locked():
                tokens = self.store.load()
                if tokens is None:
                    tokens = self.auth.refresh(self.bootstrap.resolve())
                    self.refreshes += 1
                    self.store.save(tokens)
        self._tokens = tokens
        return tokens

    def refresh(self, stale: str | None = None) -> TokenSet:
        """A fresh access token. `stale` is the token that failed or is about to expire: if
        another process already replaced it, its result is used instead of refreshing again."""
        with self.store.locked():
            tokens = self.store.load() or self._tokens
            if tokens is None:
                self._tokens = None
                return self._load()
            now = self.clock()
            if tokens.access_token != stale and \
                    tokens.access_token_expire_in - self.margin > now:
                self._tokens = tokens
                return tokens
            if tokens.refresh_token_expire_in and tokens.refresh_token_expire_in <= now:
                raise ApiError(f"source {self.source}: the refresh token expired: authorize "
                               f"again: 'sellerbak auth {self.source} --code AUTH_CODE'")
            fresh = self.auth.refresh(tokens.refresh_token)
            self.refreshes += 1
            self.store.save(fresh)
            log.info("source %s: access token refreshed", self.source)
            self._tokens = fresh
            return fresh
