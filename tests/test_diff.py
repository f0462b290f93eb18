"""diff_snapshots on real repositories (a local folder and a real SeaweedFS S3 server).

The expected differences are either written out by hand or computed in the test, naively, from
the two record lists as dicts; the library's streaming merge-join with chunk skipping must agree.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest

from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.errors import UsageError
from sellerbak.repository.datasets import iter_chunk_refs
from sellerbak.repository.index import Index
from sellerbak.repository.manifest import Manifest
from sellerbak.repository.packs import ChunkReader
from sellerbak.restore.diff import changed_fields, diff_snapshots
from sellerbak.storage.local import LocalStore
from sellerbak.storage.open import open_store
from tests.helpers import ListSource, init_repo, open_repo


def make_orders(n: int, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"o{i:07d}", "status": rng.choice(["UNPAID", "SHIPPED", "DONE"]),
             "qty": rng.randint(1, 5), "price": f"{rng.randint(100, 9999) / 100:.2f}",
             "buyer_email": f"buyer{i}@mail.example", "note": "x" * rng.randint(0, 60)}
            for i in range(n)]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path):
    if request.param == "local":
        return LocalStore(tmp_path / "repo")
    seaweed = request.getfixturevalue("seaweed")
    return open_store(request.getfixturevalue("s3_url"), endpoint_url=seaweed.endpoint_url,
                      region="us-east-1")


def snapshot(store, datasets: dict[str, list[dict]]) -> Manifest:
    return SnapshotRun(open_repo(store)).run(ListSource("shop", datasets), []).manifest


MISSING = object()


def by_id(records: list[dict]) -> dict[str, dict]:
    return {str(r["id"]): r for r in records}


def test_added_removed_changed_with_field_lists(store) -> None:
    repo = init_repo(store)
    before = make_orders(2000)
    products = [{"id": f"p{i}", "title": f"Product {i}"} for i in range(50)]
    a = snapshot(store, {"orders": before, "products": products})
    after = copy.deepcopy(before)
    after[3]["status"] = "REFUNDED"
    after[700].update(status="CANCELLED", price="0.00")
    after[1200]["gift_wrap"] = True                 # a field on one side only
    del after[1500]["note"]
    after[1800]["qty"] = float(after[1800]["qty"])  # 2 -> 2.0: other bytes, other value
    removed = [after[10]["id"], after[1999]["id"]]
    after = [r for r in after if r["id"] not in removed]
    added = [{"id": f"o{i:07d}", "status": "UNPAID", "qty": 1} for i in (2000, 2001)]
    added.append({"id": "o0000100a", "status": "UNPAID", "qty": 1})  # sorts mid-dataset
    b = snapshot(store, {"orders": after + added, "products": products})

    report = diff_snapshots(open_repo(store), a, b)
    orders = report.dataset("orders")
    assert (orders.added, orders.removed, orders.changed) == (3, 2, 5)
    assert orders.unchanged == 2000 - 2 - 5
    assert orders.added_ids == ["o0000100a", "o0002000", "o0002001"]
    assert orders.removed_ids == ["o0000010", "o0001999"]
    assert [(c.id, c.fields) for c in orders.changed_records] == [
        ("o0000003", ["status"]), ("o0000700", ["price", "status"]),
        ("o0001200", ["gift_wrap"]), ("o0001500", ["note"]), ("o0001800", ["qty"])]
    # an unchanged dataset: zero, and not one record decoded (equal digests)
    prod = report.dataset("products")
    assert (prod.added, prod.removed, prod.changed, prod.unchanged) == (0, 0, 0, 50)
    assert prod.records_compared == 0 and prod.chunks_read == 0
    assert (report.added, report.removed, report.changed) == (3, 2, 5)

    back = diff_snapshots(repo, b, a)
    assert back.dataset("orders").added_ids == orders.removed_ids
    assert back.dataset("orders").removed_ids == orders.added_ids
    assert [c.id for c in back.dataset("orders").changed_records] == \
        [c.id for c in orders.changed_records]

    doc = report.to_json()
    assert doc["a"]["id"] == a.id.hex() and doc["b"]["id"] == b.id.hex()
    assert doc["datasets"]["orders"]["changed_records"][1] == {
        "id": "o0000700", "fields": ["price", "status"]}
    # names and ids only: no value of any record (e-mail addresses...) in the report
    assert "mail.example" not in repr(doc) and "REFUNDED" not in repr(doc)
    counts_only = diff_snapshots(repo, a, b, with_ids=False).to_json()
    assert counts_only["datasets"]["orders"]["changed"] == 5
    assert "added_ids" not in counts_only["datasets"]["orders"]


def test_dataset_in_one_snapshot_only(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    repo = init_repo(store)
    orders = make_orders(300)
    products = [{"id": f"p{i:03d}"} for i in range(40)]
    statements = [{"id": i, "amount": i * 2.5} for i in range(1, 13)]  # integer ids
    a = snapshot(store, {"orders": orders, "products": products})
    b = snapshot(store, {"orders": orders, "finance/statements": statements})
    report = diff_snapshots(repo, a, b)
    assert [d.name for d in report.datasets] == ["finance/statements", "orders", "products"]
    st, prod = report.dataset("finance/statements"), report.dataset("products")
    assert (st.only_in, st.added, st.removed) == ("b", 12, 0)
    assert st.added_ids == sorted(str(i) for i in range(1, 13))  # "1", "10", "11", "12", "2"..
    assert (prod.only_in, prod.removed, prod.added) == ("a", 40, 0)
    assert prod.removed_ids == [f"p{i:03d}" for i in range(40)]
    assert report.dataset("orders").unchanged == 300
    # without ids the counts come from the manifests alone
    quick = diff_snapshots(repo, a, b, with_ids=False)
    assert quick.dataset("products").removed == 40 and quick.records_compared == 0
    only = diff_snapshots(repo, a, b, datasets=["products"])
    assert [d.name for d in only.datasets] == ["products"]
    with pytest.raises(UsageError, match="no-such"):
        diff_snapshots(repo, a, b, datasets=["no-such"])


def test_one_change_in_many_chunks_decodes_only_its_chunks(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    repo = init_repo(store)
    orders = make_orders(40000)
    a = snapshot(store, {"orders": orders})
    after = copy.deepcopy(orders)
    after[12345]["price"] = "1234.56"
    b = snapshot(store, {"orders": after})
    entry = a.datasets["orders"]
    assert entry.chunks > 300 and len(entry.reflist) > 5  # many of both: skipping is tested

    report = diff_snapshots(repo, a, b)
    orders_diff = report.dataset("orders")
    assert [(c.id, c.fields) for c in orders_diff.changed_records] == [("o0012345",
                                                                         ["price"])]
    assert (orders_diff.added, orders_diff.removed, orders_diff.changed) == (0, 0, 1)
    assert orders_diff.unchanged == 39999
    # only the chunks around the change were decrypted, on either side (a changed record may
    # also move a chunk boundary, merging or splitting its neighbour)
    assert 2 <= orders_diff.chunks_read <= 6
    assert orders_diff.chunks_shared >= entry.chunks - 3
    reader = ChunkReader(repo, Index.load(repo))
    biggest = max(r.records for r in iter_chunk_refs(reader, entry))
    assert 2 <= report.records_compared <= 4 * biggest < 40000
    # and of the chunk lists themselves, only the blobs around the change were read
    assert 2 <= orders_diff.reflists_read <= 4 < 2 * len(entry.reflist)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_edits_match_a_naive_diff(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = LocalStore(tmp_path / "repo")
    repo = init_repo(store)
    before = {"orders": make_orders(3000, seed),
              "finance/transactions": [{"id": i, "amount": i % 97} for i in range(1, 1500)]}
    after = copy.deepcopy(before)
    for records in after.values():
        for _ in range(rng.randint(0, 40)):
            r = rng.choice(records)
            field = rng.choice(["status", "qty", "amount", "extra"])
            if field in r and rng.random() < 0.3:
                del r[field]
            else:
                r[field] = rng.choice(["A", "B", 7, 7.5, None, [1, 2], {"k": "v"}])
        records[:] = [r for r in records if rng.random() > 0.01]
        records.extend({"id": f"new{seed}-{i}", "amount": i} for i in range(rng.randint(0, 9)))
        rng.shuffle(records)
    a, b = snapshot(store, before), snapshot(store, after)
    report = diff_snapshots(repo, a, b)
    for name in before:
        old, new = by_id(before[name]), by_id(after[name])
        got = report.dataset(name)
        assert got.added_ids == sorted(new.keys() - old.keys())
        assert got.removed_ids == sorted(old.keys() - new.keys())
        # plain Python equality is exact here: no value pair like 1 / 1.0 / True is generated
        expect_changed = [(k, sorted(f for f in old[k].keys() | new[k].keys()
                                     if old[k].get(f, MISSING) != new[k].get(f, MISSING)))
                          for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]
        assert [(c.id, c.fields) for c in got.changed_records] == expect_changed
        assert got.unchanged + got.changed + got.removed == len(old)
        assert got.unchanged + got.changed + got.added == len(new)


def test_changed_fields_compares_canonical_values() -> None:
    assert changed_fields({"id": "1", "a": 1, "b": {"x": 1, "y": 2}},
                          {"id": "1", "a": True, "b": {"y": 2, "x": 1}}) == ["a"]
    assert changed_fields({"id": 5, "a": None}, {"id": "5"}) == ["a", "id"]
    assert changed_fields({"id": "1", "n": 10**30}, {"id": "1", "n": 10**30 + 1}) == ["n"]
