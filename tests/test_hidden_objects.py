"""Objects hidden behind delete markers in a versioned bucket, against a real SeaweedFS.

The attack: someone with the bucket's credentials but not the passphrase sends one plain
DeleteObject for the newest `snapshots/` object. The object is not gone, a delete marker hides
it. What must hold (sellerbak.repository.hidden):

- `check` fails and names every hidden object (snapshot, index, key file, config);
- `prune` still runs, warns naming it, and deletes nothing the hidden snapshot needs (also once
  Object Lock retention has ended, and it renews the hidden version's retention);
- `repair hidden` brings back the newest authentic version (never one an attacker wrote), after
  which `snapshots`, `restore latest` and `check --read-data` see a whole repository again;
- sellerbak's own deletions (forget, prune) leave no delete marker, so they never look hidden;
- a store without versions (a local folder) has nothing hidden.

The only sleep waits for a short Object Lock retention to end; nothing asserts durations.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sellerbak.storage.local import LocalStore
from sellerbak.storage.object_lock import ObjectLock
from sellerbak.storage.s3 import S3Store
from tests.helpers import ListSource, cli_env, init_repo, open_repo, run_cli, write_config
from tests.seaweed import SeaweedServer

#: a bucket with versioning on (no Object Lock), shared by this module's tests (own prefixes)
VERSIONED_BUCKET = "sellerbak-versioned"
#: a bucket with Object Lock (so also versioning)
LOCKED_BUCKET = "sellerbak-hidden-lock"


@pytest.fixture(scope="module")
def versioned_bucket(seaweed: SeaweedServer) -> str:
    client = seaweed.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=VERSIONED_BUCKET)
    client.put_bucket_versioning(Bucket=VERSIONED_BUCKET,
                                 VersioningConfiguration={"Status": "Enabled"})
    return VERSIONED_BUCKET


@pytest.fixture(scope="module")
def locked_bucket(seaweed: SeaweedServer) -> str:
    client = seaweed.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=LOCKED_BUCKET, ObjectLockEnabledForBucket=True)
    return LOCKED_BUCKET


@pytest.fixture
def prefix() -> str:
    return f"shop-{secrets.token_hex(4)}"


class Shop:
    """A repository in the versioned bucket driven through the real CLI, plus the attacker's
    plain boto3 client."""

    def __init__(self, server: SeaweedServer, bucket: str, prefix: str, tmp_path: Path) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = server.client()
        self.exports = tmp_path / "exports"
        self.exports.mkdir()
        self.tmp_path = tmp_path
        self.config = write_config(tmp_path, f"s3://{bucket}/{prefix}",
                                   [{"name": "shop", "type": "files", "path": "./exports"}],
                                   repository={"endpoint_url": server.endpoint_url})

    def cli(self, *args: str) -> Any:
        return run_cli("-c", str(self.config), *args, env=cli_env())

    def ok(self, *args: str) -> str:
        proc = self.cli(*args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def snapshot(self, night: str) -> str:
        """One night's export (records differ per night, so each night has packs of its own);
        returns the new snapshot's id."""
        with open(self.exports / "orders.jsonl", "w") as fh:
            for i in range(300):
                fh.write(json.dumps({"id": f"o{i:05d}", "night": night, "note": night * 9})
                         + "\n")
        out = json.loads(self.ok("--json", "snapshot"))
        return str(out["snapshots"][0]["id"])

    def names(self, under: str) -> set[str]:
        page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/{under}")
        return {item["Key"][len(self.prefix) + 1:] for item in page.get("Contents", [])}

    def hide(self, name: str) -> None:
        """The attack: one plain DeleteObject, as `aws s3 rm` sends it."""
        self.client.delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")

    def delete_markers(self) -> list[str]:
        page = self.client.list_object_versions(Bucket=self.bucket, Prefix=f"{self.prefix}/")
        return [m["Key"] for m in page.get("DeleteMarkers", [])]

    def restored_nights(self) -> set[str]:
        target = self.tmp_path / f"restored-{secrets.token_hex(3)}"
        self.ok("restore", "latest", "--target", str(target))
        lines = (target / "orders.jsonl").read_text().splitlines()
        assert len(lines) == 300
        return {json.loads(line)["night"] for line in lines}


@pytest.fixture
def shop(s3_env: SeaweedServer, versioned_bucket: str, prefix: str, tmp_path: Path) -> Shop:
    s3_env.start()
    return Shop(s3_env, versioned_bucket, prefix, tmp_path)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_hidden_newest_snapshot_fails_check_survives_prune_and_is_repaired(shop: Shop) -> None:
    shop.ok("init")
    shop.snapshot("monday")
    newest = shop.snapshot("tuesday")
    packs_before = shop.names("data/")
    shop.hide(f"snapshots/{newest}")
    listed = json.loads(shop.ok("--json", "snapshots"))
    assert [s["id"] for s in listed] != [] and newest not in {s["id"] for s in listed}

    proc = shop.cli("check", "--read-data")
    assert proc.returncode == 1, proc.stderr
    errors = _error_lines(proc.stderr)
    assert errors[0].startswith(f"error: snapshots/{newest} hidden by a delete marker at ")
    # this machine saw that snapshot, so its record of the newest one reports the rollback too
    assert len(errors) == 2 and f"snapshot {newest[:8]} " in errors[1]
    assert "accept-rollback" in errors[1]

    # prune runs, warns naming it, and deletes nothing the hidden snapshot needs
    proc = shop.cli("prune")
    assert proc.returncode == 0, proc.stderr
    assert shop.names("data/") == packs_before
    assert f"warning: snapshots/{newest} hidden by a delete marker" in proc.stderr
    assert all(k.endswith(f"snapshots/{newest}") for k in shop.delete_markers())

    dry = shop.cli("repair", "hidden", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would restore snapshots/{newest}" in dry.stderr
    assert f"snapshots/{newest}" not in shop.names("snapshots/")

    shop.ok("repair", "hidden")
    assert newest in {s["id"] for s in json.loads(shop.ok("--json", "snapshots"))}
    assert shop.restored_nights() == {"tuesday"}
    report = json.loads(shop.ok("--json", "check", "--read-data"))
    assert report["ok"] and report["snapshots"] == 2


def test_a_hidden_index_is_reported_and_brought_back(shop: Shop) -> None:
    shop.ok("init")
    shop.snapshot("monday")
    (index,) = shop.names("index/")
    shop.hide(index)

    proc = shop.cli("check")
    assert proc.returncode == 1, proc.stderr
    assert any(line.startswith(f"error: {index} hidden by a delete marker at ")
               for line in _error_lines(proc.stderr)), proc.stderr

    out = json.loads(shop.ok("--json", "prune"))
    assert any(w.startswith(f"{index} hidden") for w in out["warnings"])
    shop.ok("repair", "hidden")
    assert index in shop.names("index/")
    assert shop.restored_nights() == {"monday"}
    assert json.loads(shop.ok("--json", "check", "--read-data"))["ok"]


def test_hidden_config_and_key_file_are_brought_back(shop: Shop) -> None:
    shop.ok("init")
    shop.snapshot("monday")
    (key,) = shop.names("keys/")
    shop.hide("config")
    shop.hide(key)
    assert shop.cli("snapshots").returncode == 10  # the repository looks deleted

    shop.ok("repair", "hidden")
    assert shop.restored_nights() == {"monday"}
    assert json.loads(shop.ok("--json", "check"))["ok"]


def test_forget_and_prune_leave_no_delete_marker_and_no_false_alarm(shop: Shop) -> None:
    shop.ok("init")
    first = shop.snapshot("monday")
    shop.snapshot("tuesday")
    shop.ok("forget", "--keep-last", "1", "--prune")
    shop.ok("prune")
    assert shop.delete_markers() == []  # removed for good, every version
    assert f"snapshots/{first}" not in shop.names("snapshots/")
    report = json.loads(shop.ok("--json", "check", "--read-data"))
    assert report["ok"] and report["snapshots"] == 1


def test_repair_skips_versions_an_attacker_wrote_over_the_snapshot(shop: Shop) -> None:
    """Before hiding it, the attacker overwrites the newest manifest with garbage and then
    with the other snapshot's (authentic, but not bound to this name) bytes: repair restores
    the newest version that is bound to the name, the original."""
    shop.ok("init")
    older = shop.snapshot("monday")
    newest = shop.snapshot("tuesday")
    key = f"{shop.prefix}/snapshots/{newest}"
    other = shop.client.get_object(Bucket=shop.bucket,
                                   Key=f"{shop.prefix}/snapshots/{older}")["Body"].read()
    shop.client.put_object(Bucket=shop.bucket, Key=key, Body=b"\x00" * 200)
    shop.client.put_object(Bucket=shop.bucket, Key=key, Body=other)
    shop.hide(f"snapshots/{newest}")

    shop.ok("repair", "hidden")
    assert shop.restored_nights() == {"tuesday"}
    assert json.loads(shop.ok("--json", "check", "--read-data"))["ok"]


@pytest.fixture
def locked_store(s3_env: SeaweedServer, locked_bucket: str, prefix: str) -> Iterator[S3Store]:
    s3_env.start()
    store = S3Store(locked_bucket, prefix, endpoint_url=s3_env.endpoint_url,
                    region="us-east-1", retry_attempts=2, retry_min_wait=0.01,
                    retry_max_wait=0.05,
                    object_lock=ObjectLock("GOVERNANCE", timedelta(seconds=4)))
    yield store
    store.close()


def test_under_object_lock_prune_after_retention_keeps_the_hidden_snapshot(
        locked_store: S3Store, s3_env: SeaweedServer, tmp_path: Path) -> None:
    from sellerbak.backup.snapshot import SnapshotRun
    from sellerbak.repository.check import check_repository
    from sellerbak.repository.hidden import open_revealing, repair_hidden
    from sellerbak.repository.manifest import load_manifests, read_manifest
    from sellerbak.repository.prune import prune_repository
    from sellerbak.repository.repo import snapshot_name
    from sellerbak.restore.restore import restore_snapshot
    from tests.helpers import PASSPHRASE

    store = locked_store
    init_repo(store)
    old = [{"id": f"o{i:05d}", "v": "old" * 20} for i in range(3000)]
    new = [{"id": f"o{i:05d}", "v": "new" * 20} for i in range(3000)]
    SnapshotRun(open_repo(store)).run(ListSource("shop", {"orders": old}), [])
    newest = SnapshotRun(open_repo(store)).run(ListSource("shop", {"orders": new}), [])
    hidden_name = snapshot_name(newest.manifest.id)
    client = s3_env.client()
    key = f"{store.prefix}/{hidden_name}"
    client.delete_object(Bucket=store.bucket, Key=key)  # the attack
    (version,) = client.list_object_versions(Bucket=store.bucket, Prefix=key)["Versions"]
    assert [m.id for m in load_manifests(open_repo(store))] != [newest.manifest.id]

    report = check_repository(open_repo(store))
    assert [e for e in report.errors if e.startswith(f"{hidden_name} hidden")] == report.errors
    assert len(report.errors) == 1

    packs_before = {info.name for info in store.list("data/")}
    time.sleep(5.1)  # every write's 4 s retention has ended: prune could delete anything
    pruned = prune_repository(open_repo(store))
    assert {info.name for info in store.list("data/")} == packs_before
    assert any(w.startswith(f"{hidden_name} hidden") for w in pruned.warnings)
    head = client.head_object(Bucket=store.bucket, Key=key, VersionId=version["VersionId"])
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(seconds=1)

    repaired = repair_hidden(open_revealing(store, lambda: PASSPHRASE))
    assert repaired.restored == [hidden_name] and not repaired.unrecoverable
    repo = open_repo(store)
    assert store.retention_until(hidden_name) is not None  # the copy is retained too
    restore_snapshot(repo, read_manifest(repo, newest.manifest.id), tmp_path / "out")
    assert (tmp_path / "out" / "orders.jsonl").read_text().count('"new') == 3000
    assert check_repository(open_repo(store), read_data=True).ok


def test_a_store_without_versions_has_nothing_hidden(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    store.put("snapshots/" + "ab" * 32, b"x")
    store.delete("snapshots/" + "ab" * 32)
    assert store.hidden_objects("snapshots/") == []
    from sellerbak.repository.check import check_repository

    assert check_repository(open_repo(store)).ok


def test_a_hidden_object_without_an_authentic_version_is_left_and_reported(shop: Shop) -> None:
    """A planted-then-hidden 'snapshot' no key made: prune still runs, repair restores nothing
    of it and fails with one error line naming it."""
    shop.ok("init")
    shop.snapshot("monday")
    planted = f"snapshots/{'cd' * 32}"
    shop.client.put_object(Bucket=shop.bucket, Key=f"{shop.prefix}/{planted}",
                           Body=b"\x01" * 120)
    shop.hide(planted)

    out = json.loads(shop.ok("--json", "prune"))
    assert f"{planted}: no stored version is authentic" in out["warnings"]
    proc = shop.cli("repair", "hidden")
    assert proc.returncode == 1, proc.stderr
    (error,) = _error_lines(proc.stderr)
    assert planted in error and "left hidden" in error
    assert planted not in shop.names("snapshots/")
    assert shop.restored_nights() == {"monday"}
