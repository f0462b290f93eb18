"""A full local disk, where a restore writes, where a file:// repository lives, and where the state
(tokens, the demo shop's night) is kept: one `error:` line saying so, a non-zero exit, and no file
left that looks complete (restores are staged and renamed at the end, objects are written to a
temporary name and linked, state files are replaced atomically).

Two ways to fill a disk, both through the real command line:

* a real tmpfs of a few MiB, mounted in a private mount namespace (`unshare --mount`, as root;
  `unshare --user --map-root-user --mount` otherwise), so no mount outlives the test. Everything
  that has to see the small disk (the run, the listing after it, making room) happens in a
  driver process inside that namespace;
* an injected ENOSPC: the CLI runs with `os.write` and `os.fdopen` wrapped so that writes under
  one directory fail with ENOSPC once a byte budget is spent, the way the kernel fails them
  (a short write, then ENOSPC).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli_env, run_cli, write_config
from tests.tiktok_server import APP_SECRET, FakeTikTokShop

MiB = 1024 * 1024

# ----- a real small disk ---------------------------------------------------------------------

_DRIVER = r'''
import json, os, stat, subprocess, sys

spec = json.loads(sys.argv[1])
mnt = spec["mount"]
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={spec['size']},mode=0755", "tmpfs", mnt],
               check=True)
results = []
for step in spec["steps"]:
    kind, args = step[0], step[1:]
    if kind == "run":
        p = subprocess.run([sys.executable, "-m", "sellerbak", *args], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL)
        results.append({"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr})
    elif kind == "fill":  # leave no room at all
        fh = open(os.path.join(mnt, args[0]), "wb", buffering=0)
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
        fh.close()
        results.append({})
    elif kind == "remount":
        subprocess.run(["mount", "-o", f"remount,size={args[0]}", mnt], check=True)
        results.append({})
    elif kind == "list":
        files = {}
        for root, dirs, names in os.walk(mnt):
            for name in dirs + names:
                path = os.path.join(root, name)
                st = os.lstat(path)
                entry = {"mode": stat.S_IMODE(st.st_mode), "dir": stat.S_ISDIR(st.st_mode),
                         "size": st.st_size}
                if not entry["dir"] and st.st_size <= 4096:
                    with open(path, "rb") as fh:
                        entry["text"] = fh.read().decode("utf-8", "replace")
                files[os.path.relpath(path, mnt)] = entry
        results.append({"files": files})
print(json.dumps(results))
'''


def _on_small_disk(tmp_path: Path, mount: Path, size: str, steps: list[list[str]],
                   env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run `steps` in a private mount namespace where `mount` is a tmpfs of `size`."""
    mount.mkdir(parents=True, exist_ok=True)
    unshare = shutil.which("unshare")
    assert unshare, "util-linux's unshare is needed to mount a private tmpfs"
    ns = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
    driver = tmp_path / "small_disk_driver.py"
    driver.write_text(_DRIVER)
    spec = json.dumps({"mount": str(mount), "size": size, "steps": steps})
    proc = subprocess.run([unshare, *ns, sys.executable, str(driver), spec], capture_output=True,
                          text=True, env=env or cli_env(), timeout=600,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"could not run on a private tmpfs: {proc.stderr}"
    return json.loads(proc.stdout)


def _one_error_line(result: dict[str, Any], *needles: str) -> str:
    # a warning may come first (on a full state disk: the last-opened key id was not saved)
    lines = [line for line in result["stderr"].strip().splitlines()
             if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result["stderr"]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result["stderr"] and "internal error" not in lines[0]
    return lines[0]


def _demo_repo(tmp_path: Path, orders: int = 5000, url: str = "./repo",
               **extra: Any) -> tuple[Path, dict[str, Any]]:
    cfg = write_config(tmp_path, url, [{"name": "d", "type": "demo", "orders": orders}],
                       **extra)
    assert run_cli("-c", str(cfg), "init").returncode == 0
    snap = run_cli("-c", str(cfg), "--json", "snapshot")
    assert snap.returncode == 0, snap.stderr
    return cfg, json.loads(snap.stdout)["snapshots"][0]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_restore_onto_a_full_tmpfs(tmp_path: Path, fmt: str) -> None:
    cfg, snap = _demo_repo(tmp_path)
    disk = tmp_path / "disk"
    target = disk / "restored"
    # room for some datasets, not all: the ones finished before the disk filled up must not
    # appear under their real names either
    size = f"{snap['bytes'] // 2 // 1024}k"
    full, listing, _room, again, after = _on_small_disk(tmp_path, disk, size, [
        ["run", "-c", str(cfg), "restore", "latest", "--target", str(target), "--format", fmt],
        ["list"],
        ["remount", "256m"],
        ["run", "-c", str(cfg), "restore", "latest", "--target", str(target), "--format", fmt],
        ["list"],
    ])
    assert full["rc"] == 1 and full["stdout"] == ""
    _one_error_line(full, "no space left on device")
    assert list(listing["files"]) == ["restored"], \
        "a failed restore left files or its staging folder behind"
    assert listing["files"]["restored"]["dir"]
    # with room, the same command restores everything, verified
    assert again["rc"] == 0, again["stderr"]
    restored = sorted(n for n, e in after["files"].items() if not e["dir"])
    assert restored == sorted(f"restored/{d}.{fmt}" for d in snap["datasets"])


def test_file_repository_on_a_full_disk(tmp_path: Path) -> None:
    """The repository's disk fills up mid-snapshot: no snapshot, the lock released, no
    temporary objects; with room again the next snapshot completes and verifies."""
    disk = tmp_path / "disk"
    cfg = write_config(tmp_path, str(disk / "repo"),
                       [{"name": "d", "type": "demo", "orders": 20000}])
    c = ["-c", str(cfg)]
    init, full, listing, _room, ok, check, snaps = _on_small_disk(tmp_path, disk, "2m", [
        ["run", *c, "init"],
        ["run", *c, "snapshot"],
        ["list"],
        ["remount", "128m"],
        ["run", *c, "--json", "snapshot"],
        ["run", *c, "--json", "check", "--read-data"],
        ["run", *c, "--json", "snapshots"],
    ])
    assert init["rc"] == 0, init["stderr"]
    assert full["rc"] == 1 and full["stdout"] == ""
    _one_error_line(full, "no space left on the repository's disk")
    names = listing["files"]
    assert [n for n in names if n.startswith("repo/snapshots/")] == []
    assert [n for n in names if n.startswith("repo/locks/")] == [], "the lock was not released"
    assert [n for n in names if "/.tmp-" in n or n.startswith(".tmp-")] == []
    assert ok["rc"] == 0, ok["stderr"]
    assert json.loads(ok["stdout"])["snapshots"][0]["complete"]
    report = json.loads(check["stdout"])
    assert check["rc"] == 0 and report["ok"] and report["snapshots"] == 1, check["stderr"]
    assert len(json.loads(snaps["stdout"])) == 1


def test_state_dir_on_a_full_disk(tmp_path: Path) -> None:
    """`demo advance`, `auth` and a TikTok snapshot (its customers order book) write to
    state_dir; on a full disk each fails in one line, the previous state files stay as they were
    (never half a token file), and the snapshot stores nothing and releases its lock."""
    disk = tmp_path / "disk"
    with FakeTikTokShop(orders=200, real_time=True) as srv:
        cfg = write_config(tmp_path, "./repo", [
            {"name": "d", "type": "demo", "orders": 100},
            {"name": "tt", "type": "tiktok", "app_key": "29a39d",
             "app_secret": {"env": "TTS_APP_SECRET"}, "api_url": srv.url,
             "auth_url": srv.url, "requests_per_second": 100}],
            state_dir=str(disk / "state"))
        env = cli_env(TTS_APP_SECRET=APP_SECRET)
        c = ["-c", str(cfg)]
        assert run_cli(*c, "init", env=env).returncode == 0
        (advanced, authorized, _fill, advance, auth, snapshot, listing, _room,
         snapshot_again) = _on_small_disk(tmp_path, disk, "1m", [
            ["run", *c, "demo", "advance", "--source", "d"],
            ["run", *c, "auth", "tt", "--code", srv.issue_auth_code()],
            ["fill", "filler"],
            ["run", *c, "demo", "advance", "--source", "d"],
            ["run", *c, "auth", "tt", "--code", srv.issue_auth_code()],
            ["run", *c, "snapshot", "--source", "tt"],
            ["list"],
            ["remount", "64m"],
            ["run", *c, "--json", "snapshot", "--source", "tt"],
        ], env=env)
    assert advanced["rc"] == 0 and authorized["rc"] == 0, advanced["stderr"] + authorized["stderr"]
    assert advance["rc"] == 1
    _one_error_line(advance, "state of demo source d", "no space left on device")
    assert auth["rc"] == 1
    _one_error_line(auth, "tokens of source tt", "no space left on device")
    assert snapshot["rc"] == 1
    _one_error_line(snapshot, "source tt", "state directory", "disk is full")
    files = listing["files"]
    assert json.loads(files["state/demo/d.json"]["text"]) == {"night": 1}
    tokens = json.loads(files["state/tiktok/tt.json"]["text"])
    assert tokens["access_token"] and tokens["refresh_token"]
    # no temporary file left beside them (.tt.json.lock is the refresh lock, always empty)
    assert not [n for n in files if n.startswith(("state/demo/.", "state/tiktok/.tt.json."))
                and n != "state/tiktok/.tt.json.lock"], files
    repo = tmp_path / "repo"
    assert list(repo.glob("locks/*")) == [], "the lock was not released"
    # the failed run stored no snapshot: the next one is the first
    assert snapshot_again["rc"] == 0, snapshot_again["stderr"]
    assert len(list(repo.glob("snapshots/*"))) == 1
    assert json.loads(snapshot_again["stdout"])["snapshots"][0]["complete"]


# ----- an injected ENOSPC --------------------------------------------------------------------

_FULL_DISK = r'''
import errno, io, os, runpy, sys, threading

root = os.path.realpath(os.environ.pop("FULL_DISK_DIR")) + os.sep
left = [int(os.environ.pop("FULL_DISK_FREE_BYTES"))]
lock = threading.Lock()
real_write, real_fdopen = os.write, os.fdopen


def under(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(root)
    except OSError:
        return False


def write(fd, data):
    if not under(fd):
        return real_write(fd, data)
    with lock:
        n = min(len(data), left[0])
        left[0] -= n
    if len(data) and n == 0:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(fd, memoryview(data)[:n])


class FullDiskFile(io.FileIO):
    def write(self, data):
        return write(self.fileno(), data)


def fdopen(fd, mode="r", buffering=-1, *args, **kwargs):
    if "b" in mode and ("w" in mode or "a" in mode) and under(fd):
        raw = FullDiskFile(fd, mode.replace("b", ""), closefd=True)
        return raw if buffering == 0 else io.BufferedWriter(raw)
    return real_fdopen(fd, mode, buffering, *args, **kwargs)


os.write, os.fdopen = write, fdopen
runpy.run_module("sellerbak", run_name="__main__", alter_sys=True)
'''


def _with_full_disk(directory: Path, free: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(FULL_DISK_DIR=str(directory), FULL_DISK_FREE_BYTES=str(free))
    return subprocess.run([sys.executable, "-c", _FULL_DISK, *args], capture_output=True,
                          text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_restore_with_injected_enospc(tmp_path: Path, fmt: str) -> None:
    cfg, snap = _demo_repo(tmp_path)
    target = tmp_path / "restored"
    proc = _with_full_disk(target, snap["bytes"] // 2, "-c", str(cfg), "restore", "latest",
                           "--target", str(target), "--format", fmt)
    assert proc.returncode == 1 and proc.stdout == ""
    _one_error_line({"stderr": proc.stderr}, "no space left on device")
    assert list(target.rglob("*")) == [], "a failed restore left files behind"
    ok = run_cli("-c", str(cfg), "restore", "latest", "--target", str(target), "--format", fmt)
    assert ok.returncode == 0, ok.stderr
    assert sorted(str(p.relative_to(target)) for p in target.rglob(f"*.{fmt}")) == \
        sorted(f"{d}.{fmt}" for d in snap["datasets"])


def test_snapshot_with_injected_enospc_in_the_repository(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "./repo", [{"name": "d", "type": "demo", "orders": 20000}])
    assert run_cli("-c", str(cfg), "init").returncode == 0
    repo = tmp_path / "repo"
    proc = _with_full_disk(repo, 2 * MiB, "-c", str(cfg), "snapshot")
    assert proc.returncode == 1 and proc.stdout == ""
    _one_error_line({"stderr": proc.stderr}, "no space left on the repository's disk")
    assert list(repo.glob("snapshots/*")) == [] and list(repo.glob("locks/*")) == []
    assert list(repo.rglob(".tmp-*")) == []
    ok = run_cli("-c", str(cfg), "--json", "snapshot")
    assert ok.returncode == 0 and json.loads(ok.stdout)["snapshots"][0]["complete"], ok.stderr
    check = run_cli("-c", str(cfg), "--json", "check", "--read-data")
    assert check.returncode == 0 and json.loads(check.stdout)["ok"], check.stderr
