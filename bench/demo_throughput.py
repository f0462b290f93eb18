"""Throughput and peak memory of the demo source.

    python bench/demo_throughput.py --orders 200000
    python bench/demo_throughput.py --orders 1000000 --night 30 --since 29

Exports every dataset of `DemoSource(orders=N, night=K)` (in full, or as the change set since
night S with --since), encodes each record as canonical JSON (sorted keys, no spaces, one line
each) and reports, per dataset and in total: records, bytes, seconds and MB/s (10**6 bytes of
canonical JSON per second, generation and encoding together, one core), then the process's
peak RSS. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sellerbak.backup.exporters.demo import DemoSource  # noqa: E402


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=200_000, help="orders at night 0")
    ap.add_argument("--night", type=int, default=0, help="nights the shop has advanced")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--since", type=int, default=None,
                    help="export the changes since this night instead of everything")
    ap.add_argument("--dataset", action="append", default=None,
                    help="only this dataset (repeatable; default all)")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)

    rss_start = peak_rss_mb()
    t_all = time.perf_counter()
    src = DemoSource("bench", seed=args.seed, orders=args.orders, night=args.night)
    setup = time.perf_counter() - t_all
    cursors = {}
    if args.since is not None:
        cursor = {"model": 1, "seed": args.seed, "orders": args.orders, "night": args.since}
        cursors = dict.fromkeys(("products", "orders", "customers", "finance/statements",
                                 "finance/transactions"), cursor)
    dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
    rows = []
    for export in src.export(cursors, full=False):
        if args.dataset and export.name not in args.dataset:
            continue
        t = time.perf_counter()
        n = size = 0
        for rec in export.records:
            size += len(dumps(rec).encode()) + 1
            n += 1
        dt = time.perf_counter() - t
        rows.append({"dataset": export.name, "mode": export.mode, "records": n, "bytes": size,
                     "seconds": round(dt, 3), "mb_per_s": round(size / dt / 1e6, 1) if dt else 0,
                     "avg_record_bytes": round(size / n) if n else 0})
    total_s = time.perf_counter() - t_all
    total_b = sum(r["bytes"] for r in rows)
    result = {
        "orders_at_night_0": args.orders,
        "night": args.night,
        "since": args.since,
        "setup_seconds": round(setup, 3),
        "datasets": rows,
        "total_records": sum(r["records"] for r in rows),
        "total_bytes": total_b,
        "total_seconds": round(total_s, 2),
        "total_mb_per_s": round(total_b / total_s / 1e6, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_mb": round(rss_start, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"DemoSource(orders={args.orders}, night={args.night}, seed={args.seed})"
          + (f", changes since night {args.since}" if args.since is not None else ", full"))
    print(f"{'dataset':22} {'mode':8} {'records':>10} {'MB':>9} {'B/rec':>6} {'s':>7} "
          f"{'MB/s':>6}")
    for r in rows:
        print(f"{r['dataset']:22} {r['mode']:8} {r['records']:>10} {r['bytes'] / 1e6:>9.1f} "
              f"{r['avg_record_bytes']:>6} {r['seconds']:>7.2f} {r['mb_per_s']:>6.1f}")
    print(f"{'total':22} {'':8} {result['total_records']:>10} {total_b / 1e6:>9.1f} {'':>6} "
          f"{total_s:>7.2f} {result['total_mb_per_s']:>6.1f}   (setup {setup:.2f} s)")
    print(f"peak RSS {result['peak_rss_mb']:.1f} MB (interpreter and imports: "
          f"{rss_start:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
