"""S3 Object Lock against a real SeaweedFS (4.48 implements retention, legal hold, versioning and
governance bypass permissions): what the claims in docs/SECURITY.md rest on.

- every object sellerbak writes (single PUT and multipart) carries retention until now + period,
  except lock objects; create-only writes still refuse to overwrite;
- credentials stolen from the backup machine cannot destroy a retained version: not by a
  versioned delete, not with the governance bypass header (COMPLIANCE: not even the server's
  admin; GOVERNANCE: not without the s3:BypassGovernanceRetention permission);
- a prune-style `Store.delete` raises RetentionError and removes nothing while retention lasts,
  and removes every version for good once it has ended;
- `extend_retention` only ever lengthens retention and keeps COMPLIANCE objects COMPLIANCE;
- `init` refuses a bucket without Object Lock (exit 2) and creates new buckets with it;
- after an attacker "deletes" a whole repository, removing the delete markers brings it back
  and it restores, verified.

Short retention periods (seconds) stand in for days where a test must see retention end; the
only sleeps wait for that, nothing asserts how long anything takes.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions as bce
import pytest

from sellerbak.errors import ConfigError, ObjectExistsError, RetentionError
from sellerbak.storage.object_lock import ObjectLock
from sellerbak.storage.open import open_store
from sellerbak.storage.s3 import MULTIPART_THRESHOLD, S3Store
from tests.conftest import S3_TEST_BUCKET
from tests.helpers import cli_env, run_cli, write_config
from tests.seaweed import SeaweedServer

#: a bucket created with Object Lock enabled, shared by the store-level tests (own prefixes)
LOCK_BUCKET = "sellerbak-objlock"
DAY = timedelta(days=1)


def _error_code(exc: bce.ClientError) -> str:
    return str(exc.response["Error"]["Code"])


@pytest.fixture(scope="module")
def lock_bucket(seaweed: SeaweedServer) -> str:
    client = seaweed.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=LOCK_BUCKET, ObjectLockEnabledForBucket=True)
    conf = client.get_object_lock_configuration(Bucket=LOCK_BUCKET)
    assert conf["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    return LOCK_BUCKET


@pytest.fixture
def make_store(
    s3_env: SeaweedServer, lock_bucket: str, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """S3Store factory on a fresh prefix of the lock bucket (credentials from the environment,
    as in production)."""
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40]
    prefix = f"{name}-{secrets.token_hex(4)}"
    stores: list[S3Store] = []

    def make(mode: str = "COMPLIANCE", period: timedelta = DAY, **kwargs: Any) -> S3Store:
        store = S3Store(
            kwargs.pop("bucket", lock_bucket),
            prefix,
            endpoint_url=s3_env.endpoint_url,
            region="us-east-1",
            retry_attempts=2,
            retry_min_wait=0.01,
            retry_max_wait=0.05,
            object_lock=ObjectLock(mode, period),
            **kwargs,
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def _versions(client: Any, bucket: str, key: str) -> tuple[list[dict], list[dict]]:
    page = client.list_object_versions(Bucket=bucket, Prefix=key)
    return (
        [v for v in page.get("Versions", []) if v["Key"] == key],
        [m for m in page.get("DeleteMarkers", []) if m["Key"] == key],
    )


def _wait_until(when: datetime) -> None:
    """Sleep until retention set to `when` has ended (S3 keeps whole seconds)."""
    delay = (when - datetime.now(UTC)).total_seconds() + 1.1
    if delay > 0:
        time.sleep(delay)


# -- writes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
def test_every_write_carries_retention_and_stays_create_only(
    make_store: Any, seaweed: SeaweedServer, mode: str
) -> None:
    store = make_store(mode, timedelta(days=3))
    client = seaweed.client()
    small, big = b"pack bytes", secrets.token_bytes(MULTIPART_THRESHOLD + 1024)
    before = datetime.now(UTC)
    store.put("data/ab/small", small)
    store.put("data/ab/big", big)  # multipart: the lock settings go on CreateMultipartUpload
    after = datetime.now(UTC)

    for name, payload in (("data/ab/small", small), ("data/ab/big", big)):
        key = f"{store.prefix}/{name}"
        retention = client.get_object_retention(Bucket=store.bucket, Key=key)["Retention"]
        assert retention["Mode"] == mode
        until = retention["RetainUntilDate"]
        assert before + timedelta(days=3) - timedelta(seconds=1) <= until
        assert until <= after + timedelta(days=3, seconds=1)
        assert store.retention_until(name) == until
        # create-only survives the extra lock parameters, single and multipart alike
        with pytest.raises(ObjectExistsError):
            store.put(name, b"other bytes" if payload is small else secrets.token_bytes(len(big)))
        versions, markers = _versions(client, store.bucket, key)
        assert len(versions) == 1 and not markers
        assert store.get(name) == payload
    assert not client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")


def test_lock_objects_get_no_retention_and_leave_nothing_behind(
    make_store: Any, seaweed: SeaweedServer
) -> None:
    store = make_store("COMPLIANCE", DAY)
    name = f"locks/{secrets.token_hex(32)}"
    store.put(name, b"sealed lock")
    assert store.retention_until(name) is None
    assert store.extend_retention([name]) == 0  # exempt: never retained
    store.delete(name)
    versions, markers = _versions(seaweed.client(), store.bucket, f"{store.prefix}/{name}")
    assert versions == [] and markers == []  # deleted for good, not hidden


# -- stolen credentials ----------------------------------------------------------------------


def test_stolen_admin_credentials_cannot_destroy_compliance_objects(
    make_store: Any, seaweed: SeaweedServer
) -> None:
    store = make_store("COMPLIANCE", DAY)
    store.put("snapshots/s1", b"manifest")
    key = f"{store.prefix}/snapshots/s1"
    thief = seaweed.client()  # the server's admin identity: more than any backup machine holds
    vid = thief.head_object(Bucket=store.bucket, Key=key)["VersionId"]

    for kwargs in ({}, {"BypassGovernanceRetention": True}):
        with pytest.raises(bce.ClientError) as refused:
            thief.delete_object(Bucket=store.bucket, Key=key, VersionId=vid, **kwargs)
        assert _error_code(refused.value) == "AccessDenied"
    with pytest.raises(bce.ClientError):
        thief.put_object_retention(
            Bucket=store.bucket,
            Key=key,
            VersionId=vid,
            BypassGovernanceRetention=True,
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(UTC)},
        )
    # an unversioned delete or an overwrite only hides the version behind a newer entry
    thief.delete_object(Bucket=store.bucket, Key=key)
    assert not store.exists("snapshots/s1")
    original = thief.get_object(Bucket=store.bucket, Key=key, VersionId=vid)["Body"].read()
    assert original == b"manifest"


def _restricted_config(server: SeaweedServer, path: Path) -> Path:
    """SeaweedFS identities: the admin, and the backup machine's least-privilege identity
    (what sellerbak needs: read, write, list, retention; no BypassGovernanceRetention)."""
    path.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [
                            {"accessKey": server.access_key, "secretKey": server.secret_key}
                        ],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    },
                    {
                        "name": "backup",
                        "credentials": [{"accessKey": BACKUP_KEY, "secretKey": BACKUP_SECRET}],
                        "actions": [
                            "Read",
                            "List",
                            "Write",
                            "GetObjectRetention",
                            "PutObjectRetention",
                            "GetBucketObjectLockConfiguration",
                        ],
                    },
                ]
            }
        )
    )
    return path


BACKUP_KEY = "sellerbak-backup"
BACKUP_SECRET = secrets.token_hex(20)


class _RestrictedSeaweed(SeaweedServer):
    """A second server whose identities come from an s3.config file (the shared one trusts a
    single admin key)."""

    def _argv(self) -> list[str]:
        config = _restricted_config(self, self.data_dir / "s3-identities.json")
        return [*super()._argv(), f"-s3.config={config}"]


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = _RestrictedSeaweed(tmp_path_factory.mktemp("seaweed-iam") / "data")
    server.start()
    server.client().create_bucket(Bucket=LOCK_BUCKET, ObjectLockEnabledForBucket=True)
    try:
        yield server
    finally:
        server.stop()


def test_governance_needs_a_bypass_permission_the_backup_identity_lacks(
    restricted: SeaweedServer, s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", BACKUP_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", BACKUP_SECRET)
    store = S3Store(
        LOCK_BUCKET,
        f"gov-{secrets.token_hex(4)}",
        endpoint_url=restricted.endpoint_url,
        region="us-east-1",
        retry_attempts=1,
        object_lock=ObjectLock("GOVERNANCE", DAY),
    )
    # everything sellerbak does works with the least-privilege identity
    store.check_object_lock()
    store.put("data/cd/pack", b"pack")
    lock = f"locks/{secrets.token_hex(32)}"
    store.put(lock, b"lock")
    store.delete(lock)
    assert store.extend_retention(["data/cd/pack"], datetime.now(UTC) + 2 * DAY) == 1
    with pytest.raises(RetentionError):
        store.delete("data/cd/pack")

    # the same identity, stolen, cannot remove the version even asking for the bypass
    key = f"{store.prefix}/data/cd/pack"
    vid = store.client.head_object(Bucket=LOCK_BUCKET, Key=key)["VersionId"]
    with pytest.raises(bce.ClientError) as refused:
        store.client.delete_object(
            Bucket=LOCK_BUCKET, Key=key, VersionId=vid, BypassGovernanceRetention=True
        )
    assert _error_code(refused.value) == "AccessDenied"
    with pytest.raises(bce.ClientError):
        store.client.delete_bucket(Bucket=LOCK_BUCKET)
    assert store.get("data/cd/pack") == b"pack"
    # ...which is exactly what GOVERNANCE means: an identity with the permission can
    admin = restricted.client()
    admin.delete_object(Bucket=LOCK_BUCKET, Key=key, VersionId=vid, BypassGovernanceRetention=True)
    assert not store.exists("data/cd/pack")
    store.close()


# -- deleting under retention ----------------------------------------------------------------


def test_delete_raises_retention_error_until_retention_ends_then_removes_every_version(
    make_store: Any, seaweed: SeaweedServer
) -> None:
    store = make_store("COMPLIANCE", timedelta(seconds=3))
    client = seaweed.client()
    store.put("data/ef/pack", b"garbage pack")
    store.put("index/old", b"superseded index")
    until = store.retention_until("data/ef/pack")
    assert until is not None

    with pytest.raises(RetentionError) as held:
        store.delete("data/ef/pack")
    assert held.value.name == "data/ef/pack" and held.value.until == until
    assert "retention until" in str(held.value) and held.value.exit_code == 1
    assert store.get("data/ef/pack") == b"garbage pack"  # nothing removed, nothing hidden
    # someone hid the index behind a delete marker meanwhile: delete still sees its version
    client.delete_object(Bucket=store.bucket, Key=f"{store.prefix}/index/old")
    with pytest.raises(RetentionError):
        store.delete("index/old")

    _wait_until(until)
    store.delete("data/ef/pack")
    store.delete("index/old")
    store.delete("data/ef/never-existed")  # missing is not an error, as for every store
    for name in ("data/ef/pack", "index/old"):
        assert _versions(client, store.bucket, f"{store.prefix}/{name}") == ([], [])


def test_extend_retention_only_lengthens_and_keeps_compliance(make_store: Any) -> None:
    compliance = make_store("COMPLIANCE", timedelta(seconds=5))
    compliance.put("data/aa/kept", b"kept pack")
    compliance.put("data/aa/other", b"other pack")
    first = compliance.retention_until("data/aa/kept")
    assert first is not None

    target = datetime.now(UTC) + DAY
    governance = make_store("GOVERNANCE", DAY)  # same prefix, a different configured mode
    assert governance.extend_retention(["data/aa/kept", "data/aa/missing"], target) == 1
    extended = governance.retention_until("data/aa/kept")
    assert extended is not None and target <= extended < target + timedelta(seconds=1)
    key = f"{compliance.prefix}/data/aa/kept"
    retention = governance.client.get_object_retention(Bucket=compliance.bucket, Key=key)
    assert retention["Retention"]["Mode"] == "COMPLIANCE"
    # asking again, or for less, changes nothing; retention never shrinks
    assert governance.extend_retention(["data/aa/kept"], target) == 0
    sooner = datetime.now(UTC) + timedelta(hours=1)
    assert governance.extend_retention(["data/aa/kept"], sooner) == 0
    assert governance.retention_until("data/aa/kept") == extended
    # the default target is now + the store's own period
    assert governance.extend_retention(["data/aa/other"]) == 1
    other = governance.retention_until("data/aa/other")
    assert other is not None and other > datetime.now(UTC) + DAY - timedelta(minutes=1)

    _wait_until(first + timedelta(seconds=5))
    with pytest.raises(RetentionError):  # still protected: the extension is what holds it
        compliance.delete("data/aa/kept")
    with pytest.raises(ValueError):
        compliance.extend_retention(["data/aa/kept"], datetime.now() + DAY)  # naive time


# -- buckets and configuration ---------------------------------------------------------------


def test_a_bucket_without_object_lock_is_refused_with_a_clear_error(make_store: Any) -> None:
    store = make_store("GOVERNANCE", DAY, bucket=S3_TEST_BUCKET)
    with pytest.raises(ConfigError, match="does not have Object Lock enabled"):
        store.ensure_bucket()
    with pytest.raises(ConfigError, match="does not have Object Lock enabled"):
        store.put("data/00/pack", b"x")  # the server's 400 turned into the reason
    assert not list(store.list(""))


def test_open_store_refuses_object_lock_for_a_local_repository(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only with an s3:// repository"):
        open_store(str(tmp_path / "repo"), object_lock={"mode": "GOVERNANCE", "days": 7})
    assert not (tmp_path / "repo").exists()


def _files_source(tmp_path: Path) -> Path:
    data = tmp_path / "exports"
    data.mkdir()
    with open(data / "orders.jsonl", "w") as fh:
        for i in range(200):
            fh.write(json.dumps({"id": f"o{i:05d}", "amount": i}) + "\n")
    return data


def _lock_config(tmp_path: Path, url: str, endpoint: str, mode: str = "COMPLIANCE") -> Path:
    _files_source(tmp_path)
    return write_config(
        tmp_path,
        url,
        [{"name": "shop", "type": "files", "path": "./exports"}],
        repository={"endpoint_url": endpoint, "object_lock": {"mode": mode, "days": 1}},
    )


def test_init_refuses_an_existing_bucket_without_object_lock(
    s3_url: str, s3_env: SeaweedServer, tmp_path: Path
) -> None:
    cfg = _lock_config(tmp_path, s3_url, s3_env.endpoint_url)
    proc = run_cli("-c", str(cfg), "init", env=cli_env())
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Object Lock" in errors[0]
    prefix = s3_url.split("/", 3)[3]
    listing = s3_env.client().list_objects_v2(Bucket=S3_TEST_BUCKET, Prefix=prefix)
    assert listing.get("KeyCount", 0) == 0  # nothing written


def test_repository_with_object_lock_survives_a_thief_and_restores(
    s3_env: SeaweedServer, tmp_path: Path
) -> None:
    bucket = f"sellerbak-ol-{secrets.token_hex(4)}"
    cfg = _lock_config(tmp_path, f"s3://{bucket}/shop", s3_env.endpoint_url)

    def ok(*args: str) -> str:
        proc = run_cli("-c", str(cfg), *args, env=cli_env())
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    before = datetime.now(UTC)
    ok("init")  # creates the bucket, with Object Lock
    ok("snapshot")
    after = datetime.now(UTC)
    client = s3_env.client()
    lock_conf = client.get_object_lock_configuration(Bucket=bucket)
    assert lock_conf["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"

    page = client.list_object_versions(Bucket=bucket, Prefix="shop/")
    versions = page.get("Versions", [])
    names = {v["Key"] for v in versions}
    assert {"shop/config"} <= names and any(n.startswith("shop/data/") for n in names)
    assert any(n.startswith("shop/snapshots/") for n in names)
    assert not any(n.startswith("shop/locks/") for n in names)  # taken, released, gone
    assert not page.get("DeleteMarkers")
    for v in versions:
        head = client.head_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
        assert head["ObjectLockMode"] == "COMPLIANCE", v["Key"]
        assert before + DAY - timedelta(seconds=1) <= head["ObjectLockRetainUntilDate"]
        assert head["ObjectLockRetainUntilDate"] <= after + DAY + timedelta(seconds=1)

    # the thief, holding the server's admin credentials, destroys what can be destroyed
    for v in versions:
        with pytest.raises(bce.ClientError):
            client.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
        client.delete_object(Bucket=bucket, Key=v["Key"])  # a delete marker on top
    gone = run_cli("-c", str(cfg), "snapshots", env=cli_env())
    assert gone.returncode == 10  # the repository looks deleted

    # recovery: remove the delete markers (aws s3api delete-object --version-id <marker>)
    markers = client.list_object_versions(Bucket=bucket, Prefix="shop/")["DeleteMarkers"]
    for m in markers:
        client.delete_object(Bucket=bucket, Key=m["Key"], VersionId=m["VersionId"])
    ok("restore", "latest", "--target", str(tmp_path / "restored"))
    lines = (tmp_path / "restored" / "orders.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [f"o{i:05d}" for i in range(200)]
    report = json.loads(ok("--json", "check", "--read-data"))
    assert report["ok"]


def test_prune_defers_retained_garbage_and_renews_the_live_set(make_store: Any,
                                                               tmp_path: Path) -> None:
    """prune under Object Lock: what no snapshot needs but is still retained is left (and
    counted) for a later prune; what kept snapshots need gets its retention renewed."""
    from sellerbak.backup.snapshot import SnapshotRun
    from sellerbak.repository.manifest import load_manifests
    from sellerbak.repository.prune import prune_repository
    from sellerbak.repository.repo import snapshot_name
    from sellerbak.restore.restore import restore_snapshot
    from tests.helpers import ListSource, init_repo, open_repo

    store = make_store("GOVERNANCE", timedelta(seconds=4))
    init_repo(store)
    old = [{"id": f"o{i:05d}", "v": "old" * 20} for i in range(3000)]
    new = [{"id": f"o{i:05d}", "v": "new" * 20} for i in range(3000)]
    first = SnapshotRun(open_repo(store)).run(ListSource("shop", {"orders": old}), [])
    SnapshotRun(open_repo(store)).run(ListSource("shop", {"orders": new}), [])
    _wait_until(datetime.now(UTC) + timedelta(seconds=4))  # the first writes' retention ends
    store.delete(snapshot_name(first.manifest.id))  # forget the first night
    # a fresh, still-retained leftover: a pack no index lists
    store.put("data/ab/" + "ab" * 32, b"\x00" * 64)

    report = prune_repository(open_repo(store))
    assert report.packs_deleted >= 2 and report.retained == 1  # the leftover is deferred
    assert report.retention_extended >= 3  # config, key, manifest, kept packs renewed
    (manifest,) = load_manifests(open_repo(store))
    until = store.retention_until(snapshot_name(manifest.id))
    assert until is not None and until > datetime.now(UTC) + timedelta(seconds=2)
    restore_snapshot(open_repo(store), manifest, tmp_path / "out")
    assert (tmp_path / "out" / "orders.jsonl").read_text().count('"new') == 3000

    _wait_until(datetime.now(UTC) + timedelta(seconds=4))
    later = prune_repository(open_repo(store))
    assert later.retained == 0 and later.packs_deleted == 1
