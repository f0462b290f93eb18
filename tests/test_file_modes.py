"""What sellerbak creates on the local disk is its owner's alone, whatever the umask: restored
datasets, a file:// repository and the state directory (tokens, the demo shop's night, the
customers order book) are 0600 files in 0700 directories, including every parent directory it
had to create. Runs the real CLI under umask 022 (the usual default) and 000 (the worst case).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cli_env, write_config
from tests.tiktok_server import APP_SECRET, FakeTikTokShop


def _run(umask: int, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "sellerbak", *args], capture_output=True,
                          text=True, env=env or cli_env(), timeout=300,
                          stdin=subprocess.DEVNULL, preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _modes(top: Path) -> dict[str, int]:
    """Mode of `top` and of everything under it, by path relative to top's parent."""
    out = {top.name: stat.S_IMODE(top.stat().st_mode)}
    for path in top.rglob("*"):
        out[str(path.relative_to(top.parent))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def _assert_private(top: Path) -> None:
    modes = _modes(top)
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o700 if (top.parent / name).is_dir() else 0o600)}
    assert not wrong, f"not 0700 (directories) / 0600 (files): {wrong}"
    assert not [p for p in top.rglob("*") if p.is_symlink()]


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_repository_restore_and_demo_state_are_private(tmp_path: Path, umask: int) -> None:
    data = tmp_path / "exports"
    (data / "finance").mkdir(parents=True)
    (data / "orders.jsonl").write_text("".join(
        f'{{"id": "o{i}", "buyer_email": "b{i}@example.com"}}\n' for i in range(50)))
    (data / "finance" / "statements.csv").write_text("id,amount\ns1,1.00\ns2,2.00\n")
    # parents that do not exist yet: each one sellerbak creates must be 0700 too
    cfg = write_config(tmp_path, "./vault/backups/repo", [
        {"name": "files", "type": "files", "path": "./exports"},
        {"name": "demo", "type": "demo", "orders": 300}],
        state_dir=str(tmp_path / "var" / "lib" / "sellerbak"))
    c = ("-c", str(cfg))
    _run(umask, *c, "init")
    _run(umask, *c, "demo", "advance")
    _run(umask, *c, "snapshot")
    _run(umask, *c, "restore", "latest", "--source", "files", "--target",
         str(tmp_path / "out" / "nightly" / "files"))
    _run(umask, *c, "restore", "latest", "--source", "demo", "--format", "csv", "--target",
         str(tmp_path / "out" / "nightly" / "demo"))

    _assert_private(tmp_path / "vault")
    repo = tmp_path / "vault" / "backups" / "repo"
    assert {p.name for p in repo.iterdir()} >= {"config", "keys", "data", "index", "snapshots"}
    _assert_private(tmp_path / "out")
    restored = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.*")}
    assert {"nightly/files/orders.jsonl", "nightly/files/finance/statements.jsonl",
            "nightly/demo/customers.csv", "nightly/demo/finance/transactions.csv"} <= restored
    _assert_private(tmp_path / "var")
    assert (tmp_path / "var/lib/sellerbak/demo/demo.json").is_file()


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_tiktok_tokens_and_order_book_are_private(tmp_path: Path, umask: int) -> None:
    with FakeTikTokShop(orders=120, real_time=True) as srv:
        cfg = write_config(tmp_path, "./repo", [
            {"name": "shop", "type": "tiktok", "app_key": "29a39d",
             "app_secret": {"env": "TTS_APP_SECRET"}, "api_url": srv.url,
             "auth_url": srv.url, "requests_per_second": 100}],
            state_dir=str(tmp_path / "state" / "sellerbak"))
        env = cli_env(TTS_APP_SECRET=APP_SECRET)
        c = ("-c", str(cfg))
        _run(umask, *c, "init", env=env)
        _run(umask, *c, "auth", "shop", "--code", srv.issue_auth_code(), env=env)
        _run(umask, *c, "snapshot", env=env)
        srv.expire_access_tokens()  # the next run refreshes them and rewrites the token file
        _run(umask, *c, "snapshot", env=env)
    _assert_private(tmp_path / "state")
    state = tmp_path / "state" / "sellerbak" / "tiktok"
    assert (state / "shop.json").is_file()
    assert list((state / "shop").glob("customers-*.sqlite")), "the order book was not kept"
    _assert_private(tmp_path / "repo")
