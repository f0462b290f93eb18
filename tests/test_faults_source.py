"""Source faults, end to end: an exporter that dies half-way never leaves a snapshot that looks
complete. Either the dataset it was reading is stored marked incomplete and the run exits 3, or
nothing is stored and the run exits 1 (docs/FAILURES.md says which fault gives which, and why).

The TikTok source runs against the local conformance server (tests/tiktok_server.py) through the
real CLI, as in tests/test_tiktok_cli.py. The server gets the faults it has no switch for here:
a 5xx storm, pages that are not JSON or of the wrong shape, each from the N-th call of an
endpoint on. Every case then checks what a seller relies on the next morning: the snapshot
list says the truth, `check --read-data` passes, and the next run (fault gone) is complete and
restores to exactly the shop's records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from sellerbak.backup.snapshot import SnapshotRun
from sellerbak.repository.manifest import load_manifests
from sellerbak.repository.repo import Repository
from sellerbak.storage.local import LocalStore
from tests.faultproxy import FaultReport
from tests.helpers import PASSPHRASE, cli_env, init_repo, open_repo, run_cli, write_config
from tests.tiktok_server import APP_SECRET, FakeTikTokShop, expected_datasets, make_source

ORDERS = 600  # 12 pages of 50: a fault from the 3rd page on is "half-way"
ORDERS_SEARCH = "/order/202309/orders/search"

#: what the server sends instead of an answer, per fault kind
ANSWERS: dict[str, tuple[int, str, bytes, dict[str, str]]] = {
    # a gateway in trouble (Retry-After keeps the test fast; the backoff itself is covered by
    # tests/test_tiktok_client.py)
    "5xx": (503, "text/html", b"<html><body>503 Service Temporarily Unavailable</body></html>",
            {"Retry-After": "0"}),
    # a page cut off in the middle: not JSON
    "truncated page": (200, "application/json", b'{"code":0,"data":{"orders":[{"id":"57', {}),
    # JSON, but not the shape the API documents
    "wrong shape": (200, "application/json",
                    b'{"code":0,"data":{"orders":{"id":"1"},"next_page_token":""},'
                    b'"message":"Success","request_id":"202601010000000000"}', {}),
}


class FaultyShop(FakeTikTokShop):
    """The conformance server, plus faults armed per endpoint and counted in `injected`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.injected: Counter[str] = Counter()
        self._arms: list[dict[str, Any]] = []
        base = self.httpd.RequestHandlerClass
        shop = self

        def serve(handler: Any) -> None:
            kind = shop._fault_for(urlsplit(handler.path).path)
            if kind is None:
                base._serve(handler)
                return
            length = int(handler.headers.get("Content-Length") or 0)
            if length:
                handler.rfile.read(length)
            status, ctype, body, extra = ANSWERS[kind]
            handler.send_response(status)
            handler.send_header("Content-Type", ctype)
            handler.send_header("Content-Length", str(len(body)))
            for key, value in extra.items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(body)

        self.httpd.RequestHandlerClass = type("FaultyHandler", (base,),
                                              {"do_GET": serve, "do_POST": serve})

    def arm(self, kind: str, after: int, times: int | None = None,
            path: str = ORDERS_SEARCH) -> None:
        """Answer calls of `path` with the fault `kind` from its (after+1)-th call on, `times`
        times (None: until disarmed)."""
        with self.lock:
            self._arms.append({"kind": kind, "path": path, "after": after, "left": times})

    def disarm(self) -> None:
        with self.lock:
            self._arms.clear()

    def _fault_for(self, path: str) -> str | None:
        with self.lock:
            for arm in self._arms:
                if arm["path"] != path:
                    continue
                if arm["after"] > 0:
                    arm["after"] -= 1
                    continue
                if arm["left"] is not None:
                    if arm["left"] <= 0:
                        continue
                    arm["left"] -= 1
                self.injected[arm["kind"]] += 1
                return arm["kind"]
        return None


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultReport]:
    rep = FaultReport("source faults")
    yield rep
    path = tmp_path_factory.getbasetemp() / "fault-report-source.json"
    path.write_text(json.dumps(rep.as_dict(), indent=1) + "\n")
    print(f"\n{rep.text()}\n(written to {path})")


@pytest.fixture
def srv() -> Iterator[FaultyShop]:
    with FaultyShop(orders=ORDERS, real_time=True) as server:
        yield server


class Seller:
    """One seller's set-up: a config with the shop as a tiktok source, a local repository."""

    def __init__(self, tmp: Path, srv: FaultyShop) -> None:
        self.tmp, self.srv = tmp, srv
        src = {"name": "my-shop", "type": "tiktok", "app_key": "29a39d",
               "app_secret": {"env": "TTS_APP_SECRET"}, "api_url": srv.url,
               "auth_url": srv.url, "requests_per_second": 100}
        self.cfg = write_config(tmp, "./repo", [src])
        self.env = cli_env(TTS_APP_SECRET=APP_SECRET)
        self.ok("init")
        self.ok("auth", "my-shop", "--code", srv.issue_auth_code())

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("-c", str(self.cfg), *args, env=self.env, timeout=240)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.cli(*args)
        assert proc.returncode == 0, proc.stderr
        return proc

    def snapshots(self) -> list[dict[str, Any]]:
        return json.loads(self.ok("--json", "snapshots").stdout)

    def manifests(self) -> list[Any]:
        repo = Repository.open(LocalStore(self.tmp / "repo"), lambda: PASSPHRASE)
        return load_manifests(repo)

    def restored(self, ref: str = "latest") -> dict[str, list[dict[str, Any]]]:
        target = self.tmp / f"restore-{len(list(self.tmp.glob('restore-*')))}"
        self.ok("restore", ref, "--target", str(target))
        return {str(p.relative_to(target))[: -len(".jsonl")]:
                [json.loads(line) for line in p.read_text().splitlines()]
                for p in target.rglob("*.jsonl")}

    def check(self) -> None:
        report = json.loads(self.ok("--json", "check", "--read-data").stdout)
        assert report["ok"] and not report["errors"]

    def next_run_is_complete_and_exact(self) -> None:
        """The fault is gone: the next snapshot is complete and equals the shop."""
        snap = json.loads(self.ok("--json", "snapshot").stdout)["snapshots"][0]
        assert snap["complete"] and snap["incomplete_datasets"] == []
        assert self.restored() == expected_datasets(self.srv.shop)
        self.check()


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def no_secrets(seller: Seller, *texts: str) -> None:
    tokens = json.loads((seller.tmp / "state" / "tiktok" / "my-shop.json").read_text())
    for text in texts:
        for secret in (tokens["access_token"], tokens["refresh_token"], APP_SECRET):
            assert secret not in text


# ---------------------------------------------------------------------------------------------
# exit 3: the dataset is stored, marked incomplete
# ---------------------------------------------------------------------------------------------


def test_5xx_storm_outlasting_the_retries_leaves_the_dataset_marked_incomplete(
        srv: FaultyShop, tmp_path: Path, report: FaultReport) -> None:
    """A 5xx storm from the 3rd page of orders on: the retries run out, orders (and
    customers, derived from orders) are stored marked incomplete with the reason, everything
    else is stored complete, and the run exits 3."""
    seller = Seller(tmp_path, srv)
    srv.arm("5xx", after=2)
    proc = seller.cli("snapshot")
    assert proc.returncode == 3, proc.stderr
    assert "INCOMPLETE: orders, customers" in proc.stderr
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("warning: ")]
    assert [w.split(":", 2)[1].strip() for w in warnings] == ["orders", "customers"]
    assert "error:" not in proc.stderr and "Traceback" not in proc.stderr
    no_secrets(seller, proc.stdout, proc.stderr)
    assert srv.injected["5xx"] == 6  # the first try and 5 retries, then the dataset gives up

    (listed,) = seller.snapshots()
    assert listed["id"] == proc.stdout.strip() and listed["complete"] is False
    (manifest,) = seller.manifests()
    orders = manifest.datasets["orders"]
    assert not orders.complete and orders.problem and "\n" not in orders.problem
    assert "the next run tries again" in orders.problem
    assert 0 < orders.records < ORDERS
    assert all(d.complete for n, d in manifest.datasets.items()
               if n not in ("orders", "customers"))

    # what is stored is what was read: the complete datasets exactly, the orders a true part
    got, want = seller.restored(), expected_datasets(srv.shop)
    for name in want:
        if name in ("orders", "customers"):
            assert all(r in want[name] for r in got[name]) and len(got[name]) < len(want[name])
        else:
            assert got[name] == want[name], name
    seller.check()

    srv.disarm()
    seller.next_run_is_complete_and_exact()  # orders read in full again, not from a cursor
    report.add(srv.injected, "dataset marked incomplete, exit 3")


def test_pages_cut_off_until_the_retries_run_out_leave_the_dataset_incomplete(
        srv: FaultyShop, tmp_path: Path, report: FaultReport) -> None:
    """Pages that keep coming back cut off (HTTP 200, not JSON) are retried like a 5xx and end
    the same way: orders stored marked incomplete. In-process, with the short backoff of
    make_source: the CLI's exit 3 for an incomplete dataset is the test above."""
    store = LocalStore(tmp_path / "repo")
    init_repo(store)
    srv.arm("truncated page", after=2)
    result = SnapshotRun(open_repo(store)).run(make_source(srv, tmp_path / "state"), [])
    assert sorted(result.incomplete) == ["customers", "orders"]
    orders = result.manifest.datasets["orders"]
    assert orders.problem and "not an API response" in orders.problem
    assert "\n" not in orders.problem and 0 < orders.records < ORDERS
    assert srv.injected["truncated page"] == 6
    report.add(srv.injected, "dataset marked incomplete, exit 3")


def test_single_bad_answers_are_retried_and_the_snapshot_is_complete(
        srv: FaultyShop, tmp_path: Path, report: FaultReport) -> None:
    seller = Seller(tmp_path, srv)
    srv.arm("5xx", after=2, times=2)
    srv.arm("truncated page", after=3, times=1)
    seller.next_run_is_complete_and_exact()
    assert srv.injected == Counter({"5xx": 2, "truncated page": 1})
    report.add(srv.injected, "survived")


# ---------------------------------------------------------------------------------------------
# exit 1: nothing is stored
# ---------------------------------------------------------------------------------------------


def test_answer_of_the_wrong_shape_stops_the_source_and_stores_nothing(
        srv: FaultyShop, tmp_path: Path, report: FaultReport) -> None:
    """JSON that is not what the API documents means the API changed under us: the data
    cannot be trusted to be understood, so nothing is stored and the run fails."""
    seller = Seller(tmp_path, srv)
    srv.arm("wrong shape", after=2)
    proc = seller.cli("snapshot")
    line = one_error_line(proc)
    assert "upgrade sellerbak" in line, line
    assert seller.snapshots() == []
    seller.check()
    srv.disarm()
    seller.next_run_is_complete_and_exact()
    report.add(srv.injected, "nothing stored, exit 1")


def test_expired_token_that_cannot_be_refreshed_stops_the_source_and_stores_nothing(
        srv: FaultyShop, tmp_path: Path, report: FaultReport) -> None:
    """Half-way through, the access token expires and the refresh token is no longer
    accepted (the seller revoked the app, say): every further call would fail the same way,
    so the run stops, stores nothing, and says what to do."""
    seller = Seller(tmp_path, srv)
    seen = {"n": 0}

    def revoke(server: FakeTikTokShop, entry: Any) -> None:
        if entry.path == ORDERS_SEARCH:
            seen["n"] += 1
            if seen["n"] == 3:
                server.expire_access_tokens()
                with server.lock:
                    server.refresh.clear()

    srv.on_request = revoke
    proc = seller.cli("snapshot")
    line = one_error_line(proc)
    assert "refused to refresh the access token" in line
    assert "sellerbak auth my-shop --code" in line
    no_secrets(seller, proc.stdout, proc.stderr)
    assert seller.snapshots() == []
    seller.check()

    srv.on_request = None
    seller.ok("auth", "my-shop", "--code", srv.issue_auth_code())
    seller.next_run_is_complete_and_exact()
    report.add({"token revoked": 1}, "nothing stored, exit 1")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def test_export_process_killed_half_way_stores_nothing(
        srv: FaultyShop, tmp_path: Path, report: FaultReport) -> None:
    """The process that runs the exporter dies (kill -9, as the OOM killer would) while it
    reads orders: the run fails in one line and stores nothing."""
    seller = Seller(tmp_path, srv)
    # the server's handler thread for the dead process's connection would print a traceback
    srv.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    proc = subprocess.Popen([sys.executable, "-m", "sellerbak", "-c", str(seller.cfg),
                             "snapshot"], env=seller.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = {"n": 0}
    killed: list[int] = []
    lock = threading.Lock()

    def kill_exporter(server: FakeTikTokShop, entry: Any) -> None:
        if entry.path != ORDERS_SEARCH:
            return
        with lock:
            seen["n"] += 1
            if seen["n"] != 3:
                return
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
                killed.append(child)

    srv.on_request = kill_exporter
    out, err = proc.communicate(timeout=240)
    srv.on_request = None
    assert killed, "the export process was not found"
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert "export process ended unexpectedly" in line, line
    assert seller.snapshots() == []
    seller.check()
    seller.next_run_is_complete_and_exact()
    report.add({"exporter killed": 1}, "nothing stored, exit 1")


def test_malformed_line_half_way_through_an_export_file_stores_nothing(
        tmp_path: Path, report: FaultReport) -> None:
    """The `files` source: a JSONL export cut off or damaged in the middle is not half a
    dataset to keep; the run fails naming the file and line, and stores nothing."""
    exports = tmp_path / "exports"
    exports.mkdir()
    lines = [json.dumps({"id": f"o{i:05d}", "total": i}) for i in range(1000)]
    lines[500] = lines[500][:12]
    (exports / "orders.jsonl").write_text("\n".join(lines) + "\n")
    cfg = write_config(tmp_path, "./repo", [{"name": "shop", "type": "files",
                                             "path": "./exports"}])
    assert run_cli("-c", str(cfg), "init").returncode == 0
    proc = run_cli("-c", str(cfg), "snapshot")
    line = one_error_line(proc)
    assert "orders.jsonl" in line and "501" in line and "not valid JSON" in line, line
    listing = run_cli("-c", str(cfg), "--json", "snapshots")
    assert listing.returncode == 0 and json.loads(listing.stdout) == []
    report.add({"malformed export line": 1}, "nothing stored, exit 1")
