"""prune: removes what no snapshot needs, repacks mostly-unused packs, and is safe to kill at
any point (every remaining snapshot stays restorable, and the next prune finishes the job)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.repository.check import check_repository
from sellerbak.repository.locks import RepositoryLock
from sellerbak.repository.manifest import load_manifests
from sellerbak.repository.prune import prune_repository
from sellerbak.repository.repo import snapshot_name
from sellerbak.restore.restore import restore_snapshot
from sellerbak.storage.local import LocalStore
from sellerbak.storage.open import open_store
from tests.helpers import ListSource, canonical_sorted, cli_env, init_repo, open_repo
from tests.test_repository import make_orders, restored_records

SMALL_PACK = 8 * 1024


def _snapshot(store, source: ListSource, at: str) -> str:
    from datetime import datetime

    repo = open_repo(store)
    repo.pack_size = SMALL_PACK  # several packs from little data, so repacking has work
    result = SnapshotRun(repo).run(source, [], at=datetime.fromisoformat(at))
    return result.manifest.id.hex()


def _build(store) -> dict[str, dict[str, list[dict]]]:
    """Three snapshots of two sources; the first is then forgotten. Returns what each kept
    snapshot must restore to."""
    init_repo(store)
    orders = make_orders(3000)
    first = _snapshot(store, ListSource("shop", {"orders": orders}), "2026-01-01T00:00:00+00:00")
    # night 2: two thirds of the records change, so night 1's packs become mostly garbage
    night2 = [dict(o, status="SHIPPED") if i < 2000 else o
              for i, o in enumerate(orders)]
    second = _snapshot(store, ListSource("shop", {"orders": night2}), "2026-01-02T00:00:00+00:00")
    other = make_orders(400, seed=3, start=9000)
    third = _snapshot(store, ListSource("other", {"orders": other}), "2026-01-02T01:00:00+00:00")
    store.delete(snapshot_name(bytes.fromhex(first)))  # what `forget` does
    return {second: {"orders": night2}, third: {"orders": other}}


def _assert_restorable(store, expected: dict[str, dict[str, list[dict]]], out: Path) -> None:
    repo = open_repo(store)
    manifests = {m.id.hex(): m for m in load_manifests(repo)}
    assert set(manifests) == set(expected)
    for sid, datasets in expected.items():
        target = out / sid[:8]
        shutil.rmtree(target, ignore_errors=True)
        restore_snapshot(repo, manifests[sid], target)
        for name, records in datasets.items():
            assert restored_records(target / f"{name}.jsonl") == canonical_sorted(records)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path):
    if request.param == "local":
        return LocalStore(tmp_path / "repo")
    seaweed = request.getfixturevalue("seaweed")
    return open_store(request.getfixturevalue("s3_url"), endpoint_url=seaweed.endpoint_url,
                      region="us-east-1")


def test_prune_deletes_and_repacks_and_keeps_every_snapshot(store, tmp_path: Path) -> None:
    expected = _build(store)
    before = sum(i.size for i in store.list("data/"))
    dry = prune_repository(open_repo(store), dry_run=True, max_unused=0.0)
    assert dry.packs_deleted + dry.packs_repacked > 0
    assert sum(i.size for i in store.list("data/")) == before  # a dry run changes nothing

    report = prune_repository(open_repo(store), max_unused=0.0)
    assert report.packs_deleted >= 1 and report.packs_repacked >= 1
    assert (report.packs_deleted, report.packs_repacked) == (dry.packs_deleted,
                                                             dry.packs_repacked)
    after = sum(i.size for i in store.list("data/"))
    assert after < before and before - after == report.bytes_freed
    assert len(list(store.list("index/"))) == 1  # one consolidated index object
    _assert_restorable(store, expected, tmp_path / "out")
    check = check_repository(open_repo(store), read_data=True)
    assert check.ok and check.unreferenced_packs == 0

    again = prune_repository(open_repo(store), max_unused=0.0)  # nothing left to do
    assert (again.packs_deleted, again.packs_repacked, again.indexes_written) == (0, 0, 0)


def test_prune_with_no_snapshots_left_empties_the_repository(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    sid = _snapshot(store, ListSource("shop", {"orders": make_orders(500)}),
                    "2026-01-01T00:00:00+00:00")
    store.delete(snapshot_name(bytes.fromhex(sid)))
    report = prune_repository(open_repo(store))
    assert report.packs_deleted >= 1
    assert list(store.list("data/")) == []
    assert check_repository(open_repo(store), read_data=True).ok


def test_prune_ignores_a_snapshot_that_cannot_be_read_and_leaves_it(tmp_path: Path) -> None:
    """A manifest that does not open is not a snapshot (docs/FORMAT.md §12.3): anyone with
    write access could plant one, and under Object Lock nobody could remove it, so prune
    must not refuse to run because of it. It warns, and leaves the object in place."""
    store = LocalStore(tmp_path / "repo")
    expected = _build(store)
    damaged, kept = list(expected)
    victim = snapshot_name(bytes.fromhex(damaged))
    data = bytearray(store.get(victim))
    data[-1] ^= 1
    store.delete(victim)
    store.put(victim, bytes(data))
    report = prune_repository(open_repo(store))
    assert report.snapshots == 1 and any(victim in w for w in report.warnings)
    assert store.exists(victim)
    _assert_restorable(store, {kept: expected[kept]}, tmp_path / "out")


def test_leftovers_of_an_interrupted_snapshot_are_removed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    expected = _build(store)
    prune_repository(open_repo(store))
    # a pack no index lists (a snapshot killed before writing its index) and garbage
    store.put("data/ab/" + "ab" * 32, b"\x00" * 100)
    repo = open_repo(store)
    repo.pack_size = SMALL_PACK
    from sellerbak.repository.index import Index
    from sellerbak.repository.packs import PackWriter

    writer = PackWriter(repo, Index())
    writer.add(repo.chunk_id(b'{"id":"zz"}\n'), b'{"id":"zz"}\n')
    writer.flush()
    writer.close()
    for name in [i.name for i in store.list("index/")]:
        if bytes.fromhex(name.split("/")[-1]) in writer.index_ids:
            store.delete(name)
    report = prune_repository(open_repo(store))
    assert report.unindexed_packs == 2 and report.packs_deleted == 2
    _assert_restorable(store, expected, tmp_path / "out")


# ---- killed in the middle --------------------------------------------------------------------

KILL_AFTER = """
import os, signal, sys
from sellerbak.storage.local import LocalStore

budget = int(os.environ["KILL_AFTER_WRITES"])
seen = [0]
for method in ("put", "delete"):
    original = getattr(LocalStore, method)

    def counted(self, *args, _original=original, **kwargs):
        seen[0] += 1
        if seen[0] > budget:
            os.kill(os.getpid(), signal.SIGKILL)
        return _original(self, *args, **kwargs)

    setattr(LocalStore, method, counted)

from sellerbak.cli import main
main(sys.argv[1:])
"""


def _config(tmp: Path, repo: Path) -> Path:
    path = tmp / "sellerbak.yaml"
    path.write_text(json.dumps({"repository": {"url": f"file://{repo}"},
                                "state_dir": str(tmp / "state"), "sources": []}))
    return path


def test_prune_killed_at_every_write_leaves_every_snapshot_restorable(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    expected = _build(LocalStore(pristine))
    crashes = 0
    for budget in range(0, 200):
        work = tmp_path / f"run{budget}"
        shutil.copytree(pristine, work / "repo")
        config = _config(work, work / "repo")
        proc = subprocess.run(
            [sys.executable, "-c", KILL_AFTER, "-c", str(config), "prune", "--max-unused",
             "20%"], env=cli_env(KILL_AFTER_WRITES=str(budget)), capture_output=True,
            text=True, timeout=120)
        store = LocalStore(work / "repo")
        if proc.returncode == 0:
            break  # the budget covered every write: prune ran to the end
        assert proc.returncode == -9, proc.stderr
        crashes += 1
        _assert_restorable(store, expected, work / "out")
        # the next prune (the killed one's lock is stale: its process is gone) finishes
        report = prune_repository(open_repo(store), max_unused=0.2)
        assert report.snapshots == len(expected)
        _assert_restorable(store, expected, work / "out")
        assert check_repository(open_repo(store), read_data=True).ok
        shutil.rmtree(work)
    else:
        pytest.fail("prune never finished")
    # lock, repacked packs, index, deletions: a kill was tried between every pair of writes
    assert crashes >= 6
    assert os.listdir(work / "repo" / "locks") == []


# ---- locks -----------------------------------------------------------------------------------

def test_second_prune_fails_with_exit_11_naming_the_holder(tmp_path: Path) -> None:
    import socket

    repo_dir = tmp_path / "repo"
    _build(LocalStore(repo_dir))
    config = _config(tmp_path, repo_dir)
    with RepositoryLock(open_repo(LocalStore(repo_dir)), exclusive=False):
        proc = subprocess.run([sys.executable, "-m", "sellerbak", "-c", str(config), "prune"],
                              env=cli_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 11
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: repository is locked")
        assert f"pid {os.getpid()}" in lines[0] and socket.gethostname() in lines[0]
        proc = subprocess.run([sys.executable, "-m", "sellerbak", "-c", str(config),
                               "--retry-lock", "2s", "prune"], env=cli_env(),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 11 and "waited 2s" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "sellerbak", "-c", str(config), "--json",
                           "prune"], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["packs_deleted"] >= 1


def test_a_dry_run_ignoring_snapshots_plans_what_the_real_run_does(tmp_path: Path) -> None:
    """`forget --dry-run --prune` passes the snapshots it would remove as ignored."""
    store = LocalStore(tmp_path / "repo")
    expected = _build(store)
    second = bytes.fromhex(next(iter(expected)))
    dry = prune_repository(open_repo(store), dry_run=True, ignore={second})
    store.delete(snapshot_name(second))
    real = prune_repository(open_repo(store))
    assert (dry.snapshots, dry.packs_deleted, dry.packs_repacked, dry.bytes_deleted) == (
        real.snapshots, real.packs_deleted, real.packs_repacked, real.bytes_deleted)
    assert real.packs_deleted >= 1
    with pytest.raises(ValueError):
        prune_repository(open_repo(store), ignore={second})
