"""The demo source: deterministic, realistic-looking, and incremental exports that add up."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sellerbak.backup.exporters.base import DatasetExport
from sellerbak.backup.exporters.demo import (
    DATASETS,
    DAY,
    HISTORY_DAYS,
    MAX_LIFE,
    T0,
    DemoSource,
    demo_stats,
)

ROOT = Path(__file__).resolve().parent.parent
ORDER_STATUSES = {"UNPAID", "ON_HOLD", "AWAITING_SHIPMENT", "PARTIALLY_SHIPPING",
                  "AWAITING_COLLECTION", "IN_TRANSIT", "DELIVERED", "COMPLETED", "CANCELLED"}
PRODUCT_STATUSES = {"DRAFT", "PENDING", "FAILED", "ACTIVATE", "SELLER_DEACTIVATED",
                    "PLATFORM_DEACTIVATED", "FREEZE", "DELETED"}
MONEY = re.compile(r"^-?\d+\.\d\d$")


def canon(rec: dict) -> str:
    return json.dumps(rec, sort_keys=True, separators=(",", ":"))


def export_all(src: DemoSource, cursors: dict | None = None, full: bool = False):
    """{dataset: DatasetExport with records materialised as {id: canonical json}}."""
    out = {}
    for ex in src.export(cursors or {}, full):
        assert isinstance(ex, DatasetExport)
        assert iter(ex.records) is ex.records, "records should stream"
        recs = {}
        for r in ex.records:
            assert isinstance(r["id"], str)
            assert r["id"] not in recs, f"duplicate id {r['id']} in {ex.name}"
            recs[r["id"]] = canon(r)
        ex.records = recs
        ex.deleted_ids = list(ex.deleted_ids)
        out[ex.name] = ex
    assert sorted(out) == sorted(DATASETS)
    return out


def records(src: DemoSource, name: str) -> list[dict]:
    for ex in src.export({}, True):
        if ex.name == name:
            return list(ex.records)
    raise KeyError(name)


def digest(src: DemoSource) -> str:
    h = hashlib.sha256()
    for ex in src.export({}, True):
        h.update(ex.name.encode() + b"\n")
        for r in ex.records:
            h.update(canon(r).encode() + b"\n")
    return h.hexdigest()


@pytest.fixture(scope="module")
def shop() -> DemoSource:
    return DemoSource("shop", seed=7, orders=3000, night=3)


@pytest.fixture(scope="module")
def shop_data(shop) -> dict[str, list[dict]]:
    return {ex.name: list(ex.records) for ex in shop.export({}, True)}


# --------------------------------------------------------------------------- determinism


def test_same_parameters_give_identical_records():
    a = DemoSource("a", seed=11, orders=1200, night=2)
    b = DemoSource("b", seed=11, orders=1200, night=2)
    assert digest(a) == digest(b)
    # and a second export from the same instance (caches filled) is identical too
    assert digest(a) == digest(b)


def test_identical_across_processes_and_hash_seeds():
    here = digest(DemoSource("p", seed=5, orders=600, night=2))
    code = (
        "import hashlib, json, sys; sys.path.insert(0, sys.argv[1])\n"
        "from sellerbak.backup.exporters.demo import DemoSource\n"
        "h = hashlib.sha256()\n"
        "for ex in DemoSource('p', seed=5, orders=600, night=2).export({}, True):\n"
        "    h.update(ex.name.encode() + b'\\n')\n"
        "    for r in ex.records:\n"
        "        h.update(json.dumps(r, sort_keys=True, separators=(',', ':')).encode()"
        " + b'\\n')\n"
        "print(h.hexdigest())\n"
    )
    for hashseed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run([sys.executable, "-c", code, str(ROOT)], env=env, cwd=ROOT,
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == here


def test_different_seeds_differ():
    a = records(DemoSource("a", seed=1, orders=300), "orders")
    b = records(DemoSource("b", seed=2, orders=300), "orders")
    assert [canon(r) for r in a] != [canon(r) for r in b]


def test_constructor_and_type():
    src = DemoSource("demo-shop")
    assert src.type == "demo" and src.name == "demo-shop"
    assert (src.seed, src.orders, src.night) == (1, 2000, 0)
    with pytest.raises(ValueError):
        DemoSource("x", orders=0)
    with pytest.raises(ValueError):
        DemoSource("x", night=-1)


# --------------------------------------------------------------------------- shape


def test_dataset_sizes(shop, shop_data):
    n_orders = shop.order_count()
    assert len(shop_data["orders"]) == n_orders
    assert shop.order_count(0) == 3000
    assert 3000 * 1.01 < n_orders < 3000 * 1.03  # 3 nights of ~0.5%
    assert 75 <= len(shop_data["products"]) <= 78  # 3000 // 40 plus new ones
    assert 0.28 < len(shop_data["customers"]) / n_orders < 0.38
    assert len(shop_data["finance/statements"]) == HISTORY_DAYS + 3
    completed = sum(o["status"] == "COMPLETED" for o in shop_data["orders"])
    assert len(shop_data["finance/transactions"]) >= 2 * completed
    assert demo_stats(7, 3000, 3) == {k: len(v) for k, v in shop_data.items()}
    assert len(records(DemoSource("x", orders=10), "products")) == 20  # the minimum


def test_order_size_near_design_target(shop_data):
    sizes = [len(canon(o)) + 1 for o in shop_data["orders"]]
    avg = sum(sizes) / len(sizes)
    assert 1150 <= avg <= 1400, avg  # DESIGN: 200k orders ~ 250 MB of JSONL


def test_ids_look_like_tiktok(shop_data):
    for o in shop_data["orders"]:
        assert re.fullmatch(r"\d{18}", o["id"]), o["id"]
        assert re.fullmatch(r"\d{19}", o["user_id"])
        for li in o["line_items"]:
            assert re.fullmatch(r"\d{19}", li["product_id"])
            assert re.fullmatch(r"\d{19}", li["sku_id"])
            assert re.fullmatch(r"\d{18}", li["id"])
    for p in shop_data["products"]:
        assert re.fullmatch(r"\d{19}", p["id"])
        for sku in p["skus"]:
            assert re.fullmatch(r"\d{19}", sku["id"])
    for ds in ("customers", "finance/statements", "finance/transactions"):
        for r in shop_data[ds]:
            assert re.fullmatch(r"\d{19}", r["id"]), (ds, r["id"])
    for ds, recs in shop_data.items():
        ids = [r["id"] for r in recs]
        assert len(set(ids)) == len(ids), ds


def test_exports_come_in_ascending_id_order(shop_data):
    for ds, recs in shop_data.items():
        ids = [r["id"] for r in recs]
        assert ids == sorted(ids), ds


def test_order_ids_increase_with_creation_time(shop_data):
    orders = sorted(shop_data["orders"], key=lambda o: o["id"])
    times = [o["create_time"] for o in orders]
    assert times == sorted(times)
    assert times[0] >= T0 - HISTORY_DAYS * DAY and times[-1] < T0 + 3 * DAY


def test_orders_are_complete_and_consistent(shop_data):
    products = {p["id"]: p for p in shop_data["products"]}
    statuses = Counter()
    for o in shop_data["orders"]:
        st = o["status"]
        statuses[st] += 1
        assert st in ORDER_STATUSES
        assert o["create_time"] <= o["update_time"] < T0 + 3 * DAY
        assert o["buyer_email"].endswith("@scs.tiktokw.us")
        assert o["line_items"]
        pay = o["payment"]
        for k in ("sub_total", "shipping_fee", "tax", "total_amount", "seller_discount",
                  "platform_discount", "original_total_product_price"):
            assert MONEY.match(pay[k]), (k, pay[k])
        assert pay["currency"] == "USD"
        cents = {k: round(float(v) * 100) for k, v in pay.items() if k != "currency"}
        assert cents["sub_total"] == (cents["original_total_product_price"]
                                      - cents["seller_discount"] - cents["platform_discount"])
        assert cents["total_amount"] == (cents["sub_total"] + cents["shipping_fee"]
                                         + cents["tax"] + cents.get("retail_delivery_fee", 0))
        assert cents["original_total_product_price"] == sum(
            round(float(li["original_price"]) * 100) for li in o["line_items"])
        for li in o["line_items"]:
            prod = products[li["product_id"]]
            sku = next(s for s in prod["skus"] if s["id"] == li["sku_id"])
            assert li["seller_sku"] == sku["seller_sku"]
            assert li["product_name"] == prod["title"]
        paid = st not in ("UNPAID",) and not (st == "CANCELLED" and "paid_time" not in o)
        assert ("recipient_address" in o) == paid  # no address before payment (as the API)
        if paid:
            a = o["recipient_address"]
            for k in ("name", "phone_number", "full_address", "postal_code", "region_code",
                      "district_info"):
                assert a[k], k
            assert re.fullmatch(r"\(\+1\)\d{3}-\*\*\*-\d{4}", a["phone_number"])
        shipped = st in ("AWAITING_COLLECTION", "IN_TRANSIT", "DELIVERED", "COMPLETED")
        assert ("tracking_number" in o) == shipped
        assert ("delivery_time" in o) == (st in ("DELIVERED", "COMPLETED"))
        if st == "CANCELLED":
            assert o["cancel_time"] == o["update_time"]
            assert o["cancellation_initiator"] in ("BUYER", "SYSTEM")
    assert statuses["COMPLETED"] > 0.8 * sum(statuses.values())
    for st in ("UNPAID", "AWAITING_SHIPMENT", "IN_TRANSIT", "DELIVERED", "CANCELLED"):
        assert statuses[st] > 0, st


def test_products_look_real(shop_data):
    statuses = Counter(p["status"] for p in shop_data["products"])
    assert set(statuses) <= PRODUCT_STATUSES
    assert statuses["ACTIVATE"] > 0.8 * len(shop_data["products"])
    for p in shop_data["products"]:
        assert p["title"] and p["create_time"] <= p["update_time"]
        for sku in p["skus"]:
            assert sku["seller_sku"]
            assert MONEY.match(sku["price"]["sale_price"])
            assert sku["price"]["currency"] == "USD"
            assert sku["inventory"][0]["quantity"] >= 0


def test_customers_derive_from_orders(shop_data):
    by_buyer: dict[str, list[dict]] = {}
    for o in shop_data["orders"]:
        by_buyer.setdefault(o["user_id"], []).append(o)
    customers = {c["id"]: c for c in shop_data["customers"]}
    assert set(customers) == set(by_buyer)
    counts = Counter(len(v) for v in by_buyer.values())
    assert counts[1] < len(by_buyer) and max(counts) < 60  # repeat buyers, none absurd
    for uid, orders in by_buyer.items():
        c = customers[uid]
        orders.sort(key=lambda o: o["id"])
        assert c["user_id"] == uid and c["order_count"] == len(orders)
        assert c["first_order_id"] == orders[0]["id"]
        assert c["first_order_time"] == orders[0]["create_time"]
        assert c["last_order_id"] == orders[-1]["id"]
        assert c["last_order_time"] == orders[-1]["create_time"]
        assert c["buyer_email"] == orders[-1]["buyer_email"]
        if "recipient_address" in orders[-1]:
            assert c["recipient_address"] == orders[-1]["recipient_address"]
            assert c["name"] == orders[-1]["recipient_address"]["name"]


def test_finance_adds_up(shop_data):
    orders = {o["id"]: o for o in shop_data["orders"]}
    statements = {s["id"]: s for s in shop_data["finance/statements"]}
    sums: Counter = Counter()
    per_order: Counter = Counter()
    for t in shop_data["finance/transactions"]:
        assert t["statement_id"] in statements
        o = orders[t["order_id"]]
        assert o["status"] == "COMPLETED"
        assert t["type"] in ("ORDER", "SHIPPING_FEE", "ADJUSTMENT")
        assert MONEY.match(t["settlement_amount"])
        sums[t["statement_id"]] += round(float(t["settlement_amount"]) * 100)
        per_order[t["order_id"]] += 1
        st = statements[t["statement_id"]]
        assert st["statement_time"] <= t["create_time"] < st["statement_time"] + DAY
    assert min(per_order.values()) >= 2
    assert set(per_order) == {i for i, o in orders.items() if o["status"] == "COMPLETED"}
    for sid, st in statements.items():
        assert round(float(st["settlement_amount"]) * 100) == sums[sid]
        assert st["payment_status"] in ("PAID", "PROCESSING")
    assert [s["payment_status"] for s in shop_data["finance/statements"][-3:]] == [
        "PAID", "PROCESSING", "PROCESSING"]


def test_orders_settle_within_max_life():
    src = DemoSource("x", seed=3, orders=4000)
    for core in src._iter_cores(0, src.order_count()):
        tc, events = core[1], core[4]
        assert [t for t, _ in events] == sorted(t for t, _ in events)
        assert events[-1][0] - tc < MAX_LIFE


def test_no_pii_looking_values():
    for c in records(DemoSource("x", orders=500), "customers"):
        assert re.fullmatch(r"[a-z2-7]{12}@scs\.tiktokw\.us", c["buyer_email"])
        assert "***" in c["phone_number"]


# --------------------------------------------------------------------------- nights


def test_churn_rates_per_night():
    new = changed = existing = statements = 0
    ages = []
    product_changes = products = 0
    for k in range(1, 5):
        before = DemoSource("x", seed=9, orders=20000, night=k - 1)
        src = DemoSource("x", seed=9, orders=20000, night=k)
        cursor = before.export({}, True).__next__().cursor
        got = {ex.name: list(ex.records) for ex in src.export(dict.fromkeys(DATASETS, cursor),
                                                              False)}
        existing += before.order_count()
        t_k = T0 + (k - 1) * DAY
        for o in got["orders"]:
            if o["create_time"] >= t_k:
                new += 1
            else:
                changed += 1
                ages.append((T0 + k * DAY - o["create_time"]) / DAY)
                assert t_k <= o["update_time"] < t_k + DAY
        statements += len(got["finance/statements"])
        products += len(before._p_id)
        product_changes += sum(1 for p in got["products"] if p["create_time"] < t_k)
        assert all(p["create_time"] < t_k or p["create_time"] == p["update_time"]
                   for p in got["products"])
    assert 0.0035 < new / existing < 0.0065, new / existing
    assert 0.007 < changed / existing < 0.02, changed / existing
    assert sorted(ages)[len(ages) // 2] < 14  # mostly recent orders change
    assert 0.015 < product_changes / products < 0.025
    assert statements == 4 * 2  # each night a new one, and the one of two nights ago is paid


@pytest.mark.parametrize("k,n", [(0, 1), (0, 4), (2, 5), (3, 3), (1, 30)])
def test_changes_applied_to_old_full_give_new_full(k, n):
    orders = 1500 if n < 10 else 400
    old = export_all(DemoSource("s", seed=4, orders=orders, night=k), full=True)
    new_src = DemoSource("s", seed=4, orders=orders, night=n)
    cursors = {name: ex.cursor for name, ex in old.items()}
    changes = export_all(new_src, cursors)
    full = export_all(DemoSource("s", seed=4, orders=orders, night=n), full=True)
    for name in DATASETS:
        ch = changes[name]
        assert ch.mode == "changes", name
        assert ch.cursor == full[name].cursor
        assert ch.cursor["night"] == n
        merged = dict(old[name].records)
        merged.update(ch.records)
        for gone in ch.deleted_ids:
            merged.pop(gone)
        assert merged == full[name].records, name
        # a change set holds only what changed
        unchanged = [i for i, v in ch.records.items() if old[name].records.get(i) == v]
        assert not unchanged, (name, unchanged[:3])
        if k == n:
            assert not ch.records


def test_full_when_asked_or_cursor_does_not_fit():
    src = DemoSource("s", seed=4, orders=300, night=2)
    good = {"model": 1, "seed": 4, "orders": 300, "night": 1}
    bad = [None, {}, "x", {"night": 1}, dict(good, seed=5), dict(good, orders=301),
           dict(good, night=3), dict(good, night=-1), dict(good, night="1"),
           dict(good, night=True), dict(good, model=0)]
    for cursor in bad:
        modes = {ex.name: ex.mode for ex in src.export(dict.fromkeys(DATASETS, cursor), False)}
        assert set(modes.values()) == {"full"}, cursor
    modes = {ex.name: ex.mode for ex in src.export(dict.fromkeys(DATASETS, good), True)}
    assert set(modes.values()) == {"full"}
    modes = {ex.name: ex.mode for ex in src.export({"orders": good}, False)}
    assert modes["orders"] == "changes" and modes["products"] == "full"
    for ex in src.export({}, False):
        json.dumps(ex.cursor)
        json.dumps(ex.meta)
