"""The TikTok exporter against the conformance server: a shop of thousands of orders over
several simulated nights, snapshots restored and compared with the server's records exactly,
and the number of API calls a night's incremental run makes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.repository.manifest import resolve_snapshot
from sellerbak.restore.restore import restore_snapshot
from sellerbak.storage.local import LocalStore
from tests.helpers import init_repo, open_repo
from tests.tiktok_server import FakeTikTokShop, expected_datasets, make_source

PAGE = 50


def restored(repo: Any, manifest: Any, target: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for r in restore_snapshot(repo, manifest, target):
        out[r.name] = [json.loads(line) for line in r.path.read_text().splitlines()]
    return out


def changed(before: dict[str, list[dict]], after: dict[str, list[dict]], ds: str) -> int:
    old = {r["id"]: r for r in before[ds]}
    return sum(1 for r in after[ds] if old.get(r["id"]) != r)


def test_nights_of_incremental_snapshots_equal_the_shop(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    with FakeTikTokShop(orders=4000, night=0) as srv:
        # night 0: the first snapshot is full; small windows force the range to be split
        src = make_source(srv, tmp_path / "state", page_size=PAGE, window_records=1500)
        result = SnapshotRun(open_repo(store)).run(src, [])
        assert not result.incomplete
        assert all(d.cursor for d in result.manifest.datasets.values())
        expect = expected_datasets(srv.shop)
        got = restored(open_repo(store), result.manifest, tmp_path / "r0")
        assert got == expect
        assert len(expect["orders"]) == 4000 and len(expect["customers"]) > 1000
        # search with status ALL leaves DELETED out on this server: the second pass finds them
        assert {"DELETED", "FREEZE"} <= {p["status"] for p in got["products"]}
        orders_windows = {(json.loads(e.body)["update_time_ge"],
                           json.loads(e.body)["update_time_lt"])
                          for e in srv.calls("/order/202309/orders/search")}
        assert len(orders_windows) > 3  # split into windows by total_count

        for night in (1, 2, 3):
            srv.advance()
            srv.reset_log()
            before, expect = expect, expected_datasets(srv.shop)
            src = make_source(srv, tmp_path / "state", tokens=False, page_size=PAGE,
                              window_records=1500)
            result = SnapshotRun(open_repo(store)).run(src, [])
            assert not result.incomplete
            m = result.manifest
            assert all(m.datasets[d].cursor for d in m.datasets)
            got = restored(open_repo(store), resolve_snapshot(open_repo(store), "latest"),
                           tmp_path / f"r{night}")
            assert got == expect, night
            # the budget: changed/page_size list calls plus a constant, one detail call per
            # changed product
            n_orders = changed(before, expect, "orders")
            n_products = changed(before, expect, "products")
            assert 0 < n_orders < len(expect["orders"]) // 20
            searches = srv.calls("/order/202309/orders/search")
            assert len(searches) <= math.ceil(n_orders / PAGE) + 3, (len(searches), n_orders)
            details = [e for e in srv.calls("/product/202309/products/")]
            assert n_products <= len(details) <= n_products + 2
            detail_orders = [e for e in srv.calls() if e.path == "/order/202309/orders"]
            listing = [e for e in srv.log if e.path not in ("/order/202309/orders",)
                       and not e.path.startswith("/product/202309/products/")]
            n_statements = sum(1 for s in expect["finance/statements"]
                               if s not in before["finance/statements"])
            assert len(listing) <= math.ceil(n_orders / PAGE) + n_statements + 12, \
                (len(listing), n_orders, n_statements)
            assert len(detail_orders) <= math.ceil(n_orders / 50)
            assert not srv.content_type_violations

        # a deleted order (not something TikTok does, but a backup must follow the source)
        # only disappears on --full, which re-reads and reconciles everything
        gone = next(iter(srv.shop.orders))
        del srv.shop.orders[gone]
        srv.reset_log()
        src = make_source(srv, tmp_path / "state", tokens=False, page_size=PAGE)
        result = SnapshotRun(open_repo(store)).run(src, [], full=True)
        got = restored(open_repo(store), result.manifest, tmp_path / "rfull")
        assert gone not in {o["id"] for o in got["orders"]}
        assert got == expected_datasets(srv.shop)
        assert len(srv.calls("/product/202309/products/")) == len(srv.shop.products)


def test_record_moving_mid_scan_is_caught_up_by_the_next_run(tmp_path: Path) -> None:
    """Page tokens are offsets: an order updated while its window is being read leaves the
    window and pushes the next page one record further, so one changed order is skipped. The
    run's catch-up query sees the moved order, and the next run rescans from its old time."""
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    with FakeTikTokShop(orders=4000, night=0) as srv:
        SnapshotRun(open_repo(store)).run(make_source(srv, tmp_path / "s", page_size=PAGE), [])
        srv.advance()
        moved: list[str] = []

        def mutate(server: FakeTikTokShop, entry: Any) -> None:
            if entry.path.endswith("/orders/search") and "page_token" in entry.query \
                    and not moved:
                first = min(server.shop.orders.values(), key=lambda o: (
                    o["update_time"], o["id"]) if o["update_time"] >= server.shop.now - 86_400
                    else (10**12, ""))
                moved.append(first["id"])
                server.shop.orders[first["id"]] = dict(
                    first, update_time=int(server.clock()), seller_note="edited mid-run")

        srv.on_request = mutate
        src = make_source(srv, tmp_path / "s", tokens=False, page_size=PAGE)
        first = SnapshotRun(open_repo(store)).run(src, [])
        srv.on_request = None
        assert moved and first.manifest.datasets["orders"].cursor.get("rescan")
        got = restored(open_repo(store), first.manifest, tmp_path / "a")
        assert got["orders"] != expected_datasets(srv.shop)["orders"]  # one skipped, one stale
        srv.fast_forward = 3600  # the next run, an hour later (same shop)
        second = SnapshotRun(open_repo(store)).run(
            make_source(srv, tmp_path / "s", tokens=False, page_size=PAGE), [])
        assert restored(open_repo(store), second.manifest, tmp_path / "b") == \
            expected_datasets(srv.shop)
        assert "rescan" not in second.manifest.datasets["orders"].cursor
