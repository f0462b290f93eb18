"""`sellerbak auth` and `sellerbak snapshot` with a tiktok source, as a seller runs them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import cli_env, run_cli, write_config
from tests.tiktok_server import (
    ALL_SCOPES,
    APP_SECRET,
    CIPHER,
    FakeTikTokShop,
    Settings,
    expected_datasets,
)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def config(tmp_path: Path, srv: FakeTikTokShop, **extra: object) -> Path:
    src = {"name": "my-shop", "type": "tiktok", "app_key": "29a39d",
           "app_secret": {"env": "TTS_APP_SECRET"}, "api_url": srv.url, "auth_url": srv.url,
           "requests_per_second": 100, **extra}
    return write_config(tmp_path, "./repo", [src])


def env() -> dict[str, str]:
    return cli_env(TTS_APP_SECRET=APP_SECRET)


def test_auth_snapshot_restore(tmp_path: Path) -> None:
    with FakeTikTokShop(orders=600, real_time=True) as srv:
        cfg = config(tmp_path, srv)
        ok(run_cli("-c", str(cfg), "init", env=env()))
        not_yet = run_cli("-c", str(cfg), "snapshot", env=env())
        assert not_yet.returncode == 2 and "sellerbak auth my-shop --code" in not_yet.stderr
        code = srv.issue_auth_code()
        out = ok(run_cli("-v", "-c", str(cfg), "auth", "my-shop", "--code", code, env=env()))
        assert out.stdout.split("\t")[0] == CIPHER and "Demo shop" in out.stderr
        state = tmp_path / "state" / "tiktok" / "my-shop.json"
        tokens = json.loads(state.read_text())
        assert state.stat().st_mode & 0o777 == 0o600
        again = run_cli("-c", str(cfg), "auth", "my-shop", "--code", code, env=env())
        assert again.returncode == 1 and "authorization code" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1

        snap = ok(run_cli("-v", "-c", str(cfg), "snapshot", env=env()))
        assert re.search(r"; [1-9][0-9]* API requests", snap.stderr), snap.stderr
        assert "records in 7 datasets" in snap.stderr
        ok(run_cli("-c", str(cfg), "restore", "latest", "--target", str(tmp_path / "out"),
                   env=env()))
        for name, records in expected_datasets(srv.shop).items():
            lines = (tmp_path / "out" / f"{name}.jsonl").read_text().splitlines()
            assert [json.loads(x) for x in lines] == records, name
        text = out.stdout + out.stderr + snap.stdout + snap.stderr
        for secret in (tokens["access_token"], tokens["refresh_token"], APP_SECRET, code,
                       "@scs.tiktokw.us", "***-"):
            assert secret not in text
        second = json.loads(ok(run_cli("--json", "-c", str(cfg), "snapshot", env=env())).stdout)
        assert second["snapshots"][0]["complete"]


def test_missing_scope_exits_3_with_the_action(tmp_path: Path) -> None:
    scopes = ALL_SCOPES - {"seller.finance.info"}
    with FakeTikTokShop(orders=200, real_time=True, settings=Settings(scopes=scopes)) as srv:
        cfg = config(tmp_path, srv, datasets=["orders", "finance"])
        ok(run_cli("-c", str(cfg), "init", env=env()))
        ok(run_cli("-c", str(cfg), "auth", "my-shop", "--code", srv.issue_auth_code(),
                   env=env()))
        proc = run_cli("-c", str(cfg), "snapshot", env=env())
        assert proc.returncode == 3, proc.stderr
        warnings = [x for x in proc.stderr.splitlines() if x.startswith("warning: finance/")]
        assert len(warnings) == 4
        assert all("re-authorize the app" in w and "seller.finance.info" in w for w in warnings)


def test_bad_signature_exits_1_in_one_line(tmp_path: Path) -> None:
    with FakeTikTokShop(orders=100, real_time=True) as srv:
        cfg = config(tmp_path, srv)
        ok(run_cli("-c", str(cfg), "init", env=env()))
        ok(run_cli("-c", str(cfg), "auth", "my-shop", "--code", srv.issue_auth_code(),
                   env=env()))
        proc = run_cli("-c", str(cfg), "snapshot", env=cli_env(TTS_APP_SECRET="wrong"))
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and "app_secret" in proc.stderr


@pytest.mark.parametrize("extra,expect", [
    ({"app_secret": "plain-text"}, "app_secret must not hold the secret"),
    ({"app_key": None}, "sources[0].app_key"),
    ({"datasets": ["orders", "reviews"]}, "sources[0].datasets: unknown dataset 'reviews'"),
    ({"api_url": "http://open-api.example.com"}, "sources[0].api_url: must be https"),
    ({"requests_per_second": 0}, "sources[0].requests_per_second"),
    ({"colour": "blue"}, "sources[0].colour: unknown key"),
    ({"since": "yesterday"}, "sources[0].since"),
])
def test_bad_tiktok_config_names_the_key(tmp_path: Path, extra: dict, expect: str) -> None:
    with FakeTikTokShop(orders=20, real_time=True) as srv:
        cfg = config(tmp_path, srv, **extra)
        proc = run_cli("-c", str(cfg), "snapshots", env=env())
        assert proc.returncode == 2 and expect in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and "plain-text" not in proc.stderr


def test_progress_on_a_terminal_shows_requests_and_throttling(tmp_path: Path) -> None:
    """Under a pseudo-terminal the snapshot draws per-dataset progress with the API counts."""
    import os
    import pty
    import sys

    with FakeTikTokShop(orders=300, real_time=True) as srv:
        cfg = config(tmp_path, srv)
        ok(run_cli("-c", str(cfg), "init", env=env()))
        ok(run_cli("-c", str(cfg), "auth", "my-shop", "--code", srv.issue_auth_code(),
                   env=env()))
        srv.settings.retry_after = "0"
        master, slave = pty.openpty()
        srv.inject("429", "429")
        proc = subprocess.Popen([sys.executable, "-m", "sellerbak", "-c", str(cfg), "snapshot"],
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                                env=dict(env(), COLUMNS="160", TERM="xterm"))
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=120) == 0
        os.close(master)
        screen = b"".join(chunks).decode(errors="replace")
        assert "my-shop: orders" in screen and "my-shop: finance/payments" in screen
        assert "requests" in screen and "2 throttled" in screen
