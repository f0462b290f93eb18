"""No secret and no customer data in anything sellerbak prints, logs, measures, sends or names.

One repository on the test SeaweedFS server with three sources (the demo shop, export files with
known customer data, a TikTok shop on the local TikTok-wire server), metrics and both kinds of
failure notice configured. Every command runs with `-v` (debug log on stderr, boto3's included),
and again with `--json`, successes and failures alike (wrong passphrase, secrets written into the
config, a dead S3 server, a dead TikTok auth host, a wrong app secret). Then the passphrases, the
app secret, every access and refresh token the shop server ever issued, the authorization codes,
the S3 secret key and the webhook's token, and the customers' e-mails, names, phone numbers and
addresses as restored from the backups, are looked for (as they are, URL-encoded and
JSON-escaped) in: stdout, stderr, the metrics file after each run, the notify command's stdin and
SELLERBAK_* environment, the webhook bodies and headers, the systemd units and drill reports
written, every object name and every stored byte.

Object names must also be ids only (docs/FORMAT.md section 3), never derived from content.

To cover a new command, add a row to COMMANDS.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import yaml

from tests.conftest import S3_TEST_BUCKET
from tests.helpers import FAST_KDF, cli_env
from tests.seaweed import SeaweedServer
from tests.tiktok_server import APP_KEY, APP_SECRET, FakeTikTokShop
from tests.webhook import WebhookServer, webhook_server

# ----- the secrets (random per run, so a hit is never a coincidence) ------------------------

_TAG = secrets.token_hex(4)
PASSPHRASE = f"Main-Passphrase-{_TAG}-\u00e9t\u00e9"
SECOND = f"Second-Passphrase-{_TAG}"
THIRD = f"Third-Passphrase-{_TAG}"
CHANGED = f"Changed-Passphrase-{_TAG}"
WRONG = f"Wrong-Passphrase-{_TAG}"
LITERAL_PASSPHRASE = f"Literal-Passphrase-In-Yaml-{_TAG}"
LITERAL_APP_SECRET = f"literal-app-secret-{_TAG}"
WRONG_APP_SECRET = f"wrong-app-secret-{_TAG}"
WEBHOOK_TOKEN = f"T0ken{_TAG}WebhookPath"

#: customers of the `files` source, known before anything runs
FILES_CUSTOMERS = [
    {"id": f"c{i:03d}", "email": f"quentin.vexmoor{i}@files-shop.example",
     "name": f"Quentin Vexmoor{i}", "phone": f"+1 (555) 013-{i:04d}",
     "address": f"{100 + i} Larkspur Hollow Rd, Apt {i}, Fairbanks, AK 99701"}
    for i in range(40)
]

# ----- object names (docs/FORMAT.md section 3) ------------------------------------------------

_HEX64 = "[0-9a-f]{64}"
OBJECT_NAME = re.compile(
    rf"^(config|keys/[0-9a-f]{{32}}|data/(?P<xx>[0-9a-f]{{2}})/(?P<pack>{_HEX64})"
    rf"|(index|snapshots|locks)/{_HEX64})$")


def is_object_name(name: str) -> bool:
    m = OBJECT_NAME.match(name)
    return bool(m) and (m.group("pack") is None or m.group("pack")[:2] == m.group("xx"))


# ----- the command table ----------------------------------------------------------------------


@dataclass
class Step:
    """One command line, run once per mode: `-v` (human output) and `-v --json`."""

    label: str
    args: list[str] | Callable[[Run], list[str]]
    expect: int = 0
    env: dict[str, str] = field(default_factory=dict)
    modes: tuple[str, ...] = ("human", "json")
    #: which config file: main, dead_s3, dead_tiktok, literal_passphrase, literal_app_secret
    config: str = "main"


COMMANDS: list[Step] = [
    Step("help", ["--help"]),
    Step("init", ["init"], modes=("human",)),
    Step("init again (exists)", ["init"], expect=1, modes=("json",)),
    Step("auth", lambda run: ["auth", "tt", "--code", run.auth_code()]),
    Step("snapshot", ["snapshot"]),
    Step("demo advance", ["demo", "advance"]),
    Step("snapshot after a night", ["snapshot", "--tag", "nightly"]),
    Step("snapshots", ["snapshots"]),
    Step("restore demo", lambda run: ["restore", "latest", "--source", "demo", "--target",
                                      run.restore_target("demo")]),
    Step("restore files", lambda run: ["restore", "latest", "--source", "files", "--target",
                                       run.restore_target("files")]),
    Step("restore tiktok", lambda run: ["restore", "latest", "--source", "tt", "--target",
                                        run.restore_target("tt")]),
    Step("restore csv", lambda run: ["restore", "latest", "--source", "files", "--format",
                                     "csv", "--target", run.scratch("csv")]),
    Step("check", ["check", "--read-data"]),
    Step("diff", lambda run: ["diff", *run.first_and_last("demo")]),
    Step("diff tiktok", lambda run: ["diff", *run.first_and_last("tt")]),
    Step("forget", ["forget", "--keep-last", "1", "--dry-run"]),
    Step("prune", ["prune"]),
    Step("drill", lambda run: ["drill", "--report", run.scratch("drill") + ".md"]),
    Step("key list", ["key", "list"]),
    Step("key add", ["key", "add"], env={"SELLERBAK_NEW_PASSPHRASE": SECOND},
         modes=("human",)),
    Step("key add", ["key", "add"], env={"SELLERBAK_NEW_PASSPHRASE": THIRD}, modes=("json",)),
    Step("key passwd", ["key", "passwd"], modes=("human",),
         env={"SELLERBAK_PASSPHRASE": SECOND, "SELLERBAK_NEW_PASSPHRASE": CHANGED}),
    Step("key remove", lambda run: ["key", "remove", run.other_key()]),
    Step("unlock", ["unlock"]),
    Step("systemd", lambda run: ["systemd", "--output", run.scratch("units"),
                                 "--passphrase-file", "/etc/sellerbak/passphrase"]),
    # failures
    Step("wrong passphrase", ["snapshots"], expect=12, env={"SELLERBAK_PASSPHRASE": WRONG}),
    Step("passphrase in the config", ["snapshots"], expect=2, config="literal_passphrase"),
    Step("app secret in the config", ["snapshots"], expect=2, config="literal_app_secret"),
    Step("wrong app secret", ["snapshot", "--source", "tt"], expect=1,
         env={"TTS_APP_SECRET": WRONG_APP_SECRET}),
    Step("dead tiktok auth host", lambda run: ["auth", "tt", "--code", run.auth_code()],
         expect=1, config="dead_tiktok"),
    Step("dead S3 server", ["snapshots"], expect=1, config="dead_s3",
         env={"SELLERBAK_S3_RETRY_ATTEMPTS": "2"}),
]

# ----- running it -----------------------------------------------------------------------------

NOTIFIER = r'''
import json, os, sys
payload = sys.stdin.read()
env = {k: v for k, v in os.environ.items()
       if k.startswith("SELLERBAK_") or k == "CREDENTIALS_DIRECTORY"}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"argv": sys.argv[2:], "stdin": payload, "env": env}) + "\n")
'''


@dataclass
class Output:
    where: str
    text: str


class Run:
    """The test's state: configs, the servers, and everything captured so far."""

    def __init__(self, tmp_path: Path, s3_url: str, s3: SeaweedServer, srv: FakeTikTokShop,
                 hook: WebhookServer) -> None:
        self.tmp, self.s3_url, self.s3, self.srv, self.hook = tmp_path, s3_url, s3, srv, hook
        self.outputs: list[Output] = []
        self.codes: list[str] = []
        self.restored: dict[str, list[Path]] = {}
        self.failures: list[str] = []
        self.files_written = 0
        self._n = 0
        self.metrics = tmp_path / "metrics" / "sellerbak.prom"  # a textfile collector's dir
        self.metrics.parent.mkdir()
        self.notices = tmp_path / "notices.jsonl"
        notifier = tmp_path / "notify.py"
        notifier.write_text(NOTIFIER)
        exports = tmp_path / "exports"
        exports.mkdir()
        with open(exports / "customers.jsonl", "w") as fh:
            for c in reversed(FILES_CUSTOMERS):
                fh.write(json.dumps(c) + "\n")
        with open(exports / "orders.csv", "w") as fh:
            fh.write("id,buyer,ship_to,phone,total\n")
            for i, c in enumerate(FILES_CUSTOMERS):
                fh.write(f'o{i:04d},{c["email"]},"{c["address"]}",{c["phone"]},{i}.99\n')
        tiktok = {"name": "tt", "type": "tiktok", "app_key": APP_KEY,
                  "app_secret": {"env": "TTS_APP_SECRET"}, "api_url": srv.url,
                  "auth_url": srv.url, "requests_per_second": 100}
        base = {
            "repository": {"url": s3_url, "endpoint_url": s3.endpoint_url,
                           "kdf": dict(FAST_KDF)},
            "state_dir": str(tmp_path / "state"),
            "sources": [{"name": "demo", "type": "demo", "seed": 7, "orders": 300},
                        {"name": "files", "type": "files", "path": str(exports)}, tiktok],
            "metrics": {"textfile": str(self.metrics)},
            "notify": {"command": [sys.executable, str(notifier), str(self.notices), "--flag"],
                       "webhook_url": {"env": "TEST_WEBHOOK_URL"}, "timeout": 5},
        }
        closed = _closed_port()
        dead = f"http://127.0.0.1:{closed}"
        self.configs = {
            "main": base,
            "dead_s3": _with(base, repository={**base["repository"], "endpoint_url": dead}),
            "dead_tiktok": _with(base, sources=[{**tiktok, "auth_url": dead, "api_url": dead}]),
            "literal_passphrase": _with(base, passphrase=LITERAL_PASSPHRASE),
            "literal_app_secret": _with(base, sources=[{**tiktok,
                                                        "app_secret": LITERAL_APP_SECRET}]),
        }
        self.paths = {}
        for name, cfg in self.configs.items():
            self.paths[name] = tmp_path / f"{name}.yaml"
            self.paths[name].write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.env = cli_env(SELLERBAK_PASSPHRASE=PASSPHRASE, TTS_APP_SECRET=APP_SECRET,
                           TEST_WEBHOOK_URL=hook.url(f"/hooks/{WEBHOOK_TOKEN}"))

    # -- values the table asks for
    def scratch(self, what: str) -> str:
        self._n += 1
        return str(self.tmp / "scratch" / f"{what}-{self._n}")

    def auth_code(self) -> str:
        self.codes.append(self.srv.issue_auth_code())
        return self.codes[-1]

    def restore_target(self, source: str) -> str:
        target = Path(self.scratch(f"restore-{source}"))
        self.restored.setdefault(source, []).append(target)
        return str(target)

    def first_and_last(self, source: str) -> list[str]:
        listing = json.loads(self.helper("--json", "snapshots", "--source", source))
        assert len(listing) >= 2, listing
        return [listing[0]["id"], listing[-1]["id"]]

    def other_key(self) -> str:
        keys = json.loads(self.helper("--json", "key", "list"))
        others = [k["key_id"] for k in keys if not k["current"]]
        assert others, keys
        return others[0]

    def helper(self, *args: str) -> str:
        """A command the table needs an answer from; its output is scanned too."""
        proc = subprocess.run([sys.executable, "-m", "sellerbak", "-c", str(self.paths["main"]),
                               *args], capture_output=True, text=True, env=self.env,
                              timeout=300, stdin=subprocess.DEVNULL)
        self.capture(f"helper {' '.join(args)}", proc)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    # -- running and capturing
    def step(self, step: Step) -> None:
        for mode in step.modes:
            args = step.args(self) if callable(step.args) else list(step.args)
            argv = ["-v", *(["--json"] if mode == "json" else []),
                    "-c", str(self.paths[step.config]), *args]
            proc = subprocess.run([sys.executable, "-m", "sellerbak", *argv],
                                  capture_output=True, text=True, env={**self.env, **step.env},
                                  timeout=600, stdin=subprocess.DEVNULL)
            label = f"{step.label} ({mode}): sellerbak {' '.join(argv)}"
            self.capture(label, proc)
            if proc.returncode != step.expect:
                self.failures.append(f"{label}: exit {proc.returncode}, expected {step.expect}:"
                                     f" {proc.stderr.strip().splitlines()[-1:]}")
            elif step.expect != 0:  # (-v adds debug lines around it)
                errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
                if len(errors) != 1:
                    self.failures.append(f"{label}: {len(errors)} 'error: ...' lines")
            if self.metrics.exists():
                self.outputs.append(Output(f"metrics after {label}", self.metrics.read_text()))

    def capture(self, label: str, proc: subprocess.CompletedProcess[str]) -> None:
        self.outputs.append(Output(f"stdout of {label}", proc.stdout))
        self.outputs.append(Output(f"stderr of {label}", proc.stderr))

    def collect_files(self) -> None:
        """Notices, webhook bodies, units, reports: everything written that is not a backup."""
        if self.notices.exists():
            self.outputs.append(Output("notify command input", self.notices.read_text()))
        for i, r in enumerate(self.hook.received):
            headers = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
            self.outputs.append(Output(f"webhook POST {i}", headers + "\n"
                                       + r.body.decode("utf-8", "replace")))
        # written units and reports (restored datasets hold customer data by design)
        for pattern in ("units-*/**/*", "drill-*"):
            for path in sorted((self.tmp / "scratch").glob(pattern)):
                if path.is_file():
                    self.outputs.append(Output(f"file {path.name}",
                                               path.read_text(errors="replace")))
                    self.files_written += 1


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    out.update(json.loads(json.dumps(changes)))
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----- what must not appear -------------------------------------------------------------------

PII_FIELDS = ("buyer_email", "email", "name", "phone_number", "phone", "full_address",
              "address", "buyer_nickname")


def _pii_of(record: Any) -> Iterator[str]:
    """Contact values of a record (top level and inside recipient_address)."""
    if not isinstance(record, dict):
        return
    for key in PII_FIELDS:
        value = record.get(key)
        if isinstance(value, str) and len(value) >= 6:
            yield value
    yield from _pii_of(record.get("recipient_address"))


def restored_pii(dirs: list[Path]) -> set[str]:
    values: set[str] = set()
    for d in dirs:
        for name in ("customers.jsonl", "orders.jsonl"):
            path = d / name
            if path.is_file():
                for line in path.read_text().splitlines():
                    values.update(_pii_of(json.loads(line)))
    return values


def encodings(value: str) -> set[str]:
    """How a value shows up when it leaks through a URL, a JSON document or a log line."""
    return {value, quote(value, safe=""), quote_plus(value), quote(value),
            json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}


def _leaks(needles: dict[str, str], outputs: list[Output]) -> list[str]:
    text = "\n\0\n".join(o.text for o in outputs)
    found = []
    for needle, what in needles.items():
        if needle in text:
            where = [o.where for o in outputs if needle in o.text]
            found.append(f"{what} ({needle!r}) in {where[:3]}")
    return found


def _needles(values: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value, what in values.items():
        for form in encodings(value):
            out.setdefault(form, what)
    return out


# ----- the test -------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_secret_or_customer_data_anywhere(tmp_path: Path, s3_url: str,
                                             s3_env: SeaweedServer) -> None:
    with FakeTikTokShop(orders=150, real_time=True) as srv, webhook_server() as hook:
        run = Run(tmp_path, s3_url, s3_env, srv, hook)
        for step in COMMANDS:
            run.step(step)
        issued = {t: "a TikTok access token" for t in srv.access} | \
                 {t: "a TikTok refresh token" for t in srv.refresh}
    run.collect_files()

    # the object names, and every stored byte
    client = s3_env.client()
    prefix = s3_url.split("/", 3)[3] + "/"
    names, stored = [], []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=S3_TEST_BUCKET,
                                                                 Prefix=prefix):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix):]
            names.append(name)
            stored.append(client.get_object(Bucket=S3_TEST_BUCKET, Key=obj["Key"])["Body"]
                          .read())
    run.outputs.append(Output("object names", "\n".join(names)))

    assert not run.failures, "\n".join(run.failures)
    # the scan means something only if there was something to leak
    assert run.notices.exists() and hook.received, "no failure notice was captured"
    assert run.metrics.exists(), "no metrics file was written"
    assert run.files_written >= 4, "no systemd units or drill reports were captured"
    assert any(n.startswith("snapshots/") for n in names)
    assert any(n.startswith("data/") for n in names) and "config" in names

    hidden = {PASSPHRASE: "the passphrase", SECOND: "a second passphrase",
               THIRD: "a third passphrase", CHANGED: "a changed passphrase",
               WRONG: "a wrong passphrase", LITERAL_PASSPHRASE: "a passphrase in the config",
               LITERAL_APP_SECRET: "an app secret in the config",
               WRONG_APP_SECRET: "a wrong app secret", APP_SECRET: "the app secret",
               s3_env.secret_key: "the S3 secret key", WEBHOOK_TOKEN: "the webhook token"}
    hidden |= {code: "an authorization code" for code in run.codes}
    hidden |= issued
    assert len(issued) >= 4, "the shop server issued fewer tokens than the runs needed"

    pii: dict[str, str] = {}
    for source, dirs in run.restored.items():
        found = restored_pii(dirs)
        assert len(found) >= 40, f"too little customer data restored from {source}"
        pii |= {v: f"customer data of {source}" for v in found}
    for c in FILES_CUSTOMERS:  # what went in, not only what came out
        pii |= {c[k]: "customer data of files" for k in ("email", "name", "phone", "address")}
    # every e-mail the demo and TikTok shops have, whether or not it was restored
    mail = re.compile(r"[a-z0-9]{12}@scs\.tiktokw\.us|@files-shop\.example")

    leaks = _leaks(_needles(hidden), run.outputs) + _leaks(_needles(pii), run.outputs)
    leaks += [f"an e-mail address in {o.where}" for o in run.outputs
              if mail.search(o.text) or mail.search(o.text.replace("%40", "@"))]
    assert not leaks, "\n".join(leaks[:30])

    # names are ids only: the forms of FORMAT.md section 3, never derived from content
    assert [n for n in names if not is_object_name(n)] == []
    content_hashes = {hashlib.sha256(v.encode()).hexdigest() for v in pii}
    for dirs in run.restored.values():
        for d in dirs:
            for f in d.rglob("*.jsonl"):
                content_hashes.add(hashlib.sha256(f.read_bytes()).hexdigest())
                content_hashes.update(hashlib.sha256(line).hexdigest()
                                      for line in f.read_bytes().splitlines(keepends=True))
    assert not [n for n in names if n.rsplit("/", 1)[-1] in content_hashes]

    # stored bytes are ciphertext: no secret, no customer value, in any object
    raw = {form.encode(): what for form, what in _needles(hidden | pii).items()}
    blob = b"\n".join(stored)
    in_store = [what for needle, what in raw.items() if needle in blob]
    assert not in_store, f"found in stored objects: {sorted(set(in_store))}"
