"""Restore writes only inside its target: a symlink planted there (a folder such as `finance`
pointing elsewhere, or a dataset file pointing at someone else's file) never makes it create,
truncate or replace a file outside the target. Through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_cli, write_config


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    data = tmp_path / "exports"
    (data / "finance").mkdir(parents=True)
    (data / "orders.jsonl").write_text(
        "".join(json.dumps({"id": f"o{i}", "amount": i}) + "\n" for i in range(30)))
    (data / "finance" / "statements.csv").write_text(
        "id,amount,currency\n" + "".join(f"s{i},{i}.50,USD\n" for i in range(10)))
    path = write_config(tmp_path, "./repo", [{"name": "shop", "type": "files",
                                              "path": "./exports"}])
    _ok(run_cli("-c", str(path), "init"))
    _ok(run_cli("-c", str(path), "snapshot"))
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_symlinked_folder_in_the_target_is_refused(cfg: Path, tmp_path: Path,
                                                   fmt: str) -> None:
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (outside / f"statements.{fmt}").write_text("someone else's file\n")
    before = _tree(outside)
    os.symlink(outside, target / "finance")
    proc = run_cli("-c", str(cfg), "restore", "latest", "--target", str(target),
                   "--format", fmt)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert str(target / "finance") in lines[0] and "symbolic link" in lines[0]
    assert _tree(outside) == before, "a file outside the target was written"
    assert sorted(p.name for p in outside.iterdir()) == [f"statements.{fmt}"]
    # all or nothing: no dataset was moved in before the refusal, no staging left behind
    assert sorted(p.name for p in target.iterdir()) == ["finance"]


def test_file_where_a_folder_goes_is_refused_and_kept(cfg: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "finance").write_text("mine\n")
    proc = run_cli("-c", str(cfg), "restore", "latest", "--target", str(target),
                   "--dataset", "finance/statements")
    assert proc.returncode == 1 and str(target / "finance") in proc.stderr, proc.stderr
    assert (target / "finance").read_text() == "mine\n"


def test_symlinked_dataset_file_is_replaced_not_written_through(cfg: Path,
                                                                tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    os.symlink(victim, target / "orders.jsonl")
    _ok(run_cli("-c", str(cfg), "restore", "latest", "--target", str(target)))
    assert victim.read_text() == "keep me\n"
    assert not (target / "orders.jsonl").is_symlink()
    assert len((target / "orders.jsonl").read_text().splitlines()) == 30


def test_restore_into_a_symlinked_target_is_the_users_choice(cfg: Path,
                                                            tmp_path: Path) -> None:
    real = tmp_path / "real-target"
    real.mkdir()
    os.symlink(real, tmp_path / "target")
    _ok(run_cli("-c", str(cfg), "restore", "latest", "--target", str(tmp_path / "target")))
    assert (real / "finance" / "statements.jsonl").is_file()
    assert (real / "finance").stat().st_mode & 0o777 == 0o700
