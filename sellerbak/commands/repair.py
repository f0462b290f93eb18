"""The `repair` commands: put a repository right after damage, planted objects or someone
else's deletions made part of it unusable (a typer group, one subcommand per kind of repair)."""

from __future__ import annotations

import typer

from sellerbak.cli import (
    _open_repo,
    _passphrase,
    _store,
    app,
    emit_json,
    lock_repo,
    say,
    settings,
    summary,
)
from sellerbak.errors import IntegrityError

repair_app = typer.Typer(help="Repair the repository after damage, planted objects or hidden "
                         "ones.", no_args_is_help=True)
app.add_typer(repair_app, name="repair")


@repair_app.command("hidden")
def hidden(
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Show what would be brought "
                                 "back; change nothing."),
) -> None:
    """Bring back snapshots, indexes and key files hidden behind delete markers.

    Each comes back as its newest stored version that decrypts and is bound to its name."""
    from sellerbak.repository.hidden import open_revealing, repair_hidden

    repo = open_revealing(_store(), lambda: _passphrase())
    verb = "would restore" if dry_run else "restored"
    with lock_repo(repo, exclusive=not dry_run):
        report = repair_hidden(repo, dry_run, on_restored=lambda name: say(f"{verb} {name}"))
    if settings.json:
        emit_json({"dry_run": dry_run, "restored": report.restored,
                   "unrecoverable": report.unrecoverable})
    else:
        for problem in report.unrecoverable[1:]:
            say(f"warning: {problem}")
        summary(f"repair hidden: {verb} {len(report.restored)} hidden objects")
    if report.unrecoverable:
        raise IntegrityError(f"{len(report.unrecoverable)} hidden object(s) cannot be "
                             f"restored: {report.unrecoverable[0]}")


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
