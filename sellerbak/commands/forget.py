"""The `forget` command: retention policies applied per source.

Forgetting removes snapshot manifests only; the data they alone referenced stays until
`prune` (or `forget --prune`) removes it. Manifests are deleted under the exclusive lock, so
no backup or prune runs meanwhile; a dry run takes a shared lock, which is enough to read a
consistent repository and lets a nightly backup go on.
"""

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
    seen_record,
    settings,
    summary,
)
from sellerbak.errors import RetentionError, UsageError

_COUNT_HELP = ("Keep the newest snapshot of each of the last N {what} (UTC) that have one; "
               "-1 keeps one of every {one}.")


@app.command()
def forget(
    snapshot_ids: list[str] = typer.Argument(None, metavar="[SNAPSHOT]...",
                                             help="Remove exactly these snapshots (unique id "
                                             "prefixes); no retention policy is applied."),
    keep_last: int | None = typer.Option(None, "--keep-last", min=-1, metavar="N",
                                         help="Keep the N newest snapshots (-1: all)."),
    keep_hourly: int | None = typer.Option(None, "--keep-hourly", min=-1, metavar="N",
                                           help=_COUNT_HELP.format(what="hours", one="hour")),
    keep_daily: int | None = typer.Option(None, "--keep-daily", min=-1, metavar="N",
                                          help=_COUNT_HELP.format(what="days", one="day")),
    keep_weekly: int | None = typer.Option(None, "--keep-weekly", min=-1, metavar="N",
                                           help=_COUNT_HELP.format(what="ISO weeks",
                                                                   one="week")),
    keep_monthly: int | None = typer.Option(None, "--keep-monthly", min=-1, metavar="N",
                                            help=_COUNT_HELP.format(what="months",
                                                                    one="month")),
    keep_yearly: int | None = typer.Option(None, "--keep-yearly", min=-1, metavar="N",
                                           help=_COUNT_HELP.format(what="years", one="year")),
    keep_within: str | None = typer.Option(None, "--keep-within", metavar="DURATION",
                                           help="Keep every snapshot taken within DURATION "
                                           "(e.g. 7d, 36h, 1y6m; m = 30 days) of the "
                                           "source's newest snapshot."),
    keep_tag: list[str] = typer.Option(None, "--keep-tag", metavar="TAG",
                                       help="Keep every snapshot with this tag (repeatable)."),
    source: list[str] = typer.Option(None, "--source", "-s", help="Only this source "
                                     "(repeatable; default: every source)."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only show what would be "
                                 "removed and why each kept snapshot is kept."),
    prune: bool = typer.Option(False, "--prune", help="Then remove the data no snapshot "
                               "references any more (as 'sellerbak prune')."),
    max_unused: str = typer.Option("50%", "--max-unused", help="With --prune: repack a pack "
                                   "when more than this share of it is unused."),
) -> None:
    """Remove snapshots by retention policy; each source's snapshots are judged alone.

    Options default to the config's retention: section; each one given replaces its default.

    A count of 0 switches a configured rule off; -1 keeps all. Periods are cut in UTC.

    A policy that would remove every snapshot of a source is refused.

    With snapshot ids, exactly those snapshots are removed and no policy applies.
    """
    from sellerbak.commands.prune import parse_percent, run_prune
    from sellerbak.repository.manifest import load_manifests
    from sellerbak.repository.repo import snapshot_name
    from sellerbak.repository.retention import (
        RetentionPolicy,
        apply_policy,
        decide_by_ids,
        refuse_removing_all,
    )
    from sellerbak.repository.timeline import future_warning, system_clock

    outcome = monitored("prune" if prune else "forget")
    rules = dict(keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily,
                 keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly,
                 keep_within=keep_within, keep_tag=keep_tag or None)
    policy = None
    if snapshot_ids:
        given = sorted(f"--{k.replace('_', '-')}" for k, v in rules.items() if v is not None)
        if given or source:
            raise UsageError(f"snapshot ids and {', '.join(given) or '--source'} do not go "
                             "together: with ids, exactly those snapshots are removed")
        say(f"removing {len(snapshot_ids)} snapshot(s) by id"
            + (" (dry run: nothing is removed)" if dry_run else ""))
    else:
        rules["keep_within"] = _duration(keep_within)
        rules["keep_tag"] = list(keep_tag) if keep_tag else None
        policy = RetentionPolicy.from_config(settings.config.retention).with_overrides(**rules)
        policy.require_rules()
    threshold = parse_percent(max_unused)
    if policy is not None:
        say(f"applying policy: {policy.describe()}" + (" (dry run: nothing is removed)"
                                                       if dry_run else ""))
    repo = _open_repo()
    prune_report = None
    with lock_repo(repo, exclusive=not dry_run or prune) as lock:
        problems: list[str] = []
        manifests = [m for m in load_manifests(repo, problems)
                     if not source or m.source in source]
        if problems:
            say(f"warning: {len(problems)} snapshot(s) could not be read and were left "
                "alone; run 'sellerbak check'")
        for name in sorted(set(source or ()) - {m.source for m in manifests}):
            say(f"warning: no snapshot of source {name} to judge")
        if policy is None:
            decisions = decide_by_ids(manifests, snapshot_ids)
        else:
            decisions = apply_policy(manifests, policy, system_clock())
            refuse_removing_all(decisions)
            for d in decisions:
                if d.future:
                    say("warning: " + future_warning(d.manifest, "kept, and not counted by "
                                                     "the policy"))
        removed = [d.manifest for d in decisions if not d.keep]
        retained: list[str] = []
        if not dry_run:
            lock.ensure_held()
            for m in removed:
                try:
                    repo.store.delete(snapshot_name(m.id))
                except RetentionError as exc:  # Object Lock: it goes when retention ends
                    retained.append(m.short_id)
                    say(f"warning: snapshot {m.short_id}: {exc}")
            gone = {m.id for m in removed if m.short_id not in retained}
            # this machine forgot them: the rollback check must not hold it against the repository
            seen_record(repo).forgot(gone, [m for m in manifests if m.id not in gone])
            if retained:
                problems.append(f"{len(retained)} snapshot(s) are still under Object Lock "
                                f"retention and were left: {', '.join(retained)}")
        outcome.gauges.update({"snapshots_removed": len(removed),
                               "snapshots_kept": len(decisions) - len(removed)})
        if prune:
            # a dry run has deleted nothing: prune must plan as if it had
            prune_report = run_prune(repo, lock, dry_run, threshold,
                                     ignore={m.id for m in removed} if dry_run else None)
    if settings.json:
        doc: dict[str, Any] = {"dry_run": dry_run,
                               "policy": policy.to_json() if policy is not None else None,
                               "sources": _by_source(decisions), "problems": problems}
        if prune_report is not None:
            doc["prune"] = prune_report.to_json()
        emit_json(doc)
        return
    _print_decisions(decisions, dry_run)
    if prune_report is not None:
        for line in prune_report.describe():
            say(line)
    verb = "would remove" if dry_run else "removed"
    summary(f"{verb} {len(removed)} of {len(decisions)} snapshots"
            + (f" of {len({d.manifest.source for d in decisions})} source(s)" if decisions
               else "")
            + (f"; {prune_report.summary_line()}" if prune_report is not None else "")
            + ("; run 'sellerbak prune' to free their data"
               if removed and not prune and not dry_run else ""))


def _duration(text: str | None) -> Any:
    if text is None:
        return None
    from sellerbak.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--keep-within: {exc}") from None


def _by_source(decisions: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in decisions:
        m = d.manifest
        group = out.setdefault(m.source, {"kept": [], "removed": []})
        if d.keep:
            group["kept"].append({"id": m.id.hex(), "time": m.time, "tags": m.tags,
                                  "reasons": d.reasons})
        else:
            group["removed"].append({"id": m.id.hex(), "time": m.time, "tags": m.tags})
    return out


def _print_decisions(decisions: list[Any], dry_run: bool) -> None:
    """Per source, a table of every snapshot: kept (and why) or removed; on stdout, like
    `snapshots`."""
    if settings.quiet:
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from sellerbak.termsafe import safe

    console = Console(soft_wrap=True)
    if not console.is_terminal:  # a log or a pipe: one line per snapshot, never wrapped
        console = Console(soft_wrap=True, width=1000)
    gone = "would remove" if dry_run else "removed"
    for source in dict.fromkeys(d.manifest.source for d in decisions):
        group = [d for d in decisions if d.manifest.source == source]
        kept = sum(d.keep for d in group)
        # Text: names are neither rich markup nor terminal escapes (sellerbak.termsafe)
        table = Table(title=Text(f"{safe(source)}: keep {kept}, {gone} {len(group) - kept}"),
                      title_justify="left", box=None, header_style="bold")
        for col in ("id", "time", "tags", "action", "reasons"):
            table.add_column(col)
        for d in group:
            m = d.manifest
            table.add_row(m.short_id, m.datetime.strftime("%Y-%m-%d %H:%M:%S"),
                          Text(safe(",".join(m.tags))), "keep" if d.keep else "remove",
                          ", ".join(d.reasons))
        console.print(table)
