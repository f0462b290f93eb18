"""A hostile auth host's token never becomes an internal error: a token that cannot go into a
request header (outside Latin-1, CR LF, control characters, empty, huge) is refused as a bad
answer from the auth host, one line, through the real CLI (`sellerbak auth`, `snapshot`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import cli_env, run_cli, write_config
from tests.tiktok_server import APP_SECRET, FakeTikTokShop

HOSTILE = {"non-latin-1": "ROW_\u2603\u4e2d\u6587token",
           "crlf": "ROW_abc\r\nX-Injected: yes",
           "control": "ROW_abc\x00\x1bdef",
           "latin-1-accent": "ROW_caf\xe9",
           "space": "ROW_abc def",
           "empty": "",
           "huge": "ROW_" + "A" * 100_000}


def _config(tmp_path: Path, srv: FakeTikTokShop) -> Path:
    src = {"name": "my-shop", "type": "tiktok", "app_key": "29a39d",
           "app_secret": {"env": "TTS_APP_SECRET"}, "api_url": srv.url, "auth_url": srv.url,
           "requests_per_second": 100}
    return write_config(tmp_path, "./repo", [src])


def _env() -> dict[str, str]:
    return cli_env(TTS_APP_SECRET=APP_SECRET)


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
    return errors[0]


@pytest.mark.parametrize("token", HOSTILE.values(), ids=HOSTILE.keys())
def test_auth_refuses_a_token_that_cannot_be_sent(tmp_path: Path, token: str) -> None:
    with FakeTikTokShop(orders=20, real_time=True) as srv:
        cfg = _config(tmp_path, srv)
        srv.settings.hostile_access_token = token
        done = run_cli("-c", str(cfg), "auth", "my-shop", "--code", srv.issue_auth_code(),
                       env=_env())
        assert done.returncode == 1, done.stderr
        assert "auth host answered with a token that cannot be used" in \
            _one_error_line(done.stderr)
        assert not (tmp_path / "state" / "tiktok" / "my-shop.json").exists()
        # nothing reached the API with it
        assert srv.calls("/authorization/") == [] and srv.calls("/seller/") == []


def test_snapshot_refuses_a_hostile_refreshed_token(tmp_path: Path) -> None:
    with FakeTikTokShop(orders=20, real_time=True) as srv:
        cfg = _config(tmp_path, srv)
        assert run_cli("-c", str(cfg), "init", env=_env()).returncode == 0
        done = run_cli("-c", str(cfg), "auth", "my-shop", "--code", srv.issue_auth_code(),
                       env=_env())
        assert done.returncode == 0, done.stderr
        state = tmp_path / "state" / "tiktok" / "my-shop.json"
        stored = json.loads(state.read_text())
        srv.settings.hostile_access_token = HOSTILE["non-latin-1"]
        srv.expire_access_tokens()
        stored["access_token_expire_in"] = 0  # due for a refresh at the next run
        state.write_text(json.dumps(stored))
        done = run_cli("-c", str(cfg), "snapshot", env=_env())
        assert done.returncode == 1, done.stderr
        assert "token that cannot be used" in _one_error_line(done.stderr)
        assert HOSTILE["non-latin-1"] not in json.loads(state.read_text())["access_token"]


@pytest.mark.parametrize("token", [HOSTILE["non-latin-1"], HOSTILE["crlf"]],
                         ids=["non-latin-1", "crlf"])
def test_a_token_file_holding_an_unsendable_token_is_damaged(tmp_path: Path,
                                                            token: str) -> None:
    with FakeTikTokShop(orders=20, real_time=True) as srv:
        cfg = _config(tmp_path, srv)
        assert run_cli("-c", str(cfg), "init", env=_env()).returncode == 0
        done = run_cli("-c", str(cfg), "auth", "my-shop", "--code", srv.issue_auth_code(),
                       env=_env())
        assert done.returncode == 0, done.stderr
        state = tmp_path / "state" / "tiktok" / "my-shop.json"
        stored = json.loads(state.read_text())
        stored["access_token"] = token  # written by an older version, or edited
        state.write_text(json.dumps(stored))
        done = run_cli("-c", str(cfg), "snapshot", env=_env())
        assert done.returncode == 1, done.stderr
        assert "token file" in _one_error_line(done.stderr)
