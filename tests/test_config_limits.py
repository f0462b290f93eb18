"""The config file is read with bounds and parsed strictly, through the real CLI: a key
written twice is refused (line and key path, never the value), a file over 1 MiB or one that
is not a regular file (/dev/zero, a FIFO, a directory) is refused unread. One line, exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import cli_env, run_cli

SECRET_LOOKING = "s3://bucket-that-must-not-be-printed/x"


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(("text", "line", "key_path"), [
    (f"repository:\n  url: ./repo\n  url: {SECRET_LOOKING}\n", 3, "repository.url"),
    ("repository: {url: ./repo}\nsources:\n  - {name: a, type: demo}\n"
     f"  - name: b\n    type: demo\n    name: {SECRET_LOOKING}\n", 6, "sources[1].name"),
    (f"repository: {{url: ./repo}}\nstate_dir: ./s\n'state_dir': {SECRET_LOOKING}\n", 3,
     "state_dir"),
], ids=["nested", "in-a-list", "quoted-the-second-time"])
def test_a_key_written_twice_is_refused(tmp_path: Path, text: str, line: int,
                                        key_path: str) -> None:
    config = tmp_path / "sellerbak.yaml"
    config.write_text(text)
    done = run_cli("-c", str(config), "snapshots")
    assert done.returncode == 2, done.stderr
    error = _one_error_line(done.stderr)
    assert f"line {line}," in error and f"duplicate key {key_path}" in error
    assert SECRET_LOOKING not in done.stderr + done.stdout


def test_a_merged_key_may_still_be_overridden(tmp_path: Path) -> None:
    config = tmp_path / "sellerbak.yaml"
    config.write_text("repository:\n  url: ./repo\n  kdf:\n    <<: {m_kib: 8192, t: 2, p: 1}\n"
                      "    m_kib: 19456\n")
    done = run_cli("-c", str(config), "init")
    assert done.returncode == 0, done.stderr


def test_a_config_over_one_mib_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "sellerbak.yaml"
    config.write_text("repository: {url: ./repo}\n" + "# padding\n" * 120_000)
    assert config.stat().st_size > 1024 * 1024
    done = run_cli("-c", str(config), "init")
    assert done.returncode == 2, done.stderr
    assert "larger than 1024 KiB" in _one_error_line(done.stderr)
    assert not (tmp_path / "repo").exists()


def test_a_config_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # no writer: reading it would wait for ever
    for path in ("/dev/zero", str(fifo), str(tmp_path)):
        done = run_cli("-c", path, "snapshots", timeout=60)
        assert done.returncode == 2, done.stderr
        assert f"config file {path} is not a regular file" in _one_error_line(done.stderr)
    done = run_cli("snapshots", env=cli_env(SELLERBAK_CONFIG="/dev/zero"))
    assert done.returncode == 2 and "not a regular file" in _one_error_line(done.stderr)
