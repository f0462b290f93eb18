"""Client conformance against the local server: signing on the wire, headers, shop_cipher,
retries and backoff, token refresh, one-line errors that say what to do, and no secrets in
logs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from sellerbak.backup.exporters.tiktok.client import RetryPolicy
from sellerbak.backup.exporters.tiktok.errors import ApiError
from sellerbak.backup.exporters.tiktok.tokens import TokenSet, TokenStore
from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.errors import SourceError
from sellerbak.storage.local import LocalStore
from tests.helpers import init_repo, open_repo
from tests.tiktok_server import (
    ALL_SCOPES,
    CIPHER,
    FakeTikTokShop,
    Settings,
    make_source,
)

SMALL = 300  # orders: these tests are about the wire, not volume


def run_all(src: Any) -> dict[str, Any]:
    out = {}
    for export in src.export({}, False):
        out[export.name] = (list(export.records), export)
    return out


@pytest.fixture
def srv():
    with FakeTikTokShop(orders=SMALL) as server:
        yield server


def test_every_request_is_well_formed_and_connections_are_reused(srv, tmp_path: Path) -> None:
    src = make_source(srv, tmp_path, page_size=20)
    got = run_all(src)
    assert all(e.complete for _r, e in got.values())
    assert srv.counters.requests > 40 and srv.counters.connections <= 2
    assert not srv.content_type_violations
    for e in srv.log:
        assert e.headers["content-type"] == "application/json"
        assert len(e.query["timestamp"]) == 10
        assert "access_token" not in e.query and e.headers["x-tts-access-token"]
        assert ("shop_cipher" in e.query) == (not e.path.startswith("/authorization"))
        assert e.status == 200, (e.path, e.code)
    tokens = [e for e in srv.log if "page_token" in e.query]
    assert tokens and all("%3D" in e.raw_query for e in tokens)  # encoded on the wire
    posts = [e for e in srv.log if e.method == "POST"]
    assert posts and all(e.body.startswith(b"{") and b" " not in e.body for e in posts)


def test_throttling_5xx_and_network_errors_are_retried_with_backoff(srv, tmp_path) -> None:
    srv.inject("429", "500", "36009003", "drop", "429")
    src = make_source(srv, tmp_path)
    got = run_all(src)
    assert all(e.complete for _r, e in got.values())
    s = src.stats
    assert s.retries == 5 and s.throttled == 2
    assert "5 retried (2 throttled" in src.summary()


def test_retry_after_is_honoured(srv, tmp_path) -> None:
    srv.settings.retry_after = "0.4"
    srv.inject("429")
    src = make_source(srv, tmp_path)
    started = time.monotonic()
    src.shops()
    assert time.monotonic() - started >= 0.4 and src.stats.waited >= 0.4


def test_token_bucket_429_bursts_slow_the_run_but_it_completes(tmp_path: Path) -> None:
    with FakeTikTokShop(orders=SMALL, settings=Settings(rate=(5, 200))) as srv:
        src = make_source(srv, tmp_path, retry=RetryPolicy(10, 0.01, 0.05, 0.01))
        got = run_all(src)
        assert all(e.complete for _r, e in got.values())
        assert src.stats.throttled > 0
        assert len(got["orders"][0]) == SMALL


def test_request_rate_cap(srv, tmp_path) -> None:
    src = make_source(srv, tmp_path, requests_per_second=25)
    started = time.monotonic()
    for _ in range(6):
        src.shops()
    assert time.monotonic() - started >= 5 / 25 * 0.95


def test_exhausted_retries_leave_the_dataset_incomplete_with_one_line(srv, tmp_path) -> None:
    src = make_source(srv, tmp_path, datasets=("orders", "finance/withdrawals"),
                      retry=RetryPolicy(3, 0.01, 0.02, 0.0), shop_cipher=CIPHER)
    srv.inject("500", "500", "500")
    got = run_all(src)
    orders = got["orders"][1]
    assert not orders.complete and "kept failing" in orders.problem
    assert "\n" not in orders.problem and "next run" in orders.problem
    assert got["finance/withdrawals"][1].complete


def test_expired_token_mid_run_is_refreshed_once_and_saved(srv, tmp_path) -> None:
    src = make_source(srv, tmp_path, page_size=20)
    calls = {"n": 0}

    def expire(server: FakeTikTokShop, entry: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 8:
            server.expire_access_tokens()

    srv.on_request = expire
    before = TokenStore(tmp_path, "shop").load()
    got = run_all(src)
    assert all(e.complete for _r, e in got.values())
    assert src.stats.refreshes == 1
    assert len([e for e in srv.log if e.path == "/api/v2/token/refresh"]) == 1
    expired = [e for e in srv.log if e.code == 105002]
    assert len(expired) == 1 and expired[0].status == 401
    after = TokenStore(tmp_path, "shop").load()
    assert after and before and after.access_token != before.access_token
    assert after.refresh_token != before.refresh_token  # the rotated one is kept
    path = tmp_path / "tiktok" / "shop.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tiktok").stat().st_mode & 0o777 == 0o700


def test_token_close_to_expiry_is_refreshed_before_use(srv, tmp_path) -> None:
    store = TokenStore(tmp_path, "shop")
    grant = srv.grant_tokens()
    grant["access_token_expire_in"] = int(srv.clock()) + 60
    store.save(TokenSet.from_api(grant, int(srv.clock())))
    src = make_source(srv, tmp_path, tokens=False)
    src.shops()
    assert [e.path for e in srv.log] == ["/api/v2/token/refresh", "/authorization/202309/shops"]


def test_refresh_token_from_config_bootstraps(srv, tmp_path, monkeypatch) -> None:
    from sellerbak.credentials import SecretRef

    monkeypatch.setenv("TTS_TEST_REFRESH", srv.grant_tokens()["refresh_token"])
    src = make_source(srv, tmp_path, tokens=False,
                      refresh_token=SecretRef("refresh_token", "env", "TTS_TEST_REFRESH"))
    assert src.shops()[0]["cipher"] == CIPHER
    assert TokenStore(tmp_path, "shop").load() is not None


def test_clock_skew_is_resynchronised_from_the_date_header(srv, tmp_path) -> None:
    srv.clock_skew = 900  # the server is 15 minutes ahead of us
    src = make_source(srv, tmp_path)
    assert src.shops()
    assert [e.code for e in srv.log] == [36009004, 0]


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def test_wrong_secret_fails_once_without_retry(srv, tmp_path, monkeypatch) -> None:
    src = make_source(srv, tmp_path)
    monkeypatch.setenv("TTS_TEST_APP_SECRET", "not-the-secret")
    with pytest.raises(ApiError) as err:
        src.shops()
    assert "app_secret" in one_line(err.value) and "106001" in str(err.value)
    assert len(srv.log) == 1 and srv.log[0].status == 401


@pytest.mark.parametrize("setup,expect", [
    ("cipher", "set shop_cipher"),
    ("deactivated", "reactivates it in Seller Center"),
    ("sandbox", "next hour"),
    ("app_key", "check app_key"),
    ("token", "sellerbak auth shop --code"),
])
def test_fatal_errors_stop_the_source_with_the_action(srv, tmp_path, setup, expect) -> None:
    options: dict[str, Any] = {}
    if setup == "cipher":
        options["shop_cipher"] = "GCP_NotThisShop"
    if setup == "app_key":
        options["app_key"] = "nope"
    src = make_source(srv, tmp_path, **options)
    if setup == "deactivated":
        srv.settings.deactivated = True
    if setup == "sandbox":
        srv.settings.sandbox = True
    if setup == "token":
        srv.access.clear()
    with pytest.raises(SourceError) as err:
        run_all(src)
    assert expect in one_line(err.value)
    assert len(srv.log) == 1  # no retry


def test_missing_scope_leaves_finance_incomplete_and_the_rest_stored(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    scopes = ALL_SCOPES - {"seller.finance.info"}
    with FakeTikTokShop(orders=SMALL, settings=Settings(scopes=scopes)) as srv:
        src = make_source(srv, tmp_path / "state")
        result = SnapshotRun(open_repo(store)).run(src, [])
        assert sorted(result.incomplete) == ["finance/payments", "finance/statements",
                                             "finance/transactions", "finance/withdrawals"]
        problem = result.manifest.datasets["finance/payments"].problem
        assert "seller.finance.info" in one_line(problem) and "re-authorize" in problem
        assert result.manifest.datasets["orders"].records == SMALL
        assert len([e for e in srv.log if e.code == 105005]) == 3  # no retries


def test_retired_endpoint_version_names_the_fix(srv, tmp_path, monkeypatch) -> None:
    from sellerbak.backup.exporters.tiktok import exporter

    monkeypatch.setattr(exporter, "P_PAYMENTS", "/finance/202309/payments")
    src = make_source(srv, tmp_path, datasets=("finance/payments",))
    export = run_all(src)["finance/payments"][1]
    assert not export.complete and "upgrade sellerbak" in one_line(export.problem)


def test_several_shops_need_shop_cipher(srv, tmp_path) -> None:
    srv.ciphers["ROW_Other"] = {"cipher": "ROW_Other", "name": "Second", "region": "GB"}
    with pytest.raises(SourceError) as err:
        run_all(make_source(srv, tmp_path))
    assert "set shop_cipher to one of" in one_line(err.value) and "ROW_Other" in str(err.value)
    got = run_all(make_source(srv, tmp_path, shop_cipher=CIPHER, datasets=("products",)))
    assert got["products"][1].complete


def test_no_token_or_secret_in_debug_logs(srv, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    src = make_source(srv, tmp_path, datasets=("products", "finance/withdrawals"))
    srv.inject("429")
    srv.expire_access_tokens()
    run_all(src)
    tokens = json.loads((tmp_path / "tiktok" / "shop.json").read_text())
    text = caplog.text
    for secret in (tokens["access_token"], tokens["refresh_token"], "e59af819cc"):
        assert secret not in text
