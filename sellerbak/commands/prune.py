"""The `prune` command: removes data no snapshot references."""

from __future__ import annotations

from typing import Any

import typer

from sellerbak.cli import (
    _open_repo,
    app,
    emit_json,
    lock_repo,
    monitored,
    say,
    settings,
    summary,
)
from sellerbak.errors import UsageError


def run_prune(repo: Any, lock: Any, dry_run: bool, max_unused: float,
              ignore: set[bytes] | None = None) -> Any:
    """Prune under a lock the caller holds; reports to monitoring. Shared with
    `forget --prune`, whose dry run passes the snapshots it would remove as `ignore`."""
    from sellerbak.repository.prune import prune_repository

    outcome = settings.outcome if settings.outcome is not None else monitored("prune")
    report = prune_repository(repo, dry_run=dry_run, max_unused=max_unused,
                              before_delete=lock.ensure_held, ignore=ignore or set())
    outcome.bytes_added = report.bytes_written
    outcome.gauges.update({"bytes_freed": report.bytes_freed,
                           "packs_deleted": report.packs_deleted,
                           "packs_repacked": report.packs_repacked,
                           "retained_objects": report.retained})
    return report


def parse_percent(value: str) -> float:
    text = value.strip().rstrip("%")
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 100:
        raise UsageError(f"--max-unused must be a percentage from 0 to 100, not {value!r}")
    return number / 100


@app.command()
def prune(
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Show what would be removed "
                                 "and repacked; change nothing."),
    max_unused: str = typer.Option("50%", "--max-unused", help="Repack a pack when more "
                                   "than this share of it is unused."),
) -> None:
    """Remove data that no snapshot references; repack packs that are mostly unused.

    Safe to interrupt: every remaining snapshot stays restorable at every step."""
    monitored("prune")
    threshold = parse_percent(max_unused)
    repo = _open_repo()
    with lock_repo(repo, exclusive=True) as lock:
        report = run_prune(repo, lock, dry_run, threshold)
    if settings.json:
        emit_json(report.to_json())
        return
    for line in report.describe():
        say(line)
    summary(report.summary_line())
