"""`forget` and `diff` through the real command line: real processes, files sources, snapshots
dated with `snapshot --time`, a local repository and a real SeaweedFS S3 one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import cli_env, run_cli, write_config

T1, T2, T3, T4 = ("2024-03-01T02:00:00Z", "2024-03-02T02:00:00Z", "2024-03-02T20:00:00Z",
                  "2024-03-03T02:00:00Z")


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def _write_orders(directory: Path, orders: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "orders.jsonl", "w") as fh:
        for order in orders:
            fh.write(json.dumps(order) + "\n")


def _orders(n: int = 200) -> list[dict]:
    return [{"id": f"o{i:06d}", "status": "DONE", "price": f"{i}.99",
             "buyer_email": f"b{i}@shop.example"} for i in range(n)]


def _two_shops(tmp_path: Path, url: str = "./repo", **extra) -> Path:
    _write_orders(tmp_path / "shop", _orders())
    _write_orders(tmp_path / "outlet", _orders(50))
    return write_config(tmp_path, url, [{"name": "shop", "type": "files", "path": "./shop"},
                                        {"name": "outlet", "type": "files",
                                         "path": "./outlet"}], **extra)


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-c", str(cfg), *args, env=cli_env())


def _snapshot(cfg: Path, when: str, *args: str) -> dict[str, str]:
    """source -> snapshot id"""
    out = json.loads(_ok(_cli(cfg, "--json", "snapshot", "--time", when, *args)).stdout)
    return {s["source"]: s["id"] for s in out["snapshots"]}


def _ids(cfg: Path) -> set[str]:
    return {s["id"] for s in json.loads(_ok(_cli(cfg, "--json", "snapshots")).stdout)}


def test_forget_with_config_defaults_dry_run_and_overrides(tmp_path: Path) -> None:
    cfg = _two_shops(tmp_path, retention={"keep_daily": 2, "keep_tag": ["keep"]})
    _ok(_cli(cfg, "init"))
    s1 = _snapshot(cfg, T1, "--source", "shop", "--tag", "keep")
    s1.update(_snapshot(cfg, T1, "--source", "outlet"))
    s2, s3, s4 = (_snapshot(cfg, t) for t in (T2, T3, T4))
    everything = _ids(cfg)
    assert len(everything) == 8

    # dry run, human: explains, per source, and removes nothing
    dry = _ok(_cli(cfg, "forget", "--dry-run"))
    assert "keep 2 daily snapshots (periods in UTC) and all snapshots tagged keep" in dry.stderr
    assert "would remove 3 of 8 snapshots of 2 source(s)" in dry.stderr
    for source, kept, gone in (("shop", 3, 1), ("outlet", 2, 2)):
        assert f"{source}: keep {kept}, would remove {gone}" in dry.stdout
    assert "daily snapshot" in dry.stdout and "tagged keep" in dry.stdout
    assert s2["shop"][:8] in dry.stdout
    assert _ids(cfg) == everything

    # dry run, JSON: per source, kept (with reasons) and removed
    doc = json.loads(_ok(_cli(cfg, "--json", "forget", "--dry-run")).stdout)
    assert doc["dry_run"] is True and doc["problems"] == []
    assert doc["policy"] == {"keep_last": 0, "keep_hourly": 0, "keep_daily": 2,
                             "keep_weekly": 0, "keep_monthly": 0, "keep_yearly": 0,
                             "keep_within": None, "keep_tag": ["keep"]}
    shop, outlet = doc["sources"]["shop"], doc["sources"]["outlet"]
    assert [(k["id"], k["reasons"]) for k in shop["kept"]] == [
        (s4["shop"], ["daily snapshot"]), (s3["shop"], ["daily snapshot"]),
        (s1["shop"], ["tagged keep"])]
    assert shop["kept"][0]["time"] == "2024-03-03T02:00:00.000000Z"
    assert [r["id"] for r in shop["removed"]] == [s2["shop"]]
    assert [k["id"] for k in outlet["kept"]] == [s4["outlet"], s3["outlet"]]
    assert [r["id"] for r in outlet["removed"]] == [s2["outlet"], s1["outlet"]]
    assert _ids(cfg) == everything

    # for real, one source only: the other is not touched
    real = json.loads(_ok(_cli(cfg, "--json", "forget", "--source", "outlet")).stdout)
    assert list(real["sources"]) == ["outlet"] and real["dry_run"] is False
    assert _ids(cfg) == everything - {s2["outlet"], s1["outlet"]}

    # options replace their own config default only: keep-daily off, keep-tag still on
    over = json.loads(_ok(_cli(cfg, "--json", "forget", "--keep-last", "1",
                               "--keep-daily", "0")).stdout)
    assert over["policy"]["keep_last"] == 1 and over["policy"]["keep_daily"] == 0
    assert over["policy"]["keep_tag"] == ["keep"]
    assert [(k["id"], k["reasons"]) for k in over["sources"]["shop"]["kept"]] == [
        (s4["shop"], ["last snapshot"]), (s1["shop"], ["tagged keep"])]
    assert _ids(cfg) == {s4["shop"], s1["shop"], s4["outlet"]}
    # what is left restores, verified
    _ok(_cli(cfg, "restore", s1["shop"][:10], "--target", str(tmp_path / "r")))
    assert len((tmp_path / "r/orders.jsonl").read_text().splitlines()) == 200


def test_forget_refuses_without_a_policy_or_with_one_that_keeps_nothing(
        tmp_path: Path) -> None:
    cfg = _two_shops(tmp_path)
    _ok(_cli(cfg, "init"))
    _snapshot(cfg, T1)
    _snapshot(cfg, T2)
    before = _ids(cfg)
    for args, code, message in (
            ((), 2, "no retention policy"),
            (("--keep-daily", "0"), 2, "no retention policy"),
            (("--keep-within", "3 fortnights"), 2, "--keep-within"),
            (("--keep-last", "-2"), 2, "--keep-last"),
            (("--keep-tag", "no-such-tag"), 1, "refusing to remove every snapshot"),
            (("--keep-last", "1", "--max-unused", "120%", "--prune"), 2, "--max-unused")):
        proc = _cli(cfg, "forget", *args)
        assert proc.returncode == code, (args, proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], proc.stderr
        assert proc.stdout == ""
    assert _ids(cfg) == before


def test_forget_prune_frees_the_data_and_keeps_the_rest_restorable(tmp_path: Path) -> None:
    _write_orders(tmp_path / "shop", _orders(3000))
    cfg = write_config(tmp_path, "./repo", [{"name": "shop", "type": "files",
                                             "path": "./shop"}])
    _ok(_cli(cfg, "init"))
    old = _snapshot(cfg, T1)["shop"]
    _write_orders(tmp_path / "shop", [dict(o, price="0.00") for o in _orders(3000)])
    new = _snapshot(cfg, T2)["shop"]

    dry = json.loads(_ok(_cli(cfg, "--json", "forget", "--keep-last", "1", "--prune",
                              "--dry-run")).stdout)
    assert dry["prune"]["dry_run"] is True and _ids(cfg) == {old, new}
    done = json.loads(_ok(_cli(cfg, "--json", "forget", "--keep-last", "1",
                               "--prune")).stdout)
    assert [r["id"] for r in done["sources"]["shop"]["removed"]] == [old]
    assert done["prune"]["snapshots"] == 1 and done["prune"]["bytes_freed"] > 0
    assert _ids(cfg) == {new}
    report = json.loads(_ok(_cli(cfg, "--json", "check", "--read-data")).stdout)
    assert report["ok"] and report["unreferenced_packs"] == 0
    _ok(_cli(cfg, "restore", "latest", "--target", str(tmp_path / "r")))
    restored = [json.loads(line) for line in (tmp_path / "r/orders.jsonl").open()]
    assert len(restored) == 3000 and {r["price"] for r in restored} == {"0.00"}


def test_forget_on_s3(tmp_path: Path, s3_url: str, seaweed) -> None:
    cfg = _two_shops(tmp_path, s3_url, repository={"endpoint_url": seaweed.endpoint_url,
                                                   "region": "us-east-1"})
    _ok(_cli(cfg, "init"))
    first, second = _snapshot(cfg, T1), _snapshot(cfg, T3)
    doc = json.loads(_ok(_cli(cfg, "--json", "forget", "--keep-within", "12h")).stdout)
    assert {r["id"] for s in doc["sources"].values() for r in s["removed"]} == \
        set(first.values())
    assert all(k["reasons"] == ["within 12h"] for s in doc["sources"].values()
               for k in s["kept"])
    assert _ids(cfg) == set(second.values())


def test_diff_counts_and_json_ids_and_fields(tmp_path: Path) -> None:
    orders = _orders(300)
    _write_orders(tmp_path / "shop", orders)
    (tmp_path / "shop" / "products.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "title": f"T{i}"}) + "\n" for i in range(10)))
    cfg = write_config(tmp_path, "./repo", [{"name": "shop", "type": "files",
                                             "path": "./shop"}])
    _ok(_cli(cfg, "init"))
    a = _snapshot(cfg, T1)["shop"]
    orders[5]["price"] = "1.00"
    orders[10].update(status="REFUNDED", price="0.00")
    orders[11]["gift"] = True
    del orders[200]
    orders.append({"id": "o999999", "status": "UNPAID"})
    _write_orders(tmp_path / "shop", orders)
    b = _snapshot(cfg, T2)["shop"]

    human = _ok(_cli(cfg, "diff", a[:8], "latest"))
    assert human.stdout.splitlines() == ["orders: +1 -1 ~3", "products: +0 -0 ~0"]
    assert "+1 -1 ~3 records in 2 datasets" in human.stderr
    assert "o000005" not in human.stdout + human.stderr  # ids only with --json

    doc = json.loads(_ok(_cli(cfg, "--json", "diff", a, b, "--dataset", "orders")).stdout)
    assert doc["a"]["id"] == a and doc["b"]["id"] == b
    assert list(doc["datasets"]) == ["orders"]
    got = doc["datasets"]["orders"]
    assert got["added_ids"] == ["o999999"] and got["removed_ids"] == ["o000200"]
    assert got["changed_records"] == [{"id": "o000005", "fields": ["price"]},
                                      {"id": "o000010", "fields": ["price", "status"]},
                                      {"id": "o000011", "fields": ["gift"]}]
    assert (got["added"], got["removed"], got["changed"], got["unchanged"]) == (1, 1, 3, 296)
    assert "shop.example" not in json.dumps(doc)  # field names and ids, never values

    back = json.loads(_ok(_cli(cfg, "--json", "diff", b, a)).stdout)
    assert back["datasets"]["orders"]["added_ids"] == ["o000200"]
    assert back["datasets"]["products"]["changed"] == 0


@pytest.mark.parametrize("args,code,message", [
    (("abcdef12", "latest"), 1, "not found"),
    (("latest", "latest", "--dataset", "refunds"), 2, "has a dataset 'refunds'"),
    (("latest",), 2, "Missing argument"),
])
def test_diff_errors(tmp_path: Path, args, code: int, message: str) -> None:
    cfg = _two_shops(tmp_path)
    _ok(_cli(cfg, "init"))
    _snapshot(cfg, T1, "--source", "shop")
    proc = _cli(cfg, "diff", *args)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.count("error: ") == 1 and message in proc.stderr
