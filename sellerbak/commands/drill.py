"""The `drill` command: a timed, verified restore into scratch space, with a report."""

from __future__ import annotations

from pathlib import Path

import typer

from sellerbak.cli import (
    _open_repo,
    app,
    emit_json,
    monitored,
    say,
    seen_record,
    settings,
    summary,
)
from sellerbak.errors import EXIT_FAILED, UsageError
from sellerbak.termsafe import safe


@app.command()
def drill(
    snapshot_refs: list[str] = typer.Argument(None, metavar="[SNAPSHOT]...",
                                              help="Snapshots to drill (default: the newest "
                                              "of each source)."),
    source: list[str] = typer.Option(None, "--source", "-s", help="Only this source "
                                     "(repeatable)."),
    report_file: Path | None = typer.Option(None, "--report", help="Write a Markdown "
                                            "report to this file."),
    keep: bool = typer.Option(False, "--keep", help="Keep the restored scratch copy."),
    scratch: Path | None = typer.Option(None, "--scratch", help="Restore under this "
                                        "directory (default: drill.scratch_dir, else a "
                                        "temporary directory)."),
    max_age: str | None = typer.Option(None, "--max-age", metavar="DURATION",
                                       help="Fail when the newest snapshot of a source is "
                                       "older (default: drill.max_age)."),
) -> None:
    """Restore into scratch space, verify every dataset, report RTO and RPO.

    Exits 1 when a dataset does not verify or the newest snapshot is older than allowed."""
    from sellerbak.durations import parse_duration
    from sellerbak.ops.outcome import DatasetCount
    from sellerbak.repository.manifest import load_manifests, resolve_snapshot
    from sellerbak.repository.timeline import system_clock
    from sellerbak.restore.drill import newest_per_source, run_drill, write_report

    outcome = monitored("drill")
    config = settings.config
    allowed = config.drill.max_age
    if max_age is not None:
        try:
            allowed = parse_duration(max_age)
        except ValueError as exc:
            raise UsageError(f"--max-age: {exc}") from None
    repo = _open_repo()
    now = system_clock()
    everything = load_manifests(repo)
    seen_record(repo).check(everything, now)  # a rolled-back repository fails the drill
    manifests = [m for m in everything if not source or m.source in source]
    if snapshot_refs:
        chosen = [resolve_snapshot(repo, ref, now=now, manifests=manifests)
                  for ref in snapshot_refs]
    else:
        chosen = newest_per_source(manifests, now)
    expected = list(source) if source else [s.name for s in config.sources]
    report = run_drill(repo, chosen, manifests, scratch_parent=scratch or config.drill.scratch_dir,
                       keep=keep, max_age=allowed, expected_sources=expected, now=now)
    outcome.snapshots = [s.snapshot for s in report.snapshots]
    outcome.datasets = [DatasetCount(d.source, d.name, d.records, d.bytes)
                        for d in report.datasets]
    outcome.gauges.update({"rto_seconds": report.rto_seconds,
                           "rpo_seconds": report.worst_rpo,
                           "verified": float(report.verified)})
    if report_file is not None:
        write_report(report_file, report.markdown())
    if settings.json:
        emit_json(report.to_json())
    else:
        for warning in report.warnings:
            say(f"warning: {warning}")
        for d in report.datasets:
            say(f"{d.source} {d.name}: {d.records} records "
                + ("verified" if d.ok else f"FAILED ({d.problem})"))
        summary(f"drill {'passed' if report.ok else 'FAILED'}: RTO {report.rto_seconds:.1f} s, "
            f"RPO {report.worst_rpo / 3600:.1f} h"
            + (f"; restored copy kept in {report.scratch}" if keep else ""))
    if not report.ok:
        # the one error line: the first problem, the rest are in the report
        first = report.problems[0] if report.problems else "verification failed"
        more = len(report.problems) - 1
        typer.echo(f"error: drill failed: {safe(first)}"
                   + (f" (and {more} more)" if more > 0 else ""), err=True)
        outcome.error = first
        raise typer.Exit(EXIT_FAILED)
