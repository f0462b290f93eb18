"""The Store contract (sellerbak/storage/base.py), checked against every backend.

The same tests run on LocalStore (a temp dir) and S3Store (a real SeaweedFS server), so the
repository code can rely on one set of guarantees. The second half checks what only S3 has:
credential errors, retries on throttling and dead endpoints, and retried writes whose first
attempt's outcome was unknown. Faults are injected by a small loopback HTTP forwarder, never by
patching the code under test.
"""

from __future__ import annotations

import http.client
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from sellerbak.errors import ConfigError, ObjectExistsError, ObjectNotFoundError, StorageError
from sellerbak.storage.base import ObjectInfo, ObjectTooLargeError, Store
from sellerbak.storage.local import LocalStore
from sellerbak.storage.open import open_store
from sellerbak.storage.s3 import MULTIPART_THRESHOLD, S3Store
from tests.seaweed import SeaweedServer

MiB = 1024 * 1024


def _split(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.netloc, parts.path.strip("/")


def _fast_s3(url: str, endpoint_url: str, **kwargs: Any) -> S3Store:
    """An S3Store with retry waits short enough for tests."""
    bucket, prefix = _split(url)
    opts: dict[str, Any] = {"retry_min_wait": 0.01, "retry_max_wait": 0.05, "read_timeout": 10}
    opts.update(kwargs)
    return S3Store(bucket, prefix, endpoint_url=endpoint_url, region="us-east-1", **opts)


def _count_requests(store: S3Store) -> list[str]:
    """Record every HTTP request botocore sends (one entry per attempt, retries included)."""
    sent: list[str] = []

    def hook(**kwargs: Any) -> None:
        sent.append(kwargs["event_name"].rsplit(".", 1)[-1])

    store.client.meta.events.register("before-send.s3", hook)
    return sent


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        s: Store = open_store(f"file://{tmp_path / 'repo'}")
        assert isinstance(s, LocalStore)
    else:
        url = request.getfixturevalue("s3_url")
        server: SeaweedServer = request.getfixturevalue("seaweed")
        s = open_store(url, endpoint_url=server.endpoint_url, region="us-east-1")
        assert isinstance(s, S3Store)
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------
# the contract, on every backend
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, 300_000])
def test_put_get_roundtrip(store: Store, size: int) -> None:
    data = os.urandom(size)
    store.put("data/ab/obj", data)
    assert store.get("data/ab/obj") == data
    assert store.exists("data/ab/obj")
    assert list(store.list("data/")) == [ObjectInfo("data/ab/obj", size)]


def test_put_never_overwrites(store: Store) -> None:
    store.put("config", b"first")
    with pytest.raises(ObjectExistsError):
        store.put("config", b"second, longer")
    with pytest.raises(ObjectExistsError):
        store.put("config", b"first")  # identical bytes too: put doubles as create-only lock
    assert store.get("config") == b"first"


def test_missing_objects(store: Store) -> None:
    store.put("keys/present", b"x")
    with pytest.raises(ObjectNotFoundError):
        store.get("keys/absent")
    with pytest.raises(ObjectNotFoundError):
        store.get_range("keys/absent", 0, 10)
    with pytest.raises(ObjectNotFoundError):
        store.get_range("keys/absent", -8, 8)
    assert not store.exists("keys/absent")
    assert list(store.list("nothing/")) == []


def test_get_with_a_size_limit(store: Store) -> None:
    data = os.urandom(1000)
    store.put("keys/k1", data)
    assert store.get("keys/k1", 1000) == data
    assert store.get("keys/k1", 5000) == data
    with pytest.raises(ObjectTooLargeError, match="keys/k1") as err:
        store.get("keys/k1", 999)
    assert "\n" not in str(err.value)
    with pytest.raises(ObjectNotFoundError):
        store.get("keys/absent", 10)


def test_get_range(store: Store) -> None:
    data = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable
    store.put("packs/p1", data)
    assert store.get_range("packs/p1", 0, 10) == data[:10]
    assert store.get_range("packs/p1", 100, 50) == data[100:150]
    assert store.get_range("packs/p1", 1020, 100) == data[1020:]  # short read at the end
    assert store.get_range("packs/p1", 1024, 5) == b""
    assert store.get_range("packs/p1", 5000, 5) == b""
    assert store.get_range("packs/p1", 7, 0) == b""
    # negative offset: counted from the end
    assert store.get_range("packs/p1", -8, 8) == data[-8:]
    assert store.get_range("packs/p1", -8, 3) == data[-8:-5]
    assert store.get_range("packs/p1", -2000, 10) == data[:10]  # larger than the object
    store.put("packs/empty", b"")
    assert store.get_range("packs/empty", 0, 10) == b""
    assert store.get_range("packs/empty", -4, 4) == b""


def test_list_prefixes_and_pagination(store: Store) -> None:
    """More than 1000 objects, so S3 must follow continuation tokens."""
    names = [f"data/{i % 16:02x}/obj-{i:05d}" for i in range(1030)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: store.put(n, n.encode()), names))
    store.put("snapshots/s1", b"snap")
    store.put("config", b"cfg")
    requests = _count_requests(store) if isinstance(store, S3Store) else None

    listed = {o.name: o.size for o in store.list("data/")}
    assert listed == {n: len(n.encode()) for n in names}
    if requests is not None:
        assert requests.count("ListObjectsV2") >= 2, "did not paginate"

    in_0a = {n for n in names if n.startswith("data/0a/")}
    assert {o.name for o in store.list("data/0a/")} == in_0a
    assert {o.name for o in store.list("snap")} == {"snapshots/s1"}
    assert {o.name for o in store.list("")} == set(names) | {"snapshots/s1", "config"}


def test_delete_is_idempotent(store: Store) -> None:
    store.put("locks/l1", b"lock")
    store.delete("locks/l1")
    assert not store.exists("locks/l1")
    with pytest.raises(ObjectNotFoundError):
        store.get("locks/l1")
    store.delete("locks/l1")  # again: not an error
    store.delete("locks/never-existed")
    store.put("locks/l1", b"again")  # the name is free after a delete
    assert store.get("locks/l1") == b"again"


def test_large_object_multipart(store: Store) -> None:
    data = os.urandom(20 * MiB + 123)
    store.put("packs/big", data)
    assert store.get("packs/big") == data
    assert store.get_range("packs/big", -100, 100) == data[-100:]
    assert store.get_range("packs/big", 9 * MiB, 10) == data[9 * MiB : 9 * MiB + 10]
    with pytest.raises(ObjectExistsError):
        store.put("packs/big", os.urandom(20 * MiB))
    with pytest.raises(ObjectExistsError):
        store.put("packs/big", b"small")
    assert store.get("packs/big") == data
    if isinstance(store, S3Store):
        head = store.client.head_object(Bucket=store.bucket, Key=store._key("packs/big"))
        assert head["ETag"].strip('"').endswith("-3"), "expected a 3-part multipart upload"
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
        assert not uploads.get("Uploads"), "the refused upload left parts behind"


def test_invalid_names_are_refused(store: Store) -> None:
    for bad in ["", "/abs", "a//b", "../x", "a/./b", "trailing/"]:
        with pytest.raises(StorageError):
            store.put(bad, b"x")


# ---------------------------------------------------------------------------------------------
# S3 only: errors, retries, unknown outcomes
# ---------------------------------------------------------------------------------------------


def test_s3_location_and_missing_bucket(s3_env: SeaweedServer) -> None:
    bucket = f"sellerbak-nb-{secrets.token_hex(4)}"
    store = _fast_s3(f"s3://{bucket}/pre/fix", s3_env.endpoint_url)
    assert store.location == f"s3://{bucket}/pre/fix"
    with pytest.raises(StorageError, match=f"bucket {bucket} does not exist") as err:
        store.get("config")
    assert not isinstance(err.value, ObjectNotFoundError)
    with pytest.raises(StorageError, match="does not exist"):
        store.put("config", b"x")
    store.ensure_bucket()
    store.ensure_bucket()  # existing bucket is fine
    store.put("config", b"x")
    assert store.get("config") == b"x"


@pytest.mark.parametrize("which", ["secret", "key_id"])
def test_s3_wrong_credentials_fail_fast(
    s3_url: str, s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    wrong = "wrong-secret-value-1234"
    if which == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDOESNOTEXIST")
    store = _fast_s3(s3_url, s3_env.endpoint_url, retry_attempts=5)
    sent = _count_requests(store)
    for op in (
        lambda: store.put("config", b"x"),
        lambda: store.get("config"),
        lambda: store.exists("config"),
        lambda: list(store.list("")),
    ):
        sent.clear()
        with pytest.raises(StorageError) as err:
            op()
        message = str(err.value)
        assert "access denied" in message and "credentials" in message, message
        assert wrong not in message and s3_env.secret_key not in message
        assert "\n" not in message
        assert len(sent) == 1, f"auth errors must not be retried, sent {sent}"


def test_s3_no_credentials(
    s3_url: str, s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = _fast_s3(s3_url, s3_env.endpoint_url)
    with pytest.raises(StorageError, match="no AWS credentials"):
        store.get("config")


def test_s3_dead_endpoint_retries_then_fails(s3_env: SeaweedServer) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = _fast_s3("s3://sellerbak-test/x", f"http://127.0.0.1:{port}", retry_attempts=3)
    sent = _count_requests(store)
    with pytest.raises(StorageError) as err:
        store.get("config")
    assert str(err.value) == (
        f"cannot reach S3 endpoint http://127.0.0.1:{port}: connection refused (after 3 attempts)"
    )
    assert len(sent) == 3


class FaultProxy:
    """A loopback HTTP forwarder to the S3 server that injects planned faults.

    `plan(action, when)` queues a fault for the next request matching `when(method, path)`:
    "503" answers 503 SlowDown without forwarding; "drop" forwards the request, lets the server
    act on it, then closes the connection without an answer (the client cannot know the outcome).
    """

    def __init__(self, upstream: str) -> None:
        up = urlsplit(upstream)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 80)
        self.lock = threading.Lock()
        self.plans: list[tuple[str, Callable[[str, str], bool]]] = []
        self.seen: list[tuple[str, str, str]] = []  # (method, path, what we did)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = proxy._take(self.command, self.path)
                with proxy.lock:
                    proxy.seen.append((self.command, self.path, action))
                if action == "503":
                    xml = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    self.send_response_only(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                if action == "drop":
                    self.close_connection = True
                    return
                self.send_response_only(status)
                for k, v in headers:
                    if k.lower() in ("transfer-encoding", "connection", "keep-alive"):
                        continue
                    if k.lower() == "content-length" and self.command != "HEAD":
                        continue
                    self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def plan(self, action: str, when: Callable[[str, str], bool] = lambda m, p: True) -> None:
        with self.lock:
            self.plans.append((action, when))

    def _take(self, method: str, path: str) -> str:
        with self.lock:
            for i, (action, when) in enumerate(self.plans):
                if when(method, path):
                    del self.plans[i]
                    return action
        return "forward"

    def _forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        # Host and every signed header go through unchanged, so the SigV4 signature still holds.
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    p = FaultProxy(seaweed.endpoint_url)
    yield p
    p.close()


def _is_put(method: str, path: str) -> bool:
    return method == "PUT"


def test_s3_retries_on_slowdown(s3_url: str, proxy: FaultProxy) -> None:
    store = _fast_s3(s3_url, proxy.url, retry_attempts=4)
    sent = _count_requests(store)
    proxy.plan("503", _is_put)
    proxy.plan("503", _is_put)
    store.put("data/x", b"payload")
    assert [a for m, _, a in proxy.seen if m == "PUT"] == ["503", "503", "forward"]
    assert sent == ["PutObject"] * 3
    proxy.plan("503")
    assert store.get("data/x") == b"payload"


def test_s3_gives_up_after_persistent_slowdown(s3_url: str, proxy: FaultProxy) -> None:
    store = _fast_s3(s3_url, proxy.url, retry_attempts=3)
    for _ in range(3):
        proxy.plan("503")
    with pytest.raises(StorageError) as err:
        store.get("data/x")
    assert "503 SlowDown (after 3 attempts)" in str(err.value)
    assert len(proxy.seen) == 3


def test_s3_put_with_lost_response_is_not_an_error(s3_url: str, proxy: FaultProxy) -> None:
    """The first PUT reaches the server but its answer is lost; the retry gets 412 for our own
    object, which holds exactly our bytes, so the put succeeded."""
    store = _fast_s3(s3_url, proxy.url)
    proxy.plan("drop", _is_put)
    store.put("data/x", b"payload")
    assert [a for m, _, a in proxy.seen if m == "PUT"] == ["drop", "forward"]
    assert store.get("data/x") == b"payload"


def test_s3_put_with_lost_response_still_refuses_other_bytes(
    s3_url: str, proxy: FaultProxy
) -> None:
    store = _fast_s3(s3_url, proxy.url)
    store.put("data/x", b"original")
    proxy.plan("drop", _is_put)
    with pytest.raises(ObjectExistsError):
        store.put("data/x", b"imposter")
    assert store.get("data/x") == b"original"


def test_s3_multipart_with_lost_completion(s3_url: str, proxy: FaultProxy) -> None:
    store = _fast_s3(s3_url, proxy.url)
    data = os.urandom(MULTIPART_THRESHOLD + 5 * MiB)
    proxy.plan("drop", lambda m, p: m == "POST" and "uploadId=" in p)
    store.put("packs/big", data)
    completions = [a for m, p, a in proxy.seen if m == "POST" and "uploadId=" in p]
    assert completions == ["drop", "forward"]
    assert store.get("packs/big") == data


# ---------------------------------------------------------------------------------------------
# open_store: URL dispatch
# ---------------------------------------------------------------------------------------------


def test_open_store_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url, expected in [
        (f"file://{tmp_path}/a", tmp_path / "a"),
        (f"file://localhost{tmp_path}/b", tmp_path / "b"),
        (str(tmp_path / "c"), tmp_path / "c"),
        ("d", tmp_path / "d"),
        ("./e/f", tmp_path / "e" / "f"),
        (f"file://{tmp_path}/odd #1 50%20", tmp_path / "odd #1 50%20"),  # taken literally
    ]:
        store = open_store(url)
        assert isinstance(store, LocalStore) and store.root == expected, url


def test_open_store_s3(s3_env: SeaweedServer) -> None:
    store = open_store("s3://my-bucket/backups/shop1/", endpoint_url=s3_env.endpoint_url)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.location) == (
        "my-bucket",
        "backups/shop1",
        "s3://my-bucket/backups/shop1",
    )
    bare = open_store("s3://my-bucket", endpoint_url=s3_env.endpoint_url)
    assert isinstance(bare, S3Store) and bare.location == "s3://my-bucket"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://example.invalid/bucket",
        "s3://",
        "s3://Bad_Bucket/x",
        "s3://ab/x",
        "s3://bucket/a/../b",
        "s3://bucket/x?versionId=1",
        "s3://bucket/a//b",
        "file://relative/dir",
        "file://./x",
        "s3:bucket",
    ],
)
def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="repository.url"):
        open_store(url)


def test_open_store_rejects_bad_endpoint_and_region() -> None:
    with pytest.raises(ConfigError, match="repository.endpoint_url"):
        open_store("s3://bucket/x", endpoint_url="localhost:9000")
    with pytest.raises(ConfigError, match="repository.endpoint_url"):
        open_store("s3://bucket/x", endpoint_url="ftp://127.0.0.1")
    with pytest.raises(ConfigError, match="repository.region"):
        open_store("s3://bucket/x", endpoint_url="http://127.0.0.1:1", region="not a region!")


def test_open_store_never_echoes_url_credentials() -> None:
    with pytest.raises(ConfigError, match="repository.url") as err:
        open_store("s3://AKIAEXAMPLE:topsecret@bucket/x")
    assert "topsecret" not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)
