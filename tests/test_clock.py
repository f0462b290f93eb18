"""Snapshots dated in the future (a night with the clock ahead, or `snapshot --time` in the
future) must not freeze later backups, `latest`, retention or drills; `forget ID` removes one.

Library tests inject "now" through SnapshotRun's clock; CLI tests date snapshots with --time and
plant a future-dated one through the library (the CLI refuses to write one)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.errors import UsageError
from sellerbak.repository.manifest import load_manifests, resolve_snapshot
from sellerbak.repository.retention import RetentionPolicy, apply_policy
from sellerbak.repository.timeline import ClockBehindError
from sellerbak.restore.restore import restore_snapshot
from sellerbak.storage.local import LocalStore
from tests.helpers import ListSource, cli_env, init_repo, open_repo, run_cli, write_config
from tests.tiktok_server import DAY, FakeTikTokShop, expected_datasets, make_source


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def _restored(repo: Any, manifest: Any, target: Path) -> dict[str, list[dict[str, Any]]]:
    return {r.name: [json.loads(x) for x in r.path.read_text().splitlines()]
            for r in restore_snapshot(repo, manifest, target)}


# ----- the TikTok source: a night after a future-dated snapshot still stores new orders -------


def test_tiktok_night_after_a_future_dated_snapshot_stores_the_new_orders(tmp_path: Path
                                                                           ) -> None:
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    with FakeTikTokShop(orders=600, night=0) as srv:
        def shop_now() -> datetime:
            return datetime.fromtimestamp(srv.clock(), UTC)

        first = SnapshotRun(open_repo(store), clock=shop_now).run(
            make_source(srv, tmp_path / "state"), [])
        # one night with the machine's clock 400 days ahead: the snapshot and its cursors are
        # dated then, and nothing in the shop has changed yet
        srv.fast_forward = 400 * DAY
        ahead = SnapshotRun(open_repo(store), clock=shop_now).run(
            make_source(srv, tmp_path / "state", tokens=False), [])
        assert ahead.manifest.datetime > first.manifest.datetime + timedelta(days=399)

        srv.advance()  # the clock is right again; a night of new orders and changes
        warnings: list[str] = []
        run = SnapshotRun(open_repo(store), clock=shop_now, warn=warnings.append)
        night = run.run(make_source(srv, tmp_path / "state", tokens=False), [])
        expect = expected_datasets(srv.shop)
        assert len(expect["orders"]) > 600  # the night brought new orders
        got = _restored(open_repo(store), night.manifest, tmp_path / "out")
        assert got["orders"] == expect["orders"] and got == expect
        assert night.manifest.parent == first.manifest.id.hex()
        assert len(warnings) == 1 and ahead.manifest.short_id in warnings[0]
        assert "in the future" in warnings[0]
        latest = resolve_snapshot(open_repo(store), "latest", now=shop_now())
        assert latest.id == night.manifest.id


# ----- library: the snapshot time against "now" and the parent --------------------------------


def test_snapshot_time_is_checked_against_an_injected_clock(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    now = datetime(2026, 5, 1, 2, 0, tzinfo=UTC)
    src = ListSource("shop", {"orders": [{"id": "o1"}]})
    first = SnapshotRun(open_repo(store), clock=lambda: now).run(src, [])
    assert first.manifest.datetime == now
    with pytest.raises(UsageError, match="in the future"):
        SnapshotRun(open_repo(store), clock=lambda: now).run(
            src, [], at=now + timedelta(minutes=6))
    with pytest.raises(UsageError, match=f"before snapshot {first.manifest.short_id}"):
        SnapshotRun(open_repo(store), clock=lambda: now).run(
            src, [], at=now - timedelta(hours=1))
    # the clock went back an hour, less than the skew allowed for the newest snapshot
    behind = now - timedelta(minutes=3)
    with pytest.raises(ClockBehindError, match="clock .* is behind the time of snapshot"):
        SnapshotRun(open_repo(store), clock=lambda: behind).run(src, [])
    assert len(load_manifests(open_repo(store))) == 1  # nothing was stored


def test_retention_does_not_count_a_future_dated_snapshot() -> None:
    class Snap:
        def __init__(self, n: int, when: datetime) -> None:
            self.id, self.source, self.tags, self.datetime = bytes([n]) * 32, "shop", [], when

    now = datetime(2026, 5, 10, 12, tzinfo=UTC)
    real = [Snap(i, now - timedelta(days=i)) for i in range(1, 5)]
    future = Snap(9, now + timedelta(days=400))
    decisions = apply_policy([*real, future], RetentionPolicy(keep_last=2, keep_daily=2), now)
    by_id = {d.manifest.id: d for d in decisions}
    assert by_id[future.id].keep and by_id[future.id].future
    assert by_id[future.id].reasons == ["dated in the future"]
    assert [by_id[s.id].keep for s in real] == [True, True, False, False]


# ----- the CLI ----------------------------------------------------------------------------------


def _config(tmp_path: Path, **extra: Any) -> Path:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "orders.jsonl").write_text(
        "".join(json.dumps({"id": f"o{i:04d}", "total": i}) + "\n" for i in range(50)))
    return write_config(tmp_path, "./repo", [{"name": "shop", "type": "files",
                                             "path": "./shop"}], **extra)


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-c", str(cfg), *args, env=cli_env())


def _snapshot(cfg: Path, *args: str) -> str:
    out = json.loads(_ok(_cli(cfg, "--json", "snapshot", *args)).stdout)
    return out["snapshots"][0]["id"]


def _plant_future(tmp_path: Path, days: int = 400) -> str:
    """A snapshot of source `shop` taken on a machine whose clock was `days` ahead."""
    ahead = datetime.now(UTC) + timedelta(days=days)
    repo = open_repo(LocalStore(tmp_path / "repo"))
    src = ListSource("shop", {"orders": [{"id": "future"}]})
    return SnapshotRun(repo, clock=lambda: ahead).run(src, []).manifest.id.hex()


def test_cli_refuses_a_future_time_and_one_before_the_parent(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _ok(_cli(cfg, "init"))
    future = _cli(cfg, "snapshot", "--time", "2099-01-01")
    assert future.returncode == 2 and future.stderr.count("\n") == 1
    assert "--time 2099-01-01T00:00:00Z is in the future" in future.stderr
    assert _cli(cfg, "--json", "snapshots").stdout.strip() == "[]"

    two_days = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    parent = _snapshot(cfg, "--time", two_days)
    older = _cli(cfg, "snapshot", "--time", (datetime.now(UTC) - timedelta(days=3)).isoformat())
    assert older.returncode == 2 and f"before snapshot {parent[:8]} of shop" in older.stderr

    # a snapshot dated a little ahead (within the skew) makes this machine's clock "behind"
    _snapshot(cfg, "--time", (datetime.now(UTC) + timedelta(minutes=3)).isoformat())
    behind = _cli(cfg, "snapshot")
    assert behind.returncode == 1 and len(_error_lines(behind)) == 1
    assert "this machine's clock" in behind.stderr and "fix the clock" in behind.stderr


def test_cli_latest_drill_and_snapshots_skip_a_future_dated_snapshot(tmp_path: Path) -> None:
    cfg = _config(tmp_path, drill={"max_age": "36h"})
    _ok(_cli(cfg, "init"))
    real = _snapshot(cfg, "--time", (datetime.now(UTC) - timedelta(days=2)).isoformat())
    future = _plant_future(tmp_path)

    listing = json.loads(_ok(_cli(cfg, "--json", "snapshots")).stdout)
    assert {s["id"]: s["future"] for s in listing} == {real: False, future: True}

    restored = _ok(_cli(cfg, "restore", "latest", "--target", str(tmp_path / "out")))
    assert f"of snapshot {real[:8]}" in restored.stderr
    assert future[:8] in restored.stderr and "in the future" in restored.stderr

    # the real newest snapshot is two days old: the drill fails, the future one is named
    report = tmp_path / "drill.md"
    drill = _cli(cfg, "drill", "--report", str(report))
    assert drill.returncode == 1 and "more than drill.max_age" in _error_lines(drill)[0]
    text = report.read_text()
    assert "## Warnings" in text and future[:8] in text
    doc = json.loads(_cli(cfg, "--json", "drill").stdout)
    assert doc["snapshots"][0]["snapshot"] == real
    assert doc["rpo_seconds"]["shop"] > 47 * 3600
    assert any(future[:8] in w for w in doc["warnings"])

    # a night later, the next snapshot builds on the real one
    night = json.loads(_ok(_cli(cfg, "--json", "snapshot")).stdout)["snapshots"][0]
    parents = {s["id"]: s["parent"] for s in json.loads(_cli(cfg, "--json",
                                                               "snapshots").stdout)}
    assert parents[night["id"]] == real


def test_cli_forget_keeps_real_snapshots_and_names_a_future_one(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _ok(_cli(cfg, "init"))
    older = _snapshot(cfg, "--time", (datetime.now(UTC) - timedelta(days=2)).isoformat())
    newer = _snapshot(cfg, "--time", (datetime.now(UTC) - timedelta(days=1)).isoformat())
    future = _plant_future(tmp_path)

    doc = json.loads(_ok(_cli(cfg, "--json", "forget", "--keep-last", "1")).stdout)
    kept = {k["id"]: k["reasons"] for k in doc["sources"]["shop"]["kept"]}
    assert kept == {newer: ["last snapshot"], future: ["dated in the future"]}
    assert [r["id"] for r in doc["sources"]["shop"]["removed"]] == [older]
    human = _ok(_cli(cfg, "forget", "--keep-last", "1", "--dry-run"))
    assert f"warning: snapshot {future[:8]} of shop is dated" in human.stderr
    assert f"sellerbak forget {future[:8]}" in human.stderr


def test_cli_forget_by_id(tmp_path: Path) -> None:
    cfg = _config(tmp_path, retention={"keep_last": 5})
    _ok(_cli(cfg, "init"))
    real = _snapshot(cfg, "--time", (datetime.now(UTC) - timedelta(days=1)).isoformat())
    future = _plant_future(tmp_path)
    ids = {s["id"] for s in json.loads(_cli(cfg, "--json", "snapshots").stdout)}

    dry = json.loads(_ok(_cli(cfg, "--json", "forget", "--dry-run", future[:10])).stdout)
    assert [r["id"] for r in dry["sources"]["shop"]["removed"]] == [future]
    assert dry["policy"] is None
    assert {s["id"] for s in json.loads(_cli(cfg, "--json", "snapshots").stdout)} == ids

    mixed = _cli(cfg, "forget", future[:10], "--keep-last", "1")
    assert mixed.returncode == 2 and "--keep-last" in mixed.stderr
    absent = next(c for c in "0123456789abcdef" if not any(i.startswith(c) for i in ids))
    unknown = _cli(cfg, "forget", absent * 4)
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    assert {s["id"] for s in json.loads(_cli(cfg, "--json", "snapshots").stdout)} == ids

    # the config's keep_last 5 would keep both; with an id, only the named one goes
    _ok(_cli(cfg, "forget", future[:10]))
    assert {s["id"] for s in json.loads(_cli(cfg, "--json", "snapshots").stdout)} == {real}
