"""Dataset names that restore could not write are refused when the snapshot is taken.

A `files` source names a dataset after its file (`...jsonl` would be dataset `..`), and two
files can name datasets that restore would write to one path (`a.csv` beside a directory
`a.jsonl`). Stored, they make a snapshot that never restores; the snapshot must fail instead,
with one line naming the file, and store nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.errors import SourceError
from sellerbak.repository.dataset_names import DatasetNameError, check_names, name_problem
from sellerbak.storage.local import LocalStore
from tests.helpers import ListSource, init_repo, run_cli, write_config


def _snapshot(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exports = tmp_path / "exports"
    for rel, text in files.items():
        path = exports / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    cfg = write_config(tmp_path, "./repo", [{"name": "files", "type": "files",
                                             "path": str(exports)}])
    assert run_cli("-c", str(cfg), "init").returncode == 0
    return run_cli("-c", str(cfg), "snapshot")


JSONL = '{"id":"1","x":1}\n'
CSV = "id,x\n1,2\n"


@pytest.mark.parametrize("files", [
    {"...jsonl": JSONL},
    {"a.csv": CSV, "a.jsonl/b.jsonl": JSONL},
    {"Orders.jsonl": JSONL, "orders.jsonl": JSONL},
    {"a.jsonl": JSONL, "a/b.jsonl": JSONL},
    {"x\x01y.jsonl": JSONL},
    {"a\\b.jsonl": JSONL},
    {"caf\u00e9.jsonl": JSONL, "cafe\u0301.jsonl": JSONL},
], ids=["dot-dot", "file-vs-directory", "case-only", "prefix", "control", "backslash",
        "normalisation"])
def test_unrestorable_names_fail_the_snapshot(tmp_path: Path, files: dict[str, str]) -> None:
    proc = _snapshot(tmp_path, files)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cannot be stored as dataset" in lines[0]
    assert any(repr(rel) in lines[0] for rel in files), lines[0]
    listed = run_cli("-c", str(tmp_path / "sellerbak.yaml"), "--json", "snapshots")
    assert listed.returncode == 0 and '"id"' not in listed.stdout


def test_names_restore_accepts_still_snapshot_and_restore(tmp_path: Path) -> None:
    files = {"orders.jsonl": JSONL, "finance/statements.csv": CSV, "a.b.jsonl": JSONL,
             "caf\u00e9/x.jsonl": JSONL}
    proc = _snapshot(tmp_path, files)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    restored = run_cli("-c", str(tmp_path / "sellerbak.yaml"), "restore", "latest",
                       "--target", str(out))
    assert restored.returncode == 0, restored.stderr
    for rel in ("orders.jsonl", "finance/statements.jsonl", "a.b.jsonl", "caf\u00e9/x.jsonl"):
        assert (out / rel).is_file(), rel


@pytest.mark.parametrize("names", [
    [".."], ["a/../b"], ["./a"], ["a//b"], ["/a"], ["a/"], [""], ["a\0b"], ["a\nb"],
    ["a\x7fb"], ["a\x85b"], ["a\\b"], ["\ud800"], ["x" * 241], ["/".join(["x"] * 600)],
    ["a", "A"], ["a", "a/b"], ["a/b", "a"], ["a", "a.jsonl/b"], ["a.csv/b", "a"],
    ["A/b", "a/c/d", "a"], ["stra\u00dfe", "STRASSE"],
])
def test_the_rule_refuses(names: list[str]) -> None:
    with pytest.raises(DatasetNameError):
        check_names(names)


@pytest.mark.parametrize("names", [
    ["orders", "customers", "finance/statements", "finance/transactions"],
    ["a", "ab", "a.b", "a-jsonl/b", "b/a", "x" * 240], ["a.jsonl", "a"], ["caf\u00e9", "cafe"],
])
def test_the_rule_accepts(names: list[str]) -> None:
    check_names(names)
    assert all(name_problem(n) is None for n in names)


@pytest.mark.parametrize("names", [["a\0b"], ["a//b"], ["orders", "Orders"], ["a", "a/b"]],
                         ids=["nul", "empty-segment", "case", "prefix"])
def test_any_source_is_held_to_the_rule(tmp_path: Path, names: list[str]) -> None:
    """The snapshot writer itself refuses, whatever the source: nothing is stored."""
    repo = init_repo(LocalStore(tmp_path / "repo"))
    source = ListSource("list", {n: [{"id": "1"}] for n in names})
    run = SnapshotRun(repo)
    with pytest.raises(SourceError, match="cannot be stored") as caught:
        run.run(source, tags=[])
    assert "\n" not in str(caught.value)
    assert run.manifests == []


def test_restore_uses_the_same_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot an older writer stored with colliding names: restore refuses the pair in
    one line (no file written), and restores each on its own."""
    from sellerbak.backup import snapshot
    from sellerbak.errors import IntegrityError
    from sellerbak.restore.restore import restore_snapshot

    repo = init_repo(LocalStore(tmp_path / "repo"))
    monkeypatch.setattr(snapshot, "_take_name", lambda *args: None)
    source = ListSource("list", {"a": [{"id": "1"}], "a.jsonl/b": [{"id": "2"}]})
    manifest = SnapshotRun(repo).run(source, tags=[]).manifest
    with pytest.raises(IntegrityError, match="--dataset") as caught:
        restore_snapshot(repo, manifest, tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    for name in ("a", "a.jsonl/b"):
        (done,) = restore_snapshot(repo, manifest, tmp_path / name.replace("/", "_"), [name])
        assert done.records == 1
