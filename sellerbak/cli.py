"""The `sellerbak` command line: parses, calls the library, maps errors to exit codes.

Conventions: human messages go to stderr, results to stdout; `--json` prints exactly one JSON
document on stdout; `-q` prints nothing but errors. Every failure is one line `error: ...` on
stderr and the exit code of the error type (sellerbak.errors).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from sellerbak import __version__
from sellerbak.errors import (
    EXIT_INCOMPLETE,
    EXIT_USAGE,
    ConfigError,
    IntegrityError,
    SellerbakError,
    SourceError,
    UsageError,
)
from sellerbak.termsafe import safe

app = typer.Typer(
    name="sellerbak",
    help="Encrypted, verified backups of your shop's products, orders, customers and finance.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
key_app = typer.Typer(help="Manage the passphrases (key files) that open the repository.",
                      no_args_is_help=True)
demo_app = typer.Typer(help="The built-in demo shop.", no_args_is_help=True)
app.add_typer(key_app, name="key")
app.add_typer(demo_app, name="demo")

log = logging.getLogger("sellerbak")


@dataclass
class Settings:
    config_path: str | None = None
    json: bool = False
    quiet: bool = False
    verbose: bool = False
    _config: Any = field(default=None, repr=False)
    #: set by commands that report to monitoring (snapshot, check, prune, forget, drill)
    outcome: Any = None
    #: --retry-lock: how long to wait for a held lock
    retry_lock: Any = None

    @property
    def config(self) -> Any:
        if self._config is None:
            from sellerbak.backup.exporters import validate_sources
            from sellerbak.config import load_config

            config = load_config(self.config_path)
            validate_sources(config)
            self._config = config
        return self._config


settings = Settings()


def say(message: str) -> None:
    """A human message (stderr), silenced by -q and --json; control characters in the names
    it quotes are escaped (sellerbak.termsafe)."""
    if not settings.quiet and not settings.json:
        typer.echo(safe(message), err=True)


def summary(message: str) -> None:
    """A command's one-line summary (stderr): printed even with -q and under systemd, where
    nothing else but errors is; --json prints JSON only."""
    if not settings.json:
        typer.echo(safe(message), err=True)


def emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=1, sort_keys=True, default=str))


@app.callback(invoke_without_command=True)
def _global(
    ctx: typer.Context,
    config: str | None = typer.Option(None, "-c", "--config", help="Config file (default: "
                                      "$SELLERBAK_CONFIG, ./sellerbak.yaml, "
                                      "~/.config/sellerbak/config.yaml, "
                                      "/etc/sellerbak/config.yaml)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only errors and results."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log debug details to stderr."),
    retry_lock: str | None = typer.Option(None, "--retry-lock", metavar="DURATION",
                                          help="If the repository is locked, keep trying "
                                          "for this long (e.g. 10min, 2h)."),
    version: bool = typer.Option(False, "--version", help="Show the version and exit."),
) -> None:
    if version:
        typer.echo(f"sellerbak {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    settings.config_path = config
    settings._config = None
    settings.json = json_out
    # under systemd (a unit's run, output to the journal) only errors and the summary
    settings.quiet = quiet or (bool(os.environ.get("INVOCATION_ID"))
                               and not sys.stderr.isatty())
    settings.verbose = verbose
    settings.retry_lock = None
    if retry_lock is not None:
        from sellerbak.durations import parse_duration

        try:
            settings.retry_lock = parse_duration(retry_lock)
        except ValueError as exc:
            raise UsageError(f"--retry-lock: {exc}") from None
    # -q, systemd and --json: retry chatter stays out; errors still come as the one line
    level = logging.DEBUG if verbose else (logging.ERROR if settings.quiet or json_out
                                           else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if not verbose:
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


# ----- helpers ------------------------------------------------------------------------------


def _store() -> Any:
    from sellerbak.storage.open import open_store

    rc = settings.config.repository
    return open_store(rc.url, endpoint_url=rc.endpoint_url, region=rc.region,
                      storage_class=rc.storage_class, object_lock=rc.object_lock)


def _passphrase(confirm: bool = False) -> str:
    from sellerbak.credentials import passphrase_from_environment

    return passphrase_from_environment(settings.config.passphrase, confirm=confirm)


def _open_repo(passphrase: Callable[[], str] | None = None) -> Any:
    """Open the repository, trying first the key file this machine last opened it with, and
    remember the one that opened it (a failed write is only a warning). `passphrase` replaces
    the configured provider, e.g. to ask only once in a command that needs it again."""
    from sellerbak.repository.lastkey import LastKey
    from sellerbak.repository.repo import Repository

    repo = Repository.open(_store(), passphrase or _passphrase,
                           LastKey(settings.config.state_dir).read)
    _remember_key(repo, repo.key_id)
    return repo


def _remember_key(repo: Any, key_id: str) -> None:
    from sellerbak.repository.lastkey import LastKey

    try:
        LastKey(settings.config.state_dir).record(repo.repo_id, key_id)
    except SellerbakError as exc:
        typer.echo(f"warning: {exc}; the next open may try other key files first", err=True)


def seen_record(repo: Any) -> Any:
    """This machine's record of the newest snapshot of each source (rollback detection)."""
    from sellerbak.repository.seen import SeenRecord

    return SeenRecord(settings.config.state_dir, repo)


def lock_repo(repo: Any, exclusive: bool) -> Any:
    """The repository lock for this command, waiting as long as --retry-lock says."""
    from sellerbak.repository.locks import RepositoryLock

    return RepositoryLock(repo, exclusive=exclusive, wait=settings.retry_lock)


def _kdf_params() -> Any:
    from sellerbak.crypto.kdf import new_params

    kdf = settings.config.repository.kdf
    try:
        return new_params(os.urandom(32), kdf.get("m_kib"), kdf.get("t"), kdf.get("p"))
    except ValueError as exc:
        raise ConfigError(f"{settings.config.path}: repository.kdf: {exc}") from None


def _new_passphrase(file: Path | None) -> str:
    """The passphrase for a new key: --new-passphrase-file, SELLERBAK_NEW_PASSPHRASE, or a
    prompt (asked twice)."""
    if file is not None:
        try:
            secret = file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}") from None
    elif os.environ.get("SELLERBAK_NEW_PASSPHRASE"):
        secret = os.environ["SELLERBAK_NEW_PASSPHRASE"]
    elif sys.stdin.isatty():
        import getpass

        secret = getpass.getpass("new passphrase: ")
        if getpass.getpass("repeat new passphrase: ") != secret:
            raise UsageError("passphrases do not match")
    else:
        raise UsageError("no new passphrase: use --new-passphrase-file or "
                         "SELLERBAK_NEW_PASSPHRASE")
    if not secret:
        raise UsageError("an empty passphrase is not allowed")
    return secret


def _human_size(n: int) -> str:
    from sellerbak.records import human_bytes

    return human_bytes(n)


# ----- commands -----------------------------------------------------------------------------


@app.command()
def init() -> None:
    """Create the repository and its first key."""
    from sellerbak.repository.repo import Repository

    store = _store()
    if hasattr(store, "ensure_bucket"):
        store.ensure_bucket()
    kdf = _kdf_params()
    secret = _passphrase(confirm=True)
    if not secret:
        raise UsageError("an empty passphrase is not allowed")
    repo = Repository.init(store, secret, kdf)
    _remember_key(repo, repo.key_id)
    if settings.json:
        emit_json({"repository_id": repo.repo_id.hex(), "location": store.location,
                   "key_id": repo.key_id})
    else:
        say(f"created repository {repo.repo_id.hex()[:8]} at {store.location}")
        say("keep the passphrase safe: without it the backups cannot be read")


@app.command()
def snapshot(
    source: list[str] = typer.Option(None, "--source", "-s", help="Only this source "
                                     "(repeatable; default: all)."),
    tag: list[str] = typer.Option(None, "--tag", "-t", help="Tag the snapshot (repeatable)."),
    full: bool = typer.Option(False, "--full", help="Re-read everything, not just changes."),
    at: str | None = typer.Option(None, "--time", help="Record this time (ISO 8601) "
                                  "instead of now."),
) -> None:
    """Export every source and store one snapshot per source; prints the snapshot ids."""
    from sellerbak.backup.exporters import build_source
    from sellerbak.backup.snapshot import SnapshotRun
    from sellerbak.progress import make_progress

    outcome = monitored("snapshot")
    config = settings.config
    chosen = [config.source(n) for n in source] if source else config.sources
    if not chosen:
        raise ConfigError(f"{config.path}: sources: no source configured")
    when = _parse_time(at) if at else None
    sources = [build_source(config, s) for s in chosen]
    repo = _open_repo()
    results = []
    failed: list[tuple[str, SourceError]] = []

    def warn(text: str) -> None:
        say(f"warning: {text}")

    with lock_repo(repo, exclusive=False) as lock, make_progress(settings) as progress:
        run = SnapshotRun(repo, progress, before_commit=lock.ensure_held, warn=warn)
        seen = seen_record(repo)
        seen.check(run.manifests)  # before writing: never build on a rolled-back repository
        if run.problems:
            say(f"warning: {len(run.problems)} snapshot(s) could not be read and were "
                "ignored; run 'sellerbak check'")
        for src in sources:
            if hasattr(src, "set_progress"):  # API sources report requests and throttling
                src.set_progress(progress)
            try:
                result = run.run(src, tags=list(tag or []), full=full, at=when)
            except SourceError as exc:
                if len(sources) == 1:
                    raise
                # one shop's failure (an expired token, a bad export file) must not cost the
                # others their night's backup: they go on, and the run still fails loudly
                failed.append((src.name, exc))  # reported, with the others', at the end
                # a fresh run: what the failed export had uploaded is found again (and
                # indexed) before anything else can refer to it
                run = SnapshotRun(repo, progress, before_commit=lock.ensure_held, warn=warn)
                continue
            results.append(result)
            m = result.manifest
            seen.saw([m])
            _record_snapshot(outcome, result)
            if not settings.json and not settings.quiet:
                typer.echo(m.id.hex())
            api = src.summary() if hasattr(src, "summary") else ""
            say(f"snapshot {m.short_id} of {m.source}: {m.records} records in "
                f"{len(m.datasets)} datasets, {_human_size(m.bytes)}; added "
                f"{_human_size(result.stats.bytes_stored)} in {result.seconds:.1f}s"
                + (f"; {api}" if api else "")
                + (f"; INCOMPLETE: {', '.join(result.incomplete)}" if result.incomplete
                   else ""))
            for name in result.incomplete:
                problem = m.datasets[name].problem
                if problem:
                    say(f"warning: {name}: {problem}")
    failed_names = [name for name, _exc in failed]
    if settings.json:
        emit_json({"failed_sources": failed_names, "snapshots": [{
            "id": r.manifest.id.hex(), "source": r.manifest.source, "time": r.manifest.time,
            "records": r.manifest.records, "bytes": r.manifest.bytes,
            "bytes_added": r.stats.bytes_stored, "seconds": round(r.seconds, 3),
            "complete": not r.incomplete, "incomplete_datasets": r.incomplete,
            "datasets": {n: {"records": d.records, "sha256": d.sha256}
                         for n, d in r.manifest.datasets.items()},
        } for r in results]})
    if settings.quiet:
        added = sum(r.stats.bytes_stored for r in results)
        parts = [f"{r.manifest.source} {r.manifest.short_id}"
                 + (f" INCOMPLETE ({', '.join(r.incomplete)})" if r.incomplete else "")
                 for r in results]
        summary(f"stored {len(results)} snapshot(s): {'; '.join(parts)}; "
                f"{sum(r.manifest.records for r in results)} records, added "
                f"{_human_size(added)} in {sum(r.seconds for r in results):.1f}s"
                + (f"; FAILED: {', '.join(failed_names)}" if failed_names else ""))
    if failed:
        error = SourceError(f"{len(failed)} of {len(sources)} sources failed: "
                            + "; ".join(_source_problem(n, e) for n, e in failed))
        error.exit_code = failed[0][1].exit_code
        raise error
    if any(r.incomplete for r in results):
        raise typer.Exit(EXIT_INCOMPLETE)


def _source_problem(name: str, exc: SourceError) -> str:
    """A failed source's error line, naming the source once."""
    text = str(exc)
    return text if text.startswith(f"source {name}") else f"source {name}: {text}"


def _record_snapshot(outcome: Any, result: Any) -> None:
    from sellerbak.ops.outcome import DatasetCount

    m = result.manifest
    outcome.snapshots.append(m.id.hex())
    outcome.bytes_added = (outcome.bytes_added or 0) + result.stats.bytes_stored
    outcome.datasets.extend(DatasetCount(m.source, name, d.records, d.bytes)
                            for name, d in sorted(m.datasets.items()))


def _parse_time(value: str) -> Any:
    """An ISO 8601 time; without a zone it is taken as UTC."""
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--time {value!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
def snapshots(
    source: str | None = typer.Option(None, "--source", "-s", help="Only this source."),
) -> None:
    """List snapshots (id, time, source, tags, records, size)."""
    from sellerbak.repository.manifest import load_manifests
    from sellerbak.repository.timeline import future_warning, is_future, system_clock

    repo = _open_repo()
    manifests = [m for m in load_manifests(repo) if source is None or m.source == source]
    now = system_clock()
    if settings.json:
        emit_json([{"id": m.id.hex(), "short_id": m.short_id, "time": m.time,
                    "future": is_future(m, now),
                    "source": m.source, "source_type": m.source_type, "hostname": m.hostname,
                    "tags": m.tags, "records": m.records, "bytes": m.bytes,
                    "complete": m.complete, "parent": m.parent,
                    "datasets": {n: d.records for n, d in m.datasets.items()}}
                   for m in manifests])
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold")
    for col in ("id", "time", "source", "tags", "records", "size", ""):
        table.add_column(col, justify="right" if col in ("records", "size") else "left")
    for m in manifests:  # Text: names are neither rich markup nor terminal escapes
        table.add_row(m.short_id, m.datetime.strftime("%Y-%m-%d %H:%M:%S"), Text(safe(m.source)),
                      Text(safe(",".join(m.tags))), str(m.records), _human_size(m.bytes),
                      ("" if m.complete else "incomplete")
                      + (" FUTURE-DATED" if is_future(m, now) else ""))
    Console(soft_wrap=True).print(table)
    say(f"{len(manifests)} snapshots")
    for m in manifests:
        if is_future(m, now):
            say("warning: " + future_warning(m, "not taken as 'latest'"))


@app.command()
def restore(
    snapshot_ref: str = typer.Argument(..., metavar="SNAPSHOT|latest"),
    target: Path = typer.Option(..., "--target", help="Directory to write the datasets into."),
    dataset: list[str] = typer.Option(None, "--dataset", "-d", help="Only this dataset "
                                      "(repeatable)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or csv."),
    source: str | None = typer.Option(None, "--source", "-s", help="With 'latest': the "
                                      "latest snapshot of this source."),
    csv_raw: bool = typer.Option(False, "--csv-raw", help="With --format csv: write every "
                                 "cell exactly as stored. By default a cell starting with = + "
                                 "- @ TAB or CR (and not a plain number) gets a leading ' so a "
                                 "spreadsheet shows it as text instead of running it as a "
                                 "formula. JSONL is always exact."),
) -> None:
    """Restore a snapshot's datasets into TARGET, verified against the manifest."""
    from sellerbak.progress import make_progress
    from sellerbak.repository.manifest import load_manifests, resolve_snapshot
    from sellerbak.restore.restore import FORMATS, restore_snapshot

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    if csv_raw and fmt != "csv":
        raise UsageError("--csv-raw applies only to --format csv")
    repo = _open_repo()
    manifests = None
    if snapshot_ref == "latest":  # the newest must not have vanished: see repository/seen.py
        manifests = load_manifests(repo)
        seen_record(repo).check(manifests)
    manifest = resolve_snapshot(repo, snapshot_ref, source, manifests=manifests)
    with make_progress(settings) as progress:
        wanted = [d for n, d in manifest.datasets.items() if not dataset or n in dataset]
        advance = progress.bar(f"restoring {manifest.short_id}",
                               sum(d.records for d in wanted))
        restored = restore_snapshot(repo, manifest, target, list(dataset or []), fmt,
                                    on_records=advance, csv_raw=csv_raw)
    if settings.json:
        emit_json({"snapshot": manifest.id.hex(), "target": str(target.resolve()),
                   "datasets": [{"name": r.name, "path": str(r.path.resolve()),
                                 "records": r.records, "sha256": r.sha256} for r in restored]})
        return
    if not settings.quiet:
        for r in restored:
            typer.echo(safe(r.path))
    for name in (r.name for r in restored):
        if not manifest.datasets[name].complete:
            say(f"warning: {name} was incomplete when this snapshot was taken "
                f"({manifest.datasets[name].problem or 'the source stopped early'}); it holds "
                "what was exported")
    summary(f"restored {len(restored)} datasets of snapshot {manifest.short_id} "
        f"({manifest.source}, {manifest.time}) into {target.resolve()}, verified")


@app.command()
def check(
    read_data: bool = typer.Option(False, "--read-data", help="Download, decrypt and verify "
                                   "every stored chunk."),
) -> None:
    """Check the repository's structure; with --read-data, every byte of data."""
    from sellerbak.progress import make_progress
    from sellerbak.repository.check import check_repository
    from sellerbak.repository.manifest import load_manifests

    outcome = monitored("check")
    repo = _open_repo()
    with make_progress(settings) as progress:
        advance = progress.bar("reading packs", None, unit="bytes") if read_data else None
        report = check_repository(repo, read_data=read_data, on_pack=advance)
    try:
        seen_record(repo).check(load_manifests(repo, warn=False))
    except IntegrityError as exc:  # a rollback, or a damaged record of the snapshots seen
        report.errors.append(str(exc))
    outcome.gauges.update({"errors": len(report.errors), "snapshots": report.snapshots,
                           "packs": report.packs, "bytes_read": report.bytes_read})
    if settings.json:
        emit_json({"ok": report.ok, "snapshots": report.snapshots, "packs": report.packs,
                   "chunks": report.chunks_referenced, "bytes_read": report.bytes_read,
                   "unreferenced_packs": report.unreferenced_packs, "errors": report.errors})
    else:
        for problem in report.errors:
            typer.echo(f"error: {safe(problem)}", err=True)
        summary(f"checked {report.snapshots} snapshots, {report.chunks_referenced} chunks in "
            f"{report.packs} packs" + (f", read {_human_size(report.bytes_read)}"
                                        if read_data else "")
            + (": no errors" if report.ok else f": {len(report.errors)} errors"))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def unlock(
    remove_all: bool = typer.Option(False, "--remove-all", help="Remove every lock, "
                                    "not only stale ones."),
) -> None:
    """Remove stale locks (holder gone or not refreshed for 30 minutes)."""
    from sellerbak.repository.locks import remove_locks

    removed = remove_locks(_open_repo(), remove_all)
    if settings.json:
        emit_json({"removed": removed})
    else:
        say(f"removed {removed} lock(s)")


# ----- keys ---------------------------------------------------------------------------------


@key_app.command("list")
def key_list() -> None:
    """List key files: id, created, host, and whether this passphrase opens each; * marks the
    one that opened the repository. Unusable files are listed as skipped, with the reason."""
    from functools import cache

    passphrase = cache(_passphrase)  # asked once, for the open and for trying the others
    repo = _open_repo(passphrase)
    entries = repo.key_statuses(passphrase())
    if settings.json:
        emit_json([_key_json(e, repo.key_id) for e in entries])
        return
    for e in entries:
        kf = e.key_file
        mark = "*" if kf is not None and kf.key_id == repo.key_id else " "
        what = (f"{kf.key_id}  {safe(kf.created)}  {safe(kf.hostname)}  {kf.kdf.alg}"
                if kf is not None else safe(e.name))
        typer.echo(f"{mark} {what}  {_KEY_STATUS_TEXT.get(e.status, e.status)}"
                   + (f": {safe(e.reason)}" if e.reason else ""))


_KEY_STATUS_TEXT = {"opened": "opened the repository", "opens": "opens with this passphrase",
                    "does not open": "does not open with this passphrase"}


def _key_json(entry: Any, current_key_id: str) -> dict[str, Any]:
    kf = entry.key_file
    return {"name": entry.name, "key_id": kf.key_id if kf else entry.key_id,
            "created": kf.created if kf else None, "hostname": kf.hostname if kf else None,
            "kdf": kf.kdf.alg if kf else None,
            "current": kf is not None and kf.key_id == current_key_id,
            "status": entry.status, "reason": entry.reason or None}


@key_app.command("add")
def key_add(
    new_passphrase_file: Path | None = typer.Option(None, "--new-passphrase-file"),
) -> None:
    """Add a passphrase that opens the repository."""
    repo = _open_repo()
    secret = _new_passphrase(new_passphrase_file)
    kf = repo.add_key(secret, _kdf_params())
    if settings.json:
        emit_json({"key_id": kf.key_id})
    else:
        typer.echo(kf.key_id)
        say(f"added key {kf.key_id}")


@key_app.command("remove")
def key_remove(key_id: str = typer.Argument(..., help="Id of the key file to remove.")) -> None:
    """Remove a passphrase (not the one in use, never the last)."""
    repo = _open_repo()
    keys = repo.list_keys()
    matches = [k for k in keys if k.key_id.startswith(key_id.lower())] if key_id else []
    if len(matches) != 1:
        raise UsageError(f"no single key matches {key_id!r}; see 'sellerbak key list'")
    if matches[0].key_id == repo.key_id:
        raise UsageError("refusing to remove the key in use; open the repository with another "
                         "passphrase to remove this one, or use 'key passwd'")
    repo.remove_key(matches[0].key_id)
    if settings.json:
        emit_json({"removed": matches[0].key_id})
    else:
        say(f"removed key {matches[0].key_id}")


@key_app.command("passwd")
def key_passwd(
    new_passphrase_file: Path | None = typer.Option(None, "--new-passphrase-file"),
) -> None:
    """Change the passphrase in use: adds a key with the new one, then removes the old key."""
    repo = _open_repo()
    secret = _new_passphrase(new_passphrase_file)
    kf = repo.add_key(secret, _kdf_params())
    repo.remove_key(repo.key_id)
    _remember_key(repo, kf.key_id)
    if settings.json:
        emit_json({"key_id": kf.key_id, "removed": repo.key_id})
    else:
        say(f"passphrase changed: key {repo.key_id} replaced by {kf.key_id}")


# ----- auth ---------------------------------------------------------------------------------


@app.command()
def auth(
    source: str = typer.Argument(..., help="The tiktok source to authorize."),
    code: str = typer.Option(..., "--code", help="The authorization code from TikTok Shop's "
                             "redirect after the seller authorized the app."),
) -> None:
    """Exchange a TikTok Shop authorization code for tokens (kept in the state directory)."""
    from sellerbak.backup.exporters.tiktok import authorize

    config = settings.config
    out = authorize(config, config.source(source), code)
    if settings.json:
        emit_json(out)
        return
    say(f"authorized source {source}: seller {out['seller_name'] or '?'} "
        f"({out['seller_base_region'] or '?'}); access token valid until "
        f"{out['access_token_expires']}; scopes: {', '.join(out['scopes']) or 'not listed'}")
    for shop in out.get("shops", []):
        typer.echo("\t".join(safe(shop[k]) for k in ("cipher", "name", "region")))
    if out.get("shops_error"):
        say(f"warning: could not list the shops: {out['shops_error']}")


# ----- demo ---------------------------------------------------------------------------------


@demo_app.command("advance")
def demo_advance(
    source: str | None = typer.Option(None, "--source", "-s", help="Demo source to advance "
                                      "(default: every demo source)."),
    nights: int = typer.Option(1, "--nights", "-n", min=1, help="Nights of churn to add."),
) -> None:
    """Advance the demo shop by nights of orders, status changes and price changes."""
    from sellerbak.backup.exporters import advance_demo

    config = settings.config
    chosen = [config.source(source)] if source else [s for s in config.sources
                                                     if s.type == "demo"]
    if not chosen or any(s.type != "demo" for s in chosen):
        raise UsageError("no demo source to advance")
    out = {s.name: advance_demo(config, s.name, nights) for s in chosen}
    if settings.json:
        emit_json({"nights": out})
    else:
        for name, night in out.items():
            say(f"demo shop {name} is now at night {night}")


def monitored(command: str) -> Any:
    """Start this run's outcome record: main() writes it to the metrics file and, on failure,
    sends it to the notifier."""
    from sellerbak.ops.outcome import RunOutcome

    settings.outcome = RunOutcome(command)
    return settings.outcome


def _finish_outcome(code: int, error: str | None) -> None:
    """Metrics and failure notices; their own failures are warnings, never a new exit code."""
    outcome = settings.outcome
    if outcome is None or settings._config is None:
        return
    import time

    outcome.finished = time.time()
    outcome.exit_code = code
    outcome.error = error or outcome.error
    config = settings._config
    try:
        if config.metrics_textfile is not None:
            from sellerbak.ops.metrics import write_run_metrics

            write_run_metrics(config.metrics_textfile, outcome)
    except (OSError, SellerbakError) as exc:
        typer.echo(f"warning: could not write metrics to {config.metrics_textfile}: {exc}",
                   err=True)
    if code != 0:
        from sellerbak.ops.notify import notify_failure

        for problem in notify_failure(config.notify, outcome.summary()):
            typer.echo(f"warning: failure notice not delivered: {problem}", err=True)


# ----- entry point --------------------------------------------------------------------------

# each module registers its commands on `app` when imported
from sellerbak.commands import diff as _diff  # noqa: E402,F401
from sellerbak.commands import drill as _drill  # noqa: E402,F401
from sellerbak.commands import forget as _forget  # noqa: E402,F401
from sellerbak.commands import prune as _prune  # noqa: E402,F401
from sellerbak.commands import repair as _repair  # noqa: E402,F401
from sellerbak.commands import rollback as _rollback  # noqa: E402,F401
from sellerbak.commands import systemd as _systemd  # noqa: E402,F401

#: signals that end a run the way Ctrl-C does, and the error line each gives
_STOP_SIGNALS = {"SIGINT": "interrupted", "SIGTERM": "terminated", "SIGHUP": "terminal hung up"}
_stopped_by: list[int] = []


def _on_stop_signal(signum: int, _frame: Any) -> None:
    """SIGTERM (systemd stopping the unit) and SIGHUP take Ctrl-C's path: a KeyboardInterrupt
    unwinds the command, so every `finally` runs (the worker is stopped, the repository lock
    released, a restore's staging folder removed) and no snapshot manifest is written."""
    _stopped_by.append(signum)
    raise KeyboardInterrupt


def _catch_stop_signals() -> dict[int, Any]:
    """Install _on_stop_signal where the signal has its default action (one ignored on
    purpose, e.g. SIGINT in a background job, stays ignored); returns what it replaced."""
    import signal
    import threading

    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for name in _STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) in (signal.SIG_DFL,
                                                               signal.default_int_handler):
            previous[signum] = signal.signal(signum, _on_stop_signal)
    return previous


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure ends as one line on stderr and a meaningful exit code."""
    import signal

    from sellerbak import allocator, hardening

    hardening.disable_core_dumps()
    allocator.tune()
    error: str | None = None
    _stopped_by.clear()
    previous_handlers = _catch_stop_signals()
    try:
        rv = app(args=argv, standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        error = "interrupted"
        code = 130
    except typer.TyperException as exc:  # bad usage: unknown option, missing argument, ...
        error = exc.format_message()
        code = EXIT_USAGE
    except SellerbakError as exc:
        error = str(exc)
        code = exc.exit_code
    except KeyboardInterrupt:
        error = "interrupted"
        code = 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if settings.verbose:
            log.exception("internal error")
        error = f"internal error ({type(exc).__name__}); run with -v for details"
        code = 1
    if _stopped_by:  # typer turns the KeyboardInterrupt into a bare exit status 130
        error = _STOP_SIGNALS[signal.Signals(_stopped_by[0]).name]
        code = 128 + _stopped_by[0]
    elif code == 130 and error is None:
        error = "interrupted"
    if error is not None:
        typer.echo(f"error: {safe(error)}", err=True)
    try:
        _finish_outcome(code, error)
    except KeyboardInterrupt:  # signalled again while reporting: stop reporting
        pass
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    sys.exit(code)
