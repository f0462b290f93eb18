"""The `diff` command: records added, removed and changed between two snapshots.

Like `restore`, it only reads, so it takes no lock: snapshots are immutable, and a concurrent
prune never deletes data a readable snapshot references.
"""

from __future__ import annotations

from typing import Any

import typer

from sellerbak.cli import _open_repo, app, emit_json, settings, summary
from sellerbak.termsafe import safe


@app.command()
def diff(
    snapshot_a: str = typer.Argument(..., metavar="A", help="The earlier snapshot: id, id "
                                     "prefix or 'latest'."),
    snapshot_b: str = typer.Argument(..., metavar="B", help="The later snapshot: id, id "
                                     "prefix or 'latest'."),
    dataset: list[str] = typer.Option(None, "--dataset", "-d", help="Only this dataset "
                                      "(repeatable)."),
    source: str | None = typer.Option(None, "--source", "-s", help="With 'latest': the "
                                      "latest snapshot of this source."),
) -> None:
    """Records added (+), removed (-) and changed (~) per dataset, matched by id.

    With --json, also the ids, and per changed record the names of its changed fields.
    """
    from sellerbak.repository.manifest import resolve_snapshot
    from sellerbak.restore.diff import diff_snapshots

    repo = _open_repo()
    a = resolve_snapshot(repo, snapshot_a, source)
    b = resolve_snapshot(repo, snapshot_b, source)
    report = diff_snapshots(repo, a, b, list(dataset or []), with_ids=settings.json)
    if settings.json:
        emit_json(report.to_json())
        return
    if not settings.quiet:
        for d in report.datasets:
            typer.echo(safe(_line(d)))
    summary(f"{a.short_id} ({a.source}, {a.time}) -> {b.short_id} ({b.source}, {b.time}): "
            f"+{report.added} -{report.removed} ~{report.changed} records in "
            f"{len(report.datasets)} datasets; compared {report.records_compared} records")


def _line(d: Any) -> str:
    notes = []
    if d.only_in:
        notes.append(f"only in {d.only_in.upper()}")
    if d.incomplete:
        notes.append("incomplete in " + " and ".join(s.upper() for s in d.incomplete))
    return (f"{d.name}: +{d.added} -{d.removed} ~{d.changed}"
            + (f" ({'; '.join(notes)})" if notes else ""))
