"""Rollback detection without Object Lock: deleting the newest snapshot manifests must not make
`restore latest` silently older or the next snapshot fork from the old parent. Real CLI
processes, a files source, a local repository and a real SeaweedFS S3 one."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.helpers import cli_env, run_cli, write_config


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def _config(tmp_path: Path, url: str = "./repo", **extra: Any) -> Path:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "orders.jsonl").write_text(
        "".join(json.dumps({"id": f"o{i:04d}", "total": i}) + "\n" for i in range(50)))
    return write_config(tmp_path, url, [{"name": "shop", "type": "files", "path": "./shop"}],
                        **extra)


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-c", str(cfg), *args, env=cli_env())


def _snapshot(cfg: Path, days_ago: float) -> dict[str, str]:
    when = (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()
    out = json.loads(_ok(_cli(cfg, "--json", "snapshot", "--time", when)).stdout)
    return out["snapshots"][0]


def _ids(cfg: Path) -> list[str]:
    return [s["id"] for s in json.loads(_ok(_cli(cfg, "--json", "snapshots")).stdout)]


def _one_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _record(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "state" / "seen").glob("*.json")
    return path


def test_deleting_the_newest_snapshot_is_noticed_until_accepted(tmp_path: Path) -> None:
    cfg = _config(tmp_path, drill={"max_age": "30d"})
    _ok(_cli(cfg, "init"))
    old = _snapshot(cfg, 2)
    new = _snapshot(cfg, 1)
    record = _record(tmp_path)
    assert record.stat().st_mode & 0o777 == 0o600
    assert json.loads(record.read_text())["sources"]["shop"]["id"] == new["id"]

    # someone with write access to the bucket deletes the newest manifest
    (tmp_path / "repo" / "snapshots" / new["id"]).unlink()
    assert _ids(cfg) == [old["id"]]  # listing still works: it shows what is there
    for args in (("restore", "latest", "--target", str(tmp_path / "out")), ("drill",),
                 ("snapshot",)):
        line = _one_error(_cli(cfg, *args))
        assert f"snapshot {new['id'][:8]} of source shop ({new['time']})" in line, args
        assert "missing from the repository" in line and "accept-rollback" in line
    assert _ids(cfg) == [old["id"]]  # the snapshot did not fork from the old parent
    assert not (tmp_path / "out").exists()
    check = _cli(cfg, "check")
    assert check.returncode == 1 and f"error: snapshot {new['id'][:8]}" in check.stderr

    # the documented way out: it names what is missing, then the repository is taken as is
    dry = _ok(_cli(cfg, "accept-rollback", "--dry-run"))
    assert f"{new['id'][:8]}\t{new['time']}\tmissing" in dry.stdout
    assert _cli(cfg, "restore", "latest", "--target", str(tmp_path / "out")).returncode == 1
    _ok(_cli(cfg, "accept-rollback"))
    restored = _ok(_cli(cfg, "restore", "latest", "--target", str(tmp_path / "out")))
    assert f"of snapshot {old['id'][:8]}" in restored.stderr
    _ok(_cli(cfg, "check"))


def test_forget_on_this_machine_updates_the_record(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _ok(_cli(cfg, "init"))
    old = _snapshot(cfg, 2)
    new = _snapshot(cfg, 1)
    _ok(_cli(cfg, "forget", "--dry-run", new["id"][:12]))
    assert json.loads(_record(tmp_path).read_text())["sources"]["shop"]["id"] == new["id"]
    _ok(_cli(cfg, "forget", new["id"][:12]))
    assert json.loads(_record(tmp_path).read_text())["sources"]["shop"]["id"] == old["id"]
    _ok(_cli(cfg, "restore", "latest", "--target", str(tmp_path / "out")))
    _ok(_cli(cfg, "check"))
    night = json.loads(_ok(_cli(cfg, "--json", "snapshot")).stdout)["snapshots"][0]
    parents = {s["id"]: s["parent"] for s in json.loads(_cli(cfg, "--json",
                                                               "snapshots").stdout)}
    assert parents[night["id"]] == old["id"]


def test_a_tampered_record_cannot_make_a_rollback_pass(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _ok(_cli(cfg, "init"))
    old = _snapshot(cfg, 2)
    new = _snapshot(cfg, 1)
    (tmp_path / "repo" / "snapshots" / new["id"]).unlink()
    # the record rewritten to point at the older snapshot, without the repository key
    record = _record(tmp_path)
    doc = json.loads(record.read_text())
    doc["sources"]["shop"] = {"id": old["id"], "time": old["time"]}
    record.write_text(json.dumps(doc))
    line = _one_error(_cli(cfg, "restore", "latest", "--target", str(tmp_path / "out")))
    assert "record of seen snapshots" in line and "damaged" in line
    _one_error(_cli(cfg, "snapshot"))
    assert _ids(cfg) == [old["id"]]


def test_rollback_on_s3_is_noticed_before_the_next_snapshot(tmp_path: Path, s3_url: str,
                                                            seaweed: Any) -> None:
    cfg = _config(tmp_path, s3_url, repository={"endpoint_url": seaweed.endpoint_url,
                                                 "region": "us-east-1"})
    _ok(_cli(cfg, "init"))
    _snapshot(cfg, 2)
    new = _snapshot(cfg, 1)
    bucket, prefix = s3_url.removeprefix("s3://").split("/", 1)
    seaweed.client().delete_object(Bucket=bucket, Key=f"{prefix}/snapshots/{new['id']}")
    line = _one_error(_cli(cfg, "snapshot"))
    assert f"snapshot {new['id'][:8]} of source shop" in line
    assert len(_ids(cfg)) == 1


def test_record_library_damaged_newest_and_forgetting_older_ones(tmp_path: Path) -> None:
    """Library level: a damaged newest manifest counts as missing; forgetting a snapshot that
    is not the recorded one changes nothing; records are per repository."""
    import pytest

    from sellerbak.backup.snapshot import SnapshotRun
    from sellerbak.repository.manifest import load_manifests
    from sellerbak.repository.seen import RollbackError, SeenRecord
    from sellerbak.storage.local import LocalStore
    from tests.helpers import ListSource, init_repo, open_repo

    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    src = ListSource("shop", {"orders": [{"id": "o1"}]})
    base = datetime(2026, 3, 1, tzinfo=UTC)
    made = [SnapshotRun(open_repo(store), clock=lambda d=d: base + timedelta(days=d)).run(
        src, []).manifest for d in range(3)]
    repo = open_repo(store)
    record = SeenRecord(tmp_path / "state", repo)
    record.check(load_manifests(repo), now=base + timedelta(days=3))
    assert record.sources["shop"].id == made[2].id.hex()

    record.forgot([made[0].id], made[1:])
    assert SeenRecord(tmp_path / "state", repo).sources["shop"].id == made[2].id.hex()

    manifest_file = tmp_path / "repo" / "snapshots" / made[2].id.hex()
    data = bytearray(manifest_file.read_bytes())
    data[-1] ^= 1
    manifest_file.write_bytes(bytes(data))
    with pytest.raises(RollbackError, match=f"snapshot {made[2].short_id} of source shop"):
        SeenRecord(tmp_path / "state", repo).verify(load_manifests(repo))

    other_store = LocalStore(tmp_path / "other")
    init_repo(other_store)
    assert SeenRecord(tmp_path / "state", open_repo(other_store)).sources == {}
