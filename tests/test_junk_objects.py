"""Objects that do not open or parse (planted junk, damage) under valid-looking names.

Anyone who can write to the bucket can plant `index/<64 hex>` or `snapshots/<64 hex>`; under
Object Lock nobody can remove it again. Such an object must not stop the backups:

- `snapshot` and `restore` skip it with one warning line naming it; a restore that needs
  blobs only an unreadable index listed fails in one line naming it and `repair index`;
- a snapshot run never refers to blobs known only from an unreadable index: it stores them
  again;
- `check` reports each one (non-zero exit);
- `prune` ignores it and leaves it in place, never deletes a pack that may hold needed blobs,
  and completes with a warning, under Object Lock too;
- `repair index` rebuilds the index from the pack headers.

Every test runs against the local store and a real SeaweedFS unless it is about S3 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.crypto.envelope import Kind
from sellerbak.errors import IntegrityError, RetentionError
from sellerbak.repository.check import check_repository
from sellerbak.repository.format import TYPE_CHUNK, PackRecord, blob_type, compress, encode_index
from sellerbak.repository.index import Index, IndexVersionError, read_index_objects
from sellerbak.repository.manifest import load_manifests
from sellerbak.repository.prune import prune_repository
from sellerbak.repository.repair_index import repair_index
from sellerbak.repository.repo import Repository, index_name, pack_name, snapshot_name
from sellerbak.restore.restore import restore_snapshot
from sellerbak.storage.base import Store
from sellerbak.storage.local import LocalStore
from sellerbak.storage.open import open_store
from tests.helpers import ListSource, cli_env, init_repo, open_repo, run_cli, write_config

ORDERS = [{"id": f"o{i:05d}", "amount": i, "note": "n" * (i % 70)} for i in range(400)]
LOCK_BUCKET = "sellerbak-objlock"  # as tests/test_object_lock.py: a bucket with Object Lock


@dataclass
class Shop:
    """A repository with one snapshot of a files source, and its config for the real CLI."""

    store: Store
    cfg: Path
    tmp: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("-c", str(self.cfg), *args, env=cli_env())

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.cli(*args)
        assert proc.returncode == 0, proc.stderr
        return proc

    def repo(self) -> Repository:
        return open_repo(self.store)

    def restored(self, *args: str) -> list[dict[str, Any]]:
        target = self.tmp / f"out-{secrets.token_hex(4)}"
        self.ok("restore", *(args or ("latest",)), "--target", str(target))
        return [json.loads(line) for line in (target / "orders.jsonl").read_text().splitlines()]


def _make_shop(tmp_path: Path, url: str, store: Store, **extra: Any) -> Shop:
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "orders.jsonl").write_text("".join(json.dumps(o) + "\n" for o in ORDERS))
    cfg = write_config(tmp_path, url, [{"name": "shop", "type": "files", "path": str(exports)}],
                       **extra)
    shop = Shop(store, cfg, tmp_path)
    shop.ok("init")
    shop.ok("snapshot")
    return shop


@pytest.fixture(params=["local", "s3"])
def shop(request: pytest.FixtureRequest, tmp_path: Path) -> Shop:
    if request.param == "local":
        return _make_shop(tmp_path, str(tmp_path / "repo"), LocalStore(tmp_path / "repo"))
    seaweed = request.getfixturevalue("s3_env")
    url = request.getfixturevalue("s3_url")
    store = open_store(url, endpoint_url=seaweed.endpoint_url, region="us-east-1")
    return _make_shop(tmp_path, url, store, repository={"endpoint_url": seaweed.endpoint_url})


def _new_name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(32)}"


def _only_index(store: Store) -> str:
    (name,) = [i.name for i in store.list("index/")]
    return name


def _plant_index(shop: Shop, kind: str) -> str:
    """An unreadable `index/` object beside the real ones; returns its name."""
    store, name = shop.store, _new_name("index/")
    real = store.get(_only_index(store))
    if kind == "random":
        data = os.urandom(200)
    elif kind == "truncated":
        data = real[:-17]
    elif kind == "other-name":  # a real index object, sealed for another name
        data = real
    elif kind == "other-key":  # sealed by another repository's key
        other = init_repo(LocalStore(shop.tmp / f"other-{secrets.token_hex(4)}"))
        data = other.seal(Kind.INDEX, bytes.fromhex(name[6:]), encode_index([], []))
    elif kind == "layout":  # opens under the key, but the plaintext is no index
        data = shop.repo().seal(Kind.INDEX, bytes.fromhex(name[6:]),
                                compress(b"SBIX\x01\x00\x00\x00\x09" + b"\xff" * 40))
    else:
        raise AssertionError(kind)
    store.put(name, data)
    return name


def _naming(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if name in line]


# ----- junk beside the real index -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "truncated", "other-name", "other-key", "layout"])
def test_an_unreadable_index_beside_the_real_one_is_skipped_and_reported(shop: Shop,
                                                                         kind: str) -> None:
    junk = _plant_index(shop, kind)
    index = Index.load(shop.repo())
    assert [u.name for u in index.unreadable] == [junk] and index.blob_count > 0

    report = check_repository(shop.repo())
    assert not report.ok and len(_naming("\n".join(report.errors), junk)) == 1

    run = SnapshotRun(shop.repo())
    result = run.run(ListSource("shop", {"orders": ORDERS[:50]}), [])
    target = shop.tmp / "lib-out"
    restore_snapshot(shop.repo(), result.manifest, target)
    assert (target / "orders.jsonl").read_text().count("\n") == 50

    pruned = prune_repository(shop.repo())
    assert any(junk in w for w in pruned.warnings)
    assert shop.store.exists(junk)  # left alone: prune deletes only what it can authenticate
    assert [m.source for m in load_manifests(shop.repo())] == ["shop", "shop"]


def test_an_index_of_an_unknown_version_still_stops_the_reader(shop: Shop) -> None:
    """Only a key holder (a newer sellerbak) writes one, and it may supersede the others:
    skipping it would trust index objects that may list deleted packs (FORMAT.md §10)."""
    name = _new_name("index/")
    shop.store.put(name, shop.repo().seal(Kind.INDEX, bytes.fromhex(name[6:]),
                                          compress(b"SBIX\x03" + bytes(8))))
    with pytest.raises(IndexVersionError, match="unsupported index version 3"):
        Index.load(shop.repo())


def test_each_command_warns_once_about_a_junk_index_and_check_fails(shop: Shop) -> None:
    junk = _plant_index(shop, "random")
    snap = shop.ok("snapshot", "--full")
    assert len(_naming(snap.stderr, junk)) == 1, snap.stderr
    listing = shop.ok("snapshots")
    assert listing.stdout.count("shop") == 2
    restore = shop.cli("restore", "latest", "--target", str(shop.tmp / "out"))
    assert restore.returncode == 0, restore.stderr
    assert len(_naming(restore.stderr, junk)) == 1
    check = shop.cli("check")
    assert check.returncode == 1
    (line,) = _naming(check.stderr, junk)
    assert line.startswith("error: ") and "planted" in line
    prune = shop.ok("prune")
    assert len(_naming(prune.stderr, junk)) == 1
    assert shop.store.exists(junk)
    assert shop.restored() == ORDERS


# ----- the real index replaced: restore needs it --------------------------------------------


@pytest.mark.parametrize("damage", ["junk", "truncated"])
def test_a_restore_needing_an_unreadable_index_names_it_and_repair_index_fixes_it(
        shop: Shop, damage: str) -> None:
    name = _only_index(shop.store)
    real = shop.store.get(name)
    shop.store.delete(name)
    shop.store.put(name, os.urandom(200) if damage == "junk" else real[: len(real) // 2])

    failed = shop.cli("restore", "latest", "--target", str(shop.tmp / "out"))
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and name in errors[0] and "sellerbak repair index" in errors[0]
    assert not (shop.tmp / "out" / "orders.jsonl").exists()

    before = sorted(i.name for i in shop.store.list("index/"))
    dry = json.loads(shop.ok("--json", "repair", "index", "--dry-run").stdout)
    assert dry["dry_run"] and dry["packs_indexed"] == dry["packs"] >= 1
    assert dry["indexes_superseded"] == 0 and len(dry["unreadable_indexes"]) == 1
    assert sorted(i.name for i in shop.store.list("index/")) == before  # nothing written
    assert shop.cli("restore", "latest", "--target", str(shop.tmp / "out")).returncode == 1

    shop.ok("repair", "index")
    assert shop.restored() == ORDERS
    assert shop.store.exists(name)  # the unreadable object is left in place...
    check = shop.cli("check")
    assert check.returncode == 1 and len(_naming(check.stderr, name)) == 1  # ...and reported


def test_repair_index_replaces_the_readable_indexes_by_one_from_the_pack_headers(
        shop: Shop) -> None:
    other = [{**o, "amount": -o["amount"]} for o in ORDERS[::3]]
    SnapshotRun(shop.repo()).run(ListSource("other", {"orders": other}), [])
    old = {i.name for i in shop.store.list("index/")}
    assert len(old) == 2
    junk = _plant_index_random(shop.store)
    report = repair_index(shop.repo())
    assert report.indexes_superseded == 2 and report.indexes_deleted == 2
    assert report.packs_indexed == report.packs and not report.unreadable_packs
    now = {i.name for i in shop.store.list("index/")}
    assert not now & old and junk in now and len(now) == 2  # one new object, and the junk
    assert shop.restored("latest", "--source", "shop") == ORDERS
    (error,) = check_repository(shop.repo()).errors
    assert junk in error


def _plant_index_random(store: Store) -> str:
    name = _new_name("index/")
    store.put(name, os.urandom(200))
    return name


# ----- snapshot runs never build on what only an unreadable index knows -------------------


def test_a_snapshot_stores_again_what_only_an_unreadable_index_listed(shop: Shop) -> None:
    """The real index is moved to another name (it no longer opens) and every pack's header
    is damaged (same size): nothing readable lists the stored chunks, so the next run must
    store them again rather than refer to them."""
    name = _only_index(shop.store)
    real = shop.store.get(name)
    shop.store.delete(name)
    shop.store.put(_new_name("index/"), real)
    for info in list(shop.store.list("data/")):
        data = bytearray(shop.store.get(info.name))
        data[-12] ^= 0xFF  # inside the sealed header: it no longer opens
        shop.store.delete(info.name)
        shop.store.put(info.name, bytes(data))

    result = SnapshotRun(shop.repo()).run(ListSource("shop", {"orders": ORDERS}), [], full=True)
    assert result.stats.chunks_reused == 0 and result.stats.chunks_new > 0
    target = shop.tmp / "again"
    restore_snapshot(shop.repo(), result.manifest, target)
    assert [json.loads(x) for x in (target / "orders.jsonl").read_text().splitlines()] == \
        sorted(ORDERS, key=lambda o: o["id"])


# ----- prune --------------------------------------------------------------------------------


def test_prune_keeps_packs_only_an_unreadable_index_listed_when_snapshots_need_them(
        shop: Shop) -> None:
    name = _only_index(shop.store)
    shop.store.delete(name)
    shop.store.put(name, os.urandom(200))
    packs = {i.name for i in shop.store.list("data/")}
    report = prune_repository(shop.repo())
    assert report.packs_deleted == 0 and packs <= {i.name for i in shop.store.list("data/")}
    assert shop.store.exists(name) and any(name in w for w in report.warnings)
    assert shop.restored() == ORDERS  # prune's index lists the packs it read the headers of


def test_prune_deletes_nothing_while_a_needed_blob_is_found_nowhere(shop: Shop) -> None:
    """A readable index that lacks a needed chunk, an unreadable index, and a pack whose
    header does not open: the chunk may be in that pack (listed only by the unreadable
    index), so prune cannot prove it unneeded and stops before deleting anything."""
    repo = shop.repo()
    name = _only_index(shop.store)
    records = [p for obj in read_index_objects(repo)[0] for p in obj.pack_records()]
    with_chunks = next(r for r in records
                       if any(blob_type(e.flags) == TYPE_CHUNK for e in r.blobs))
    dropped = next(e for e in with_chunks.blobs if blob_type(e.flags) == TYPE_CHUNK)
    lacking = PackRecord(with_chunks.pack_id, with_chunks.size,
                         tuple(e for e in with_chunks.blobs if e is not dropped))
    others = [r for r in records if r is not with_chunks]
    shop.store.delete(name)
    index_id = os.urandom(32)
    shop.store.put(index_name(index_id),
                   repo.seal(Kind.INDEX, index_id, encode_index([lacking, *others], [])))
    headless = pack_name(os.urandom(32))
    shop.store.put(headless, os.urandom(300))
    _plant_index_random(shop.store)
    with pytest.raises(IntegrityError, match="needs chunk .* which no pack holds"):
        prune_repository(shop.repo())
    assert shop.store.exists(headless)


def test_prune_still_deletes_a_headerless_pack_when_every_needed_blob_is_found(
        shop: Shop) -> None:
    headless = pack_name(os.urandom(32))
    shop.store.put(headless, os.urandom(300))
    _plant_index_random(shop.store)
    report = prune_repository(shop.repo())
    assert not shop.store.exists(headless) and report.packs_deleted == 1


# ----- junk manifests -----------------------------------------------------------------------


def test_a_junk_manifest_is_listed_around_skipped_by_restore_reported_and_pruned_past(
        shop: Shop) -> None:
    junk = _new_name("snapshots/")
    shop.store.put(junk, b"SBK1\0\0\0\1" + os.urandom(200))
    listing = shop.ok("snapshots")
    assert listing.stdout.count("shop") == 1 and len(_naming(listing.stderr, junk)) == 1
    assert shop.restored() == ORDERS
    snap = shop.ok("snapshot", "--full")
    assert len(_naming(snap.stderr, junk)) == 1
    check = shop.cli("check")
    assert check.returncode == 1 and len(_naming(check.stderr, junk)) == 1
    prune = shop.cli("prune")
    assert prune.returncode == 0, prune.stderr
    assert len(_naming(prune.stderr, junk)) == 1 and shop.store.exists(junk)
    assert shop.restored() == ORDERS


def test_prune_refuses_a_manifest_that_opens_but_does_not_parse(shop: Shop) -> None:
    """Only a key holder (a newer sellerbak?) writes one: it may be a snapshot whose data
    prune must not take for garbage."""
    repo = shop.repo()
    sid = os.urandom(32)
    shop.store.put(snapshot_name(sid), repo.seal(Kind.MANIFEST, sid,
                                                 compress(b'{"format":"sellerbak-snapshot/9"}')))
    with pytest.raises(IntegrityError, match="refusing to prune"):
        prune_repository(shop.repo())
    assert shop.restored() == ORDERS


# ----- Object Lock: the junk cannot be removed ------------------------------------------------


@pytest.fixture
def locked_shop(s3_env: Any, tmp_path: Path) -> Shop:
    client = s3_env.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=LOCK_BUCKET, ObjectLockEnabledForBucket=True)
    url = f"s3://{LOCK_BUCKET}/junk-{secrets.token_hex(4)}"
    lock = {"mode": "GOVERNANCE", "days": 1}
    store = open_store(url, endpoint_url=s3_env.endpoint_url, region="us-east-1",
                       object_lock=lock)
    return _make_shop(tmp_path, url, store, repository={"endpoint_url": s3_env.endpoint_url,
                                                        "object_lock": lock})


def test_under_object_lock_undeletable_junk_does_not_stop_prune(locked_shop: Shop,
                                                                s3_env: Any) -> None:
    shop = locked_shop
    client = s3_env.client()
    prefix = shop.store.location.split("/", 3)[3].rstrip("/")
    until = datetime.now(UTC) + timedelta(days=1)
    junk = [_new_name("index/"), _new_name("snapshots/")]
    for name in junk:  # planted with retention of their own
        client.put_object(Bucket=LOCK_BUCKET, Key=f"{prefix}/{name}", Body=os.urandom(200),
                          ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until)
        with pytest.raises(RetentionError):
            shop.store.delete(name)
    shop.ok("snapshot", "--full")
    for _ in range(2):  # not once: every time
        prune = shop.cli("prune")
        assert prune.returncode == 0, prune.stderr
        for name in junk:
            assert len(_naming(prune.stderr, name)) == 1
    assert all(shop.store.exists(name) for name in junk)
    assert shop.restored() == ORDERS
