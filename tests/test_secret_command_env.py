"""`{command: ...}` secret helpers get an allowlisted environment (sellerbak.childenv), not
sellerbak's: no passphrase variables, no S3 keys, no other secrets handed to the process.
What gpg, pass or vault need to find their keys (GNUPGHOME, XDG_RUNTIME_DIR, ...) passes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.helpers import PASSPHRASE, cli_env, run_cli, write_config

#: the helper: records its whole environment, then prints the secret it was asked for
_HELPER = """
import json, os, sys
open(sys.argv[1], "w").write(json.dumps(dict(os.environ)))
print(sys.argv[2])
"""

LEAKS = {"AWS_SECRET_ACCESS_KEY": "aws-secret-must-not-leak",
         "AWS_SESSION_TOKEN": "aws-session-must-not-leak",
         "SHOP_API_TOKEN": "env-secret-must-not-leak",
         "SELLERBAK_NEW_PASSPHRASE": "new-passphrase-must-not-leak"}
HELPER_NEEDS = {"GNUPGHOME": "/nonexistent/gnupg", "XDG_RUNTIME_DIR": "/nonexistent/run",
                "PASSWORD_STORE_DIR": "/nonexistent/pass", "VAULT_ADDR": "https://vault.invalid"}


def _helper(tmp_path: Path, seen: Path, prints: str) -> str:
    script = tmp_path / "helper.py"
    script.write_text(_HELPER)
    return f"{sys.executable} {script} {seen} {prints}"


def test_passphrase_command_sees_no_other_secret(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    config = write_config(tmp_path, "./repo", [{"name": "demo", "type": "demo"}],
                          passphrase={"command": _helper(tmp_path, seen, "a-passphrase")},
                          notify={"webhook_url": {"env": "SHOP_API_TOKEN"}})
    env = cli_env(**LEAKS, **HELPER_NEEDS)
    del env["SELLERBAK_PASSPHRASE"]
    done = run_cli("-c", str(config), "init", env=env)
    assert done.returncode == 0, done.stderr
    helper_env = json.loads(seen.read_text())
    for value in LEAKS.values():
        assert value not in json.dumps(helper_env)
    assert {k: helper_env.get(k) for k in HELPER_NEEDS} == HELPER_NEEDS
    assert helper_env["PATH"] == env["PATH"]


def test_secret_command_never_sees_the_passphrase(tmp_path: Path) -> None:
    # the webhook URL is read by a helper on a failed run (no repository yet: exit 10)
    seen = tmp_path / "seen.json"
    config = write_config(tmp_path, "./repo", [{"name": "demo", "type": "demo"}],
                          notify={"webhook_url": {"command": _helper(
                              tmp_path, seen, "http://127.0.0.1:9/hook")}, "timeout": 2})
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE)
    env = cli_env(SELLERBAK_PASSPHRASE_FILE=str(passphrase_file),
                  CREDENTIALS_DIRECTORY=str(tmp_path), **LEAKS)
    done = run_cli("-c", str(config), "snapshot", env=env)
    assert done.returncode == 10, done.stderr
    helper_env = json.loads(seen.read_text())
    for name in ("SELLERBAK_PASSPHRASE", "SELLERBAK_PASSPHRASE_FILE", "CREDENTIALS_DIRECTORY",
                 *LEAKS):
        assert name not in helper_env
    assert PASSPHRASE not in seen.read_text()
