"""Locks: shared for snapshot, exclusive for prune; stale ones (old, or their process gone)
ignored; `unlock` removes only stale ones unless --remove-all; waiting with --retry-lock;
a run that may have lost its lock commits nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
from tests.helpers import PASSPHRASE, ListSource, open_repo, run_cli, write_config


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


# ----- a lock removed from under its holder (`unlock --remove-all` on another host) ---------


def _s3_config(tmp_path: Path, url: str, endpoint: str) -> Path:
    return write_config(tmp_path, url, [{"name": "shop", "type": "files", "path": "./x"}],
                        repository={"endpoint_url": endpoint, "region": "us-east-1"})


def _remove_all_locks_elsewhere(config: Path) -> None:
    """What another machine's operator runs: the real CLI, against the same store."""
    done = _ok(run_cli("-c", str(config), "--json", "unlock", "--remove-all"))
    assert json.loads(done.stdout)["removed"] >= 1


def test_prune_deletes_nothing_once_its_lock_was_removed(tmp_path: Path, s3_url: str,
                                                         seaweed) -> None:
    from sellerbak.repository.prune import prune_repository
    from sellerbak.repository.repo import snapshot_name
    from sellerbak.storage.open import open_store
    from tests.helpers import init_repo

    store = open_store(s3_url, endpoint_url=seaweed.endpoint_url, region="us-east-1")
    init_repo(store)
    forgotten = SnapshotRun(open_repo(store)).run(
        ListSource("shop", {"orders": [{"id": str(i), "n": i} for i in range(2000)]}), [])
    SnapshotRun(open_repo(store)).run(ListSource("shop", {"orders": [{"id": "kept"}]}), [])
    store.delete(snapshot_name(forgotten.manifest.id))  # its packs are garbage now
    config = _s3_config(tmp_path, s3_url, seaweed.endpoint_url)
    before = sorted(i.name for i in store.list(""))

    repo = open_repo(store)
    with pytest.raises(LockHeldError) as caught, RepositoryLock(repo, exclusive=True) as lock:
        _remove_all_locks_elsewhere(config)
        prune_repository(repo, max_unused=0.0, before_delete=lock.ensure_held)
    assert caught.value.exit_code == 11
    assert "lock object was removed" in str(caught.value)
    after = sorted(i.name for i in store.list(""))
    # the new index may have been written (it only adds); nothing was deleted
    assert set(before) - set(after) == set()
    assert list(store.list("locks/")) == []
    # and a prune that keeps its lock still works on the same repository
    with RepositoryLock(open_repo(store), exclusive=True) as lock:
        report = prune_repository(open_repo(store), max_unused=0.0,
                                  before_delete=lock.ensure_held)
    assert report.packs_deleted >= 1


def test_a_removed_lock_is_not_brought_back_by_a_refresh(tmp_path: Path) -> None:
    from tests.helpers import init_repo

    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    config = write_config(tmp_path, "./repo", [{"name": "shop", "type": "files", "path": "."}])
    with RepositoryLock(open_repo(store), exclusive=False) as lock:
        assert lock.refresh_once()  # while it is there, a refresh replaces it
        assert len(list(store.list("locks/"))) == 1
        _remove_all_locks_elsewhere(config)
        assert not lock.refresh_once()
        assert list(store.list("locks/")) == []  # not written again
        with pytest.raises(LockHeldError, match="lock object was removed"):
            lock.ensure_held()


def test_a_lock_replaced_by_someone_elses_object_is_lost(tmp_path: Path) -> None:
    from tests.helpers import init_repo

    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    repo = open_repo(store)
    lock = RepositoryLock(repo, exclusive=True)
    lock.acquire()
    try:
        assert lock.lock_id is not None
        name = lock_name(lock.lock_id)
        store.delete(name)
        body = json.dumps({"exclusive": True, "hostname": "elsewhere", "pid": 42,
                           "time": datetime.now(UTC).isoformat()}).encode()
        store.put(name, repo.seal(Kind.LOCK, lock.lock_id, body))
        with pytest.raises(LockHeldError, match="not ours"):
            lock.ensure_held()
    finally:
        lock.release()
    assert [i.name for i in store.list("locks/")] == [name]  # someone else's: left alone


def test_snapshot_commits_nothing_once_its_lock_was_removed(tmp_path: Path) -> None:
    """Through the real CLI: the TikTok source's app secret comes from a `{command:}` helper,
    run after the lock is taken; the helper plays the other host and removes every lock."""
    from tests.tiktok_server import APP_SECRET, FakeTikTokShop

    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE)
    helper = tmp_path / "secret-helper.py"
    config = tmp_path / "sellerbak.yaml"
    helper.write_text(f"""
import os, subprocess, sys
env = dict(os.environ, SELLERBAK_PASSPHRASE_FILE={str(passphrase_file)!r},
           PYTHONPATH={os.environ.get("PYTHONPATH", "")!r})
if os.path.exists({str(tmp_path / "arm")!r}):
    subprocess.run([sys.executable, "-m", "sellerbak", "-c", {str(config)!r}, "unlock",
                    "--remove-all"], env=env, check=True, capture_output=True)
print({APP_SECRET!r})
""")
    with FakeTikTokShop(orders=50, real_time=True) as srv:
        src = {"name": "my-shop", "type": "tiktok", "app_key": "29a39d",
               "app_secret": {"command": f"{sys.executable} {helper}"},
               "api_url": srv.url, "auth_url": srv.url, "requests_per_second": 100}
        assert write_config(tmp_path, "./repo", [src]) == config
        _ok(run_cli("-c", str(config), "init"))
        _ok(run_cli("-c", str(config), "auth", "my-shop", "--code", srv.issue_auth_code()))
        (tmp_path / "arm").touch()
        done = run_cli("-c", str(config), "snapshot")
    assert done.returncode == 11, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: lost the repository lock: its lock object was removed (by 'sellerbak unlock "
        "--remove-all'?); nothing was deleted or committed, run the command again"]
    assert list_snapshot_ids(open_repo(LocalStore(tmp_path / "repo"))) == []
