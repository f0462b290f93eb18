"""`sellerbak systemd` and `sellerbak notify-failure`: the units pass systemd's own checks
(`systemd-analyze verify` and `security`), carry the hardening they promise, and the command
lines they run work: executed for real, as systemd would start them (specifiers resolved,
the passphrase only in $CREDENTIALS_DIRECTORY, the file system read-only except the paths the
unit declares writable, W^X memory enforced by the kernel)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sellerbak.config import load_config
from sellerbak.ops.systemd import plan_units, render_units
from tests.helpers import FAST_KDF, PASSPHRASE, cli_env, run_cli
from tests.webhook import WebhookServer, webhook_server

SANDBOX = Path(__file__).with_name("sandbox_run.py")
SERVICES = ("sellerbak-snapshot.service", "sellerbak-drill.service",
            "sellerbak-notify@.service")
TIMERS = ("sellerbak-snapshot.timer", "sellerbak-drill.timer")


def _required_tool(name: str) -> str:
    """Fail in CI (scripts/test.sh installs systemd), skip on a developer machine without it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is missing (scripts/test.sh installs Debian's systemd package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def analyze() -> str:
    return _required_tool("systemd-analyze")


# ----- reading units as systemd does --------------------------------------------------------

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    unit: Unit = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        assert section is not None, line
        unit[section].append((key, value))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    (v,) = values(unit, section, key)
    return v


def resolve(text: str, specifiers: dict[str, str]) -> str:
    """systemd's specifier expansion: %% is %, %X is the value of X (unknown ones fail)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "%":
            out.append(specifiers[text[i + 1]] if text[i + 1] != "%" else "%")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def command_line(unit: Unit, specifiers: dict[str, str]) -> list[str]:
    """ExecStart= as argv: specifiers first, then quotes and $$ (systemd.service(5))."""
    words = shlex.split(resolve(one(unit, "Service", "ExecStart"), specifiers))
    return [w.replace("$$", "$") for w in words]


def environment(unit: Unit, specifiers: dict[str, str]) -> dict[str, str]:
    env = {}
    for raw in values(unit, "Service", "Environment"):
        for assignment in shlex.split(resolve(raw, specifiers)):
            key, _, val = assignment.partition("=")
            env[key] = val
    return env


# ----- a shop set up for unattended runs ----------------------------------------------------


@dataclass
class Shop:
    base: Path
    config: Path
    passphrase_file: Path
    units_dir: Path
    hook: WebhookServer
    explicit_state: bool
    units: dict[str, Unit] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    @property
    def var_lib(self) -> Path:  # what %S stands for in these runs
        return self.base.parent / "var-lib"

    @property
    def var_cache(self) -> Path:
        return self.base.parent / "var-cache"

    @property
    def state(self) -> Path:
        return self.base / "state" if self.explicit_state else self.var_lib / "sellerbak"

    def load_units(self) -> None:
        for name in (*SERVICES, *TIMERS):
            self.texts[name] = (self.units_dir / name).read_text()
            self.units[name] = parse_unit(self.texts[name])

    def specifiers(self, unit_name: str, instance: str = "") -> dict[str, str]:
        return {"n": unit_name, "i": instance, "S": str(self.var_lib),
                "C": str(self.var_cache)}

    def service_env(self, unit_name: str, credentials: Path, **extra: str) -> dict[str, str]:
        """The environment systemd gives the service: little of ours, nothing secret."""
        unit = self.units[unit_name]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "HOME": str(self.base.parent / "no-home"),
               "INVOCATION_ID": secrets.token_hex(16),
               "CREDENTIALS_DIRECTORY": str(credentials)}
        for key in ("VIRTUAL_ENV", "AWS_EC2_METADATA_DISABLED"):
            if key in os.environ:
                env[key] = os.environ[key]
        for var, key, root in (("STATE_DIRECTORY", "StateDirectory", self.var_lib),
                               ("CACHE_DIRECTORY", "CacheDirectory", self.var_cache)):
            names = values(unit, "Service", key)
            if names:
                (root / names[0]).mkdir(parents=True, exist_ok=True, mode=0o700)
                env[var] = str(root / names[0])
        env.update(environment(unit, self.specifiers(unit_name)))
        env.update(extra)
        return env

    def writable(self, unit_name: str, env: dict[str, str]) -> list[Path]:
        unit = self.units[unit_name]
        paths = [Path(p) for raw in values(unit, "Service", "ReadWritePaths")
                 for p in shlex.split(resolve(raw, self.specifiers(unit_name)))]
        paths += [Path(env[v]) for v in ("STATE_DIRECTORY", "CACHE_DIRECTORY") if v in env]
        return paths

    def run_service(self, unit_name: str, credentials: Path,
                    **extra: str) -> subprocess.CompletedProcess[str]:
        """The service's ExecStart= line in a private mount namespace: read-only everywhere
        but the unit's writable paths (tests/sandbox_run.py)."""
        _required_tool("unshare")
        env = self.service_env(unit_name, credentials, **extra)
        private_tmp = self.base.parent / f"private-tmp-{secrets.token_hex(4)}"
        private_tmp.mkdir()
        env["TMPDIR"] = str(private_tmp)
        rw = [private_tmp, *self.writable(unit_name, env)]
        argv = command_line(self.units[unit_name], self.specifiers(unit_name))
        sandbox = ["unshare", "--mount", "--propagation", "private", sys.executable,
                   str(SANDBOX)]
        for path in rw:
            sandbox += ["--rw", str(path)]
        return subprocess.run([*sandbox, "--", *argv], env=env, capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL, cwd="/")


def make_shop(tmp_path: Path, hook: WebhookServer, *, explicit_state: bool, dirname: str,
              user: bool = False) -> Shop:
    base = tmp_path / dirname
    (base / "metrics").mkdir(parents=True)
    cfg: dict[str, Any] = {
        "repository": {"url": "./repo", "kdf": dict(FAST_KDF)},
        "sources": [{"name": "demo", "type": "demo", "seed": 5, "orders": 120}],
        "metrics": {"textfile": "./metrics/sellerbak.prom"},
        "notify": {"webhook_url": hook.url("/hook/T0KEN"), "timeout": 10},
    }
    if explicit_state:
        cfg["state_dir"] = "./state"
        (base / "state").mkdir()
    config = base / "sellerbak.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    passphrase_file = tmp_path / "etc-sellerbak" / "passphrase"
    passphrase_file.parent.mkdir()
    passphrase_file.write_text(PASSPHRASE + "\n")
    passphrase_file.chmod(0o600)
    init = run_cli("-c", str(config), "init")
    assert init.returncode == 0, init.stderr
    units_dir = tmp_path / "units"
    gen = run_cli("-c", str(config), "systemd", "--output", str(units_dir),
                  "--passphrase-file", str(passphrase_file), *(["--user"] if user else []))
    assert gen.returncode == 0, gen.stderr
    assert sorted(gen.stdout.split()) == sorted(str(units_dir / n) for n in (*SERVICES, *TIMERS))
    assert "systemctl" in gen.stderr and "daemon-reload" in gen.stderr
    shop = Shop(base, config, passphrase_file, units_dir, hook, explicit_state)
    shop.load_units()
    return shop


def credentials_dir(tmp_path: Path, passphrase: str = PASSPHRASE) -> Path:
    """What LoadCredential=passphrase:FILE gives the service: a directory with the copy."""
    directory = tmp_path / f"credentials-{secrets.token_hex(4)}"
    directory.mkdir(mode=0o700)
    (directory / "passphrase").write_text(passphrase + "\n")
    (directory / "passphrase").chmod(0o400)
    return directory


@pytest.fixture
def hook() -> Any:
    with webhook_server() as server:
        yield server


# ----- systemd's own checks -----------------------------------------------------------------


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, hook: WebhookServer, analyze: str,
                                          user: bool) -> None:
    # a directory name with a space and a % exercises quoting and specifier escaping
    shop = make_shop(tmp_path, hook, explicit_state=True, dirname="shop 100% data", user=user)
    files = [str(shop.units_dir / n) for n in (*SERVICES, *TIMERS)]
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    argv = [analyze, *(["--user"] if user else []), "verify", "--man=no", *files]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""  # not even a warning (unknown key, ...)
    argv = command_line(shop.units["sellerbak-snapshot.service"],
                        shop.specifiers("sellerbak-snapshot.service"))
    assert argv[:4] == [sys.executable, "-m", "sellerbak", "-c"]
    assert argv[4:] == [str(shop.config), "-q", "snapshot"]
    for name in TIMERS:
        calendar = one(shop.units[name], "Timer", "OnCalendar")
        check = subprocess.run([analyze, "calendar", calendar], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_system_units_are_hardened(tmp_path: Path, hook: WebhookServer, analyze: str) -> None:
    shop = make_shop(tmp_path, hook, explicit_state=True, dirname="shop")
    snap = shop.units["sellerbak-snapshot.service"]
    for name in ("sellerbak-snapshot.service", "sellerbak-drill.service"):
        unit = shop.units[name]
        service = dict(unit["Service"])
        expect = {"Type": "oneshot", "ProtectSystem": "strict", "ProtectHome": "read-only",
                  "PrivateTmp": "yes", "NoNewPrivileges": "yes", "PrivateDevices": "yes",
                  "MemoryDenyWriteExecute": "yes", "RestrictSUIDSGID": "yes",
                  "LockPersonality": "yes", "CapabilityBoundingSet": "", "UMask": "0077",
                  "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
                  "Nice": "10", "IOSchedulingClass": "best-effort",
                  "IOSchedulingPriority": "7", "CPUSchedulingPolicy": "batch"}
        assert {k: service.get(k) for k in expect} == expect, name
        assert one(unit, "Unit", "OnFailure") == "sellerbak-notify@%n.service"
        assert one(unit, "Service", "LoadCredential") == f"passphrase:{shop.passphrase_file}"
        # writable: the state directory, the file:// repository, the metrics directory only
        assert [Path(p) for p in values(unit, "Service", "ReadWritePaths")] == \
            [shop.base / "state", shop.base / "repo", shop.base / "metrics"]
        assert values(unit, "Service", "StateDirectory") == []
        assert values(unit, "Service", "CacheDirectory") == ["sellerbak"]
        security = subprocess.run([analyze, "security", "--offline=true", "--threshold=25",
                                   str(shop.units_dir / name)], capture_output=True, text=True)
        assert security.returncode == 0, security.stdout[-2000:]
        assert "OK" in security.stdout.splitlines()[-1]
    notify = shop.units["sellerbak-notify@.service"]
    assert values(notify, "Unit", "OnFailure") == []  # a failing notifier must not loop
    assert command_line(notify, shop.specifiers("x", "sellerbak-snapshot.service"))[-3:] == \
        ["notify-failure", "--unit", "sellerbak-snapshot.service"]
    security = subprocess.run([analyze, "security", "--offline=true", "--threshold=45",
                               str(shop.units_dir / "sellerbak-notify@.service")],
                              capture_output=True, text=True)
    assert security.returncode == 0, security.stdout[-2000:]
    nightly = dict(shop.units["sellerbak-snapshot.timer"]["Timer"])
    assert nightly == {"OnCalendar": "*-*-* 02:30:00", "Persistent": "true",
                       "RandomizedDelaySec": "30min"}
    weekly = dict(shop.units["sellerbak-drill.timer"]["Timer"])
    assert weekly["OnCalendar"].startswith("Sun ") and weekly["Persistent"] == "true"
    assert one(shop.units["sellerbak-drill.timer"], "Install", "WantedBy") == "timers.target"
    drill = command_line(shop.units["sellerbak-drill.service"],
                         shop.specifiers("sellerbak-drill.service"))
    assert drill[-4:] == ["-q", "drill", "--report", str(shop.base / "state/drill-report.md")]
    # no secret in any unit: not the passphrase, not the webhook's token
    for text in shop.texts.values():
        assert PASSPHRASE not in text and "T0KEN" not in text
        assert "SELLERBAK_PASSPHRASE=" not in text
    assert values(snap, "Service", "User") == []


def test_default_state_uses_systemd_managed_directories(tmp_path: Path,
                                                        hook: WebhookServer) -> None:
    shop = make_shop(tmp_path, hook, explicit_state=False, dirname="shop")
    for name in ("sellerbak-snapshot.service", "sellerbak-drill.service"):
        unit = shop.units[name]
        assert values(unit, "Service", "StateDirectory") == ["sellerbak"]
        assert one(unit, "Service", "StateDirectoryMode") == "0700"
        assert [Path(p) for p in values(unit, "Service", "ReadWritePaths")] == \
            [shop.base / "repo", shop.base / "metrics"]
        assert environment(unit, {"S": "/var/lib"}) == \
            {"SELLERBAK_NOTICE_DIR": "/var/lib/sellerbak/notices"}
    drill = command_line(shop.units["sellerbak-drill.service"], {"S": "/var/lib"})
    assert drill[-2:] == ["--report", "/var/lib/sellerbak/drill-report.md"]


def test_user_units_keep_what_works_without_the_system_manager(tmp_path: Path,
                                                               hook: WebhookServer) -> None:
    shop = make_shop(tmp_path, hook, explicit_state=True, dirname="shop", user=True)
    unit = shop.units["sellerbak-snapshot.service"]
    service = dict(unit["Service"])
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths", "User",
                "StateDirectory", "CapabilityBoundingSet"):
        assert key not in service, key
    for key in ("NoNewPrivileges", "MemoryDenyWriteExecute", "RestrictNamespaces",
                "LockPersonality"):
        assert service[key] == "yes"
    assert values(unit, "Unit", "After") == []  # network-online.target is a system unit
    assert one(unit, "Service", "LoadCredential") == f"passphrase:{shop.passphrase_file}"
    assert command_line(shop.units["sellerbak-notify@.service"],
                        shop.specifiers("x", "sellerbak-snapshot.service"))[-4:] == \
        ["notify-failure", "--unit", "sellerbak-snapshot.service", "--user"]
    # a user manager older than 252 cannot pass credentials: the file's path instead
    config = load_config(str(shop.config))
    old = parse_unit(render_units(plan_units(
        config, user_mode=True, passphrase_file=shop.passphrase_file,
        version=250))["sellerbak-snapshot.service"])
    assert values(old, "Service", "LoadCredential") == []
    assert environment(old, {})["SELLERBAK_PASSPHRASE_FILE"] == str(shop.passphrase_file)


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_no_service_may_write_a_core_file(tmp_path: Path, hook: WebhookServer,
                                          user: bool) -> None:
    # a core file would hold the passphrase, the keys, tokens and records; the process also
    # disables them itself (tests/test_hardening.py), this covers a crash before that
    shop = make_shop(tmp_path, hook, explicit_state=True, dirname="shop", user=user)
    for name in SERVICES:
        assert values(shop.units[name], "Service", "LimitCORE") == ["0"], name


# ----- the command lines, run -----------------------------------------------------------------


@pytest.mark.parametrize("explicit_state", [True, False], ids=["state_dir", "StateDirectory"])
def test_snapshot_and_drill_command_lines_run_in_the_sandbox(
        tmp_path: Path, hook: WebhookServer, analyze: str, explicit_state: bool) -> None:
    shop = make_shop(tmp_path, hook, explicit_state=explicit_state, dirname="shop 100% data")
    creds = credentials_dir(tmp_path)
    snap = shop.run_service("sellerbak-snapshot.service", creds)
    assert snap.returncode == 0, snap.stderr
    listing = run_cli("-c", str(shop.config), "--json", "snapshots")
    (stored,) = json.loads(listing.stdout)
    assert f"demo {stored['id'][:8]}" in snap.stderr  # -q: one summary line for the journal
    assert stored["source"] == "demo" and stored["records"] > 0
    drill = shop.run_service("sellerbak-drill.service", creds)
    assert drill.returncode == 0, drill.stderr
    report = (shop.state / "drill-report.md").read_text()
    assert stored["id"][:8] in report
    prom = (shop.base / "metrics" / "sellerbak.prom").read_text()
    for command in ("snapshot", "drill"):
        assert f'sellerbak_last_run_success{{command="{command}"}} 1' in prom
    assert hook.received == []  # nothing failed, nobody was told anything


def test_the_sandbox_really_confines(tmp_path: Path, hook: WebhookServer) -> None:
    """The emulation must be able to fail: without the repository writable the same command
    line cannot store a snapshot."""
    shop = make_shop(tmp_path, hook, explicit_state=True, dirname="shop")
    unit = shop.units["sellerbak-snapshot.service"]
    unit["Service"] = [(k, v) for k, v in unit["Service"]
                       if not (k == "ReadWritePaths" and v.endswith("/repo"))]
    snap = shop.run_service("sellerbak-snapshot.service", credentials_dir(tmp_path))
    assert snap.returncode not in (0, 120), snap.stderr
    assert snap.stderr.count("error:") == 1
    listing = run_cli("-c", str(shop.config), "--json", "snapshots")
    assert json.loads(listing.stdout) == []


def test_user_unit_command_line_runs(tmp_path: Path, hook: WebhookServer) -> None:
    shop = make_shop(tmp_path, hook, explicit_state=True, dirname="shop", user=True)
    name = "sellerbak-snapshot.service"
    env = shop.service_env(name, credentials_dir(tmp_path))
    done = subprocess.run(command_line(shop.units[name], shop.specifiers(name)), env=env,
                          capture_output=True, text=True, timeout=300, cwd="/",
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr


# ----- failure notices through the notifier unit --------------------------------------------


def _notify_unit(shop: Shop, failed: str, **monitor: str) -> subprocess.CompletedProcess[str]:
    """sellerbak-notify@<failed>.service as OnFailure= starts it, with the $MONITOR_*
    variables systemd passes to such handlers."""
    name = "sellerbak-notify@.service"
    unit = shop.units[name]
    specifiers = {**shop.specifiers(f"sellerbak-notify@{failed}.service", failed)}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "HOME": str(shop.base.parent / "no-home"), "MONITOR_UNIT": failed,
           **environment(unit, specifiers), **monitor}
    return subprocess.run(command_line(unit, specifiers), env=env, capture_output=True,
                          text=True, timeout=120, cwd="/", stdin=subprocess.DEVNULL)


def test_notifier_reports_a_unit_that_never_started(tmp_path: Path,
                                                    hook: WebhookServer) -> None:
    shop = make_shop(tmp_path, hook, explicit_state=True, dirname="shop")
    done = _notify_unit(shop, "sellerbak-snapshot.service", MONITOR_SERVICE_RESULT="exit-code",
                        MONITOR_EXIT_CODE="exited", MONITOR_EXIT_STATUS="243",
                        MONITOR_INVOCATION_ID=secrets.token_hex(16))
    assert done.returncode == 0, done.stderr
    (req,) = hook.received
    assert req.path == "/hook/T0KEN"
    notice = req.json()
    assert notice["unit"] == "sellerbak-snapshot.service"
    assert notice["command"] == "snapshot" and notice["exit_code"] == 243
    assert notice["service_result"] == "exit-code" and notice["success"] is False
    assert "243/CREDENTIALS" in notice["error"] and "passphrase" in notice["error"]
    assert "T0KEN" not in done.stderr


def test_notifier_sends_nothing_twice(tmp_path: Path, hook: WebhookServer) -> None:
    shop = make_shop(tmp_path, hook, explicit_state=True, dirname="shop")
    invocation = secrets.token_hex(16)
    wrong = credentials_dir(tmp_path, "not the passphrase")
    run = shop.run_service("sellerbak-snapshot.service", wrong, INVOCATION_ID=invocation)
    assert run.returncode == 12, run.stderr
    (req,) = hook.received  # the run told the webhook itself ...
    assert req.json()["exit_code"] == 12
    done = _notify_unit(shop, "sellerbak-snapshot.service", MONITOR_SERVICE_RESULT="exit-code",
                        MONITOR_EXIT_CODE="exited", MONITOR_EXIT_STATUS="12",
                        MONITOR_INVOCATION_ID=invocation)
    assert done.returncode == 0, done.stderr
    assert len(hook.received) == 1  # ... so the OnFailure= handler stays quiet
    assert "already sent" in done.stderr


def test_notifier_delivers_what_the_run_could_not(tmp_path: Path, hook: WebhookServer) -> None:
    shop = make_shop(tmp_path, hook, explicit_state=True, dirname="shop")
    invocation = secrets.token_hex(16)
    hook.statuses = [502, 502]  # the webhook is down while the run fails
    run = shop.run_service("sellerbak-snapshot.service",
                           credentials_dir(tmp_path, "not the passphrase"),
                           INVOCATION_ID=invocation)
    assert run.returncode == 12
    assert "warning: failure notice not delivered: webhook answered HTTP 502" in run.stderr
    error = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(hook.received) == 2
    done = _notify_unit(shop, "sellerbak-snapshot.service", MONITOR_SERVICE_RESULT="exit-code",
                        MONITOR_EXIT_CODE="exited", MONITOR_EXIT_STATUS="12",
                        MONITOR_INVOCATION_ID=invocation)
    assert done.returncode == 0, done.stderr
    notice = hook.received[-1].json()
    assert len(hook.received) == 3
    # the run's own summary, with its error line, plus what systemd knows
    assert [f"error: {notice['error']}"] == error
    assert notice["unit"] == "sellerbak-snapshot.service" and notice["exit_code"] == 12
    assert "not the passphrase" not in hook.received[-1].body.decode()


def test_notifier_fails_when_nothing_can_be_delivered(tmp_path: Path,
                                                      hook: WebhookServer) -> None:
    shop = make_shop(tmp_path, hook, explicit_state=True, dirname="shop")
    hook.default_status = 500
    done = _notify_unit(shop, "sellerbak-drill.service", MONITOR_SERVICE_RESULT="timeout",
                        MONITOR_EXIT_CODE="killed", MONITOR_EXIT_STATUS="TERM")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: no failure notice for sellerbak-drill.service could be "
                      "delivered"]
    assert hook.received[0].json()["error"] == \
        "sellerbak-drill.service did not finish in time and was stopped"
    cfg = yaml.safe_load(shop.config.read_text())
    del cfg["notify"]
    shop.config.write_text(yaml.safe_dump(cfg))
    done = _notify_unit(shop, "sellerbak-drill.service")
    assert done.returncode == 1 and "not configured" in done.stderr
    bad = run_cli("-c", str(shop.config), "notify-failure", "--unit", "../x y")
    assert bad.returncode == 2


# ----- the command itself -------------------------------------------------------------------


def test_systemd_command_options(tmp_path: Path, hook: WebhookServer) -> None:
    shop = make_shop(tmp_path, hook, explicit_state=True, dirname="shop")
    cfg = str(shop.config)
    printed = run_cli("-c", cfg, "systemd", "--output", "-",
                      "--passphrase-file", str(shop.passphrase_file))
    assert printed.returncode == 0
    assert "# ----- sellerbak-snapshot.timer" in printed.stdout
    assert shop.texts["sellerbak-drill.service"] in printed.stdout
    as_json = run_cli("-c", cfg, "--json", "systemd", "--output", str(tmp_path / "j"),
                      "--run-as", "shopbackup", "--on-calendar", "*-*-* 01:15:00",
                      "--passphrase-file", str(shop.passphrase_file))
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["credential"] is True and len(doc["units"]) == 5
    assert any("daemon-reload" in s for s in doc["next_steps"])
    unit = parse_unit((tmp_path / "j" / "sellerbak-snapshot.service").read_text())
    assert one(unit, "Service", "User") == "shopbackup"
    timer = parse_unit((tmp_path / "j" / "sellerbak-snapshot.timer").read_text())
    assert one(timer, "Timer", "OnCalendar") == "*-*-* 01:15:00"
    bad = run_cli("-c", cfg, "systemd", "--output", str(tmp_path / "k"),
                  "--on-calendar", "every night")
    assert bad.returncode == 2 and "--on-calendar" in bad.stderr
    assert run_cli("-c", cfg, "systemd", "--user", "--run-as", "x",
                   "--output", "-").returncode == 2
    # a unit file someone else wrote is not replaced without --force
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "sellerbak-drill.timer").write_text("[Timer]\nOnCalendar=daily\n")
    refused = run_cli("-c", cfg, "systemd", "--output", str(foreign))
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["sellerbak-drill.timer"]
    forced = run_cli("-c", cfg, "systemd", "--output", str(foreign), "--force")
    assert forced.returncode == 0
    assert "Persistent=true" in (foreign / "sellerbak-drill.timer").read_text()
    # ours are replaced freely (a new run after a config change)
    assert run_cli("-c", cfg, "systemd", "--output", str(foreign)).returncode == 0
    assert (foreign / "sellerbak-drill.timer").stat().st_mode & 0o777 == 0o644
    # the default place, for a user install
    home = tmp_path / "home"
    env = cli_env(XDG_CONFIG_HOME=str(home / ".config"), HOME=str(home))
    user = run_cli("-c", cfg, "systemd", "--user", env=env)
    assert user.returncode == 0, user.stderr
    assert (home / ".config/systemd/user/sellerbak-snapshot.timer").is_file()
    assert "systemctl --user enable --now sellerbak-snapshot.timer" in user.stderr
    assert "loginctl enable-linger" in user.stderr
