"""Hostile storage, reading side: an object's size is checked before its bytes are read, and a
local repository's entries are never followed or blocked on.

A planted key file linked to /dev/zero, a FIFO among the snapshots, a symlinked folder or a
server that announces (or streams) far more than any valid object can hold must each end in one
`error:` line naming the object and a non-zero exit, never in a huge read or a hang. The S3
cases use a small loopback HTTP server that answers GetObject the way a lying server would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sellerbak.errors import ObjectNotFoundError
from sellerbak.storage.base import NotAnObjectError, ObjectTooLargeError
from sellerbak.storage.local import LocalStore
from sellerbak.storage.s3 import S3Store
from tests.helpers import run_cli, write_config
from tests.hostile import watchdog

MiB = 1024 * 1024
#: a guard against a hang (the old behaviour), not a timing assertion
HANG_GUARD = 120


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def _one_error_line(proc: subprocess.CompletedProcess[str], *names: str) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def repo_cfg(tmp_path: Path) -> Path:
    """A file:// repository with one snapshot of a small export-files source."""
    data = tmp_path / "exports"
    data.mkdir()
    (data / "orders.jsonl").write_text(
        "".join(json.dumps({"id": f"o{i}", "amount": i}) + "\n" for i in range(20)))
    cfg = write_config(tmp_path, "./repo", [{"name": "shop", "type": "files",
                                             "path": "./exports"}])
    _ok(run_cli("-c", str(cfg), "init"))
    _ok(run_cli("-c", str(cfg), "snapshot"))
    return cfg


def _repo(cfg: Path) -> Path:
    return cfg.parent / "repo"


# ----- local store, through the real command line ---------------------------------------------


def test_key_file_linked_to_dev_zero_is_refused(repo_cfg: Path) -> None:
    """Linked to /dev/zero, a key file would be read until memory runs out. The link is never
    followed: the real key still opens the repository (also on a machine that has no record of
    the key it last used, so lists `keys/`), and `key list` names the link as skipped."""
    name = "keys/" + "ab" * 16
    os.symlink("/dev/zero", _repo(repo_cfg) / name)
    shutil.rmtree(repo_cfg.parent / "state" / "last-key", ignore_errors=True)
    _ok(run_cli("-c", str(repo_cfg), "snapshots", timeout=HANG_GUARD))
    listed = _ok(run_cli("-c", str(repo_cfg), "--json", "key", "list", timeout=HANG_GUARD))
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    assert entries[name]["status"] == "skipped", entries[name]
    assert "symbolic link" in entries[name]["reason"]


def test_fifo_among_snapshots_does_not_hang(repo_cfg: Path) -> None:
    name = "snapshots/" + "cd" * 32
    os.mkfifo(_repo(repo_cfg) / name)
    proc = run_cli("-c", str(repo_cfg), "snapshots", timeout=HANG_GUARD)
    assert "FIFO" in _one_error_line(proc, name)


def test_symlinked_snapshots_folder_is_refused(repo_cfg: Path, tmp_path: Path) -> None:
    """A symlinked folder would serve someone else's files (or hide the real ones)."""
    repo = _repo(repo_cfg)
    os.rename(repo / "snapshots", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", repo / "snapshots")
    proc = run_cli("-c", str(repo_cfg), "snapshots", timeout=HANG_GUARD)
    assert "symbolic link" in _one_error_line(proc, "snapshots")


def test_symlinked_pack_folder_stops_the_restore(repo_cfg: Path, tmp_path: Path) -> None:
    repo = _repo(repo_cfg)
    folder = next(p for p in (repo / "data").iterdir() if p.is_dir())
    os.rename(folder, tmp_path / "packs-elsewhere")
    os.symlink(tmp_path / "packs-elsewhere", folder)
    proc = run_cli("-c", str(repo_cfg), "restore", "latest", "--target",
                   str(tmp_path / "out"), timeout=HANG_GUARD)
    assert "symbolic link" in _one_error_line(proc, f"data/{folder.name}")
    assert not (tmp_path / "out" / "orders.jsonl").exists()


# ----- local store, the Store interface -------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "repo")
    store.put("keys/good", b"k" * 100)
    return store


def test_local_huge_sparse_object_is_refused_unread(local: LocalStore) -> None:
    path = local.root / "keys" / "huge"
    with open(path, "wb") as fh:
        fh.truncate(1 << 40)  # 1 TiB of holes: reading it would never end
    with pytest.raises(ObjectTooLargeError, match="keys/huge"):
        local.get("keys/huge", 64 * 1024)
    assert local.get("keys/good", 100) == b"k" * 100


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "dangling"])
def test_local_non_regular_objects_are_listed_and_refused(local: LocalStore, tmp_path: Path,
                                                          kind: str) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"not the repository's")
    path = local.root / "keys" / "odd"
    if kind == "symlink":
        os.symlink(outside, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        os.symlink(tmp_path / "nothing-here", path)
    if kind != "directory":  # a folder is a namespace level, as on S3; its content is listed
        assert "keys/odd" in {i.name for i in local.list("keys/")}
    for read in (lambda: local.get("keys/odd"), lambda: local.get_range("keys/odd", 0, 4),
                 lambda: local.exists("keys/odd")):
        with watchdog(HANG_GUARD), pytest.raises(NotAnObjectError, match="keys/odd") as err:
            read()  # a FIFO opened for reading the old way blocks until a writer comes
        assert "\n" not in str(err.value)
    if kind != "directory":
        local.delete("keys/odd")  # removes the entry itself, never what it points to
        assert not local.exists("keys/odd")
    assert outside.read_bytes() == b"not the repository's"


def test_local_symlinked_folder_is_refused_for_reads_and_writes(local: LocalStore,
                                                                tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "p1").write_bytes(b"planted")
    os.symlink(elsewhere, local.root / "data")
    for read in (lambda: local.get("data/p1"), lambda: local.get_range("data/p1", -4, 4),
                 lambda: local.exists("data/p1"), lambda: local.delete("data/p1"),
                 lambda: list(local.list("data/")), lambda: local.put("data/p2", b"new")):
        with pytest.raises(NotAnObjectError, match="data"):
            read()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["p1"]
    assert (elsewhere / "p1").read_bytes() == b"planted"
    with pytest.raises(ObjectNotFoundError):
        local.get("index/none")


# ----- S3: a server that lies about (or streams past) an object's size ------------------------


class LyingS3:
    """Answers every GET like a hostile S3 server would: `mode` "huge-length" announces 1 TiB
    and then sends nothing; "stream" sends `stream_bytes` without a Content-Length (chunked);
    "ignore-range" sends the whole object, whatever Range was asked for."""

    def __init__(self, mode: str, payload: bytes = b"", stream_bytes: int = 0) -> None:
        self.mode = mode
        self.payload = payload
        self.stream_bytes = stream_bytes
        self.release = threading.Event()
        lying = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if lying.mode == "huge-length":
                    self.send_header("Content-Length", str(1 << 40))
                    self.end_headers()
                    self.wfile.flush()
                    lying.release.wait(HANG_GUARD)  # never sends the body it announced
                    return
                if lying.mode == "ignore-range":
                    self.send_header("Content-Length", str(len(lying.payload)))
                    self.end_headers()
                    self.wfile.write(lying.payload)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                piece = b"\0" * (64 * 1024)
                sent = 0
                try:
                    while sent < lying.stream_bytes:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        sent += len(piece)
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass  # the client stopped reading and hung up: what it should do

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _lying_store(server: LyingS3, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDLYINGSERVER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    return S3Store("bucket", "repo", endpoint_url=server.url, region="us-east-1",
                   retry_attempts=1, read_timeout=HANG_GUARD)


@pytest.fixture
def lying() -> Iterator[list[LyingS3]]:
    servers: list[LyingS3] = []
    yield servers
    for s in servers:
        s.close()


def test_s3_refuses_on_announced_length_before_reading(
        lying: list[LyingS3], monkeypatch: pytest.MonkeyPatch) -> None:
    server = LyingS3("huge-length")
    lying.append(server)
    store = _lying_store(server, monkeypatch)
    with pytest.raises(ObjectTooLargeError, match="keys/k1") as err:
        store.get("keys/k1", 64 * 1024)
    assert "\n" not in str(err.value)


def test_s3_never_reads_past_the_limit_of_an_unannounced_stream(
        lying: list[LyingS3], monkeypatch: pytest.MonkeyPatch) -> None:
    server = LyingS3("stream", stream_bytes=64 * MiB)
    lying.append(server)
    store = _lying_store(server, monkeypatch)
    with pytest.raises(ObjectTooLargeError, match="snapshots/s1"):
        store.get("snapshots/s1", MiB)


def test_s3_range_ignored_by_the_server_returns_only_the_range(
        lying: list[LyingS3], monkeypatch: pytest.MonkeyPatch) -> None:
    payload = os.urandom(3 * MiB)
    server = LyingS3("ignore-range", payload=payload)
    lying.append(server)
    store = _lying_store(server, monkeypatch)
    assert store.get_range("data/p", 10, 20) == payload[10:30]
    assert store.get_range("data/p", -8, 8) == payload[-8:]
    assert store.get_range("data/p", 2 * MiB, MiB + 5) == payload[2 * MiB:]
