"""Output modes: a progress bar with rate and ETA on a terminal; under -q or systemd nothing
but errors and one summary line; with --json one JSON document and nothing else."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cli_env, run_cli, write_config


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = write_config(tmp_path, "./repo", [{"name": "shop", "type": "demo", "seed": 3,
                                              "orders": 4000}])
    _ok(run_cli("-c", str(path), "init"))
    return path


def _on_terminal(*args: str) -> str:
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sellerbak", *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave,
                            env=dict(cli_env(), COLUMNS="200", TERM="xterm"))
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
    assert proc.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_terminal_shows_progress_with_rate_and_eta(cfg: Path, tmp_path: Path) -> None:
    first = _on_terminal("-c", str(cfg), "snapshot")
    assert "shop: orders" in first and "uploaded" in first and "/s" in first
    _ok(run_cli("-c", str(cfg), "demo", "advance"))
    # the second night knows the first night's counts: bars have a length, hence an ETA
    second = _on_terminal("-c", str(cfg), "snapshot")
    assert "ETA" in second and " / " in second and "shop: orders" in second
    restore = _on_terminal("-c", str(cfg), "restore", "latest", "--target", str(tmp_path / "r"))
    assert "restoring" in restore and "ETA" in restore


COMMANDS = [("snapshot",), ("check", "--read-data"), ("prune",), ("drill",),
            ("restore", "latest", "--target", "{tmp}/out")]


@pytest.mark.parametrize("mode", ["-q", "systemd"])
def test_quiet_and_systemd_print_one_summary_line(cfg: Path, tmp_path: Path, mode: str) -> None:
    env = cli_env(INVOCATION_ID="0123456789abcdef") if mode == "systemd" else cli_env()
    flags = ["-q"] if mode == "-q" else []
    for i, command in enumerate(COMMANDS):
        args = [a.replace("{tmp}", str(tmp_path / str(i))) for a in command]
        proc = _ok(run_cli("-c", str(cfg), *flags, *args, env=env))
        assert proc.stdout == "", (command, proc.stdout)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, (command, lines)


def test_json_prints_one_document_and_nothing_else(cfg: Path, tmp_path: Path) -> None:
    for i, command in enumerate(COMMANDS):
        args = [a.replace("{tmp}", str(tmp_path / str(i))) for a in command]
        proc = _ok(run_cli("-c", str(cfg), "--json", *args))
        assert proc.stderr == "", (command, proc.stderr)
        json.loads(proc.stdout)
