"""Disaster-recovery drills: prove a restore works before it is needed, and measure it.

A drill restores snapshots (by default the newest of each source) into scratch space exactly
as `restore` would, then checks the files on disk a second time, independently of the restore's
own streaming checks: every dataset's record count and SHA-256 are recomputed from the
restored file and compared with the manifest. It reports the recovery time (RTO: how long the
restore took) and the recovery point (RPO: how old the newest snapshot is), and fails when
either verification fails or the newest snapshot is older than the allowed age.

A snapshot dated in the future (repository.timeline) is never the "newest" here: it would give
an RPO of 0 and pass any --max-age however old the real backups are. The recovery point comes
from the snapshots that are not in the future; a future-dated one is named as a warning.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sellerbak.durations import format_duration
from sellerbak.errors import SellerbakError
from sellerbak.records import human_bytes
from sellerbak.repository.manifest import Manifest
from sellerbak.repository.repo import Repository
from sellerbak.repository.timeline import future_warning, split_future
from sellerbak.restore.restore import restore_snapshot

READ_BLOCK = 1 << 20


@dataclass
class DrillDataset:
    source: str
    snapshot: str
    name: str
    records: int
    bytes: int
    sha256: str
    ok: bool
    problem: str | None = None


@dataclass
class DrillSnapshot:
    snapshot: str
    source: str
    time: str
    #: seconds from the start of this snapshot's restore to its verified files
    seconds: float = 0.0
    ok: bool = True
    problem: str | None = None


@dataclass
class DrillReport:
    started: datetime
    scratch: Path
    kept: bool
    max_age: timedelta | None
    snapshots: list[DrillSnapshot] = field(default_factory=list)
    datasets: list[DrillDataset] = field(default_factory=list)
    #: wall time of the whole restore and verification
    rto_seconds: float = 0.0
    #: per source: age of its newest snapshot when the drill started
    rpo_seconds: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: worth a look, not a failure (e.g. a snapshot dated in the future)
    warnings: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return all(s.ok for s in self.snapshots) and all(d.ok for d in self.datasets)

    @property
    def fresh(self) -> bool:
        return self.max_age is None or all(age <= self.max_age.total_seconds()
                                           for age in self.rpo_seconds.values())

    @property
    def ok(self) -> bool:
        return self.verified and self.fresh and not self.problems and bool(self.snapshots)

    @property
    def worst_rpo(self) -> float:
        return max(self.rpo_seconds.values(), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "verified": self.verified, "fresh": self.fresh,
                "started": self.started.isoformat(), "rto_seconds": round(self.rto_seconds, 3),
                "rpo_seconds": {s: round(a, 3) for s, a in self.rpo_seconds.items()},
                "max_age_seconds": self.max_age.total_seconds() if self.max_age else None,
                "scratch": str(self.scratch) if self.kept else None,
                "problems": self.problems, "warnings": self.warnings,
                "snapshots": [vars(s) for s in self.snapshots],
                "datasets": [vars(d) for d in self.datasets]}

    def markdown(self) -> str:
        status = "PASSED" if self.ok else "FAILED"
        allowed = format_duration(self.max_age) if self.max_age else "not set"
        verification = "every dataset matches its manifest" if self.verified else "FAILED"
        lines = [f"# Restore drill {status}", "",
                 f"- Started: {self.started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
                 f"- RTO (restore and verify): {self.rto_seconds:.1f} s",
                 "- RPO (age of the newest snapshot): "
                 + ", ".join(f"{src} {format_duration(timedelta(seconds=age))}"
                             for src, age in sorted(self.rpo_seconds.items())),
                 f"- Allowed age: {allowed}",
                 f"- Verification: {verification}",
                 "", "| source | snapshot | restore time | status |", "|---|---|---|---|"]
        for s in self.snapshots:
            lines.append(f"| {s.source} | {s.snapshot[:8]} ({s.time}) | {s.seconds:.1f} s | "
                         f"{'ok' if s.ok else 'FAILED: ' + (s.problem or '')} |")
        lines += ["", "| source | dataset | records | bytes | SHA-256 | status |",
                  "|---|---|---:|---:|---|---|"]
        for d in self.datasets:
            state = "ok" if d.ok else "FAILED: " + (d.problem or "")
            lines.append(f"| {d.source} | {d.name} | {d.records} | {human_bytes(d.bytes)} | "
                         f"`{d.sha256[:16]}…` | {state} |")
        if self.problems:
            lines += ["", "## Problems", ""] + [f"- {p}" for p in self.problems]
        if self.warnings:
            lines += ["", "## Warnings", ""] + [f"- {w}" for w in self.warnings]
        return "\n".join(lines) + "\n"


def newest_per_source(manifests: list[Manifest], now: datetime | None = None) -> list[Manifest]:
    """The newest snapshot of each source that is not dated in the future (manifests come
    oldest first); `now` defaults to the machine's clock."""
    newest: dict[str, Manifest] = {}
    for m in split_future(manifests, now or datetime.now(UTC))[0]:
        newest[m.source] = m
    return [newest[s] for s in sorted(newest)]


def run_drill(repo: Repository, chosen: list[Manifest], all_manifests: list[Manifest], *,
              scratch_parent: Path | None, keep: bool, max_age: timedelta | None,
              expected_sources: list[str], now: datetime | None = None) -> DrillReport:
    """Restore `chosen` into a fresh scratch directory, verify, measure; never raises for a
    failed verification (the report says so) so the report is always written."""
    now = now or datetime.now(UTC)
    if scratch_parent is not None:
        scratch_parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = Path(tempfile.mkdtemp(prefix="sellerbak-drill-", dir=scratch_parent))
    report = DrillReport(now, scratch, keep, max_age)
    for m in split_future(all_manifests, now)[1]:
        report.warnings.append(future_warning(m, "not counted for the recovery point"))
    for m in newest_per_source(all_manifests, now):
        report.rpo_seconds[m.source] = max((now - m.datetime).total_seconds(), 0.0)
    for source in expected_sources:
        if source not in report.rpo_seconds:
            report.problems.append(f"source {source} has no snapshot")
    if not chosen:
        report.problems.append("no snapshot to restore")
    started = time.monotonic()
    try:
        for m in chosen:
            _drill_one(repo, m, scratch / m.source / m.short_id, report)
        report.rto_seconds = time.monotonic() - started
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    if not report.fresh:
        for source, age in sorted(report.rpo_seconds.items()):
            if max_age is not None and age > max_age.total_seconds():
                report.problems.append(
                    f"newest snapshot of {source} is {format_duration(timedelta(seconds=age))}"
                    f" old, more than drill.max_age ({format_duration(max_age)})")
    return report


def _drill_one(repo: Repository, m: Manifest, target: Path, report: DrillReport) -> None:
    entry = DrillSnapshot(m.id.hex(), m.source, m.time)
    report.snapshots.append(entry)
    began = time.monotonic()
    try:
        restored = restore_snapshot(repo, m, target)
    except SellerbakError as exc:
        entry.ok, entry.problem = False, str(exc)
        report.problems.append(f"snapshot {m.short_id} of {m.source}: {exc}")
        return
    finally:
        entry.seconds = time.monotonic() - began
    for r in restored:
        ds = m.datasets[r.name]
        records, size, digest = _measure(r.path)
        problem = None
        if records != ds.records:
            problem = f"{records} records on disk, the manifest says {ds.records}"
        elif digest != ds.sha256:
            problem = "SHA-256 on disk differs from the manifest"
        report.datasets.append(DrillDataset(m.source, m.id.hex(), r.name, records, size,
                                            digest, problem is None, problem))
        if problem:
            entry.ok = False
            report.problems.append(f"snapshot {m.short_id} of {m.source}, dataset {r.name}: "
                                   f"{problem}")


def _measure(path: Path) -> tuple[int, int, str]:
    """Records (lines), bytes and SHA-256 of a restored JSONL file, read back from disk."""
    digest = hashlib.sha256()
    lines = size = 0
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
            lines += block.count(b"\n")
            size += len(block)
    return lines, size, digest.hexdigest()


def write_report(path: Path, text: str) -> None:
    """Write the Markdown report whole or not at all (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
