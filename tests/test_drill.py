"""drill: restores into scratch, re-verifies every dataset from disk, reports RTO and RPO, and
fails loudly when a dataset does not verify or the newest snapshot is too old."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sellerbak.storage.local import LocalStore
from tests.helpers import run_cli, write_config
from tests.test_cli import _files_source


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def _setup(tmp_path: Path, **extra) -> Path:
    _files_source(tmp_path)
    (tmp_path / "exports2").mkdir()
    (tmp_path / "exports2" / "products.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "price": i}) + "\n" for i in range(40)))
    cfg = write_config(tmp_path, "./repo", [
        {"name": "shop", "type": "files", "path": "./exports"},
        {"name": "outlet", "type": "files", "path": "./exports2"}], **extra)
    _ok(run_cli("-c", str(cfg), "init"))
    return cfg


def test_drill_restores_verifies_and_reports(tmp_path: Path) -> None:
    cfg = _setup(tmp_path, drill={"max_age": "36h", "scratch_dir": "./scratch"})
    _ok(run_cli("-c", str(cfg), "snapshot", "--time",
                (datetime.now(UTC) - timedelta(days=3)).isoformat()))
    _ok(run_cli("-c", str(cfg), "snapshot"))  # the newest of each source is the one drilled
    report_file = tmp_path / "reports" / "drill.md"
    out = json.loads(_ok(run_cli("-c", str(cfg), "--json", "drill", "--report",
                                 str(report_file))).stdout)
    assert out["ok"] and out["verified"] and out["fresh"]
    assert sorted((d["source"], d["name"], d["records"]) for d in out["datasets"]) == [
        ("outlet", "products", 40), ("shop", "finance/statements", 20), ("shop", "orders", 300)]
    assert all(d["ok"] and len(d["sha256"]) == 64 for d in out["datasets"])
    assert set(out["rpo_seconds"]) == {"shop", "outlet"}
    assert all(0 <= age < 3600 for age in out["rpo_seconds"].values())
    assert out["rto_seconds"] > 0 and out["scratch"] is None
    assert list((tmp_path / "scratch").iterdir()) == []  # the scratch copy is gone
    text = report_file.read_text()
    assert text.startswith("# Restore drill PASSED") and "RTO" in text and "RPO" in text
    assert "| shop | orders | 300 |" in text

    kept = json.loads(_ok(run_cli("-c", str(cfg), "--json", "drill", "--keep", "--source",
                                  "shop")).stdout)
    orders = Path(kept["scratch"]) / "shop"
    restored = list(orders.rglob("orders.jsonl"))
    assert len(restored) == 1 and len(restored[0].read_text().splitlines()) == 300


def test_drill_fails_when_the_newest_snapshot_is_too_old(tmp_path: Path) -> None:
    cfg = _setup(tmp_path, drill={"max_age": "36h"})
    old = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    _ok(run_cli("-c", str(cfg), "snapshot", "--time", old))
    report_file = tmp_path / "drill.md"
    proc = run_cli("-c", str(cfg), "drill", "--report", str(report_file))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "more than drill.max_age (1d 12h)" in errors[0]
    assert report_file.read_text().startswith("# Restore drill FAILED")
    # the restore itself verified: only freshness failed
    out = json.loads(run_cli("-c", str(cfg), "--json", "drill", "--max-age", "3d").stdout)
    assert out["ok"] and out["verified"]


def test_drill_fails_on_damaged_data_and_on_a_source_without_snapshots(tmp_path: Path) -> None:
    cfg = _setup(tmp_path)
    _ok(run_cli("-c", str(cfg), "snapshot", "--source", "shop"))
    proc = run_cli("-c", str(cfg), "--json", "drill")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["verified"] and "source outlet has no snapshot" in out["problems"]

    store = LocalStore(tmp_path / "repo")
    pack = next(store.list("data/")).name
    path = tmp_path / "repo" / pack
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    proc = run_cli("-c", str(cfg), "--json", "drill", "--source", "shop")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert not out["verified"] and not out["ok"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "drill failed" in errors[0]
