"""Storage faults, end to end: the real CLI against a real SeaweedFS behind a fault-injecting TCP
proxy (tests/faultproxy.py), and a server killed with SIGKILL and restarted mid-run.

Every scenario ends with the same proof: the run either completed correctly after retries or
failed with exactly one `error:` line and a non-zero exit; afterwards `check --read-data` passes
and every snapshot restores record for record, compared with the records the demo source gave;
and the run after a failed one completes, reusing what the failed one uploaded.

The repository is created with 1 MiB packs (the format allows 1 MiB..1 GiB), so a few thousand
demo orders make several packs and a fault can land "in the middle" cheaply. Faults are counted by
the proxy; the module prints and writes the totals (fault-report-storage.json under the pytest
temp dir).
"""

from __future__ import annotations

import functools
import json
import secrets
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import sellerbak.repository.repo as repo_module
from sellerbak.backup.exporters.demo import DemoSource
from sellerbak.errors import StorageError
from sellerbak.repository.format import TYPE_DICT, blob_type
from sellerbak.repository.index import read_pack_record
from sellerbak.repository.repo import Repository
from sellerbak.storage.s3 import MULTIPART_THRESHOLD, S3Store
from tests.conftest import S3_TEST_BUCKET
from tests.faultproxy import FaultProxy, FaultReport, Match, Request
from tests.helpers import PASSPHRASE, cli_env, fast_kdf, run_cli, write_config
from tests.seaweed import SeaweedServer

MiB = 1024 * 1024
#: demo shops (source name -> seed, orders): "shop" stores ~2 MB (one full 1 MiB data pack and a
#: partial one), "other" ~4 MB (three full and a partial one), so that two runs of "other" can
#: each fail after a data pack of their own went up
SHOPS = {"shop": (1, 6000), "other": (2, 12_000)}
#: a silent connection is given up on after 2 s in these tests (default 60 s), and the waits
#: between attempts stay short (at most 0.5 s, default 20 s): several faults in a row hit one
#: request, and the backoff is not what these tests are about
FAST = {"SELLERBAK_S3_CONNECT_TIMEOUT": "2", "SELLERBAK_S3_READ_TIMEOUT": "2",
        "SELLERBAK_S3_RETRY_MAX_WAIT": "0.5"}
#: a run that must give up soon: three attempts, then one error line
GIVE_UP = {**FAST, "SELLERBAK_S3_RETRY_ATTEMPTS": "3"}
#: a run that rides out a server restart: the default 12 attempts, but waits of at most 2 s
#: between them (default 20 s), so the run goes on soon after the server is back
RIDE_OUT = {**FAST, "SELLERBAK_S3_RETRY_MAX_WAIT": "2"}


# ---------------------------------------------------------------------------------------------
# what a request is
# ---------------------------------------------------------------------------------------------


def pack_put(r: Request) -> bool:
    return r.method == "PUT" and "/data/" in r.path


def data_pack_put(r: Request) -> bool:
    """A pack of chunks (1 MiB here), not one of the small packs a new dictionary goes in."""
    return pack_put(r) and r.size >= MiB


def manifest_put(r: Request) -> bool:
    return r.method == "PUT" and "/snapshots/" in r.path


def data_get(r: Request) -> bool:
    return r.method == "GET" and "/data/" in r.path


def after(n: int, match: Match) -> Match:
    """`match`, but only from its (n+1)-th matching request on."""
    seen = {"n": 0}
    lock = threading.Lock()

    def check(r: Request) -> bool:
        if not match(r):
            return False
        with lock:
            seen["n"] += 1
            return seen["n"] > n

    return check


# ---------------------------------------------------------------------------------------------
# the shop under test
# ---------------------------------------------------------------------------------------------


@functools.cache
def expected(source: str, night: int) -> dict[str, list[dict[str, Any]]]:
    """The records the demo source gives, per dataset, as a restore writes them (by id)."""
    seed, orders = SHOPS[source]
    src = DemoSource(source, seed=seed, orders=orders, night=night)
    return {e.name: sorted((json.loads(json.dumps(r)) for r in e.records), key=lambda r: r["id"])
            for e in src.export({}, True)}


@dataclass
class Rig:
    """One test's repository (a fresh prefix on the module's server), reached through the
    proxy, and the CLI runs against it, with what they must have stored."""

    server: SeaweedServer
    proxy: FaultProxy
    tmp: Path
    prefix: str
    env: dict[str, str]
    #: (snapshot id, source, night) of the snapshots taken, oldest first: what each must
    #: restore to
    taken: list[tuple[str, str, int]] = field(default_factory=list)
    #: the night each demo shop is at
    nights: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SHOPS, 0))

    @property
    def url(self) -> str:
        return f"s3://{S3_TEST_BUCKET}/{self.prefix}"

    def configure(self) -> Path:
        sources = [{"name": name, "type": "demo", "seed": seed, "orders": orders,
                    "night": self.nights[name]} for name, (seed, orders) in SHOPS.items()]
        return write_config(self.tmp, self.url, sources,
                            repository={"endpoint_url": self.proxy.url, "region": "us-east-1"})

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_cli("-c", str(self.tmp / "sellerbak.yaml"), *args,
                       env={**self.env, **env}, timeout=240)

    def ok(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        proc = self.cli(*args, **env)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc

    def snapshot(self, source: str, night: int | None = None, **env: str) -> dict[str, Any]:
        """A snapshot that must succeed (of the shop moved on to `night`, if given);
        remembered for `verify_all`."""
        if night is not None and night != self.nights[source]:
            self.nights[source] = night
            self.configure()
        proc = self.ok("--json", "snapshot", "--source", source, **env)
        (snap,) = json.loads(proc.stdout)["snapshots"]
        assert snap["complete"] and snap["source"] == source
        self.taken.append((snap["id"], source, self.nights[source]))
        return snap

    def forget(self, snapshot_id: str) -> None:
        """`verify_all` no longer expects this snapshot."""
        self.taken = [t for t in self.taken if t[0] != snapshot_id]

    def snapshot_ids(self) -> list[str]:
        return [s["id"] for s in json.loads(self.ok("--json", "snapshots").stdout)]

    def restore_matches(self, snapshot_id: str, source: str, night: int, **env: str) -> None:
        target = self.tmp / f"restore-{snapshot_id[:8]}-{secrets.token_hex(3)}"
        self.ok("restore", snapshot_id, "--target", str(target), **env)
        want = expected(source, night)
        got = {str(p.relative_to(target))[: -len(".jsonl")]: p
               for p in target.rglob("*.jsonl")}
        assert sorted(got) == sorted(want)
        for name, records in want.items():
            lines = got[name].read_text().splitlines()
            assert [json.loads(line) for line in lines] == records, name

    def verify_all(self, restore: bool = True) -> dict[str, Any]:
        """check --read-data passes, the snapshots are exactly those taken, and (unless
        `restore` is False) every one of them restores record for record."""
        report = json.loads(self.ok("--json", "check", "--read-data").stdout)
        assert report["ok"] and not report["errors"]
        assert sorted(self.snapshot_ids()) == sorted(t[0] for t in self.taken)
        if restore:
            for sid, source, night in self.taken:
                self.restore_matches(sid, source, night)
        return report

    def packs(self) -> dict[str, int]:
        client = self.server.client()
        out: dict[str, int] = {}
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=S3_TEST_BUCKET, Prefix=f"{self.prefix}/data/")
        for page in pages:
            for item in page.get("Contents", ()):
                out[item["Key"]] = int(item["Size"])
        return out

    def open_uploads(self) -> list[str]:
        got = self.server.client().list_multipart_uploads(Bucket=S3_TEST_BUCKET,
                                                          Prefix=self.prefix)
        return [u["Key"] for u in got.get("Uploads", ())]


def assert_reused(rig: Rig, left_over: dict[str, int], new: dict[str, int],
                  snap: dict[str, Any], check: dict[str, Any]) -> None:
    """The run after a failed one sent none of the failed run's data again and uses all of it.

    `left_over`: packs the failed run stored; `new`: packs the next run stored. A new
    compression dictionary goes up first, in a small pack of its own (so no stored chunk ever
    needs a dictionary that is not stored); the failed run's dictionaries are the only packs
    left unused, since the next run trains its own (prune keeps every dictionary: a chunk
    names its dictionary only inside its compressed frame)."""
    dictionaries = dictionary_packs(rig, left_over)
    assert len(left_over) > len(dictionaries), "the failed run stored no data"
    assert check["unreferenced_packs"] == len(dictionaries)
    assert snap["bytes_added"] == sum(new.values())


def dictionary_packs(rig: Rig, packs: dict[str, int]) -> set[str]:
    """The packs among `packs` that hold nothing but compression dictionaries (from their
    headers, read directly from the server)."""
    store = S3Store(S3_TEST_BUCKET, rig.prefix, endpoint_url=rig.server.endpoint_url,
                    region="us-east-1")
    repo = Repository.open(store, lambda: PASSPHRASE)
    out = set()
    for name, size in packs.items():
        record = read_pack_record(repo, bytes.fromhex(name.rsplit("/", 1)[1]), size)
        if all(blob_type(b.flags) == TYPE_DICT for b in record.blobs):
            out.add(name)
    store.close()
    return out


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """A failed run: non-zero exit, exactly one `error:` line, the last one, no traceback."""
    assert proc.returncode not in (0, 3), proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultReport]:
    rep = FaultReport("storage faults")
    yield rep
    path = tmp_path_factory.getbasetemp() / "fault-report-storage.json"
    path.write_text(json.dumps(rep.as_dict(), indent=1) + "\n")
    print(f"\n{rep.text()}\n(written to {path})")


def _aws_env(server: SeaweedServer, tmp: Path) -> dict[str, str]:
    """The standard AWS chain pointed at the test server, nothing of the developer's own."""
    return {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials")}


@pytest.fixture
def rig(killable_seaweed: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> Iterator[Rig]:
    server = killable_seaweed
    server.start()  # no-op when running; recovers from a test that left it stopped
    aws = _aws_env(server, tmp_path)
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    for key, value in aws.items():
        monkeypatch.setenv(key, value)
    env = {k: v for k, v in cli_env().items() if not k.startswith("AWS_")} | aws
    proxy = FaultProxy(server.endpoint_url)
    prefix = f"{request.node.name[:30].lower().replace('_', '-')}-{secrets.token_hex(4)}"
    rig = Rig(server, proxy, tmp_path, prefix, env)
    rig.configure()
    # the repository, created directly (not through the proxy) with 1 MiB packs
    monkeypatch.setattr(repo_module, "DEFAULT_PACK_SIZE", 1 * MiB)
    store = S3Store(S3_TEST_BUCKET, prefix, endpoint_url=server.endpoint_url,
                    region="us-east-1")
    Repository.init(store, PASSPHRASE, fast_kdf())
    store.close()
    try:
        yield rig
    finally:
        proxy.close()
        server.start()


def once_a_pack_landed(rig: Rig) -> Match:
    """Matches the second and later data pack uploads of a run, each only once the run's first
    data pack is stored (uploads run in parallel: this makes "after the first pack" exact)."""
    earlier = set(rig.packs())
    second = after(1, data_pack_put)

    def landed() -> bool:
        return any(size >= MiB for name, size in rig.packs().items() if name not in earlier)

    def when(r: Request) -> bool:
        if not second(r):
            return False
        deadline = time.monotonic() + 60
        while not landed() and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    return when


class Outage:
    """Kill -9 the server when a chosen request arrives at the proxy; bring it back (same
    ports, same data) after `down_for` seconds, or only when `restore()` is called."""

    def __init__(self, rig: Rig, when: Match, down_for: float | None) -> None:
        self.rig = rig
        self.down_for = down_for
        self.when = when
        self.killed = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        rig.proxy.on_request = self._maybe_kill

    def _maybe_kill(self, r: Request) -> None:
        with self.lock:  # one request at a time decides; the others wait, then pass
            if self.killed.is_set() or not self.when(r):
                return
            self.killed.set()
            self.rig.server.stop(kill=True)
            self.rig.proxy.drop_connections()
            if self.down_for is not None:
                self.thread = threading.Thread(target=self._come_back, daemon=True)
                self.thread.start()

    def _come_back(self) -> None:
        time.sleep(self.down_for or 0.0)
        self.rig.server.start()

    def restore(self) -> None:
        self.rig.proxy.on_request = None
        if self.thread is not None:
            self.thread.join(timeout=120)
        self.rig.server.start()


# ---------------------------------------------------------------------------------------------
# the network misbehaves: resets, stalls, 503 SlowDown
# ---------------------------------------------------------------------------------------------


def test_snapshot_and_restore_ride_out_resets_stalls_and_slowdowns(
        rig: Rig, report: FaultReport) -> None:
    """Every kind of fault, several times, during one snapshot and one restore; both complete
    and the data is exact. Among them the unknown outcome of a create-only write: the manifest
    PUT reaches the server but its answer never comes back, and the retry finds the object
    there, holding its own bytes, and accepts it (one snapshot, not an error, not two)."""
    p = rig.proxy
    p.slowdown(2)  # the very first requests (config, keys)
    p.reset_after(200_000, times=2, match=data_pack_put)  # mid-upload
    p.stall(match=data_pack_put)  # swallowed: never reaches the server
    p.slowdown(3, match=pack_put)
    p.reset_after(0, match=manifest_put)
    p.stall(match=manifest_put, forward=True)  # stored, but the answer is lost
    armed = p.armed()
    rig.snapshot("shop", **FAST)
    assert p.armed() == 0 and sum(p.counts.values()) == armed
    assert p.counts == Counter(slowdown=5, reset=3, stall=2)
    assert len(rig.snapshot_ids()) == 1
    assert len(rig.packs()) >= 2

    before = Counter(p.counts)
    p.slowdown(3, match=data_get)
    p.reset_after(0, times=2, match=data_get)
    p.stall(match=data_get)
    rig.restore_matches(*rig.taken[0], **FAST)
    assert p.armed() == 0
    assert p.counts - before == Counter(slowdown=3, reset=2, stall=1)

    rig.verify_all(restore=False)  # the one snapshot was just restored and compared
    assert rig.open_uploads() == []
    report.add(p.counts, "survived")


# ---------------------------------------------------------------------------------------------
# the server dies: kill -9 mid-snapshot and mid-restore
# ---------------------------------------------------------------------------------------------


def test_server_killed_mid_snapshot_and_back_in_a_second(rig: Rig, report: FaultReport) -> None:
    """Killed as the second data pack upload starts, back a second later: well inside the
    retry budget, so the run completes and nothing is lost or doubled."""
    rig.snapshot("shop")
    outage = Outage(rig, once_a_pack_landed(rig), down_for=1.0)
    try:
        rig.snapshot("other", **RIDE_OUT)
    finally:
        outage.restore()
    assert outage.killed.is_set()
    result = rig.verify_all()
    assert result["unreferenced_packs"] == 0
    report.add({"server kill": 1}, "survived")


def test_runs_that_fail_say_so_in_one_line_and_the_next_run_reuses_their_uploads(
        rig: Rig, report: FaultReport) -> None:
    """Two bad nights, then a good one. First a storm of 503s that outlasts the retries, then
    a server that dies for good, each once a data pack of the run is stored: each run fails in
    one line and stores no snapshot, the earlier snapshot stays intact, and the good night's
    run completes without sending again anything the failed runs stored."""
    rig.snapshot("shop")
    earlier = rig.packs()

    rig.proxy.slowdown(times=10_000, match=after(1, data_pack_put))
    failed = rig.cli("snapshot", "--source", "other", **GIVE_UP)
    line = one_error_line(failed)
    assert failed.returncode == 1
    assert "503 SlowDown" in line and "after 3 attempts" in line, line
    storm = rig.proxy.counts["slowdown"]
    assert storm >= 3
    rig.proxy.clear()
    rig.verify_all(restore=False)  # nothing that looks like a snapshot; restores come below
    first = {k: v for k, v in rig.packs().items() if k not in earlier}
    assert [v for v in first.values() if v >= MiB], "no data pack went up before the storm"

    outage = Outage(rig, once_a_pack_landed(rig), down_for=None)
    try:
        failed = rig.cli("snapshot", "--source", "other", **GIVE_UP)
    finally:
        outage.restore()
    assert outage.killed.is_set()
    line = one_error_line(failed)
    assert failed.returncode == 1 and "cannot reach S3 endpoint" in line, line
    rig.verify_all(restore=False)
    left_over = {k: v for k, v in rig.packs().items() if k not in earlier}
    assert len(left_over) > len(first)  # the second run got further before the kill

    snap = rig.snapshot("other")
    check = rig.verify_all()
    new = {k: v for k, v in rig.packs().items() if k not in earlier and k not in left_over}
    assert_reused(rig, left_over, new, snap, check)
    report.add({"slowdown": storm, "server kill": 1}, "failed cleanly")


def test_server_killed_mid_restore(rig: Rig, report: FaultReport) -> None:
    """A restore whose server dies after its first data read. Back in a second: the restore
    completes exactly. Down for good: it fails in one line and writes no dataset file (restore
    is all or nothing); a restore after the server is back is exact."""
    rig.snapshot("shop")
    sid = rig.taken[0][0]
    outage = Outage(rig, after(1, data_get), down_for=1.0)
    try:
        rig.restore_matches(*rig.taken[0], **RIDE_OUT)
    finally:
        outage.restore()
    assert outage.killed.is_set()
    report.add({"server kill": 1}, "survived")

    outage = Outage(rig, after(1, data_get), down_for=None)
    target = rig.tmp / "restored"
    try:
        failed = rig.cli("restore", sid, "--target", str(target), **GIVE_UP)
    finally:
        outage.restore()
    assert outage.killed.is_set()
    line = one_error_line(failed)
    assert failed.returncode == 1 and "cannot reach S3 endpoint" in line, line
    assert not list(target.rglob("*.jsonl")) and not list(target.rglob("*.csv"))
    rig.verify_all()
    report.add({"server kill": 1}, "failed cleanly")


def test_prune_killed_or_faulted_half_way_leaves_every_kept_snapshot_whole(
        rig: Rig, report: FaultReport) -> None:
    """`forget` leaves an old snapshot's data unused; `prune` (repacking every pack with any
    unused data) removes it. Killed for good at its first delete (new packs and the
    consolidated index already written), prune fails in one line and every kept snapshot is
    whole. Run again through 503s and resets on its deletes, a
    stalled read, and a server killed at its first pack delete and back a second later, it
    completes; every kept snapshot restores exactly and nothing unused is left."""
    rig.snapshot("shop")
    old = rig.snapshot("other")
    rig.snapshot("other", night=30)  # a month of churn: much of the old data is unused
    rig.ok("forget", "--source", "other", "--keep-last", "1")
    rig.forget(old["id"])

    def delete(r: Request) -> bool:
        return r.method == "DELETE" and ("/data/" in r.path or "/index/" in r.path)

    def pack_delete(r: Request) -> bool:
        return r.method == "DELETE" and "/data/" in r.path

    outage = Outage(rig, delete, down_for=None)
    try:
        failed = rig.cli("prune", "--max-unused", "0%", **GIVE_UP)
    finally:
        outage.restore()
    assert outage.killed.is_set()
    line = one_error_line(failed)
    assert failed.returncode == 1 and "cannot reach S3 endpoint" in line, line
    rig.verify_all(restore=False)  # restores come below
    report.add({"server kill": 1}, "failed cleanly")

    p = rig.proxy
    p.slowdown(3, match=delete)
    p.reset_after(0, match=delete)
    p.stall(match=lambda r: r.method == "GET")
    outage = Outage(rig, pack_delete, down_for=1.0)
    try:
        done = json.loads(rig.ok("--json", "prune", "--max-unused", "0%", **RIDE_OUT).stdout)
    finally:
        outage.restore()
    assert outage.killed.is_set() and p.armed() == 0, (done, p.counts, p.events)
    assert done["packs_deleted"] > 0
    check = rig.verify_all()
    assert check["unreferenced_packs"] == 0
    report.add(p.counts, "survived")
    report.add({"server kill": 1}, "survived")


# ---------------------------------------------------------------------------------------------
# the S3 store itself: multipart leftovers, a retry budget that ends stalls, its settings
# ---------------------------------------------------------------------------------------------


def _store(rig: Rig, **options: Any) -> S3Store:
    opts: dict[str, Any] = {"retry_min_wait": 0.01, "retry_max_wait": 0.05,
                            "read_timeout": 2, "connect_timeout": 2}
    opts.update(options)
    return S3Store(S3_TEST_BUCKET, f"{rig.prefix}/store", endpoint_url=rig.proxy.url,
                   region="us-east-1", **opts)


def test_reset_multipart_upload_whose_abort_also_fails_leaves_no_parts_behind(
        rig: Rig, report: FaultReport) -> None:
    """A part upload is reset mid-way and the transfer manager's own abort is refused (503):
    without our clean-up the parts would stay stored, and billed, for ever."""
    store = _store(rig)
    data = secrets.token_bytes(MULTIPART_THRESHOLD + 3 * MiB)
    rig.proxy.reset_after(1 * MiB, match=lambda r: r.method == "PUT" and "partNumber=" in r.path)
    rig.proxy.slowdown(match=lambda r: r.method == "DELETE" and "uploadId=" in r.path)
    store.put("data/ab/big", data)
    assert rig.proxy.counts == Counter(reset=1, slowdown=1)
    assert store.get("data/ab/big") == data
    assert rig.open_uploads() == []
    report.add(rig.proxy.counts, "survived")


def test_a_stall_that_never_ends_is_cut_off_by_the_retry_budget(
        rig: Rig, report: FaultReport) -> None:
    """A server that accepts every request and never answers: each attempt ends at the read
    timeout and the retries stop when the time budget is spent, long before the attempt
    limit, with one line that says what happened."""
    store = _store(rig, read_timeout=0.5, retry_attempts=1000, retry_seconds=2.0)
    store.put("config", b"x")
    rig.proxy.stall(times=1000, match=lambda r: r.method == "GET")
    with pytest.raises(StorageError) as err:
        store.get("config")
    message = str(err.value)
    assert "no response before the read timeout" in message and "\n" not in message
    attempts = int(message.rsplit("after ", 1)[1].split(" ", 1)[0])
    assert 2 <= attempts < 1000 and rig.proxy.counts["stall"] == attempts
    report.add(rig.proxy.counts, "failed cleanly")


def test_bad_s3_setting_in_the_environment_is_a_config_error(rig: Rig) -> None:
    proc = rig.cli("snapshots", SELLERBAK_S3_READ_TIMEOUT="soon")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: environment variable SELLERBAK_S3_READ_TIMEOUT: "
                                   "must be a number of seconds >= 0.1, not 'soon'")
