"""The command line as users and systemd run it: real processes, real exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sellerbak.repository.locks import RepositoryLock
from sellerbak.storage.local import LocalStore
from tests.helpers import PASSPHRASE, cli_env, open_repo, run_cli, write_config


def _files_source(tmp_path: Path, n: int = 300) -> Path:
    data = tmp_path / "exports"
    (data / "finance").mkdir(parents=True)
    with open(data / "orders.jsonl", "w") as fh:
        for i in range(n, 0, -1):
            fh.write(json.dumps({"id": f"o{i:06d}", "buyer_email": f"b{i}@shop.example",
                                 "amount": i}) + "\n")
    (data / "finance" / "statements.csv").write_text(
        "id,amount,currency\n" + "".join(f"s{i},{i}.50,USD\n" for i in range(20)))
    return data


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    _files_source(tmp_path)
    return write_config(tmp_path, "./repo", [{"name": "shop", "type": "files",
                                              "path": "./exports"}])


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def test_init_snapshot_list_restore_check(cfg: Path, tmp_path: Path) -> None:
    _ok(run_cli("-c", str(cfg), "init"))
    assert (tmp_path / "repo").stat().st_mode & 0o777 == 0o700
    snap = _ok(run_cli("-c", str(cfg), "snapshot", "--tag", "nightly"))
    sid = snap.stdout.strip()
    assert len(sid) == 64 and "320 records" in snap.stderr
    listing = json.loads(_ok(run_cli("-c", str(cfg), "--json", "snapshots")).stdout)
    assert [s["id"] for s in listing] == [sid] and listing[0]["tags"] == ["nightly"]
    assert listing[0]["datasets"] == {"orders": 300, "finance/statements": 20}
    out = _ok(run_cli("-c", str(cfg), "restore", sid[:8], "--target", str(tmp_path / "r")))
    assert out.stdout.split() == [str(tmp_path / "r/finance/statements.jsonl"),
                                  str(tmp_path / "r/orders.jsonl")]
    lines = (tmp_path / "r/orders.jsonl").read_text().splitlines()
    assert len(lines) == 300 and json.loads(lines[0])["id"] == "o000001"
    _ok(run_cli("-c", str(cfg), "restore", "latest", "--target", str(tmp_path / "c"),
                "--format", "csv", "--dataset", "finance/statements"))
    assert (tmp_path / "c/finance/statements.csv").read_text().splitlines()[:2] == \
        ["id,amount,currency", "s0,0.50,USD"]
    assert not (tmp_path / "c/orders.csv").exists()
    report = json.loads(_ok(run_cli("-c", str(cfg), "--json", "check", "--read-data")).stdout)
    assert report["ok"] and report["snapshots"] == 1 and report["bytes_read"] > 0


def test_exit_codes(cfg: Path, tmp_path: Path) -> None:
    no_repo = run_cli("-c", str(cfg), "snapshots")
    assert no_repo.returncode == 10 and "no repository" in no_repo.stderr
    _ok(run_cli("-c", str(cfg), "init"))
    again = run_cli("-c", str(cfg), "init")
    assert again.returncode == 1 and "already exists" in again.stderr
    wrong = run_cli("-c", str(cfg), "snapshots", env=cli_env(SELLERBAK_PASSPHRASE="nope"))
    assert wrong.returncode == 12 and "wrong passphrase" in wrong.stderr
    assert "nope" not in wrong.stderr + wrong.stdout
    usage = run_cli("-c", str(cfg), "restore", "latest")
    assert usage.returncode == 2
    missing = run_cli("-c", str(cfg), "restore", "abcdef12", "--target", str(tmp_path / "x"))
    assert missing.returncode == 1 and "not found" in missing.stderr


@pytest.mark.parametrize("text,expect", [
    ("repository: {url: ./r, colour: blue}\n", "repository.colour: unknown key"),
    ("repository: {}\n", "repository.url"),
    ("repository: {url: ./r}\npassphrase: hunter2\n", "passphrase must not hold the secret"),
    ("repository: {url: ./r}\nsources: [{name: a, type: ftp}]\n", "sources[0].type"),
    ("repository: {url: ./r}\nsources: [{name: a, type: demo, orders: many}]\n",
     "sources[0].orders"),
    ("repository: {url: 'ftp://x'}\nsources: [{name: a, type: demo}]\n", "repository.url"),
    ("repository: [\n", "not valid YAML"),
    ("repository: {url: ./r, kdf: {m_kib: 1024, t: 1, p: 1}}\n", "repository.kdf"),
])
def test_bad_config_names_the_key_and_file(tmp_path: Path, text: str, expect: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = run_cli("-c", str(path), "init")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and expect in line
    assert "hunter2" not in proc.stderr
    if "kdf" not in expect and "URL" not in line and "ftp" not in text:
        assert str(path) in line


def test_lock_held_exits_11_and_names_holder(cfg: Path, tmp_path: Path) -> None:
    _ok(run_cli("-c", str(cfg), "init"))
    store = LocalStore(tmp_path / "repo")
    with RepositoryLock(open_repo(store), exclusive=True):
        proc = run_cli("-c", str(cfg), "snapshot")
        assert proc.returncode == 11
        assert f"pid {os.getpid()}" in proc.stderr and "exclusive" in proc.stderr
        # the holder is alive: unlock (stale only) leaves it alone
        assert json.loads(_ok(run_cli("-c", str(cfg), "--json", "unlock")).stdout) == \
            {"removed": 0}
    # a lock whose process is gone is stale: ignored by snapshot, removed by unlock
    dead = RepositoryLock(open_repo(store), exclusive=True)
    dead.acquire()
    dead._stop.set()
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True)
    _rewrite_lock_pid(store, dead, int(child.stdout))
    _ok(run_cli("-c", str(cfg), "snapshot"))
    assert json.loads(_ok(run_cli("-c", str(cfg), "--json", "unlock")).stdout) == {"removed": 1}


def _rewrite_lock_pid(store, lock: RepositoryLock, pid: int) -> None:
    import socket
    from datetime import UTC, datetime

    from sellerbak.crypto.envelope import Kind
    from sellerbak.repository.repo import lock_name

    repo = lock.repo
    body = json.dumps({"exclusive": True, "hostname": socket.gethostname(), "pid": pid,
                       "time": datetime.now(UTC).isoformat()}).encode()
    assert lock.lock_id is not None
    store.delete(lock_name(lock.lock_id))
    store.put(lock_name(lock.lock_id), repo.seal(Kind.LOCK, lock.lock_id, body))


def test_key_management(cfg: Path, tmp_path: Path) -> None:
    _ok(run_cli("-c", str(cfg), "init"))
    new = _ok(run_cli("-c", str(cfg), "key", "add",
                      env=cli_env(SELLERBAK_NEW_PASSPHRASE="second one"))).stdout.strip()
    keys = json.loads(_ok(run_cli("-c", str(cfg), "--json", "key", "list")).stdout)
    assert len(keys) == 2 and {k["key_id"] for k in keys} >= {new}
    first = next(k["key_id"] for k in keys if k["current"])
    second_env = cli_env(SELLERBAK_PASSPHRASE="second one")
    _ok(run_cli("-c", str(cfg), "snapshots", env=second_env))
    refused = run_cli("-c", str(cfg), "key", "remove", first)
    assert refused.returncode == 2 and "in use" in refused.stderr
    _ok(run_cli("-c", str(cfg), "key", "remove", first, env=second_env))
    assert run_cli("-c", str(cfg), "snapshots").returncode == 12
    pw_file = tmp_path / "pw3"
    pw_file.write_text("third\n")
    _ok(run_cli("-c", str(cfg), "key", "passwd", "--new-passphrase-file", str(pw_file),
                env=second_env))
    assert run_cli("-c", str(cfg), "snapshots", env=second_env).returncode == 12
    _ok(run_cli("-c", str(cfg), "snapshots", env=cli_env(SELLERBAK_PASSPHRASE="third")))


def test_passphrase_sources(cfg: Path, tmp_path: Path) -> None:
    _ok(run_cli("-c", str(cfg), "init"))
    env = cli_env()
    del env["SELLERBAK_PASSPHRASE"]
    (tmp_path / "pf").write_text(PASSPHRASE + "\n")
    _ok(run_cli("-c", str(cfg), "snapshots", env=dict(env, SELLERBAK_PASSPHRASE_FILE=str(
        tmp_path / "pf"))))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "passphrase").write_text(PASSPHRASE)
    _ok(run_cli("-c", str(cfg), "snapshots", env=dict(env, CREDENTIALS_DIRECTORY=str(creds))))
    none = run_cli("-c", str(cfg), "snapshots", env=env)
    assert none.returncode == 2 and "no passphrase" in none.stderr
    text = cfg.read_text() + "passphrase: {command: 'cat pf'}\n"
    cfg.write_text(text)
    _ok(run_cli("-c", str(cfg), "snapshots", env=env, cwd=tmp_path))


def test_kill_9_mid_snapshot_leaves_no_snapshot_and_next_run_reuses(tmp_path: Path) -> None:
    """Interrupt a snapshot after it uploaded its first pack; nothing looks stored, and the
    next run completes without uploading that data again."""
    data = tmp_path / "exports"
    data.mkdir()
    with open(data / "orders.jsonl", "w") as fh:  # ~70 MB, poorly compressible
        for i in range(60_000):
            fh.write(json.dumps({"id": f"{i:08d}", "blob": os.urandom(560).hex()}) + "\n")
    cfg = write_config(tmp_path, "./repo", [{"name": "big", "type": "files",
                                             "path": "./exports"}])
    _ok(run_cli("-c", str(cfg), "init"))
    proc = subprocess.Popen([sys.executable, "-m", "sellerbak", "-c", str(cfg), "snapshot"],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    repo_dir = tmp_path / "repo"
    deadline = time.monotonic() + 120
    # a data pack (the run's dictionary goes up first, in a small pack of its own)
    while not [p for p in (repo_dir / "data").glob("*/*") if p.stat().st_size > 1 << 20] \
            and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_packs = {p.name: p.stat().st_size for p in (repo_dir / "data").glob("*/*")}
    assert first_packs and not list((repo_dir / "snapshots").glob("*"))
    listing = json.loads(_ok(run_cli("-c", str(cfg), "--json", "snapshots")).stdout)
    assert listing == []
    done = json.loads(_ok(run_cli("-c", str(cfg), "--json", "snapshot")).stdout)
    snap = done["snapshots"][0]
    assert snap["complete"] and snap["records"] == 60_000
    # what the killed run uploaded was reused, not sent again: every one of its data packs is
    # referenced by the finished snapshot, and the second run added only the rest (the killed
    # run's dictionary stays unused: the second run trains its own; prune keeps dictionaries)
    report = json.loads(_ok(run_cli("-c", str(cfg), "--json", "check", "--read-data")).stdout)
    assert report["ok"] and report["unreferenced_packs"] == 1
    all_packs = sum(p.stat().st_size for p in (repo_dir / "data").glob("*/*"))
    assert snap["bytes_added"] == all_packs - sum(first_packs.values())
    _ok(run_cli("-c", str(cfg), "restore", "latest", "--target", str(tmp_path / "out")))
    assert (tmp_path / "out/orders.jsonl").read_bytes().count(b"\n") == 60_000


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_pack_gives_one_error_line_and_nonzero_exit(cfg: Path, tmp_path: Path,
                                                            damage: str) -> None:
    _ok(run_cli("-c", str(cfg), "init"))
    _ok(run_cli("-c", str(cfg), "snapshot"))
    (pack,) = list((tmp_path / "repo" / "data").glob("*/*"))
    data = bytearray(pack.read_bytes())
    pack.chmod(0o600)
    if damage == "flip":
        data[len(data) // 2] ^= 1
        pack.write_bytes(bytes(data))
    elif damage == "truncate":
        pack.write_bytes(bytes(data[: len(data) // 2]))
    else:
        pack.unlink()
    checked = run_cli("-c", str(cfg), "check", "--read-data")
    assert checked.returncode == 1 and "error:" in checked.stderr
    restored = run_cli("-c", str(cfg), "restore", "latest", "--target", str(tmp_path / "out"))
    assert restored.returncode == 1
    lines = restored.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    out = tmp_path / "out"
    assert not out.exists() or not list(out.rglob("*.jsonl"))


def test_no_secrets_or_customer_data_in_output_even_at_debug(cfg: Path, tmp_path: Path) -> None:
    """Every command of this issue, with -v: no passphrase, no email, in anything printed."""
    secret = "S3cr3t-Passphrase-Never-Printed"
    env = cli_env(SELLERBAK_PASSPHRASE=secret, SELLERBAK_NEW_PASSPHRASE="An0ther-Secret")
    outputs = []
    for args in (["init"], ["snapshot"], ["snapshots"], ["--json", "snapshots"],
                 ["restore", "latest", "--target", str(tmp_path / "o")], ["check", "--read-data"],
                 ["key", "add"], ["key", "list"], ["unlock"],
                 ["snapshots"]):
        proc = run_cli("-v", "-c", str(cfg), *args, env=env)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    wrong = run_cli("-v", "-c", str(cfg), "snapshots", env=cli_env(SELLERBAK_PASSPHRASE="Wr0ng"))
    outputs.append(wrong.stdout + wrong.stderr)
    text = "\n".join(outputs)
    for needle in (secret, "An0ther-Secret", "Wr0ng", "@shop.example", "b17@"):
        assert needle not in text
    stored = b"".join(p.read_bytes() + str(p).encode()
                      for p in (tmp_path / "repo").rglob("*") if p.is_file())
    assert b"@shop.example" not in stored and secret.encode() not in stored


def test_a_failing_source_does_not_cost_the_others_their_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three sources, the middle one fails after it has already uploaded packs holding the
    same data as the third. The first and third are stored and restore exactly; the run
    still fails with one line naming the failed source; nothing refers to data that no
    index lists (which a restore would not find)."""
    from sellerbak.repository import repo as repo_module
    from sellerbak.repository.repo import Repository
    from tests.helpers import fast_kdf

    # small packs, and more data than the writer keeps in flight (8 batches of 1 MiB): packs
    # of the failing source are uploaded before it fails
    monkeypatch.setattr(repo_module, "DEFAULT_PACK_SIZE", 1 << 20)
    Repository.init(LocalStore(tmp_path / "repo"), PASSPHRASE, fast_kdf())
    shared = "".join(json.dumps({"blob": os.urandom(500).hex(), "id": f"r{i:05d}"},
                                separators=(",", ":")) + "\n" for i in range(16000))
    for name in ("first", "bad", "third"):
        (tmp_path / name).mkdir()
    (tmp_path / "first" / "small.jsonl").write_text('{"id":"x","v":1}\n')
    (tmp_path / "bad" / "aaa.jsonl").write_text(shared)
    (tmp_path / "bad" / "zzz.jsonl").write_text('{"id":"a"}\n{"id":"b",\n')
    (tmp_path / "third" / "aaa.jsonl").write_text(shared)
    cfg = write_config(tmp_path, "./repo", [
        {"name": name, "type": "files", "path": f"./{name}"}
        for name in ("first", "bad", "third")])

    proc = run_cli("-c", str(cfg), "--json", "snapshot")
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: 1 of 3 sources failed: source bad: zzz.jsonl line 2: "
                      "not valid JSON"], proc.stderr
    out = json.loads(proc.stdout)
    assert out["failed_sources"] == ["bad"]
    assert [s["source"] for s in out["snapshots"]] == ["first", "third"]

    listing = json.loads(_ok(run_cli("-c", str(cfg), "--json", "snapshots")).stdout)
    assert sorted(s["source"] for s in listing) == ["first", "third"]
    third = next(s["id"] for s in listing if s["source"] == "third")
    _ok(run_cli("-c", str(cfg), "restore", third, "--target", str(tmp_path / "r")))
    restored = (tmp_path / "r" / "aaa.jsonl").read_bytes()
    assert hashlib.sha256(restored).digest() == hashlib.sha256(shared.encode()).digest()
    assert json.loads(_ok(run_cli("-c", str(cfg), "--json", "check", "--read-data")
                          ).stdout)["ok"]
