"""The `repair` commands: rebuild what damaged or planted objects made unusable."""

from __future__ import annotations

import typer

from sellerbak.cli import _open_repo, app, emit_json, lock_repo, say, settings, summary

repair_app = typer.Typer(help="Repair the repository after damage or planted objects.",
                         no_args_is_help=True)
app.add_typer(repair_app, name="repair")


@repair_app.command("index")
def repair_index(
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Show what would be "
                                 "indexed and replaced; change nothing."),
) -> None:
    """Rebuild the index from the pack headers (after index objects were lost, damaged or
    replaced by junk); the old readable index objects are replaced."""
    from sellerbak.repository.repair_index import repair_index as rebuild

    repo = _open_repo()
    with lock_repo(repo, exclusive=True) as lock:
        report = rebuild(repo, dry_run=dry_run, before_delete=lock.ensure_held)
    if settings.json:
        emit_json(report.to_json())
        return
    for line in report.describe():
        say(line)
    summary(report.summary_line())
