"""Turn the `repository.url` setting into a Store.

Accepted forms:
- `s3://bucket` or `s3://bucket/some/prefix` (endpoint, region and storage class come from their
  own settings; credentials only from the standard AWS chain, so a URL with `user:secret@` is
  refused rather than silently used);
- `file:///absolute/path` (also `file://localhost/absolute/path`, RFC 8089), taken literally
  (no percent-decoding), so any directory name survives;
- a plain path without a scheme, absolute or relative to the current directory, `~` expanded.

Here `file://./x` and `file://relative/x` are refused: in a URL the part after `file://` is a
host, so the string would have two meanings. (sellerbak.config resolves such forms relative to the
configuration file's directory before they get here, which is the base a user means there.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sellerbak.errors import ConfigError
from sellerbak.storage.base import Store
from sellerbak.storage.local import LocalStore

_KEY = "repository.url"
# S3 bucket naming rules (general purpose buckets): 3-63 chars, lowercase, digits, dot, hyphen.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def open_store(
    url: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    storage_class: str | None = None,
    object_lock: dict[str, Any] | None = None,
) -> Store:
    """The Store that `url` names; ConfigError naming `repository.url` if it is not usable.

    `object_lock` is `repository.object_lock` as sellerbak.config parses it ({mode, days}):
    S3 only: a local directory has no retention that its owner could not undo."""
    if object_lock and not (isinstance(url, str) and url.strip().lower().startswith("s3://")):
        raise ConfigError(
            "repository.object_lock works only with an s3:// repository (S3 Object Lock); "
            "remove it for a local repository"
        )
    return _open(url, endpoint_url, region, storage_class, object_lock)


def _open(
    url: str,
    endpoint_url: str | None,
    region: str | None,
    storage_class: str | None,
    object_lock: dict[str, Any] | None,
) -> Store:
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{_KEY} is empty; use file:///path, a directory path or s3://bucket")
    url = url.strip()
    scheme_match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme_match is None:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url) and not url.startswith(("./", "/")):
            # e.g. "s3:bucket" or "file:/x": looks like a URL with a mistake, not a path
            raise ConfigError(
                f"{_KEY} {url!r} is not a valid URL; use file:///path, a path or s3://bucket/prefix"
            )
        return _local(Path(url).expanduser())
    scheme = scheme_match.group(1).lower()
    if scheme == "file":
        return _file_url(url)
    if scheme == "s3":
        return _s3_url(url, endpoint_url, region, storage_class, object_lock)
    raise ConfigError(
        f"{_KEY} has unsupported scheme {scheme!r}; use file:///path or s3://bucket/prefix"
        + (" (set the endpoint with repository.endpoint_url)" if scheme.startswith("http") else "")
    )


def _local(path: Path) -> Store:
    return LocalStore(path.absolute())


def _file_url(url: str) -> Store:
    # Taken literally, not percent-decoded: config.py builds file:// URLs by plain concatenation,
    # so a directory named "a#1" or "50%" must survive as is.
    rest = url[len("file://") :]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    if not rest.startswith("/"):
        raise ConfigError(
            f"{_KEY} {url!r}: a file URL needs an absolute path (file:///abs/path); "
            "for a relative directory write the path without file://"
        )
    return _local(Path(rest))


def _s3_url(
    url: str,
    endpoint_url: str | None,
    region: str | None,
    storage_class: str | None,
    object_lock: dict[str, Any] | None = None,
) -> Store:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if "@" in bucket:
        # never echo the URL: the part before @ may be a secret
        raise ConfigError(
            f"{_KEY}: credentials in the S3 URL are not accepted; remove the 'user:secret@' part "
            "and use the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile "
            "or an instance role)"
        )
    if not bucket:
        raise ConfigError(f"{_KEY} {url!r} names no bucket; use s3://bucket/prefix")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"{_KEY} {url!r}: {bucket!r} is not a valid S3 bucket name "
            "(3-63 characters: lowercase letters, digits, '.' and '-')"
        )
    if "?" in prefix or "#" in prefix:
        raise ConfigError(f"{_KEY} {url!r}: an s3:// URL takes no ?query or #fragment")
    prefix = prefix.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise ConfigError(f"{_KEY} {url!r}: the prefix has empty, '.' or '..' parts")
    if endpoint_url is not None:
        ep = urlsplit(endpoint_url)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise ConfigError(
                "repository.endpoint_url must be an http:// or https:// URL with a host, "
                "e.g. https://s3.example.com or http://127.0.0.1:8333"
            )
    from sellerbak.storage.object_lock import ObjectLock
    from sellerbak.storage.s3 import S3Store  # boto3 is slow to import; only when needed

    try:
        lock = ObjectLock.from_config(object_lock)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"repository.object_lock: {exc}") from None

    try:
        return S3Store(
            bucket,
            prefix,
            endpoint_url=endpoint_url,
            region=region,
            storage_class=storage_class,
            object_lock=lock,
        )
    except ValueError as exc:  # botocore: InvalidRegionError, "Invalid endpoint: ..."
        from botocore.exceptions import InvalidRegionError

        if isinstance(exc, InvalidRegionError):
            raise ConfigError(f"repository.region {region!r} is not a valid region name") from None
        raise ConfigError(f"repository.endpoint_url: {exc}") from None
