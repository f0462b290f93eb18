"""A hostile TikTok Shop API: listings without end, repeated page tokens, records whose ids
cannot key them. Each stops or thins only its own dataset, which is stored flagged incomplete
with a one-line reason (never an id); the other datasets are complete; the run exits 3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sellerbak.backup.exporters.tiktok import paging
from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.storage.local import LocalStore
from tests.helpers import cli_env, init_repo, run_cli, write_config
from tests.hostile import watchdog
from tests.tiktok_server import APP_SECRET, FakeTikTokShop, Settings, make_source

ALL = ("products", "orders", "customers", "finance/statements", "finance/transactions",
       "finance/payments", "finance/withdrawals")


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    with watchdog():
        yield


def _snapshot(tmp_path: Path, srv: FakeTikTokShop) -> Any:
    """A whole snapshot of the shop, in-process, into a fresh local repository."""
    repo = init_repo(LocalStore(tmp_path / "repo"))
    source = make_source(srv, tmp_path / "state", since=int(srv.clock()) - 400 * 86400)
    return SnapshotRun(repo).run(source, tags=[])


def _incomplete(result: Any) -> dict[str, str]:
    return {n: d.problem for n, d in result.manifest.datasets.items() if not d.complete}


def test_a_listing_without_end_stops_past_its_total_count(tmp_path: Path) -> None:
    """Orders always name a fresh page token (the first page again): the listing stops a few
    pages past the total_count it gave; orders (and customers, derived from them) are stored
    incomplete, the rest complete. The old code followed the tokens for ever."""
    settings = Settings(hostile_pages={"/order/202309/orders/search": "fresh"})
    with FakeTikTokShop(orders=30, settings=settings) as srv:
        result = _snapshot(tmp_path, srv)
        searches = len(srv.calls("/order/202309/orders/search"))
    assert set(result.manifest.datasets) == set(ALL)
    problems = _incomplete(result)
    assert set(problems) == {"orders", "customers"}, problems
    assert "past the 30 records it counted" in problems["orders"]
    assert "\n" not in problems["orders"]
    # 2 x ceil(30 / 30 a page) + 10 pages per window, a full and a catch-up window
    assert searches <= 2 * (2 + paging.TOTAL_SLACK_PAGES) + 2
    assert result.manifest.datasets["orders"].records == 30


def test_a_count_that_lies_on_every_window_does_not_split_the_history(tmp_path: Path) -> None:
    """Every orders search claims a billion records, yet its pages end: the window is read as
    it is. The old code halved 400 days of history down to hours, a request each."""
    def rewrite(path: str, data: dict[str, Any]) -> None:
        if path == "/order/202309/orders/search":
            data["total_count"] = 10**9

    with FakeTikTokShop(orders=30) as srv:
        srv.rewrite = rewrite
        result = _snapshot(tmp_path, srv)
        searches = len(srv.calls("/order/202309/orders/search"))
    assert not _incomplete(result)
    assert result.manifest.datasets["orders"].records == 30
    assert searches <= 4, searches


def test_a_listing_without_total_count_stops_at_the_page_cap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Statements (the API gives no total_count) always name a fresh token: the hard page
    cap stops them; statements and the transactions read from them are incomplete."""
    monkeypatch.setattr(paging, "MAX_PAGES", 25)
    settings = Settings(hostile_pages={"/finance/202309/statements": "fresh"})
    with FakeTikTokShop(orders=30, settings=settings) as srv:
        result = _snapshot(tmp_path, srv)
        calls = len([c for c in srv.calls("/finance/202309/statements")
                     if not c.path.endswith("statement_transactions")])
    problems = _incomplete(result)
    assert set(problems) == {"finance/statements", "finance/transactions"}, problems
    assert "more than 25 pages" in problems["finance/statements"]
    assert calls <= 25


def test_a_repeated_token_in_statement_transactions_stops_only_that_listing(
        tmp_path: Path) -> None:
    """One statement's transactions repeat a page token: that listing stops, the other
    statements' transactions are read. The old code stopped the whole source (nothing
    stored, exit 1)."""
    from tests.tiktok_server import build_shop

    victim = sorted(build_shop(1, 30, 0).statements)[5]
    settings = Settings(hostile_pages={f"/finance/202501/statements/{victim}/": "repeat"})
    with FakeTikTokShop(orders=30, settings=settings) as srv:
        result = _snapshot(tmp_path, srv)
        expected = sum(len(t) for sid, t in srv.shop.transactions.items() if sid != victim)
        victims = len(srv.shop.transactions[victim])
    problems = _incomplete(result)
    assert set(problems) == {"finance/transactions"}, problems
    assert "repeated a page token while listing statement transactions" in \
        problems["finance/transactions"]
    assert "more statements" not in problems["finance/transactions"]
    assert result.manifest.datasets["finance/statements"].complete
    stored = result.manifest.datasets["finance/transactions"].records
    assert expected <= stored <= expected + victims


def test_listings_without_end_on_every_statement_stop_the_dataset_after_a_few(
        tmp_path: Path) -> None:
    settings = Settings(hostile_pages={"/finance/202501/statements/": "repeat"})
    with FakeTikTokShop(orders=30, settings=settings) as srv:
        result = _snapshot(tmp_path, srv)
        calls = len(srv.calls("/finance/202501/statements/"))
    problems = _incomplete(result)
    assert set(problems) == {"finance/transactions"}, problems
    assert "and on 2 more statements; the others were not read" in \
        problems["finance/transactions"]
    assert calls == 2 * 3


PII = ["jane.doe@example.com", "../../x", "+1 555 0100 2233"]
BAD_IDS: list[Any] = [*PII, "", 7, None, ["1"], "9" * 65, "\u0661\u0662"]


def _add_bad_orders(path: str, data: dict[str, Any]) -> None:
    if path == "/order/202309/orders/search" and data.get("orders"):
        good = data["orders"][0]
        data["orders"] += [dict(good, id=bad) for bad in BAD_IDS] + ["not an object"]
        no_id = dict(good)
        del no_id["id"]
        data["orders"].append(no_id)


def test_records_without_a_usable_id_are_counted_and_the_dataset_incomplete(
        tmp_path: Path) -> None:
    """Orders whose ids cannot key them (a path, an e-mail address, empty, a number, over
    long, non-ASCII digits, not an object at all) are left out and counted; the old code
    failed the whole source on them, or dropped them silently."""
    with FakeTikTokShop(orders=30) as srv:
        srv.rewrite = _add_bad_orders
        result = _snapshot(tmp_path, srv)
    problems = _incomplete(result)
    assert set(problems) == {"orders", "customers"}, problems
    assert f"sent {len(BAD_IDS) + 2} records of orders without a usable id" in \
        problems["orders"]
    assert result.manifest.datasets["orders"].records == 30
    text = json.dumps(problems)
    for pii in PII:
        assert pii not in text and json.dumps(pii)[1:-1] not in text


def test_orders_without_a_usable_buyer_id_mark_customers_incomplete(tmp_path: Path) -> None:
    """An order whose user_id cannot key a customer record: the order is stored, its buyer's
    record cannot be; the old code left it out of customers silently."""
    def rewrite(path: str, data: dict[str, Any]) -> None:
        if path == "/order/202309/orders/search" and data.get("orders"):
            good = data["orders"][0]
            data["orders"] += [dict(good, id=f"9{n:017d}", user_id=bad)
                               for n, bad in enumerate([EMAIL_ID, "", 5, None])]

    with FakeTikTokShop(orders=30) as srv:
        srv.rewrite = rewrite
        result = _snapshot(tmp_path, srv)
    problems = _incomplete(result)
    assert set(problems) == {"customers"}, problems
    assert "sent 4 orders without a usable buyer id" in problems["customers"]
    assert EMAIL_ID not in problems["customers"]
    assert result.manifest.datasets["orders"].records == 34


EMAIL_ID = "jane.doe@example.com"


def _config(tmp_path: Path, srv: FakeTikTokShop) -> Path:
    src = {"name": "my-shop", "type": "tiktok", "app_key": "29a39d",
           "app_secret": {"env": "TTS_APP_SECRET"}, "api_url": srv.url, "auth_url": srv.url,
           "requests_per_second": 100}
    return write_config(tmp_path, "./repo", [src])


def test_the_cli_stores_the_snapshot_and_exits_3(tmp_path: Path) -> None:
    settings = Settings(hostile_pages={"/order/202309/orders/search": "fresh"})
    env = cli_env(TTS_APP_SECRET=APP_SECRET)
    with FakeTikTokShop(orders=40, real_time=True, settings=settings) as srv:
        cfg = _config(tmp_path, srv)
        assert run_cli("-c", str(cfg), "init", env=env).returncode == 0
        assert run_cli("-c", str(cfg), "auth", "my-shop", "--code", srv.issue_auth_code(),
                       env=env).returncode == 0
        proc = run_cli("-c", str(cfg), "snapshot", env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("warning: ")]
    assert [w.split(":")[1].strip() for w in warnings] == ["orders", "customers"], warnings
    assert "kept sending pages past the 40 records" in warnings[0]
    listed = json.loads(run_cli("--json", "-c", str(cfg), "snapshots", env=env).stdout)
    assert len(listed) == 1 and not listed[0]["complete"]
