"""sellerbak side by side with restic, on the same data, to the same SeaweedFS server.

    python bench/bench_vs_restic.py --orders 200000 --scales 20000,200000,1000000

What it does, in one run:
1. Exports the demo shop (`DemoSource(seed=1, orders=N)`) at night 0 and night 1 as canonical
   JSONL files, one file per dataset: the same files both tools back up.
2. Starts a SeaweedFS S3 server on loopback (tests/seaweed.py) and gives each tool its own
   prefix in one bucket.
3. Night 0: `sellerbak snapshot` (a `files` source over the data directory) and
   `restic backup` of the same directory: wall time, peak PSS, bytes stored.
4. Night 1: the files are replaced by the night-1 export (1 % of orders changed, 0.5 % new,
   about 2 % of products repriced, new statements and transactions) and both back up again:
   bytes each adds (measured in the bucket, so packs, indexes and manifests all count).
5. Both restore the latest snapshot, --restores times each, taking turns (the machine's other
   load then weighs on both alike): median wall time and peak PSS; sellerbak's output is
   compared with the input byte for byte.
6. For each of --scales: a fresh snapshot of that shop size with each tool, then a full restore
   of it: wall time and peak PSS (to show how both grow with the shop).

Peak memory is the largest summed PSS (proportional set size) of the command's whole process
tree (sellerbak runs its export in a forked worker process; PSS counts the pages they share
once), sampled every 10 ms from /proc. Sampling slows the sampled command (see `run`), so in
steps 3-5 every command runs twice: unsampled for its time, and sampled, into a twin
repository with the same history, for its peak memory. The runs of step 6 are sampled only
(their times are then a little slower for both tools). Results go to stdout as Markdown
and to --json-out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from seaweed import SeaweedServer  # noqa: E402

from sellerbak.backup.exporters.demo import DemoSource  # noqa: E402
from sellerbak.records import encode_records, sort_records  # noqa: E402

BUCKET = "bench"
PASSWORD = "benchmark passphrase"


def export_demo(orders: int, night: int, target: Path) -> int:
    """Write the demo shop at `night` as canonical, id-sorted JSONL files; returns bytes."""
    if target.exists():
        shutil.rmtree(target)
    total = 0
    for export in DemoSource("bench", seed=1, orders=orders, night=night).export({}, True):
        path = target / f"{export.name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            for _key, line in sort_records(encode_records(export.records, export.name),
                                           export.name):
                fh.write(line)
                total += len(line)
    return total


def _tree_rss_kib(pid: int) -> int:
    """Proportional resident memory (PSS) of a process and all its descendants (KiB, from
    /proc): pages a forked worker still shares with its parent are counted once, not twice."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def run(argv: list[str], env: dict[str, str], cwd: Path, sample: bool) -> dict[str, Any]:
    """Run a command: wall seconds and, if `sample`, the peak summed PSS (MiB) of its process
    tree, sampled every 10 ms (ru_maxrss would carry this benchmark's own peak into forked
    children, and would miss a command's helper processes).

    Sampling reads /proc/PID/smaps_rollup, which walks the page tables under the process's
    memory lock: on two cores that slows the measured command by up to a second. So times
    come from runs that are not sampled, and peaks from separate sampled runs."""
    # written data still being flushed to disk would slow whichever command runs next
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    peak = 0
    stop = threading.Event()

    def sample_peak() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss_kib(proc.pid))
            stop.wait(0.01)

    sampler = threading.Thread(target=sample_peak, daemon=True)
    if sample:
        sampler.start()
    out_b, err_b = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    if sample:
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} exited {proc.returncode}: {err_b.decode()[-2000:]}")
    return {"seconds": round(wall, 2), "rss_mib": round(peak / 1024, 1) if sample else None,
            "stdout": out_b.decode()}


def prefix_bytes(server: SeaweedServer, prefix: str) -> int:
    client = server.client()
    total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                 Prefix=prefix + "/"):
        total += sum(o["Size"] for o in page.get("Contents", ()))
    return total


class Tools:
    def __init__(self, work: Path, server: SeaweedServer) -> None:
        self.work = work
        self.server = server
        self.env = dict(os.environ, AWS_ACCESS_KEY_ID=server.access_key,
                        AWS_SECRET_ACCESS_KEY=server.secret_key, AWS_DEFAULT_REGION="us-east-1",
                        SELLERBAK_PASSPHRASE=PASSWORD, RESTIC_PASSWORD=PASSWORD,
                        RESTIC_CACHE_DIR=str(work / "restic-cache"))
        self.sellerbak = [sys.executable, "-m", "sellerbak"]

    def sellerbak_config(self, name: str, data: Path) -> Path:
        cfg = self.work / f"{name}.yaml"
        cfg.write_text(json.dumps({
            "repository": {"url": f"s3://{BUCKET}/{name}", "endpoint_url":
                           self.server.endpoint_url, "region": "us-east-1"},
            "state_dir": str(self.work / f"state-{name}"),
            "sources": [{"name": "shop", "type": "files", "path": str(data)}],
        }))
        run([*self.sellerbak, "-c", str(cfg), "init"], self.env, self.work, False)
        return cfg

    def sb(self, cfg: Path, *args: str, sample: bool = False) -> dict[str, Any]:
        return run([*self.sellerbak, "-q", "-c", str(cfg), *args], self.env, self.work,
                   sample)

    def restic(self, name: str, *args: str, sample: bool = False) -> dict[str, Any]:
        repo = f"s3:{self.server.endpoint_url}/{BUCKET}/{name}"
        return run(["restic", "-q", "-r", repo, "-o", "s3.bucket-lookup=path", *args],
                   self.env, self.work, sample)

    @staticmethod
    def twin(cfg: Path) -> Path:
        return cfg.with_name(cfg.stem + "-mem.yaml")

    def both(self, cfg: Path, restic_repo: str, sb_args: list[str], restic_args: list[str]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Each tool once unsampled (its time) into the named repository, then once sampled
        (its peak memory) into a twin repository holding the same history."""
        sb = _strip(self.sb(cfg, *sb_args))
        rs = _strip(self.restic(restic_repo, *restic_args))
        sb["rss_mib"] = self.sb(self.twin(cfg), *sb_args, sample=True)["rss_mib"]
        rs["rss_mib"] = self.restic(restic_repo + "-mem", *restic_args, sample=True)["rss_mib"]
        return sb, rs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=200_000)
    ap.add_argument("--scales", default="20000,200000,1000000",
                    help="shop sizes (orders) for the memory-scaling runs; empty to skip")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--restores", type=int, default=5,
                    help="restores of the latest snapshot per tool (medians are reported)")
    args = ap.parse_args()

    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    data = work / "data"
    results: dict[str, Any] = {"orders": args.orders}

    t = time.perf_counter()
    results["data_bytes_night0"] = export_demo(args.orders, 0, data)
    results["export_seconds"] = round(time.perf_counter() - t, 1)

    with SeaweedServer(work / "seaweed") as server:
        server.client().create_bucket(Bucket=BUCKET)
        tools = Tools(work, server)
        cfg = tools.sellerbak_config("sellerbak", data)
        tools.sellerbak_config("sellerbak-mem", data)
        tools.restic("restic", "init")
        tools.restic("restic-mem", "init")

        sb0, rs0 = tools.both(cfg, "restic", ["snapshot"], ["backup", "data"])
        sb0_bytes, rs0_bytes = prefix_bytes(server, "sellerbak"), prefix_bytes(server, "restic")
        results["night0"] = {"sellerbak": {**sb0, "stored_bytes": sb0_bytes},
                             "restic": {**rs0, "stored_bytes": rs0_bytes}}

        results["data_bytes_night1"] = export_demo(args.orders, 1, data)
        sb1, rs1 = tools.both(cfg, "restic", ["snapshot"], ["backup", "data"])
        results["night1"] = {
            "sellerbak": {**sb1, "added_bytes": prefix_bytes(server, "sellerbak")
                          - sb0_bytes},
            "restic": {**rs1, "added_bytes": prefix_bytes(server, "restic") - rs0_bytes}}

        sb_out, rs_out = work / "restore-sellerbak", work / "restore-restic"
        sb_runs, rs_runs = [], []
        identical = True
        sb_restore = ["restore", "latest", "--target", str(sb_out)]
        rs_restore = ["restore", "latest", "--target", str(rs_out)]
        for _ in range(args.restores):
            sb_run = _strip(tools.sb(cfg, *sb_restore))
            rs_run = _strip(tools.restic("restic", *rs_restore))
            identical = identical and all(
                (sb_out / p.relative_to(data)).read_bytes() == p.read_bytes()
                for p in data.rglob("*.jsonl"))
            shutil.rmtree(sb_out)
            shutil.rmtree(rs_out)
            sb_run["rss_mib"] = tools.sb(tools.twin(cfg), *sb_restore, sample=True)["rss_mib"]
            rs_run["rss_mib"] = tools.restic("restic-mem", *rs_restore, sample=True)["rss_mib"]
            shutil.rmtree(sb_out)
            shutil.rmtree(rs_out)
            sb_runs.append(sb_run)
            rs_runs.append(rs_run)
        results["restore"] = {"sellerbak": {**_median(sb_runs), "identical_to_input": identical,
                                            "runs": sb_runs},
                              "restic": {**_median(rs_runs), "runs": rs_runs}}

        scaling = []
        for n in [int(x) for x in args.scales.split(",") if x.strip()]:
            scale_data = work / f"data-{n}"
            size = export_demo(n, 0, scale_data)
            scfg = tools.sellerbak_config(f"scale-{n}", scale_data)
            snap = tools.sb(scfg, "snapshot", sample=True)
            tools.restic(f"restic-scale-{n}", "init")
            rest = tools.restic(f"restic-scale-{n}", "backup", str(scale_data.name),
                                sample=True)
            shutil.rmtree(scale_data)
            sb_out, rs_out = work / f"restore-{n}-sellerbak", work / f"restore-{n}-restic"
            snap_restore = tools.sb(scfg, "restore", "latest", "--target", str(sb_out),
                                    sample=True)
            rest_restore = tools.restic(f"restic-scale-{n}", "restore", "latest", "--target",
                                        str(rs_out), sample=True)
            shutil.rmtree(sb_out)
            shutil.rmtree(rs_out)
            scaling.append({"orders": n, "data_bytes": size,
                            "sellerbak": _strip(snap), "restic": _strip(rest),
                            "sellerbak_restore": _strip(snap_restore),
                            "restic_restore": _strip(rest_restore)})
        results["scaling"] = scaling

    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    print(markdown(results))


def _strip(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "stdout"}


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: statistics.median(r[k] for r in runs) for k in ("seconds", "rss_mib")}


def markdown(r: dict[str, Any]) -> str:
    n0, n1, rs = r["night0"], r["night1"], r["restore"]
    mb = 1024 * 1024
    lines = [
        f"Demo shop, {r['orders']:,} orders: {r['data_bytes_night0'] / mb:.1f} MiB of JSONL "
        f"(night 0), {r['data_bytes_night1'] / mb:.1f} MiB (night 1).",
        "",
        "| step | sellerbak | restic | ratio |",
        "|---|---|---|---|",
        _row("night 0 snapshot, wall s", n0["sellerbak"]["seconds"], n0["restic"]["seconds"]),
        _row("night 0 snapshot, peak memory (PSS) MiB", n0["sellerbak"]["rss_mib"],
             n0["restic"]["rss_mib"]),
        _row("night 0 stored, MiB", n0["sellerbak"]["stored_bytes"] / mb,
             n0["restic"]["stored_bytes"] / mb),
        _row("night 1 snapshot, wall s", n1["sellerbak"]["seconds"], n1["restic"]["seconds"]),
        _row("night 1 added, MiB", n1["sellerbak"]["added_bytes"] / mb,
             n1["restic"]["added_bytes"] / mb),
        _row(f"restore latest, wall s (median of {len(rs['restic']['runs'])})",
             rs["sellerbak"]["seconds"], rs["restic"]["seconds"]),
        _row("restore latest, peak memory (PSS) MiB (median)", rs["sellerbak"]["rss_mib"],
             rs["restic"]["rss_mib"]),
        "",
        f"sellerbak's restore is byte-identical to the input: "
        f"{rs['sellerbak']['identical_to_input']}",
    ]
    if r.get("scaling"):
        lines += ["", "A fresh repository per shop size: a full snapshot, then a full restore "
                  "of it.", "",
                  "| orders | JSONL MiB | snapshot s: sellerbak / restic | snapshot peak PSS "
                  "MiB: sellerbak / restic | restore s: sellerbak / restic | restore peak PSS "
                  "MiB: sellerbak / restic |", "|---|---|---|---|---|---|"]
        for s in r["scaling"]:
            sr, rr = s["sellerbak_restore"], s["restic_restore"]
            lines.append(f"| {s['orders']:,} | {s['data_bytes'] / mb:.0f} | "
                         f"{s['sellerbak']['seconds']} / {s['restic']['seconds']} | "
                         f"{s['sellerbak']['rss_mib']} / {s['restic']['rss_mib']} | "
                         f"{sr['seconds']} / {rr['seconds']} | "
                         f"{sr['rss_mib']} / {rr['rss_mib']} |")
    return "\n".join(lines)


def _row(label: str, a: float, b: float) -> str:
    return f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f} |"


if __name__ == "__main__":
    main()
