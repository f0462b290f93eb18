"""The `systemd` command: writes the service and timer units for nightly snapshots and weekly
drills; and `notify-failure`, which the units' OnFailure= handler runs."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from sellerbak.cli import app, emit_json, say, settings
from sellerbak.errors import SellerbakError, UsageError

#: exit statuses systemd itself uses when it cannot start a service (systemd.exec(5))
SYSTEMD_EXIT_STATUS = {
    203: "the program could not be run (203/EXEC)",
    226: "the sandbox could not be set up, e.g. a ReadWritePaths= directory is missing "
         "(226/NAMESPACE)",
    243: "the passphrase credential could not be loaded: is the passphrase file there? "
         "(243/CREDENTIALS)",
}
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.@\\-]+\.(service|timer)")


@app.command("systemd")
def systemd_units(
    user: bool = typer.Option(False, "--user", help="Units for your own service manager "
                              "(~/.config/systemd/user) instead of the system's."),
    output: str | None = typer.Option(None, "--output", "-o", metavar="DIR",
                                      help="Write the units into DIR (default: "
                                      "/etc/systemd/system, with --user "
                                      "~/.config/systemd/user); '-' prints them."),
    passphrase_file: Path | None = typer.Option(None, "--passphrase-file",
                                                help="File the services load the passphrase "
                                                "from (default: the config's passphrase "
                                                "file, else /etc/sellerbak/passphrase, with "
                                                "--user ~/.config/sellerbak/passphrase)."),
    run_as: str | None = typer.Option(None, "--run-as", metavar="USER",
                                      help="System units: run as this user, not root."),
    on_calendar: str = typer.Option("*-*-* 02:30:00", "--on-calendar",
                                    help="When snapshots run (systemd.time(7))."),
    drill_on_calendar: str = typer.Option("Sun *-*-* 05:30:00", "--drill-on-calendar",
                                          help="When drills run."),
    force: bool = typer.Option(False, "--force", help="Replace unit files that sellerbak "
                               "did not write."),
) -> None:
    """Write systemd units: a nightly snapshot timer, a weekly drill timer and a failure
    notifier, sandboxed and with the passphrase passed as a credential."""
    from sellerbak.ops.systemd import (
        next_steps,
        notes,
        plan_units,
        render_units,
        systemd_version,
        unit_directory,
    )

    config = settings.config
    program = [sys.executable, "-m", "sellerbak"]
    _check_program(program)
    _check_calendar("--on-calendar", on_calendar)
    _check_calendar("--drill-on-calendar", drill_on_calendar)
    plan = plan_units(config, user_mode=user, passphrase_file=passphrase_file, run_as=run_as,
                      snapshot_calendar=on_calendar, drill_calendar=drill_on_calendar,
                      version=systemd_version(), program=program)
    units = render_units(plan)
    if output == "-":
        if settings.json:
            emit_json({"units": units})
        else:
            typer.echo("\n".join(f"# ----- {name}\n{text}" for name, text in units.items()),
                       nl=False)
        return
    directory = Path(output).expanduser() if output else unit_directory(user)
    installed = directory.resolve() == unit_directory(user).resolve()
    written = _write_units(directory, units, force)
    steps = next_steps(plan, directory, installed)
    warnings = notes(plan)
    if settings.json:
        emit_json({"directory": str(directory), "units": [str(p) for p in written],
                   "user": user, "credential": plan.credential, "notes": warnings,
                   "next_steps": steps})
        return
    for path in written:
        typer.echo(str(path))
    for note in warnings:
        say(f"note: {note}")
    if not plan.credential:
        say("note: this systemd cannot pass credentials to per-user services; the units "
            f"point SELLERBAK_PASSPHRASE_FILE at {plan.passphrase_file} instead")
    say("next steps:")
    for step in steps:
        say(f"  {step}")


def _check_program(program: list[str]) -> None:
    """The units run `python -m sellerbak` from `/` with systemd's environment: make sure that
    works, not only from this shell (a source checkout on PYTHONPATH would not)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        done = subprocess.run([*program, "--version"], cwd="/", env=env, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0:
        raise UsageError(f"'{' '.join(program)}' does not run outside this shell: install "
                         f"sellerbak for {program[0]} (pip install sellerbak) first")


def _check_calendar(option: str, expression: str) -> None:
    """A wrong calendar expression would only show when the timer is enabled: ask systemd's
    own parser now, where it is installed."""
    try:
        done = subprocess.run(["systemd-analyze", "calendar", expression], capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return
    if done.returncode != 0:
        raise UsageError(f"{option}: {expression!r} is not a systemd calendar expression "
                         "(see systemd.time(7), e.g. '*-*-* 02:30:00' or 'Sun 05:30')")


def _write_units(directory: Path, units: dict[str, str], force: bool) -> list[Path]:
    from sellerbak.ops.systemd import HEADER

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {directory}: {exc.strerror}; run as root, or use "
                         "--user or --output DIR") from None
    targets = [directory / name for name in units]
    for target in targets:  # check all before writing any
        if target.exists() and not force:
            try:
                ours = target.read_text(encoding="utf-8", errors="replace").startswith(HEADER)
            except OSError:
                ours = False
            if not ours:
                raise UsageError(f"{target} exists and was not written by sellerbak; "
                                 "use --force to replace it")
    for target, text in zip(targets, units.values(), strict=True):
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise UsageError(f"cannot write {target}: {exc.strerror}; run as root, or use "
                             "--user or --output DIR") from None
    return targets


# ----- notify-failure -----------------------------------------------------------------------


@app.command("notify-failure", hidden=True)
def notify_failure(
    unit: str = typer.Option(..., "--unit", help="The unit that failed (%i of "
                             "sellerbak-notify@.service)."),
    user: bool = typer.Option(False, "--user", help="The unit belongs to the per-user "
                              "service manager."),
) -> None:
    """Send the failure notice for a failed systemd unit (run by sellerbak-notify@.service).

    Sends nothing when the failed run already delivered its own notice; exits 1 when no
    notice could be delivered."""
    from sellerbak.ops.notify import deliver, load_notice

    if not _UNIT_NAME.fullmatch(unit):
        raise UsageError(f"--unit: not a unit name: {unit!r}")
    config = settings.config
    status = unit_status(unit, user)
    record = load_notice(status.get("invocation_id"))
    if record and record.get("delivered"):
        if settings.json:
            emit_json({"unit": unit, "already_sent": True, "delivered": record["delivered"],
                       "problems": []})
        else:
            say(f"the failed run of {unit} already sent its notice "
                f"({', '.join(record['delivered'])})")
        return
    summary = dict(record["summary"]) if record and isinstance(record.get("summary"), dict) \
        else failure_summary(unit, status)
    summary["unit"] = unit
    summary.update({k: v for k, v in status.items() if k != "invocation_id"})
    result = deliver(config.notify, summary)
    for problem in result.problems:
        typer.echo(f"warning: failure notice not delivered: {problem}", err=True)
    if settings.json:
        emit_json({"unit": unit, "already_sent": False, "delivered": result.delivered,
                   "problems": result.problems})
    if not result.delivered:
        if not result.attempted:
            raise SellerbakError(f"{config.path}: notify: not configured (neither command "
                                 f"nor webhook_url); no failure notice sent for {unit}")
        raise SellerbakError(f"no failure notice for {unit} could be delivered")
    say(f"failure notice for {unit} sent ({', '.join(result.delivered)})")


def unit_status(unit: str, user: bool) -> dict[str, Any]:
    """How the unit ended: from the $MONITOR_* variables systemd (251+) gives OnFailure=
    handlers, else from `systemctl show`; best effort, empty when neither is there."""
    if os.environ.get("MONITOR_UNIT") == unit:
        result = os.environ.get("MONITOR_SERVICE_RESULT")
        code = os.environ.get("MONITOR_EXIT_CODE")
        status = os.environ.get("MONITOR_EXIT_STATUS")
        invocation = os.environ.get("MONITOR_INVOCATION_ID")
    else:
        props = _systemctl_show(unit, user)
        result = props.get("Result")
        code = {"1": "exited", "2": "killed", "3": "dumped"}.get(props.get("ExecMainCode", ""))
        status = props.get("ExecMainStatus")
        invocation = props.get("InvocationID")
    out: dict[str, Any] = {}
    if result:
        out["service_result"] = result
    if code == "exited" and status and status.isdigit():
        out["exit_code"] = int(status)
    elif code in ("killed", "dumped") and status:
        out["signal"] = status
    if invocation:
        out["invocation_id"] = invocation
    return out


def failure_summary(unit: str, status: dict[str, Any]) -> dict[str, Any]:
    """The notice for a unit that failed before sellerbak could report it itself."""
    command = unit.removesuffix(".service").removeprefix("sellerbak-")
    return {"tool": "sellerbak", "command": command, "host": socket.gethostname(),
            "success": False, "exit_code": status.get("exit_code"),
            "error": describe_failure(unit, status),
            "time": datetime.now(UTC).isoformat(timespec="seconds")}


def describe_failure(unit: str, status: dict[str, Any]) -> str:
    result = status.get("service_result")
    code = status.get("exit_code")
    if code in SYSTEMD_EXIT_STATUS:
        return f"{unit}: {SYSTEMD_EXIT_STATUS[code]}"
    if result == "timeout":
        return f"{unit} did not finish in time and was stopped"
    if result == "oom-kill":
        return f"{unit} was killed: out of memory"
    if status.get("signal"):
        return f"{unit} was killed by signal {status['signal']}"
    if code is not None:
        return f"{unit} exited with status {code}"
    return f"{unit} failed" + (f" ({result})" if result else "")


def _systemctl_show(unit: str, user: bool) -> dict[str, str]:
    argv = ["systemctl", *(["--user"] if user else []), "show", unit, "-p", "Result",
            "-p", "ExecMainCode", "-p", "ExecMainStatus", "-p", "InvocationID"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if done.returncode != 0:
        return {}
    props = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and value:
            props[key] = value
    return props
