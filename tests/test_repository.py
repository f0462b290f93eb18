"""Snapshot and restore through the library, on a local folder and on a real SeaweedFS S3 server.

Every test here asserts what a user relies on: what went in comes out, verified; a damaged
repository is detected loudly; nothing about customers is readable in storage.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest

from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.errors import IntegrityError, SellerbakError, SourceError
from sellerbak.repository.check import check_repository
from sellerbak.repository.manifest import load_manifests, resolve_snapshot
from sellerbak.restore.restore import restore_snapshot
from sellerbak.storage.local import LocalStore
from sellerbak.storage.open import open_store
from tests.helpers import ListSource, canonical_sorted, init_repo, open_repo


def make_orders(n: int, seed: int = 7, start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"{576460752303423488 + i:018d}", "status": rng.choice(["UNPAID", "DONE"]),
             "buyer_email": f"buyer{i}@mail.example", "recipient": {"name": f"Alice Buyer{i}",
             "full_address": f"{i} Elm Street, Springfield", "phone": f"+1555{i:07d}"},
             "total": {"amount": f"{rng.randint(100, 99999) / 100:.2f}", "currency": "USD"},
             "note": "x" * rng.randint(0, 400), "unicode": "caf\u00e9 \u2603"}
            for i in range(start, start + n)]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path):
    if request.param == "local":
        return LocalStore(tmp_path / "repo")
    s3_url = request.getfixturevalue("s3_url")
    seaweed = request.getfixturevalue("seaweed")
    return open_store(s3_url, endpoint_url=seaweed.endpoint_url, region="us-east-1")


def restored_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_full_roundtrip_is_exact(store, tmp_path: Path) -> None:
    repo = init_repo(store)
    orders = make_orders(3000)
    shuffled = orders[:]
    random.Random(1).shuffle(shuffled)
    statements = [{"id": i, "amount": i * 1.25} for i in range(50)]  # integer ids kept as-is
    result = SnapshotRun(open_repo(store)).run(
        ListSource("shop", {"orders": shuffled, "finance/statements": statements}), ["t1"])
    m = result.manifest
    assert m.datasets["orders"].records == 3000 and m.tags == ["t1"]
    restored = restore_snapshot(open_repo(store), resolve_snapshot(repo, "latest"),
                                tmp_path / "out")
    assert [r.name for r in restored] == ["finance/statements", "orders"]
    assert restored_records(tmp_path / "out" / "orders.jsonl") == canonical_sorted(orders)
    assert restored_records(tmp_path / "out/finance/statements.jsonl") == \
        sorted(statements, key=lambda r: str(r["id"]))
    assert (tmp_path / "out" / "orders.jsonl").stat().st_mode & 0o777 == 0o600
    assert check_repository(open_repo(store), read_data=True).ok


def test_unchanged_data_is_not_stored_twice(store) -> None:
    init_repo(store)
    src = ListSource("shop", {"orders": make_orders(2000)})
    run = SnapshotRun(open_repo(store))
    first = run.run(src, [])
    second = SnapshotRun(open_repo(store)).run(src, [])
    assert first.stats.chunks_new > 10
    assert second.stats.chunks_new == 0 and second.stats.bytes_stored == 0


def test_incremental_changes_merge_by_id_and_touch_few_chunks(store, tmp_path: Path) -> None:
    init_repo(store)
    orders = make_orders(4000)
    SnapshotRun(open_repo(store)).run(ListSource("shop", {"orders": orders}), [])
    changed = [dict(orders[i], status="SHIPPED") for i in (5, 1700, 3999)]
    new = make_orders(30, seed=9, start=4000)
    deleted = [orders[10]["id"], orders[2500]["id"]]
    src = ListSource("shop", {"orders": []}, changes={"orders": (changed + new, deleted)})
    result = SnapshotRun(open_repo(store)).run(src, [])
    # the source got the previous cursor ({"n": 0}) and answered with changes ({"n": 1})
    assert result.manifest.datasets["orders"].cursor == {"n": 1}
    expect = {r["id"]: r for r in orders}
    expect.update({r["id"]: r for r in changed + new})
    for d in deleted:
        del expect[d]
    restore_snapshot(open_repo(store), result.manifest, tmp_path / "out")
    assert restored_records(tmp_path / "out/orders.jsonl") == canonical_sorted(
        list(expect.values()))
    total = result.manifest.datasets["orders"].chunks
    # 5 places changed: only the chunks around them are new, the rest kept by reference
    assert result.stats.chunks_new <= 12 < total
    assert check_repository(open_repo(store), read_data=True).ok


def test_incomplete_dataset_is_flagged_and_its_cursor_not_reused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    src = ListSource("shop", {"orders": make_orders(100), "products": [{"id": "p1"}]},
                     incomplete={"products"})
    result = SnapshotRun(open_repo(store)).run(src, [])
    assert result.incomplete == ["products"] and not result.manifest.complete
    again = ListSource("shop", {"orders": make_orders(100), "products": [{"id": "p1"}]},
                       changes={"orders": ([], []), "products": ([], [])})
    m = SnapshotRun(open_repo(store)).run(again, []).manifest
    # orders continued from its cursor; products, incomplete last time, was read in full
    assert m.datasets["orders"].cursor == {"n": 1}
    assert m.datasets["products"].cursor == {"n": 0}


def test_source_error_stores_no_snapshot(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    bad = ListSource("shop", {"orders": make_orders(10) + [{"no_id": 1}]})
    with pytest.raises(SourceError):
        SnapshotRun(open_repo(store)).run(bad, [])
    dup = ListSource("shop", {"orders": make_orders(10) + make_orders(1)})
    with pytest.raises(SourceError, match="duplicate"):
        SnapshotRun(open_repo(store)).run(dup, [])
    assert load_manifests(open_repo(store)) == []


def _pack_names(store) -> list[str]:
    return sorted(i.name for i in store.list("data/"))


def _replace(store, name: str, data: bytes) -> None:
    store.delete(name)
    store.put(name, data)


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap", "missing", "manifest-swap"])
def test_damage_is_detected_by_check_and_restore(store, tmp_path: Path, damage: str) -> None:
    init_repo(store)
    repo = open_repo(store)
    run = SnapshotRun(repo)
    run.run(ListSource("a", {"orders": make_orders(1500)}), [])
    run.run(ListSource("b", {"orders": make_orders(1500, seed=3, start=9000)}), [])
    packs = _pack_names(store)
    assert len(packs) == 4  # per run: its dictionary, stored first in a pack of its own; data
    snaps = sorted(i.name for i in store.list("snapshots/"))
    if damage == "flip":
        data = bytearray(store.get(packs[0]))
        data[len(data) // 3] ^= 0x40
        _replace(store, packs[0], bytes(data))
    elif damage == "truncate":
        _replace(store, packs[0], store.get(packs[0])[:-100])
    elif damage == "swap":
        a, b = store.get(packs[0]), store.get(packs[1])
        _replace(store, packs[0], b)
        _replace(store, packs[1], a)
    elif damage == "missing":
        store.delete(packs[0])
    else:
        _replace(store, snaps[0], store.get(snaps[1]))
    report = check_repository(open_repo(store), read_data=True)
    assert not report.ok and report.errors
    failures = 0
    for i, source in enumerate(("a", "b")):
        target = tmp_path / f"out{i}"
        try:
            repo = open_repo(store)
            restore_snapshot(repo, resolve_snapshot(repo, "latest", source), target)
        except SellerbakError as exc:
            failures += 1
            assert "\n" not in str(exc)
            # nothing that looks like a complete dataset is left behind
            assert not (target / "orders.jsonl").exists()
    assert failures >= 1


def test_no_customer_plaintext_in_stored_objects_or_names(store) -> None:
    init_repo(store)
    orders = make_orders(500)
    SnapshotRun(open_repo(store)).run(ListSource("shop", {"orders": orders}), [])
    blob = b"".join(store.get(i.name) + i.name.encode() for i in store.list(""))
    for needle in (b"buyer123@mail.example", b"Alice Buyer", b"Elm Street", b"+15550000123",
                   orders[42]["id"].encode(), b"576460752303"):
        assert needle not in blob


def test_concurrent_writers_never_clash(store, tmp_path: Path) -> None:
    init_repo(store)
    errors: list[BaseException] = []

    def backup(name: str, seed: int) -> None:
        try:
            SnapshotRun(open_repo(store)).run(
                ListSource(name, {"orders": make_orders(2500, seed=seed)}), [])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=backup, args=(f"shop{i}", i)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    repo = open_repo(store)
    manifests = load_manifests(repo)
    assert sorted(m.source for m in manifests) == ["shop0", "shop1", "shop2"]
    for i, m in enumerate(sorted(manifests, key=lambda m: m.source)):
        restore_snapshot(repo, m, tmp_path / m.source)
        assert restored_records(tmp_path / m.source / "orders.jsonl") == \
            canonical_sorted(make_orders(2500, seed=i))
    assert check_repository(repo, read_data=True).ok


def test_restore_refuses_unknown_dataset_and_missing_snapshot(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    SnapshotRun(open_repo(store)).run(ListSource("shop", {"orders": make_orders(5)}), [])
    repo = open_repo(store)
    with pytest.raises(SellerbakError, match="no dataset"):
        restore_snapshot(repo, resolve_snapshot(repo, "latest"), tmp_path / "o", ["products"])
    with pytest.raises(SellerbakError, match="not found"):
        resolve_snapshot(repo, "deadbeef")
    with pytest.raises(IntegrityError):
        restore_snapshot(repo, resolve_snapshot(repo, "latest"), tmp_path / "o",
                         index=_empty_index())


def _empty_index():
    from sellerbak.repository.index import Index

    return Index()


def test_append_only_nights_do_not_leave_short_chunks_behind(tmp_path: Path) -> None:
    """Each night appends records: the incremental result is chunked exactly as a full
    snapshot of the same data would be, so nothing short piles up and dedup holds."""
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    orders = make_orders(600)
    SnapshotRun(open_repo(store)).run(ListSource("shop", {"orders": orders}), [])
    for night in range(1, 4):
        new = make_orders(40, seed=night, start=600 + 40 * (night - 1))
        orders += new
        inc = SnapshotRun(open_repo(store)).run(
            ListSource("shop", {"orders": []}, changes={"orders": (new, [])}), [])
    full = SnapshotRun(open_repo(store)).run(ListSource("full", {"orders": orders}), [])
    assert inc.manifest.datasets["orders"].sha256 == full.manifest.datasets["orders"].sha256
    assert inc.manifest.datasets["orders"].chunks == full.manifest.datasets["orders"].chunks
    assert full.stats.chunks_new == 0  # every chunk of the full run was already stored


def test_unreadable_manifest_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    SnapshotRun(open_repo(store)).run(ListSource("shop", {"orders": make_orders(20)}), [])
    store.put("snapshots/" + "ab" * 32, b"SBK1\0\0\0\1" + b"x" * 200)  # planted garbage
    run = SnapshotRun(open_repo(store))
    assert len(run.problems) == 1 and len(run.manifests) == 1
    run.run(ListSource("shop", {"orders": make_orders(20)}), [])
    report = check_repository(open_repo(store))
    assert not report.ok and any("abab" in e for e in report.errors)


def test_config_mac_of_wrong_type_is_a_format_error(tmp_path: Path) -> None:
    from sellerbak.errors import FormatError

    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    cfg = json.loads(store.get("config"))
    for bad in (12, "\u00e9" * 64, None):
        cfg["mac"] = bad
        _replace(store, "config", json.dumps(cfg).encode())
        with pytest.raises(FormatError, match="modified"):
            open_repo(store)


def test_changes_and_deletions_past_the_old_end_and_on_an_empty_dataset(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    SnapshotRun(open_repo(store)).run(ListSource("shop", {"a": [{"id": "k100"}], "b": []}), [])
    changes = {"a": ([{"id": "k900", "v": 1}, {"id": "k950"}], ["k900"]),
               "b": ([{"id": "x1"}, {"id": "x2"}], ["x2"])}
    result = SnapshotRun(open_repo(store)).run(
        ListSource("shop", {"a": [], "b": []}, changes=changes), [])
    restore_snapshot(open_repo(store), result.manifest, tmp_path / "out")
    assert restored_records(tmp_path / "out/a.jsonl") == [{"id": "k100"}, {"id": "k950"}]
    assert restored_records(tmp_path / "out/b.jsonl") == [{"id": "x1"}]


def test_a_reference_is_never_answered_by_a_blob_of_another_type(tmp_path: Path) -> None:
    from sellerbak.repository.format import TYPE_REFLIST
    from sellerbak.repository.index import Index
    from sellerbak.repository.packs import ChunkReader

    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    m = SnapshotRun(open_repo(store)).run(ListSource("s", {"o": make_orders(50)}), []).manifest
    repo = open_repo(store)
    reader = ChunkReader(repo, Index.load(repo))
    reflist_id = m.datasets["o"].reflist[0].blob_id
    assert list(reader.read([reflist_id], TYPE_REFLIST))
    with pytest.raises(IntegrityError, match="type"):
        list(reader.read([reflist_id]))
