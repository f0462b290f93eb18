"""The `repair` commands: put a repository right after someone else changed it (a typer
group, `repair hidden` here; other kinds of repair add their own subcommands to it)."""

from __future__ import annotations

import typer

from sellerbak.cli import _passphrase, _store, app, emit_json, lock_repo, say, settings, summary
from sellerbak.errors import IntegrityError

repair_app = typer.Typer(help="Repair a repository that someone else changed.",
                         no_args_is_help=True)
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
