"""The `accept-rollback` command: the way out after a legitimate forget on another machine.

snapshot, restore latest, drill and check fail when a snapshot this machine saw as the newest of
its source is gone (repository/seen.py). When that is known to be harmless (the snapshot was
forgotten on another machine, or a damaged one removed on purpose), this command takes the
repository as it is now: it names what is missing and records the current newest snapshots.
"""

from __future__ import annotations

import typer

from sellerbak.cli import _open_repo, app, emit_json, settings, summary


@app.command("accept-rollback")
def accept_rollback(
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only show which snapshots "
                                 "this machine saw are missing."),
) -> None:
    """Accept that snapshots this machine saw as newest are gone (forgotten elsewhere)."""
    from sellerbak.repository.manifest import load_manifests
    from sellerbak.repository.seen import SeenRecord

    repo = _open_repo()
    manifests = load_manifests(repo)
    record = SeenRecord(settings.config.state_dir, repo, tolerate_damage=True)
    if dry_run:
        present = {m.id.hex() for m in manifests}
        missing = [(s, e) for s, e in sorted(record.sources.items()) if e.id not in present]
    else:
        missing = record.accept(manifests)
    if settings.json:
        emit_json({"dry_run": dry_run, "missing": [{"source": s, "id": e.id, "time": e.time}
                                                  for s, e in missing]})
        return
    for source, entry in missing:
        typer.echo(f"{source}\t{entry.id[:8]}\t{entry.time}\tmissing")
    verb = "would accept" if dry_run else "accepted"
    summary(f"{verb} {len(missing)} missing snapshot(s); the newest snapshots now in the "
            "repository are " + ("not recorded (dry run)" if dry_run else "recorded"))
