"""Ctrl-C and `systemctl stop` in the middle of a snapshot or a restore: the run stops at once
with one error line and 128 + the signal number, the repository lock is released, no snapshot
manifest is written, the forked export worker is gone, nothing half-restored is left, and the
next snapshot completes and verifies.

Real processes and real signals: Ctrl-C in a terminal signals the whole foreground process
group; systemd sends SIGTERM to the main process only (KillMode=mixed) or to every process of
the unit at once (KillMode=control-group, the default).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import S3_TEST_BUCKET
from tests.helpers import cli_env, run_cli, write_config
from tests.seaweed import SeaweedServer

#: big enough that the export is still running seconds after the first pack is stored
ORDERS = 200_000


def _default_signal_actions() -> None:
    # a test runner may start us with SIGINT ignored (as shells do for background jobs), and
    # a process keeps an ignored SIGINT ignored: give sellerbak what a terminal gives it
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sellerbak", *args], env=cli_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_signal_actions)


def _children(pid: int) -> list[int]:
    """Every process descended from `pid` (children, their children, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        ppid = todo.pop()
        kids = [p for p, pp in parents.items() if pp == ppid]
        found += kids
        todo += kids
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(proc: subprocess.Popen[str], condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 180
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"sellerbak ended (exit {proc.returncode}) before {what}: "
                        f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after 180 s")
        time.sleep(0.05)


def _interrupt(proc: subprocess.Popen[str], sig: signal.Signals, group: bool
               ) -> tuple[int, str, str, list[int]]:
    """Send `sig` (to the whole process group, or to sellerbak's own process only) and wait
    for the end; returns exit status, stdout, stderr and the children it had."""
    children = _children(proc.pid)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=120)  # a hang guard, not a time limit on the stop
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"sellerbak did not stop after {sig.name}")
    return proc.returncode, out, err, children


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def _assert_stopped_cleanly(rc: int, out: str, err: str, children: list[int],
                            sig: signal.Signals, line: str) -> None:
    assert rc == 128 + sig, err
    assert err.strip().splitlines() == [f"error: {line}"], err
    assert "Traceback" not in err and out == ""
    assert children, "the export should run in a forked worker process"
    assert not [c for c in children if _running(c)], "the export worker outlived sellerbak"


def _demo_config(tmp_path: Path, url: str, **extra: object) -> Path:
    return write_config(tmp_path, url, [{"name": "shop", "type": "demo", "orders": ORDERS}],
                        **extra)


def _next_snapshot_completes_and_verifies(cfg: Path) -> dict:
    assert json.loads(_ok(run_cli("-c", str(cfg), "--json", "snapshots")).stdout) == []
    done = json.loads(_ok(run_cli("-c", str(cfg), "--json", "snapshot")).stdout)
    (snap,) = done["snapshots"]
    assert snap["complete"] and snap["records"] > ORDERS
    report = json.loads(_ok(run_cli("-c", str(cfg), "--json", "check", "--read-data")).stdout)
    assert report["ok"] and report["snapshots"] == 1 and report["errors"] == []
    return snap


def test_ctrl_c_during_snapshot_on_a_local_repository(tmp_path: Path) -> None:
    cfg = _demo_config(tmp_path, "./repo")
    _ok(run_cli("-c", str(cfg), "init"))
    repo = tmp_path / "repo"
    proc = _start("-c", str(cfg), "snapshot")
    _wait_for(proc, lambda: bool(list(repo.glob("data/*/*"))), "a stored pack")
    assert list(repo.glob("locks/*")), "a running snapshot holds a lock"
    rc, out, err, children = _interrupt(proc, signal.SIGINT, group=True)
    _assert_stopped_cleanly(rc, out, err, children, signal.SIGINT, "interrupted")
    assert list(repo.glob("locks/*")) == [], "the lock was not released"
    assert list(repo.glob("snapshots/*")) == [], "an interrupted run wrote a manifest"
    assert list(repo.rglob(".tmp-*")) == []
    _next_snapshot_completes_and_verifies(cfg)


@pytest.mark.parametrize("group", [False, True], ids=["main-process", "whole-group"])
def test_sigterm_during_snapshot_on_s3(tmp_path: Path, s3_url: str, s3_env: SeaweedServer,
                                       group: bool) -> None:
    cfg = _demo_config(tmp_path, s3_url, repository={"endpoint_url": s3_env.endpoint_url})
    _ok(run_cli("-c", str(cfg), "init"))
    s3 = s3_env.client()
    prefix = s3_url.split("/", 3)[3] + "/"

    def names(under: str) -> list[str]:
        listing = s3.list_objects_v2(Bucket=S3_TEST_BUCKET, Prefix=prefix + under)
        return [o["Key"] for o in listing.get("Contents", [])]

    proc = _start("-c", str(cfg), "snapshot")
    _wait_for(proc, lambda: bool(names("data/")), "a stored pack")
    assert names("locks/"), "a running snapshot holds a lock"
    rc, out, err, children = _interrupt(proc, signal.SIGTERM, group=group)
    _assert_stopped_cleanly(rc, out, err, children, signal.SIGTERM, "terminated")
    assert names("locks/") == [], "the lock was not released"
    assert names("snapshots/") == [], "an interrupted run wrote a manifest"
    _next_snapshot_completes_and_verifies(cfg)


def test_sigterm_during_restore_leaves_nothing_behind(tmp_path: Path) -> None:
    cfg = _demo_config(tmp_path, "./repo")
    _ok(run_cli("-c", str(cfg), "init"))
    _ok(run_cli("-c", str(cfg), "snapshot"))
    target = tmp_path / "restored"
    proc = _start("-c", str(cfg), "restore", "latest", "--target", str(target))

    def writing() -> bool:
        for partial in target.rglob("*partial*"):
            try:
                if partial.stat().st_size > 0:
                    return True
            except FileNotFoundError:  # renamed meanwhile
                continue
        return False

    _wait_for(proc, writing, "a dataset being written")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == ["error: terminated"] and out == ""
    assert [p for p in target.rglob("*")] == [], "a stopped restore left files behind"
    # and a restore that is left alone still works
    _ok(run_cli("-c", str(cfg), "restore", "latest", "--target", str(target)))
    assert (target / "orders.jsonl").stat().st_size > 0


def test_kill_9_does_not_leave_the_export_worker_running(tmp_path: Path) -> None:
    """SIGKILL cannot be caught; the worker must notice on its own that nobody reads its
    output any more (it must not hold the pipe's reading end itself) and end."""
    cfg = _demo_config(tmp_path, "./repo")
    _ok(run_cli("-c", str(cfg), "init"))
    proc = _start("-c", str(cfg), "snapshot")
    _wait_for(proc, lambda: bool(list((tmp_path / "repo").glob("data/*/*"))), "a stored pack")
    children = _children(proc.pid)
    assert children
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    deadline = time.monotonic() + 120  # a hang guard: the worker stops at its next message
    while [c for c in children if _running(c)] and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [c for c in children if _running(c)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "the export worker outlived a killed sellerbak"
