"""Prometheus textfile metrics and failure notices: real files, real processes, a real HTTP
server on loopback; the textfile is read back with prometheus_client's own parser."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sellerbak.config import NotifyConfig
from sellerbak.credentials import SecretRef
from sellerbak.ops.metrics import parse, write_run_metrics
from sellerbak.ops.notify import deliver, load_notice, notify_failure
from sellerbak.ops.outcome import DatasetCount, RunOutcome
from tests.helpers import PASSPHRASE, cli_env, run_cli, write_config
from tests.webhook import webhook_server

# ----- helpers ------------------------------------------------------------------------------


def read_metrics(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the file, parsed strictly: every family must come with HELP and TYPE
    gauge, and prometheus_client must read exactly the samples the file has."""
    text = path.read_text()
    families = list(text_string_to_metric_families(text))
    out = {}
    for family in families:
        assert family.type == "gauge", family.name
        assert family.documentation, family.name
        assert f"# HELP {family.name} " in text and f"# TYPE {family.name} gauge" in text
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = sample.value
    sample_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(sample_lines) == len(out)
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def outcome(command: str, code: int, *, datasets: list[DatasetCount] | None = None,
            added: int | None = None, gauges: dict[str, float] | None = None,
            finished: float | None = None, error: str | None = None) -> RunOutcome:
    o = RunOutcome(command)
    o.finished = finished if finished is not None else o.started + 1.25
    o.started = o.finished - 1.25
    o.exit_code = code
    o.error = error
    o.datasets = datasets or []
    o.bytes_added = added
    o.gauges = gauges or {}
    return o


SCRIPT = textwrap.dedent("""\
    import json, os, sys
    out = sys.argv[1]
    payload = sys.stdin.read()
    env = dict(os.environ)
    with open(out, "a") as f:
        f.write(json.dumps({"stdin": payload, "env": env}) + "\\n")
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
""")


def notifier(tmp_path: Path) -> tuple[list[str], Path]:
    """A real notify command: a Python script that appends its stdin and environment to a
    file. Returns its argv and the file."""
    script = tmp_path / "notify.py"
    script.write_text(SCRIPT)
    out = tmp_path / "notices.jsonl"
    return [sys.executable, str(script), str(out)], out


def notices(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----- metrics: the writer ------------------------------------------------------------------


def test_metrics_file_parses_and_holds_the_run(tmp_path: Path) -> None:
    path = tmp_path / "sellerbak.prom"
    o = outcome("snapshot", 0, added=4096, gauges={"rto_seconds": 2.5},
                datasets=[DatasetCount("shop \"main\"\\x", "finance/statements", 20, 900),
                          DatasetCount("shop \"main\"\\x", "orders", 300, 51200)])
    write_run_metrics(path, o)
    m = read_metrics(path)
    cmd = {"command": "snapshot"}
    assert value(m, "sellerbak_last_run_timestamp_seconds", **cmd) == pytest.approx(o.finished)
    assert value(m, "sellerbak_last_success_timestamp_seconds", **cmd) == \
        pytest.approx(o.finished)
    assert value(m, "sellerbak_last_run_duration_seconds", **cmd) == pytest.approx(1.25)
    assert value(m, "sellerbak_last_run_exit_code", **cmd) == 0
    assert value(m, "sellerbak_last_run_success", **cmd) == 1
    assert value(m, "sellerbak_last_run_added_bytes", **cmd) == 4096
    assert value(m, "sellerbak_rto_seconds", **cmd) == 2.5
    # label values with quotes and backslashes survive the round trip
    ds = {"command": "snapshot", "source": "shop \"main\"\\x"}
    assert value(m, "sellerbak_dataset_records", dataset="orders", **ds) == 300
    assert value(m, "sellerbak_dataset_bytes", dataset="orders", **ds) == 51200
    assert value(m, "sellerbak_dataset_records", dataset="finance/statements", **ds) == 20
    # node_exporter runs as another user: readable by all, owned by us
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["sellerbak.prom"]


def test_commands_share_the_file_and_replace_only_their_own_samples(tmp_path: Path) -> None:
    path = tmp_path / "sellerbak.prom"
    write_run_metrics(path, outcome("snapshot", 0, added=10, finished=1000.0,
                                    datasets=[DatasetCount("a", "orders", 5, 50),
                                              DatasetCount("b", "orders", 7, 70)]))
    write_run_metrics(path, outcome("check", 0, gauges={"errors": 0, "packs": 3},
                                    finished=2000.0))
    write_run_metrics(path, outcome("snapshot", 0, added=20, finished=3000.0,
                                    datasets=[DatasetCount("a", "orders", 6, 60)]))
    m = read_metrics(path)
    assert value(m, "sellerbak_last_run_timestamp_seconds", command="check") == 2000
    assert value(m, "sellerbak_packs", command="check") == 3
    assert value(m, "sellerbak_last_run_timestamp_seconds", command="snapshot") == 3000
    assert value(m, "sellerbak_last_run_added_bytes", command="snapshot") == 20
    # source a was reported again and replaced; b was not part of this run and stays
    assert value(m, "sellerbak_dataset_records", command="snapshot", source="a",
                 dataset="orders") == 6
    assert value(m, "sellerbak_dataset_records", command="snapshot", source="b",
                 dataset="orders") == 7
    # a gauge of an earlier run of the same command does not linger
    write_run_metrics(path, outcome("check", 0, gauges={"errors": 0}, finished=4000.0))
    assert ("sellerbak_packs", frozenset({("command", "check")})) not in read_metrics(path)


def test_a_failed_run_keeps_the_last_success_time(tmp_path: Path) -> None:
    path = tmp_path / "sellerbak.prom"
    write_run_metrics(path, outcome("snapshot", 0, finished=1000.0))
    write_run_metrics(path, outcome("snapshot", 12, finished=5000.0, error="wrong passphrase"))
    m = read_metrics(path)
    assert value(m, "sellerbak_last_success_timestamp_seconds", command="snapshot") == 1000
    assert value(m, "sellerbak_last_run_timestamp_seconds", command="snapshot") == 5000
    assert value(m, "sellerbak_last_run_exit_code", command="snapshot") == 12
    assert value(m, "sellerbak_last_run_success", command="snapshot") == 0
    # the error line is for notices, not for the metrics file
    assert "passphrase" not in path.read_text().split("# HELP sellerbak_last_run_success")[1]
    # a command that never succeeded has no success time at all (the alert sees it missing)
    write_run_metrics(path, outcome("drill", 1, finished=6000.0))
    assert ("sellerbak_last_success_timestamp_seconds",
            frozenset({("command", "drill")})) not in read_metrics(path)
    write_run_metrics(path, outcome("snapshot", 0, finished=7000.0))
    assert value(read_metrics(path), "sellerbak_last_success_timestamp_seconds",
                 command="snapshot") == 7000


def test_the_file_is_replaced_atomically_never_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "sellerbak.prom"
    write_run_metrics(path, outcome("snapshot", 0, finished=1000.0))
    before = path.read_text()
    with open(path) as reader:  # a collector that opened the file before the write
        write_run_metrics(path, outcome("check", 0, finished=2000.0))
        assert reader.read() == before  # still the complete old file: a rename, not a rewrite
        assert os.stat(path).st_ino != os.fstat(reader.fileno()).st_ino
    assert 'command="check"' in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sellerbak.prom"]


def test_a_damaged_file_is_healed_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "sellerbak.prom"
    path.write_text('sellerbak_last_success_timestamp_seconds{command="snapshot"} 1000\n'
                    'garbage line {{{\nsellerbak_x{command="check" 12\n'
                    'other_tool_metric 5\n')
    write_run_metrics(path, outcome("check", 0, finished=2000.0))
    m = read_metrics(path)
    assert value(m, "sellerbak_last_success_timestamp_seconds", command="snapshot") == 1000
    assert value(m, "sellerbak_last_success_timestamp_seconds", command="check") == 2000
    assert not any(name.startswith("other") for name, _ in m)


def _write_many(path: str, command: str, n: int) -> None:
    for i in range(n):
        write_run_metrics(Path(path), outcome(command, 0, finished=1000.0 + i))


def test_concurrent_writers_lose_no_command(tmp_path: Path) -> None:
    path = tmp_path / "sellerbak.prom"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(path), f"cmd{i}", 25)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    m = read_metrics(path)
    for i in range(4):
        assert value(m, "sellerbak_last_run_timestamp_seconds", command=f"cmd{i}") == 1024


def test_parse_round_trips_what_render_writes(tmp_path: Path) -> None:
    path = tmp_path / "sellerbak.prom"
    write_run_metrics(path, outcome("drill", 0, datasets=[DatasetCount("s\nx", "d", 1, 2)],
                                    gauges={"rpo_seconds": 0.1 + 0.2}))
    samples, helps = parse(path.read_text())
    by_name = {s.name: s for s in samples}
    assert by_name["sellerbak_dataset_records"].label("source") == "s\nx"
    assert by_name["sellerbak_rpo_seconds"].value == 0.1 + 0.2
    assert helps["sellerbak_rpo_seconds"].startswith("Recovery point")


# ----- metrics: through the command line ----------------------------------------------------


def _demo_config(tmp_path: Path, **extra: Any) -> Path:
    return write_config(tmp_path, "./repo", [{"name": "demo", "type": "demo", "seed": 3,
                                              "orders": 150}], **extra)


def test_snapshot_and_check_write_metrics_and_failures_keep_success(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    prom = tmp_path / "metrics" / "sellerbak.prom"
    cfg = _demo_config(tmp_path, metrics={"textfile": "./metrics/sellerbak.prom"})
    assert run_cli("-c", str(cfg), "init").returncode == 0
    assert not prom.exists()  # init is not monitored
    snap = run_cli("-c", str(cfg), "--json", "snapshot")
    assert snap.returncode == 0, snap.stderr
    stored = json.loads(snap.stdout)["snapshots"][0]
    m = read_metrics(prom)
    assert value(m, "sellerbak_last_run_exit_code", command="snapshot") == 0
    assert value(m, "sellerbak_last_run_added_bytes", command="snapshot") == \
        stored["bytes_added"]
    for name, d in stored["datasets"].items():
        assert value(m, "sellerbak_dataset_records", command="snapshot", source="demo",
                     dataset=name) == d["records"]
    success = value(m, "sellerbak_last_success_timestamp_seconds", command="snapshot")

    assert run_cli("-c", str(cfg), "check", "--read-data").returncode == 0
    m = read_metrics(prom)
    assert value(m, "sellerbak_last_run_success", command="check") == 1
    assert value(m, "sellerbak_errors", command="check") == 0
    assert value(m, "sellerbak_bytes_read", command="check") > 0

    bad = run_cli("-c", str(cfg), "snapshot", env=cli_env(SELLERBAK_PASSPHRASE="wrong pw"))
    assert bad.returncode == 12
    m = read_metrics(prom)
    assert value(m, "sellerbak_last_run_exit_code", command="snapshot") == 12
    assert value(m, "sellerbak_last_run_success", command="snapshot") == 0
    assert value(m, "sellerbak_last_success_timestamp_seconds", command="snapshot") == success
    assert value(m, "sellerbak_last_run_timestamp_seconds", command="snapshot") > success
    # the datasets of the last stored snapshot are still there for dashboards
    assert value(m, "sellerbak_dataset_records", command="snapshot", source="demo",
                 dataset="orders") == stored["datasets"]["orders"]["records"]
    assert value(m, "sellerbak_last_run_success", command="check") == 1
    text = prom.read_text()
    assert PASSPHRASE not in text and "wrong pw" not in text and "@" not in text


def test_unwritable_metrics_warn_but_keep_the_exit_code(tmp_path: Path) -> None:
    cfg = _demo_config(tmp_path, metrics={"textfile": "./no-such-dir/sellerbak.prom"})
    assert run_cli("-c", str(cfg), "init").returncode == 0
    snap = run_cli("-c", str(cfg), "snapshot")
    assert snap.returncode == 0
    assert "warning: could not write metrics" in snap.stderr
    assert not [line for line in snap.stderr.splitlines() if line.startswith("error:")]


# ----- notices: the notifier ----------------------------------------------------------------

SUMMARY = {"tool": "sellerbak", "command": "snapshot", "host": "shop-host", "exit_code": 11,
           "success": False, "error": "repository is locked by host a (pid 1)",
           "started": 1000.0, "duration_seconds": 2.0, "snapshots": [], "bytes_added": None}


def test_command_gets_the_summary_on_stdin_and_no_secrets(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    argv, out = notifier(tmp_path)
    monkeypatch.setenv("SELLERBAK_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3-secret-key")
    monkeypatch.setenv("TTS_APP_SECRET", "app-secret")
    problems = notify_failure(NotifyConfig(command=argv, timeout=30), dict(SUMMARY))
    assert problems == []
    (got,) = notices(out)
    payload = json.loads(got["stdin"])
    assert {k: payload[k] for k in SUMMARY} == SUMMARY
    assert payload["event"] == "failure"
    assert payload["text"] == ("sellerbak snapshot failed on shop-host (exit 11): repository "
                               "is locked by host a (pid 1)")
    sellerbak_vars = {k: v for k, v in got["env"].items() if k.startswith("SELLERBAK_")}
    assert sellerbak_vars == {"SELLERBAK_EVENT": "failure", "SELLERBAK_COMMAND": "snapshot",
                              "SELLERBAK_HOST": "shop-host", "SELLERBAK_EXIT_CODE": "11"}
    # an allowlist, not a blocklist: no credentials of any kind reach the notifier
    assert set(got["env"]) - set(sellerbak_vars) <= {"PATH", "HOME", "USER", "LOGNAME",
                                                      "LANG", "LANGUAGE", "TZ", "TMPDIR",
                                                      "SHELL", "TERM", "INVOCATION_ID",
                                                      "JOURNAL_STREAM", "SYSTEMD_EXEC_PID",
                                                      "LC_CTYPE", "LC_ALL", "PWD"}
    assert "PATH" in got["env"]


def test_command_failures_and_timeouts_are_reported(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    argv, out = notifier(tmp_path)
    argv = [*argv, "3"]
    assert notify_failure(NotifyConfig(command=argv, timeout=30), dict(SUMMARY)) == \
        [f"notify command {Path(sys.executable).name} exited with status 3"]
    # a notifier that hangs is killed with everything it started
    marker = tmp_path / "grandchild-alive"
    script = tmp_path / "hang.py"
    script.write_text(textwrap.dedent(f"""\
        import subprocess, sys, time
        late = "import time; time.sleep(3); open({str(marker)!r}, 'w').close()"
        subprocess.Popen([sys.executable, "-c", late])
        time.sleep(60)
    """))
    hang = [sys.executable, str(script)]
    (problem,) = notify_failure(NotifyConfig(command=hang, timeout=1), dict(SUMMARY))
    assert "did not finish within 1 s" in problem
    time.sleep(4)
    assert not marker.exists()
    missing = notify_failure(NotifyConfig(command=[str(tmp_path / "nope")], timeout=5),
                             dict(SUMMARY))
    assert missing == ["notify command nope could not be started (No such file or directory)"]


def test_webhook_gets_the_json_and_its_url_never_shows(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with webhook_server() as hook:
        monkeypatch.setenv("HOOK_URL", hook.url("/hooks/T0KEN-s3cret?key=abc"))
        ref = SecretRef("notify.webhook_url", "env", "HOOK_URL")
        assert notify_failure(NotifyConfig(webhook_url=ref, timeout=10), dict(SUMMARY)) == []
        (req,) = hook.received
        assert req.path == "/hooks/T0KEN-s3cret?key=abc"
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["User-Agent"].startswith("sellerbak/")
        assert req.json()["error"] == SUMMARY["error"]
    with webhook_server(default_status=403) as hook:
        url = hook.url("/hooks/T0KEN-s3cret")
        problems = notify_failure(NotifyConfig(webhook_url=url, timeout=10), dict(SUMMARY))
        assert problems == ["webhook answered HTTP 403"]
        assert len(hook.received) == 1  # a 4xx is not retried
    port = hook.port  # now closed
    problems = notify_failure(NotifyConfig(webhook_url=f"http://127.0.0.1:{port}/T0KEN-s3cret",
                                           timeout=5), dict(SUMMARY))
    assert problems == ["webhook could not be reached (ConnectionError)"]
    monkeypatch.delenv("HOOK_URL")
    problems = notify_failure(NotifyConfig(webhook_url=ref, timeout=5), dict(SUMMARY))
    assert problems == ["webhook: notify.webhook_url: environment variable HOOK_URL is not set"]


def test_webhook_retries_once_after_a_server_error() -> None:
    with webhook_server(statuses=[503]) as hook:
        assert notify_failure(NotifyConfig(webhook_url=hook.url(), timeout=10),
                              dict(SUMMARY)) == []
        assert len(hook.received) == 2
    with webhook_server(default_status=500) as hook:
        assert notify_failure(NotifyConfig(webhook_url=hook.url(), timeout=10),
                              dict(SUMMARY)) == ["webhook answered HTTP 500"]
        assert len(hook.received) == 2


def test_both_channels_and_the_notice_record(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    argv, out = notifier(tmp_path)
    monkeypatch.setenv("SELLERBAK_NOTICE_DIR", str(tmp_path / "notices"))
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    with webhook_server() as hook:
        config = NotifyConfig(command=argv, webhook_url=hook.url(), timeout=10)
        assert notify_failure(config, dict(SUMMARY)) == []
        assert len(hook.received) == 1 and len(notices(out)) == 1
    record = load_notice("0123456789abcdef0123456789abcdef")
    assert record is not None and record["delivered"] == ["command", "webhook"]
    assert record["summary"]["error"] == SUMMARY["error"]
    assert load_notice("../../etc/passwd") is None
    # nothing configured: nothing attempted, nothing to warn about
    result = deliver(NotifyConfig(), dict(SUMMARY))
    assert not result.attempted and result.problems == []


# ----- notices: through the command line ----------------------------------------------------


def test_failed_run_notifies_and_keeps_its_exit_code(tmp_path: Path) -> None:
    argv, out = notifier(tmp_path)
    with webhook_server() as hook:
        cfg = _demo_config(tmp_path, notify={"command": argv,
                                             "webhook_url": hook.url("/t/SECRET-TOKEN"),
                                             "timeout": 20})
        assert run_cli("-c", str(cfg), "init").returncode == 0
        ok = run_cli("-c", str(cfg), "snapshot")
        assert ok.returncode == 0 and hook.received == [] and notices(out) == []
        bad = run_cli("-c", str(cfg), "snapshot", env=cli_env(SELLERBAK_PASSPHRASE="wrong pw"))
        assert bad.returncode == 12
        (req,) = hook.received
    summary = req.json()
    assert summary["command"] == "snapshot" and summary["exit_code"] == 12
    assert summary["success"] is False and summary["error"]
    assert [line for line in bad.stderr.splitlines() if line.startswith("error:")] == \
        [f"error: {summary['error']}"]
    (got,) = notices(out)
    assert json.loads(got["stdin"]) == summary
    assert "SELLERBAK_PASSPHRASE" not in got["env"]
    for text in (req.body.decode(), got["stdin"]):
        assert "wrong pw" not in text and PASSPHRASE not in text and "@" not in text


def test_undeliverable_notice_is_a_warning_not_a_new_exit_code(tmp_path: Path) -> None:
    with webhook_server() as hook:
        url = hook.url("/t/SECRET-TOKEN")
    cfg = _demo_config(tmp_path, notify={"webhook_url": url, "timeout": 5})
    assert run_cli("-c", str(cfg), "init").returncode == 0
    bad = run_cli("-c", str(cfg), "snapshot", env=cli_env(SELLERBAK_PASSPHRASE="wrong pw"))
    assert bad.returncode == 12
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "warning: failure notice not delivered: webhook could not be reached" in bad.stderr
    assert "SECRET-TOKEN" not in bad.stderr and "127.0.0.1" not in bad.stderr


def test_verbose_run_does_not_log_the_webhook_url(tmp_path: Path) -> None:
    with webhook_server() as hook:
        cfg = _demo_config(tmp_path, notify={"webhook_url": hook.url("/t/SECRET-TOKEN")})
        assert run_cli("-c", str(cfg), "init").returncode == 0
        bad = run_cli("-c", str(cfg), "-v", "snapshot",
                      env=cli_env(SELLERBAK_PASSPHRASE="wrong pw"))
        assert bad.returncode == 12 and len(hook.received) == 1
    assert "SECRET-TOKEN" not in bad.stderr


def test_notify_command_sees_no_passphrase_file_either(tmp_path: Path) -> None:
    argv, out = notifier(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("not the passphrase\n")
    cfg = _demo_config(tmp_path, notify={"command": argv})
    env = cli_env()
    env.pop("SELLERBAK_PASSPHRASE")
    init = subprocess.run([sys.executable, "-m", "sellerbak", "-c", str(cfg), "init"],
                          env={**env, "SELLERBAK_PASSPHRASE": PASSPHRASE}, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    assert init.returncode == 0, init.stderr
    bad = run_cli("-c", str(cfg), "snapshot", env={**env, "SELLERBAK_PASSPHRASE_FILE": str(pw)})
    assert bad.returncode == 12
    (got,) = notices(out)
    assert "SELLERBAK_PASSPHRASE_FILE" not in got["env"]
