"""`s3://bucket/prefix` backend: objects in any S3-compatible service (AWS, SeaweedFS, MinIO...).

Design points, each for a reason:

- Credentials come only from boto3's standard chain (environment, shared profile, instance or
  container role); they never pass through our configuration, so they never end up in YAML, logs
  or error messages.
- Path-style addressing, because S3-compatible servers on a bare host:port have no per-bucket DNS.
- Retries are ours (tenacity), not botocore's: botocore makes a single attempt, so the retry
  policy (what is transient, how long to keep trying) is in one place and an operator sees one
  message after the last attempt. Throttling, 5xx, timeouts and broken connections are retried;
  authentication and other 4xx errors are not, since retrying a wrong key only delays the error
  and can trigger lock-outs.
- The backoff is exponential with "equal jitter" (half the step fixed, half random), capped per
  wait, and the retries of one operation stop after `retry_attempts` or once `retry_seconds` have
  passed, whichever comes first. Full jitter would spread a crowd of clients better, but a backup
  is one client, and what it needs is a known minimum ride-through: with the defaults any outage
  shorter than about 50 s (a storage server restarting, a burst of 503 SlowDown) is survived,
  and a dead endpoint still fails within a few minutes instead of hanging a nightly job.
- Every request has a connect timeout (also the limit on a body send that makes no progress)
  and a read timeout, so a connection that goes silent (a stalled proxy, a server restarting)
  ends in a timeout and a retry, never in a hang. Defaults 10 s and 60 s (botocore's: a
  CompleteMultipartUpload may legitimately think for tens of seconds); the environment variables
  in `ENV_SETTINGS` change them and the retry budget (docs/FAILURES.md).
- `put` never overwrites: every write this client sends carries `If-None-Match: *`, including the
  CompleteMultipartUpload of large objects (see `_create_only`), so the check is done atomically by
  the server and two writers racing for one name cannot both win.

Retried writes and the "unknown outcome" problem: if a put attempt fails after the request may
have reached the server (timeout, dropped connection, 5xx), the object may in fact have been
stored, and the retry then gets 412 Precondition Failed for our own write. In that case only, we
HEAD the object and treat "same size and same ETag as our bytes would produce" (MD5 for a single
PUT, MD5-of-part-MD5s for multipart) as success. Repository objects are content-addressed or carry
unique ids, so identical bytes under the same name are the same object; nothing was overwritten.
A 412 on the *first* attempt is always ObjectExistsError, even for identical bytes, because the
caller may be using put as a create-only lock. If the service computes ETags differently (e.g.
SSE-KMS on AWS) the comparison fails and we report ObjectExistsError, the safe side.

Multipart leftovers: boto3's transfer manager aborts a failed multipart upload itself, but with a
single request over the same faulty network; an upload nobody completes or aborts keeps its parts
(and the storage bill) forever on services without a lifecycle rule. So after a multipart put that
needed more than one attempt we list the uploads still open for that key and abort them. That is
safe because multipart objects are packs, whose names are random: nobody else writes that key.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.exceptions as bce
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer.utils import ChunksizeAdjuster
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from sellerbak.errors import (
    ConfigError,
    ObjectExistsError,
    ObjectNotFoundError,
    SellerbakError,
    StorageError,
)
from sellerbak.storage.base import ObjectInfo, Store, check_size
from sellerbak.storage.object_lock import ObjectLock, ObjectLockSupport

log = logging.getLogger(__name__)

T = TypeVar("T")

#: objects larger than this go up in parts via boto3's transfer manager
MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNKSIZE = 8 * 1024 * 1024

#: S3Store argument -> (environment variable, default, smallest value). The variable is read when
#: the argument is not given, so an operator (or a test) can tune a deployment without a config
#: change; an int default means a whole number.
ENV_SETTINGS: dict[str, tuple[str, float, float]] = {
    "connect_timeout": ("SELLERBAK_S3_CONNECT_TIMEOUT", 10.0, 0.1),
    "read_timeout": ("SELLERBAK_S3_READ_TIMEOUT", 60.0, 0.1),
    "retry_attempts": ("SELLERBAK_S3_RETRY_ATTEMPTS", 12, 1),
    "retry_seconds": ("SELLERBAK_S3_RETRY_SECONDS", 300.0, 0.0),
    "retry_max_wait": ("SELLERBAK_S3_RETRY_MAX_WAIT", 20.0, 0.01),
}

_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "ProvisionedThroughputExceededException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "PriorRequestNotComplete",
        # AWS: a concurrent conditional write to the same key; the documented answer is to retry
        "ConditionalRequestConflict",
    }
)
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidSecurity",
        "AuthorizationHeaderMalformed",
        "AccountProblem",
        "403",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _error_code(exc: bce.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: bce.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: throttling, 5xx, timeouts, broken connections."""
    if isinstance(exc, bce.ClientError):
        code = _error_code(exc)
        if code in _AUTH_CODES or code in _NOT_FOUND_CODES or code == "PreconditionFailed":
            return False
        status = _http_status(exc)
        return code in _THROTTLE_CODES or status >= 500 or status in (408, 429)
    if isinstance(exc, bce.SSLError):
        return False  # certificate problems do not heal by themselves
    return isinstance(
        exc,
        (
            bce.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, proxy errors
            bce.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
            bce.IncompleteReadError,
            bce.ChecksumError,
            urllib3.exceptions.HTTPError,  # ProtocolError etc. that escaped botocore's wrapping
            ConnectionError,
            TimeoutError,
        ),
    )


def _connection_reason(exc: BaseException) -> str:
    # botocore keeps the underlying urllib3 error (which says *why*) in kwargs["error"]
    inner = getattr(exc, "kwargs", {}).get("error")
    text = f"{exc} {inner or ''}".lower()
    if isinstance(exc, bce.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(exc, bce.ReadTimeoutError):
        return "no response before the read timeout"
    if isinstance(exc, bce.ConnectionClosedError):
        return "connection closed by the server"
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "host name does not resolve"
    if "no route to host" in text or "network is unreachable" in text:
        return "no route to host"
    if isinstance(exc, bce.EndpointConnectionError):
        return "connection failed"
    return type(exc).__name__


def _safe_url(url: str) -> str:
    """The endpoint without any user:password part, for messages."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)


def _md5_etag(data: bytes | memoryview) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _multipart_etag(data: bytes | memoryview, chunksize: int) -> str:
    digests = b"".join(
        hashlib.md5(data[i : i + chunksize], usedforsecurity=False).digest()
        for i in range(0, len(data), chunksize)
    )
    parts = -(-len(data) // chunksize)
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{parts}"


def _setting(name: str, given: float | None) -> float:
    """An S3Store setting: the argument if given, else its environment variable, else the
    default. A bad value is a configuration error naming the variable."""
    if given is not None:
        return given
    var, default, least = ENV_SETTINGS[name]
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if isinstance(default, int) else float(raw)
    except ValueError:
        value = None
    if value is None or not least <= value < 1e9:
        kind = "a whole number" if isinstance(default, int) else "a number of seconds"
        raise ConfigError(f"environment variable {var}: must be {kind} >= {least:g}, "
                          f"not {raw[:20]!r}")
    return value


def _create_only(params: dict[str, Any], **_: Any) -> None:
    """botocore hook: make every object write of this client conditional.

    boto3's transfer manager (s3transfer 0.17) does not let callers pass IfNoneMatch
    (boto/boto3#4366, boto/s3transfer#371), but botocore's CompleteMultipartUpload accepts it and
    SeaweedFS and AWS honour it, so we add it as the request parameters are built.
    """
    params.setdefault("IfNoneMatch", "*")


class S3Store(ObjectLockSupport, Store):
    """A Store on an S3 bucket under a key prefix; see the module docstring for the guarantees."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        storage_class: str | None = None,
        max_pool_connections: int = 16,
        *,
        retry_attempts: int | None = None,
        retry_min_wait: float = 0.2,
        retry_max_wait: float | None = None,
        retry_seconds: float | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        object_lock: ObjectLock | None = None,
    ) -> None:
        if not bucket:
            raise StorageError("S3 bucket name is empty")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._base = f"{self.prefix}/" if self.prefix else ""
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.storage_class = storage_class
        #: retention for new objects (S3 Object Lock), see sellerbak.storage.object_lock
        self.object_lock = object_lock
        self.retry_attempts = max(1, int(_setting("retry_attempts", retry_attempts)))
        self.retry_min_wait = retry_min_wait
        self.retry_max_wait = _setting("retry_max_wait", retry_max_wait)
        self.retry_seconds = _setting("retry_seconds", retry_seconds)
        self.connect_timeout = _setting("connect_timeout", connect_timeout)
        self.read_timeout = _setting("read_timeout", read_timeout)

        # A session of our own: boto3's default session is not thread-safe to create clients from.
        session = boto3.session.Session(region_name=region)
        #: the botocore client; public so callers/tests can register event hooks on it
        self.client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                # one attempt per call: botocore's "max_attempts" counts *retries*, so it would
                # still retry once; total_max_attempts=1 leaves all retrying to tenacity
                retries={"mode": "standard", "total_max_attempts": 1},
                max_pool_connections=max_pool_connections,
            ),
        )
        events = self.client.meta.events
        events.register("before-parameter-build.s3.PutObject", _create_only)
        events.register("before-parameter-build.s3.CompleteMultipartUpload", _create_only)
        self.endpoint = _safe_url(self.client.meta.endpoint_url)
        self._transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_concurrency=max(1, min(8, max_pool_connections)),
            use_threads=True,
        )

    # -- Store API ------------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        payload = bytes(data)
        extra: dict[str, Any] = {}
        if self.storage_class:
            extra["StorageClass"] = self.storage_class
        extra.update(self.lock_put_args(name))
        multipart = len(payload) > MULTIPART_THRESHOLD
        state = {"failed_attempt": False}

        def attempt() -> None:
            try:
                if multipart:
                    self.client.upload_fileobj(
                        io.BytesIO(payload),
                        self.bucket,
                        key,
                        ExtraArgs=extra or None,
                        Config=self._transfer_config,
                    )
                else:
                    self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=payload, IfNoneMatch="*", **extra
                    )
            except bce.ClientError as exc:
                if _error_code(exc) == "PreconditionFailed" or _http_status(exc) == 412:
                    if state["failed_attempt"] and self._holds(key, payload, multipart):
                        log.info("put %s: an earlier attempt had stored it; accepting", name)
                        return
                    raise ObjectExistsError(
                        f"object {name} already exists in {self.location}; not overwritten"
                    ) from None
                state["failed_attempt"] = True
                self.lock_put_failed(exc)  # a clear ConfigError if the bucket has no Object Lock
                raise
            except Exception:
                state["failed_attempt"] = True
                raise

        try:
            self._run("write", name, attempt)
        except Exception:
            if multipart and state["failed_attempt"]:
                self._abort_leftovers(key, patient=False)
            raise
        if multipart and state["failed_attempt"]:
            self._abort_leftovers(key, patient=True)

    def get(self, name: str, limit: int | None = None) -> bytes:
        key = self._key(name)

        def attempt() -> bytes:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            with resp["Body"] as body:
                # refuse on the announced size before reading the body, and read at most one
                # byte past the limit whatever the server sends (no or a false Content-Length)
                if "ContentLength" in resp:
                    check_size(name, int(resp["ContentLength"]), limit)
                data = body.read() if limit is None else body.read(limit + 1)
            check_size(name, len(data), limit)
            return data

        return self._run("read", name, attempt)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        key = self._key(name)
        if length <= 0:
            if not self.exists(name):
                raise ObjectNotFoundError(f"object {name} is missing from {self.location}")
            return b""
        # a negative offset is a suffix range: the last -offset bytes, whatever the size
        header = f"bytes=-{-offset}" if offset < 0 else f"bytes={offset}-{offset + length - 1}"

        def attempt() -> bytes:
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=key, Range=header)
            except bce.ClientError as exc:
                if _error_code(exc) == "InvalidRange" or _http_status(exc) == 416:
                    return b""  # the object exists but is shorter than offset (or empty)
                raise
            with resp["Body"] as body:
                if "ContentRange" in resp:
                    return body.read(length)  # never more than asked, even if more is sent
                # the server ignored Range and sends everything: skip to the range, keep only it
                start = offset
                if offset < 0:
                    if "ContentLength" not in resp:
                        raise StorageError(f"cannot read the end of {name} in {self.location}: "
                                           "the server ignored the range and sent no length")
                    start = max(0, int(resp["ContentLength"]) + offset)
                _skip(body, start)
                return body.read(length)

        return self._run("read", name, attempt)

    def exists(self, name: str) -> bool:
        key = self._key(name)

        def attempt() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except bce.ClientError as exc:
                if _error_code(exc) in _NOT_FOUND_CODES or _http_status(exc) == 404:
                    return False
                raise
            return True

        return self._run("check", name, attempt)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        full_prefix = self._base + prefix
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._run("list", full_prefix or "/", self._lister(kwargs))
            for item in page.get("Contents", ()):
                key = item["Key"]
                if key.endswith("/") or not key.startswith(self._base):
                    continue  # directory markers some servers show
                yield ObjectInfo(key[len(self._base) :], int(item["Size"]))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return

    def delete(self, name: str) -> None:
        if self.object_lock is not None or self.bucket_versioned():
            self.delete_versions(name)  # versions for good, or RetentionError; no delete markers
            return
        key = self._key(name)

        def attempt() -> None:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except bce.ClientError as exc:
                if _error_code(exc) not in _NOT_FOUND_CODES:
                    raise

        self._run("delete", name, attempt)

    def close(self) -> None:
        self.client.close()

    # -- extras ---------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (for `init`); an existing bucket is fine."""

        def attempt() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except bce.ClientError as exc:
                if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            region = self.client.meta.region_name
            if region and region not in ("us-east-1", "aws-global"):
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            if self.object_lock is not None:
                kwargs["ObjectLockEnabledForBucket"] = True  # also turns on versioning
            try:
                self.client.create_bucket(**kwargs)
            except bce.ClientError as exc:
                code = _error_code(exc)
                if code == "BucketAlreadyOwnedByYou":
                    return
                if code == "BucketAlreadyExists":
                    raise StorageError(
                        f"bucket {self.bucket} exists and belongs to another account"
                    ) from None
                raise

        self._run("create bucket", self.bucket, attempt)
        if self.object_lock is not None:
            self.check_object_lock()  # an existing bucket may lack it; a server may ignore it

    # -- internals ------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"invalid object name {name!r}")
        return self._base + name

    def _lister(self, kwargs: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        return lambda: self.client.list_objects_v2(**kwargs)

    def _abort_leftovers(self, key: str, patient: bool) -> None:
        """Abort multipart uploads of `key` that failed attempts left open (module docstring).
        Best effort: the put's own outcome stands whatever happens here. After a failed put the
        storage is probably unreachable, so one try (no retries) rather than a second wait."""

        def attempt() -> int:
            page = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            aborted = 0
            for upload in page.get("Uploads", ()):
                if upload.get("Key") != key:
                    continue
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                    )
                except bce.ClientError as exc:
                    if _error_code(exc) != "NoSuchUpload":
                        raise
                aborted += 1
            return aborted

        try:
            aborted = self._run("clean up uploads of", key, attempt) if patient else attempt()
        except Exception as exc:  # noqa: BLE001 - best effort, see above
            log.warning("could not abort unfinished uploads of %s: %s", key,
                        exc if isinstance(exc, SellerbakError) else _describe(exc))
            return
        if aborted:
            log.info("aborted %d unfinished multipart upload(s) of %s", aborted, key)

    def _holds(self, key: str, payload: bytes, multipart: bool) -> bool:
        """Does the stored object have exactly our bytes' size and ETag?"""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except bce.ClientError as exc:
            if is_transient(exc):
                raise  # retry the whole put rather than guess
            return False
        if int(head.get("ContentLength", -1)) != len(payload):
            return False
        if multipart:
            chunk = ChunksizeAdjuster().adjust_chunksize(MULTIPART_CHUNKSIZE, len(payload))
            expected = _multipart_etag(payload, chunk)
        else:
            expected = _md5_etag(payload)
        return str(head.get("ETag", "")).strip('"') == expected

    def _retrying(self, action: str, name: str) -> Retrying:
        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "S3 %s %s at %s failed (%s); retry %d/%d in %.1fs",
                action,
                name,
                self.endpoint,
                _describe(exc),
                state.attempt_number,
                self.retry_attempts - 1,
                wait,
            )

        def wait(state: RetryCallState) -> float:
            # equal jitter: step/2 fixed + up to step/2 random (module docstring)
            step = min(self.retry_max_wait, self.retry_min_wait * 2 ** (state.attempt_number - 1))
            return step / 2 + random.uniform(0, step / 2)

        return Retrying(
            stop=stop_after_attempt(self.retry_attempts) | stop_after_delay(self.retry_seconds),
            wait=wait,
            retry=retry_if_exception(is_transient),
            before_sleep=log_retry,
            reraise=True,
        )

    def _run(self, action: str, name: str, fn: Callable[[], T]) -> T:
        """Call `fn` with retries; turn whatever escapes into a one-line StorageError."""
        retrying = self._retrying(action, name)
        try:
            return retrying(fn)
        except SellerbakError:
            raise
        except Exception as exc:
            attempts = int(retrying.statistics.get("attempt_number", 1))
            raise self._map_error(exc, action, name, attempts) from exc

    def _map_error(self, exc: Exception, action: str, name: str, attempts: int) -> StorageError:
        after = f" (after {attempts} attempt{'s' if attempts != 1 else ''})"
        if isinstance(exc, bce.ClientError):
            code = _error_code(exc)
            status = _http_status(exc)
            if code in _NOT_FOUND_CODES:
                return ObjectNotFoundError(f"object {name} is missing from {self.location}")
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket} does not exist at {self.endpoint}")
            if code in _AUTH_CODES or status == 403:
                return StorageError(
                    f"access denied to {self.location}: check AWS credentials and permissions "
                    f"({code or status})"
                )
            if is_transient(exc):
                return StorageError(
                    f"S3 endpoint {self.endpoint} kept failing to {action} {name}: "
                    f"{status} {code}{after}"
                )
            message = str(exc.response.get("Error", {}).get("Message", "")).splitlines()
            detail = f": {message[0]}" if message else ""
            return StorageError(f"cannot {action} {name} in {self.location}: {code}{detail}")
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return StorageError(
                f"no AWS credentials for {self.location}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an instance role"
            )
        if isinstance(exc, bce.SSLError):
            return StorageError(f"TLS error talking to S3 endpoint {self.endpoint}")
        if is_transient(exc):
            return StorageError(
                f"cannot reach S3 endpoint {self.endpoint}: {_connection_reason(exc)}{after}"
            )
        return StorageError(f"cannot {action} {name} in {self.location}: {_describe(exc)}")


def _skip(body: Any, count: int, step: int = 1 << 20) -> None:
    """Read and drop `count` bytes of a streaming body, a step at a time (flat memory)."""
    while count > 0:
        piece = body.read(min(step, count))
        if not piece:
            return
        count -= len(piece)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, bce.ClientError):
        return f"{_http_status(exc)} {_error_code(exc)}"
    if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError)):
        return _connection_reason(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
