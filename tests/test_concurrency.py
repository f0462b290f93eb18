"""Concurrency through the real CLI: two snapshots of the same source at once, and prune
racing snapshots. Every snapshot that says it was stored restores; nothing referenced is
deleted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from sellerbak.repository.check import check_repository
from sellerbak.repository.manifest import load_manifests
from sellerbak.repository.repo import snapshot_name
from sellerbak.restore.restore import restore_snapshot
from sellerbak.storage.local import LocalStore
from tests.helpers import cli_env, open_repo, run_cli, write_config


def _start(cfg: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sellerbak", "-c", str(cfg), "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(), stdin=subprocess.DEVNULL)


def _all_restore(repo_dir: Path, out: Path, stored: list[str]) -> None:
    repo = open_repo(LocalStore(repo_dir))
    manifests = {m.id.hex(): m for m in load_manifests(repo)}
    assert set(stored) <= set(manifests)  # every snapshot that said "stored" is there
    for sid, m in manifests.items():
        restored = restore_snapshot(repo, m, out / sid[:12])  # verified against the manifest
        assert {r.name for r in restored} == set(m.datasets)
    assert check_repository(repo, read_data=True).ok


def _setup(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path, "./repo", [{"name": "shop", "type": "demo", "seed": 5,
                                             "orders": 6000}])
    assert run_cli("-c", str(cfg), "init").returncode == 0
    return cfg


def test_two_snapshots_of_the_same_source_at_once(tmp_path: Path) -> None:
    cfg = _setup(tmp_path)
    procs = [_start(cfg, "snapshot") for _ in range(2)]
    stored = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        stored += [s["id"] for s in json.loads(out)["snapshots"]]
    assert len(set(stored)) == 2
    _all_restore(tmp_path / "repo", tmp_path / "out", stored)
    # the two identical snapshots share their data: one more snapshot adds nothing
    again = json.loads(run_cli("-c", str(cfg), "--json", "snapshot").stdout)
    assert again["snapshots"][0]["bytes_added"] < 64 * 1024


def test_prune_racing_snapshots_deletes_nothing_referenced(tmp_path: Path) -> None:
    cfg = _setup(tmp_path)
    first = json.loads(run_cli("-c", str(cfg), "--json", "snapshot").stdout)
    store = LocalStore(tmp_path / "repo")
    stored: list[str] = []
    outcomes = {"prune": [], "snapshot": []}
    # at least three nights, and more (up to eight) until a prune has met a running snapshot:
    # how soon that happens depends on how fast this machine runs each of them
    for night in range(8):
        if night >= 3 and 11 in outcomes["prune"] and stored:
            break
        assert run_cli("-c", str(cfg), "demo", "advance").returncode == 0
        # the snapshot waits for a prune's exclusive lock (else it would give up at once, and
        # no prune would ever meet it); prunes started while it holds its lock stop
        snap = _start(cfg, "--retry-lock", "5m", "snapshot")
        # prunes fired while the snapshot runs: each either ran before the snapshot took its
        # lock, or found the lock and stopped (exit 11) without touching anything
        while snap.poll() is None:
            prune = run_cli("-c", str(cfg), "--json", "prune")
            assert prune.returncode in (0, 11), prune.stderr
            outcomes["prune"].append(prune.returncode)
            time.sleep(0.05)
        out, err = snap.communicate(timeout=300)
        assert snap.returncode in (0, 11), err
        outcomes["snapshot"].append(snap.returncode)
        if snap.returncode == 0:
            stored += [s["id"] for s in json.loads(out)["snapshots"]]
        # forget the oldest, so the next prune has something to delete while snapshots run
        if night == 0:  # as a forget on another machine would, hence accept-rollback
            store.delete(snapshot_name(bytes.fromhex(first["snapshots"][0]["id"])))
            assert run_cli("-c", str(cfg), "accept-rollback").returncode == 0
    assert 11 in outcomes["prune"] and stored  # the race really happened, and data landed
    _all_restore(tmp_path / "repo", tmp_path / "out", stored)
    final = json.loads(run_cli("-c", str(cfg), "--json", "prune").stdout)
    assert final["snapshots"] == len(stored)  # the forgotten first one is gone, no other
    _all_restore(tmp_path / "repo", tmp_path / "out2", stored)
