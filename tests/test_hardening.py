"""No core dumps: the running CLI is not dumpable and its core size limit is 0.

Observed from the outside where the kernel shows it (/proc/<pid>/limits of the real CLI,
read by a `{command:}` secret helper while the CLI waits for it) and from the inside
(prctl PR_GET_DUMPABLE after `main` ran), on Linux."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import cli_env, write_config

#: run as the passphrase command: records the parent's (the CLI's) core limit, prints a secret
_PEEK = """
import os, sys
limits = open(f"/proc/{os.getppid()}/limits").read()
line = next(l for l in limits.splitlines() if l.startswith("Max core file size"))
open(sys.argv[1], "w").write(line)
print(sys.argv[2])
"""


def test_the_cli_runs_with_core_dumps_disabled(tmp_path: Path) -> None:
    peek = tmp_path / "peek.py"
    peek.write_text(_PEEK)
    seen = tmp_path / "seen.txt"
    command = f"{sys.executable} {peek} {seen} secret-for-the-test"
    config = write_config(tmp_path, "./repo", [{"name": "demo", "type": "demo"}],
                          passphrase={"command": command})
    env = cli_env()
    del env["SELLERBAK_PASSPHRASE"]
    # the test's own process may allow core files; the CLI must not inherit that
    done = subprocess.run(
        [sys.executable, "-c",
         "import resource, runpy, sys; "
         "resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, resource.RLIM_INFINITY)); "
         "sys.argv = ['sellerbak', *sys.argv[1:]]; runpy.run_module('sellerbak', "
         "run_name='__main__')", "-c", str(config), "init"],
        capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert seen.read_text().split()[-3:] == ["0", "0", "bytes"]


_INSIDE = """
import ctypes, json, resource, sys
from sellerbak.cli import main
resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, resource.RLIM_INFINITY))
try:
    main(["--version"])
except SystemExit:
    pass
libc = ctypes.CDLL(None, use_errno=True)
status = {line.split(":")[0]: line.split(":", 1)[1].strip()
          for line in open("/proc/self/status")}
print(json.dumps({"dumpable": libc.prctl(3, 0, 0, 0, 0),
                  "core": resource.getrlimit(resource.RLIMIT_CORE), "pid": status["Pid"]}))
"""


def test_main_makes_the_process_non_dumpable(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _INSIDE], capture_output=True, text=True,
                          env=cli_env(), timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["dumpable"] == 0
    assert report["core"] == [0, 0]

