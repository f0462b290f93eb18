"""Failure notices: a command and/or a webhook hear about every failed run.

`notify.command` (an argument list, run without a shell) gets the JSON summary on stdin and
`SELLERBAK_EVENT=failure` plus a few `SELLERBAK_*` variables in its environment;
`notify.webhook_url` gets the same JSON as a POST. The summary (RunOutcome.summary) holds the
command, host, exit code, the one `error:` line, times and snapshot ids: no secret and no
customer data. The command gets only a small allowlist of the environment (PATH, HOME, locale,
TMPDIR, ...; sellerbak.childenv): never the passphrase variables, the systemd credentials
directory, AWS keys or the variables a config's `{env: NAME}` secrets name.

A webhook URL often carries a token (Slack, Discord, ntfy, healthchecks), so it never appears in
a message: problems say "webhook" and the HTTP status or the kind of error only.

Under systemd, a failed run also starts `sellerbak-notify@<unit>.service` (OnFailure=). To send
one notice, not two, a run records what it delivered in `$SELLERBAK_NOTICE_DIR/<invocation
id>.json` (the unit sets that variable; systemd sets $INVOCATION_ID); `sellerbak notify-failure`
then only sends when the run itself could not (killed, timed out, blocked by the sandbox).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sellerbak import __version__
from sellerbak.childenv import child_environment
from sellerbak.credentials import SecretRef
from sellerbak.errors import SellerbakError

NOTICE_DIR_ENV = "SELLERBAK_NOTICE_DIR"
#: notice records older than this are removed when a new one is written
NOTICE_KEEP_SECONDS = 30 * 86400
RETRY_PAUSE = 1.0
_INVOCATION_ID = re.compile(r"[0-9a-f]{32}")

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """What happened to one notice: the channels that took it and the problems of the rest."""

    delivered: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> bool:
        return bool(self.delivered or self.problems)


def notify_failure(config: Any, summary: dict[str, Any]) -> list[str]:
    """Send the failure notice to every configured channel; returns the problems (warnings
    for the caller: a notice that cannot be delivered never changes a run's exit code)."""
    result = deliver(config, summary)
    record_notice(summary, result)
    return result.problems


def deliver(config: Any, summary: dict[str, Any]) -> Delivery:
    payload = notice_payload(summary)
    body = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    result = Delivery()
    if config is None:
        return result
    if config.command:
        problem = _run_command(list(config.command), body, payload, float(config.timeout))
        if problem is None:
            result.delivered.append("command")
        else:
            result.problems.append(problem)
    if config.webhook_url is not None:
        problem = _post_webhook(config.webhook_url, body, float(config.timeout))
        if problem is None:
            result.delivered.append("webhook")
        else:
            result.problems.append(problem)
    return result


def notice_payload(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary plus `event` and a one-line `text`, which chat webhooks (Slack,
    Mattermost, Rocket.Chat) show as the message."""
    payload = dict(summary)
    payload.setdefault("tool", "sellerbak")
    payload.setdefault("event", "failure")
    if "text" not in payload:
        what = payload.get("unit") or payload.get("command") or "run"
        text = f"sellerbak {what} failed on {payload.get('host', '?')}"
        if payload.get("exit_code") is not None:
            text += f" (exit {payload['exit_code']})"
        if payload.get("error"):
            text += f": {payload['error']}"
        payload["text"] = text
    return payload


# ----- command ------------------------------------------------------------------------------


def _run_command(argv: list[str], body: bytes, payload: dict[str, Any],
                 timeout: float) -> str | None:
    env = child_environment()  # the allowlist shared with `{command:}` secrets
    env.update({"SELLERBAK_EVENT": str(payload.get("event", "failure")),
                "SELLERBAK_COMMAND": str(payload.get("command") or ""),
                "SELLERBAK_HOST": str(payload.get("host") or ""),
                "SELLERBAK_EXIT_CODE": "" if payload.get("exit_code") is None
                else str(payload["exit_code"])})
    if payload.get("unit"):
        env["SELLERBAK_UNIT"] = str(payload["unit"])
    name = os.path.basename(argv[0]) if argv else "?"
    try:
        # its stdout must not mix with ours (--json); its stderr goes where ours goes (journal).
        # A session of its own lets a timeout kill everything it started.
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    except OSError as exc:
        return f"notify command {name} could not be started ({exc.strerror or exc})"
    try:
        proc.communicate(body, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"notify command {name} did not finish within {timeout:g} s"
    if proc.returncode != 0:
        return f"notify command {name} exited with status {proc.returncode}"
    return None


# ----- webhook ------------------------------------------------------------------------------


def _post_webhook(url_ref: str | SecretRef, body: bytes, timeout: float) -> str | None:
    """POST the JSON; one retry after a connection error, 429 or 5xx. Messages never contain
    the URL: it may carry a token."""
    import requests

    try:
        url = url_ref.resolve() if isinstance(url_ref, SecretRef) else str(url_ref)
    except SellerbakError as exc:
        return f"webhook: {exc}"
    if not url.startswith(("http://", "https://")):
        return "webhook: the URL must start with http:// or https://"
    headers = {"Content-Type": "application/json",
               "User-Agent": f"sellerbak/{__version__}"}
    problem = "webhook: not sent"
    with _quiet_urllib3():
        for attempt in range(2):
            if attempt:
                time.sleep(RETRY_PAUSE)
            try:
                response = requests.post(url, data=body, headers=headers, timeout=timeout,
                                         allow_redirects=False)
            except requests.Timeout:
                problem = f"webhook did not answer within {timeout:g} s"
                continue
            except requests.RequestException as exc:
                problem = f"webhook could not be reached ({type(exc).__name__})"
                continue
            status = response.status_code
            response.close()
            if 200 <= status < 300:
                return None
            problem = f"webhook answered HTTP {status}"
            if status != 429 and status < 500:
                break
    return problem


@contextlib.contextmanager
def _quiet_urllib3() -> Any:
    """urllib3 logs request lines, URL path and query included, at debug level (-v): keep
    them out of the log while the webhook's URL is in use."""
    logger = logging.getLogger("urllib3")
    level = logger.level
    logger.setLevel(max(level, logging.INFO))
    try:
        yield
    finally:
        logger.setLevel(level)


# ----- notice records (systemd OnFailure= deduplication) ------------------------------------


def notice_dir() -> Path | None:
    value = os.environ.get(NOTICE_DIR_ENV)
    return Path(value) if value else None


def record_notice(summary: dict[str, Any], result: Delivery,
                  invocation_id: str | None = None) -> Path | None:
    """Remember, for the OnFailure= unit, what this run sent. Only under systemd (both
    $INVOCATION_ID and $SELLERBAK_NOTICE_DIR set); never fails the caller."""
    directory = notice_dir()
    invocation_id = invocation_id or os.environ.get("INVOCATION_ID", "")
    if directory is None or not _INVOCATION_ID.fullmatch(invocation_id):
        return None
    record = {"invocation_id": invocation_id, "time": time.time(),
              "summary": notice_payload(summary), "delivered": result.delivered,
              "problems": result.problems}
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _prune_notices(directory)
        fd, tmp = tempfile.mkstemp(prefix=".notice.", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, sort_keys=True, default=str)
        path = directory / f"{invocation_id}.json"
        os.replace(tmp, path)
        return path
    except OSError as exc:
        log.debug("cannot record the failure notice in %s: %s", directory, exc.strerror)
        return None


def load_notice(invocation_id: str | None) -> dict[str, Any] | None:
    """The record a failed run left for its invocation, if any."""
    directory = notice_dir()
    if directory is None or not invocation_id or not _INVOCATION_ID.fullmatch(invocation_id):
        return None
    try:
        record = json.loads((directory / f"{invocation_id}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _prune_notices(directory: Path) -> None:
    cutoff = time.time() - NOTICE_KEEP_SECONDS
    for old in directory.glob("*.json"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()
