"""Planted key files: whoever can write `keys/` must not make opening the repository costly.

Opening runs at most MAX_KDF_RUNS KDFs, the key file this machine last opened is tried first,
parameters above the writer's limits (plus the margin) are refused before any KDF, and names
that are not `keys/<key id>` are never read as key files. KDF runs are counted by wrapping the
real `KdfParams.derive` (it still runs); no timing is measured.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sellerbak.crypto import kdf
from sellerbak.crypto.kdf import KdfParams
from sellerbak.crypto.keyfile import KeyFile
from sellerbak.errors import WrongPassphraseError
from sellerbak.repository.repo import Repository
from sellerbak.storage.base import Store
from sellerbak.storage.local import LocalStore
from sellerbak.storage.open import open_store
from tests.helpers import PASSPHRASE, cli_env, init_repo, run_cli, write_config

#: key files one command may try (sellerbak.repository.keysearch.MAX_KDF_RUNS)
MAX_KDF_RUNS = 10
#: the cheapest parameters a reader accepts: planted files the KDF may really run on
CHEAP = {"m_kib": 8, "t": 1, "p": 1}
#: today's old reader bounds at their maximum: 4 GiB, 16 passes, 16 lanes (about 90 s a run)
OLD_MAXIMUM = {"m_kib": 4 * 1024 * 1024, "t": 16, "p": 16}


class PlantedKdfRan(AssertionError):
    """A KDF was about to run on a planted file that should have been refused."""


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "repo")
    seaweed = request.getfixturevalue("seaweed")
    return open_store(request.getfixturevalue("s3_url"), endpoint_url=seaweed.endpoint_url,
                      region="us-east-1")


@pytest.fixture
def kdf_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[KdfParams]]:
    """Every KdfParams.derive call, in order. The real KDF still runs, except on parameters
    over 1 GiB, which no test here may reach: those fail the test instead of taking minutes."""
    calls: list[KdfParams] = []
    real = KdfParams.derive

    def counted(self: KdfParams, passphrase: str) -> bytes:
        calls.append(self)
        if self.m_kib > 1024 * 1024:
            raise PlantedKdfRan(f"KDF run on planted parameters m_kib={self.m_kib}")
        return real(self, passphrase)

    monkeypatch.setattr(KdfParams, "derive", counted)
    yield calls


def planted(repo_id: bytes, key_id: str, params: dict[str, int],
            created: str = "2000-01-01T00:00:00Z", hostname: str = "planted",
            **edits: Any) -> bytes:
    """A key file as an attacker writes it: well-formed, the repository's id, any parameters,
    and a wrapped keyring that no passphrase opens."""
    obj = {"format": "sellerbak-key/1", "repo_id": repo_id.hex(), "key_id": key_id,
           "created": created, "hostname": hostname,
           "kdf": {"alg": "argon2id", "version": 19, **params,
                   "salt": base64.b64encode(os.urandom(16)).decode()},
           "wrapped": base64.b64encode(os.urandom(120)).decode()}
    obj.update(edits)
    return json.dumps(obj).encode()


def plant_many(store: Store, repo_id: bytes, count: int, params: dict[str, int]) -> list[str]:
    """`count` planted files whose ids and creation times sort before any real key's."""
    ids = [f"{i:032x}" for i in range(count)]
    for key_id in ids:
        store.put(f"keys/{key_id}", planted(repo_id, key_id, params))
    return ids


# ----- bounds: refused before the KDF ---------------------------------------------------------


def test_key_files_within_the_old_bounds_are_refused_without_a_kdf(
        store: Store, kdf_runs: list[KdfParams]) -> None:
    """Two planted files at 4 GiB, t=16, p=16 cost minutes and 4 GiB each per command before;
    now they are over the reader's bounds and never reach the KDF."""
    repo = init_repo(store)
    plant_many(store, repo.repo_id, 2, OLD_MAXIMUM)
    kdf_runs.clear()
    opened = Repository.open(store, lambda: PASSPHRASE)
    assert opened.key_id == repo.key_id
    assert len(kdf_runs) == 1 and opened.key_search is not None
    assert opened.key_search.kdf_runs == 1
    statuses = {e.name: e for e in opened.key_statuses(PASSPHRASE)}
    assert len(kdf_runs) == 1  # listing them runs no KDF either
    for key_id in (f"{i:032x}" for i in range(2)):
        entry = statuses[f"keys/{key_id}"]
        assert entry.status == "skipped" and "out of bounds" in entry.reason


@pytest.mark.parametrize("params", [
    {"m_kib": kdf.MAX_ARGON2_M_KIB + 8, "t": 1, "p": 1},
    {"m_kib": 65536, "t": kdf.MAX_ARGON2_T + 1, "p": 1},
    {"m_kib": 1024 * 1024, "t": 5, "p": 4},  # each in bounds, work 5 GiB-passes is not
])
def test_read_bounds_refuse_past_the_margin(params: dict[str, int]) -> None:
    kf = planted(bytes(16), "ab" * 16, params)
    with pytest.raises(Exception, match="out of bounds"):
        KeyFile.from_bytes(kf)


def test_writer_limits_stay_within_the_read_bounds() -> None:
    """What init and key add may write opens everywhere; more is refused as a config error
    (repository.kdf), before any key is made."""
    salt = os.urandom(32)
    most = KdfParams("argon2id", salt, m_kib=kdf.WRITE_ARGON2_M_KIB, t=2, p=kdf.WRITE_LANES)
    most.check_writable()
    most.check_bounds()
    long = KdfParams("argon2id", salt, m_kib=262144, t=kdf.WRITE_ARGON2_T, p=1)
    long.check_writable()
    long.check_bounds()
    scrypt = KdfParams("scrypt", salt, log_n=18, r=8, p=2)
    scrypt.check_writable()
    scrypt.check_bounds()
    with pytest.raises(ValueError, match="above what new keys may use"):
        KdfParams("scrypt", salt, log_n=19, r=8, p=1).check_writable()
    for over in ({"m_kib": kdf.WRITE_ARGON2_M_KIB * 2, "t": 1},
                 {"m_kib": 65536, "t": kdf.WRITE_ARGON2_T + 1},
                 {"m_kib": kdf.WRITE_ARGON2_M_KIB, "t": 3},
                 {"m_kib": 65536, "p": kdf.WRITE_LANES + 1}):
        with pytest.raises(ValueError, match="above what new keys may use"):
            kdf.new_params(salt, **over)


def test_init_refuses_kdf_settings_over_the_writer_limits(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "./repo", [{"name": "demo", "type": "demo"}],
                       repository={"kdf": {"m_kib": 2 * 1024 * 1024, "t": 1, "p": 1}})
    proc = run_cli("-c", str(cfg), "init")
    assert proc.returncode == 2, proc.stderr
    assert "repository.kdf" in proc.stderr and "above what new keys may use" in proc.stderr
    assert not (tmp_path / "repo" / "config").exists()


# ----- a bounded number of KDF runs -----------------------------------------------------------


def test_open_runs_at_most_max_kdf_runs_kdfs(store: Store, kdf_runs: list[KdfParams]) -> None:
    """Thirty planted files within the bounds: a wrong passphrase costs MAX_KDF_RUNS runs, not
    thirty-one, and the error says how many were tried."""
    repo = init_repo(store)
    plant_many(store, repo.repo_id, 30, CHEAP)
    kdf_runs.clear()
    with pytest.raises(WrongPassphraseError, match=f"tried {MAX_KDF_RUNS} of 31 key files"):
        Repository.open(store, lambda: "not the passphrase")
    assert len(kdf_runs) == MAX_KDF_RUNS


def test_last_opened_key_is_tried_first(store: Store, kdf_runs: list[KdfParams]) -> None:
    """Planted files that sort first fill the budget without the hint; with it, the open costs
    one KDF run."""
    repo = init_repo(store)
    plant_many(store, repo.repo_id, 30, CHEAP)
    kdf_runs.clear()
    with pytest.raises(WrongPassphraseError, match="at most 10 per command"):
        Repository.open(store, lambda: PASSPHRASE)
    kdf_runs.clear()
    asked = []
    opened = Repository.open(store, lambda: PASSPHRASE,
                             lambda repo_id: asked.append(repo_id) or repo.key_id)
    assert opened.key_id == repo.key_id and asked == [repo.repo_id]
    assert len(kdf_runs) == 1
    # a hint naming a planted or missing file costs one run more at most
    kdf_runs.clear()
    with pytest.raises(WrongPassphraseError):
        Repository.open(store, lambda: PASSPHRASE, lambda _rid: f"{0:032x}")
    assert len(kdf_runs) == MAX_KDF_RUNS
    kdf_runs.clear()
    with pytest.raises(WrongPassphraseError):
        Repository.open(store, lambda: PASSPHRASE, lambda _rid: "../config")
    assert len(kdf_runs) == MAX_KDF_RUNS


def test_names_that_are_not_key_ids_are_never_tried(
        store: Store, kdf_runs: list[KdfParams]) -> None:
    repo = init_repo(store)
    upper = "AB" * 16
    store.put(f"keys/{upper}", planted(repo.repo_id, upper, CHEAP))  # id not as init writes it
    store.put("keys/short", planted(repo.repo_id, "short", CHEAP))
    store.put(f"keys/{'cd' * 16}", planted(repo.repo_id, "ef" * 16, CHEAP))  # name != key_id
    store.put(f"keys/{'01' * 16}", planted(repo.repo_id, "01" * 16, CHEAP,
                                           created="yesterday"))
    store.put(f"keys/{'02' * 16}", planted(os.urandom(16), "02" * 16, CHEAP))  # other repo
    store.put(f"keys/{'03' * 16}", b" " * (1 << 20))  # 1 MiB: read no further than 64 KiB
    kdf_runs.clear()
    opened = Repository.open(store, lambda: PASSPHRASE, lambda _rid: "03" * 16)
    entries = opened.key_statuses(PASSPHRASE)
    assert len(kdf_runs) == 1
    reasons = {e.name: e.reason for e in entries if e.status == "skipped"}
    assert reasons == {f"keys/{upper}": "its name is not keys/<key id>",
                       "keys/short": "its name is not keys/<key id>",
                       f"keys/{'cd' * 16}": "its key_id differs from its name",
                       f"keys/{'01' * 16}": "key file has a malformed field",
                       f"keys/{'02' * 16}": "it belongs to another repository",
                       f"keys/{'03' * 16}": "key file is too large"}
    assert [k.key_id for k in opened.list_keys()] == [repo.key_id]


# ----- through the command line ---------------------------------------------------------------


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_records_the_last_opened_key_and_key_list_reports_planted_files(
        tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "./repo", [{"name": "demo", "type": "demo"}])
    _ok(run_cli("-c", str(cfg), "init"))
    hints = tmp_path / "state" / "last-key"
    # init records the hint, 0600 in a 0700 directory
    (hint,) = hints.iterdir()
    key_id = hint.read_text().strip()
    assert stat.S_IMODE(hint.stat().st_mode) == 0o600
    assert stat.S_IMODE(hints.stat().st_mode) == 0o700
    store = LocalStore(tmp_path / "repo")
    assert store.exists(f"keys/{key_id}") and hint.name == json.loads(
        store.get("config"))["repo_id"]
    repo_id = bytes.fromhex(hint.name)
    plant_many(store, repo_id, 12, CHEAP)
    store.put(f"keys/{'ff' * 16}", planted(repo_id, "ff" * 16, OLD_MAXIMUM))
    store.put("keys/notes.txt", b"hello")

    _ok(run_cli("-c", str(cfg), "snapshots"))  # one KDF: the hinted key
    listing = json.loads(_ok(run_cli("-c", str(cfg), "--json", "key", "list")).stdout)
    by_name = {k["name"]: k for k in listing}
    assert by_name[f"keys/{key_id}"]["status"] == "opened" and by_name[f"keys/{key_id}"][
        "current"]
    statuses = [k["status"] for k in listing if k["name"] != f"keys/{key_id}"]
    # the open spent one run; the rest of the budget tells planted files apart, then it stops
    assert statuses.count("does not open") == MAX_KDF_RUNS - 1
    assert statuses.count("not tried") == 12 - (MAX_KDF_RUNS - 1)
    assert by_name[f"keys/{'ff' * 16}"]["status"] == "skipped"
    assert by_name["keys/notes.txt"] == {
        "name": "keys/notes.txt", "key_id": None, "created": None, "hostname": None,
        "kdf": None, "current": False, "status": "skipped",
        "reason": "its name is not keys/<key id>"}
    human = _ok(run_cli("-c", str(cfg), "key", "list")).stdout
    assert f"* {key_id}" in human and "does not open with this passphrase" in human
    assert "not tried: at most 10 key files are tried per command" in human
    assert "keys/notes.txt  skipped: its name is not keys/<key id>" in human

    # without the hint the planted files, created earlier, fill the budget: the error says so
    for path in hints.iterdir():
        path.unlink()
    failed = run_cli("-c", str(cfg), "snapshots")
    assert failed.returncode == 12
    assert failed.stderr.strip().splitlines() == [
        "error: wrong passphrase (no key file opens with it; tried 10 of 13 key files "
        "(at most 10 per command); 2 unusable skipped)"]


def test_a_failed_hint_write_is_only_a_warning(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "./repo", [{"name": "demo", "type": "demo"}])
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "last-key").write_text("not a directory")
    created = _ok(run_cli("-c", str(cfg), "init"))
    assert "warning: cannot write the last-opened key id" in created.stderr
    proc = _ok(run_cli("-c", str(cfg), "--json", "snapshots", env=cli_env()))
    assert json.loads(proc.stdout) == []
    (warning,) = proc.stderr.strip().splitlines()
    assert warning.startswith("warning: cannot write the last-opened key id")
    assert PASSPHRASE not in proc.stderr + created.stderr


def test_key_passwd_moves_the_hint_to_the_new_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "./repo", [{"name": "demo", "type": "demo"}])
    _ok(run_cli("-c", str(cfg), "init"))
    (hint,) = (tmp_path / "state" / "last-key").iterdir()
    old = hint.read_text().strip()
    new_pass = tmp_path / "new-passphrase"
    new_pass.write_text("another passphrase\n")
    moved = json.loads(_ok(run_cli("-c", str(cfg), "--json", "key", "passwd",
                                   "--new-passphrase-file", str(new_pass))).stdout)
    assert moved["removed"] == old and hint.read_text().strip() == moved["key_id"]
    assert stat.S_IMODE(hint.stat().st_mode) == 0o600
