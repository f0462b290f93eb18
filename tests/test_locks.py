"""Locks: shared for snapshot, exclusive for prune; stale ones (old, or their process gone)
ignored; `unlock` removes only stale ones unless --remove-all; waiting with --retry-lock;
a run that may have lost its lock commits nothing."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.crypto.envelope import Kind
from sellerbak.errors import LockHeldError
from sellerbak.repository.locks import STALE_AFTER, RepositoryLock, list_locks
from sellerbak.repository.manifest import list_snapshot_ids
from sellerbak.repository.repo import lock_name
from sellerbak.storage.local import LocalStore
from tests.helpers import ListSource, open_repo, run_cli, write_config


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "orders.jsonl").write_text('{"id":"a"}\n{"id":"b"}\n')
    path = write_config(tmp_path, "./repo", [{"name": "shop", "type": "files",
                                              "path": "./exports"}])
    _ok(run_cli("-c", str(path), "init"))
    return path


def _plant_lock(store: LocalStore, host: str, pid: int, age: timedelta,
                exclusive: bool = True) -> bytes:
    """A lock as another machine would leave it."""
    import os

    repo = open_repo(store)
    lid = os.urandom(32)
    body = json.dumps({"exclusive": exclusive, "hostname": host, "pid": pid,
                       "time": (datetime.now(UTC) - age).isoformat()}).encode()
    store.put(lock_name(lid), repo.seal(Kind.LOCK, lid, body))
    return lid


def test_other_hosts_locks_hold_until_stale_and_unlock_respects_that(cfg: Path,
                                                                     tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    _plant_lock(store, "backup-box-2", 4242, timedelta(minutes=3))
    proc = run_cli("-c", str(cfg), "prune")
    assert proc.returncode == 11
    assert "pid 4242 on backup-box-2" in proc.stderr and "exclusive" in proc.stderr
    assert json.loads(_ok(run_cli("-c", str(cfg), "--json", "unlock")).stdout) == {"removed": 0}

    _plant_lock(store, "backup-box-3", 77, STALE_AFTER + timedelta(minutes=1))
    assert len(list_locks(open_repo(store))) == 2
    # the stale one is removed, the live one stays
    assert json.loads(_ok(run_cli("-c", str(cfg), "--json", "unlock")).stdout) == {"removed": 1}
    assert [lk.hostname for lk in list_locks(open_repo(store))] == ["backup-box-2"]
    assert json.loads(_ok(run_cli("-c", str(cfg), "--json", "unlock", "--remove-all")).stdout
                      ) == {"removed": 1}
    _ok(run_cli("-c", str(cfg), "prune"))


def test_shared_locks_coexist_but_not_with_an_exclusive_one(cfg: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    with RepositoryLock(open_repo(store), exclusive=False):
        _ok(run_cli("-c", str(cfg), "snapshot"))  # two snapshots may run at once
        assert run_cli("-c", str(cfg), "prune").returncode == 11
    with RepositoryLock(open_repo(store), exclusive=True):
        assert run_cli("-c", str(cfg), "snapshot").returncode == 11


def test_retry_lock_waits_for_the_holder(cfg: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    holder = RepositoryLock(open_repo(store), exclusive=True)
    holder.acquire()
    timer = threading.Timer(1.5, holder.release)
    timer.start()
    try:
        started = time.monotonic()
        proc = run_cli("-c", str(cfg), "--retry-lock", "2min", "snapshot")
        assert proc.returncode == 0, proc.stderr
        assert time.monotonic() - started >= 1.5  # it did wait for the release
    finally:
        timer.cancel()
        holder.release()
    assert run_cli("-c", str(cfg), "--retry-lock", "soon", "snapshot").returncode == 2


def test_a_run_that_may_have_lost_its_lock_commits_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    from tests.helpers import init_repo

    init_repo(store)
    repo = open_repo(store)
    lock = RepositoryLock(repo, exclusive=False)
    lock.acquire()
    try:
        lock.ensure_held()  # fresh: fine
        lock._refreshed -= STALE_AFTER.total_seconds()  # as after a long suspend
        with pytest.raises(LockHeldError, match="lost the repository lock"):
            lock.ensure_held()
        run = SnapshotRun(repo, before_commit=lock.ensure_held)
        with pytest.raises(LockHeldError):
            run.run(ListSource("shop", {"orders": [{"id": "a"}]}), [])
    finally:
        lock.release()
    assert list_snapshot_ids(open_repo(store)) == []
