"""Names from a repository or a source never reach the terminal as control sequences.

A planted key file's hostname, a tag, a dataset name from an export file's name, a name quoted in
an error line: each may carry ESC/CSI sequences (which can clear the screen, rewrite earlier
lines or set the window title) or bidi overrides (which make a name read as something else).
Human output escapes them (sellerbak.termsafe); `--json` keeps them exact.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from sellerbak.storage.local import LocalStore
from sellerbak.termsafe import safe
from tests.helpers import cli_env, run_cli, write_config

ESC = "\x1b]0;owned\x07\x1b[2J"  # set the window title, then clear the screen
BIDI = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "a\u202egpj.exe" reads as "aexe.jpg"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def _no_raw_controls(text: str) -> None:
    for ch in RAW:
        assert ch not in text, (ch, text)


@pytest.mark.parametrize(("text", "shown"), [
    ("plain name/with spaces", "plain name/with spaces"),
    ("caf\u00e9 \u65e5\u672c \U0001f600", "caf\u00e9 \u65e5\u672c \U0001f600"),
    ("a\x1b[31mb", "a\\x1b[31mb"),
    ("\x00\x07\x08\t\n\r\x7f", "\\x00\\x07\\x08\\x09\\x0a\\x0d\\x7f"),
    ("\x9b2J\x85", "\\x9b2J\\x85"),  # C1: CSI and NEL
    ("a\u202egpj.exe", "a\\u202egpj.exe"),
    ("\u2066x\u2069\u200f\u2028\ufeff", "\\u2066x\\u2069\\u200f\\u2028\\ufeff"),
])
def test_safe_escapes_controls_and_keeps_text(text: str, shown: str) -> None:
    assert safe(text) == shown


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "orders.jsonl").write_text('{"id": "o1", "total": 1}\n')
    (exports / f"a{BIDI}gpj.exe.jsonl").write_text('{"id": "x1"}\n')
    path = write_config(tmp_path, "./repo", [{"name": "shop", "type": "files",
                                              "path": "./exports"}])
    _ok(run_cli("-c", str(path), "init"))
    return path


def test_planted_key_file_fields_are_escaped_in_key_list(cfg: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    repo_id = json.loads(store.get("config"))["repo_id"]
    hostname = f"{ESC}laptop{BIDI}"
    store.put(f"keys/{'0' * 32}", json.dumps({
        "format": "sellerbak-key/1", "repo_id": repo_id, "key_id": "0" * 32,
        "created": "2000-01-01T00:00:00Z", "hostname": hostname,
        "kdf": {"alg": "argon2id", "version": 19, "m_kib": 8, "t": 1, "p": 1,
                "salt": base64.b64encode(os.urandom(16)).decode()},
        "wrapped": base64.b64encode(os.urandom(80)).decode()}).encode())
    human = _ok(run_cli("-c", str(cfg), "key", "list"))
    _no_raw_controls(human.stdout + human.stderr)
    assert f"{'0' * 32}  2000-01-01T00:00:00Z  {safe(hostname)}  argon2id" in human.stdout
    assert "\\x1b]0;owned\\x07\\x1b[2Jlaptop\\u202e" in human.stdout
    listing = json.loads(_ok(run_cli("-c", str(cfg), "--json", "key", "list")).stdout)
    assert {k["hostname"] for k in listing if k["key_id"] == "0" * 32} == {hostname}


def test_tags_and_dataset_names_are_escaped(cfg: Path, tmp_path: Path) -> None:
    tag = f"{ESC}[bold]nightly[/bold]{BIDI}"  # also rich markup, which must print as is
    snap = _ok(run_cli("-c", str(cfg), "snapshot", "--tag", tag))
    _no_raw_controls(snap.stdout + snap.stderr)
    sid = snap.stdout.strip()
    listing = _ok(run_cli("-c", str(cfg), "snapshots", env=cli_env(COLUMNS="300")))
    _no_raw_controls(listing.stdout + listing.stderr)
    assert safe(tag) in listing.stdout  # escaped, and the markup shown, not applied
    as_json = json.loads(_ok(run_cli("-c", str(cfg), "--json", "snapshots")).stdout)
    assert as_json[0]["tags"] == [tag] and f"a{BIDI}gpj.exe" in as_json[0]["datasets"]

    forget = _ok(run_cli("-c", str(cfg), "forget", "--keep-last", "1", "--dry-run"))
    _no_raw_controls(forget.stdout + forget.stderr)
    assert safe(tag) in forget.stdout

    restored = _ok(run_cli("-c", str(cfg), "restore", sid, "--target", str(tmp_path / "r")))
    _no_raw_controls(restored.stdout + restored.stderr)
    assert "a\\u202egpj.exe.jsonl" in restored.stdout
    assert (tmp_path / "r" / f"a{BIDI}gpj.exe.jsonl").exists()  # the file keeps its name

    (tmp_path / "exports" / f"a{BIDI}gpj.exe.jsonl").write_text('{"id": "x2"}\n')
    second = _ok(run_cli("-c", str(cfg), "snapshot")).stdout.strip()
    diff = _ok(run_cli("-c", str(cfg), "diff", sid, second))
    _no_raw_controls(diff.stdout + diff.stderr)
    assert "a\\u202egpj.exe: +1 -1 ~0" in diff.stdout


def test_names_quoted_in_error_lines_are_escaped(cfg: Path) -> None:
    failed = run_cli("-c", str(cfg), "restore", "latest", "--source", f"{ESC}x",
                     "--target", "/nonexistent")
    assert failed.returncode != 0
    _no_raw_controls(failed.stderr)
    assert failed.stderr.strip().splitlines() == [
        f"error: no snapshot found of source {safe(ESC)}x"]


def test_shop_names_from_the_tiktok_api_are_escaped(tmp_path: Path) -> None:
    from tests.tiktok_server import APP_SECRET, CIPHER, FakeTikTokShop

    with FakeTikTokShop(orders=1) as srv:
        srv.ciphers[CIPHER]["name"] = f"Shop{ESC}{BIDI}"
        cfg = write_config(tmp_path, "./repo", [{
            "name": "my-shop", "type": "tiktok", "app_key": "29a39d",
            "app_secret": {"env": "TTS_APP_SECRET"}, "api_url": srv.url, "auth_url": srv.url}])
        env = cli_env(TTS_APP_SECRET=APP_SECRET)
        out = _ok(run_cli("-c", str(cfg), "auth", "my-shop", "--code", srv.issue_auth_code(),
                          env=env))
    _no_raw_controls(out.stdout + out.stderr)
    assert out.stdout.strip() == f"{CIPHER}\tShop{safe(ESC)}\\u202e\tUS"
