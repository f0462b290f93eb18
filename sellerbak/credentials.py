"""Secrets from the environment, a file or a command: never from the YAML itself.

A secret in the config is written `{env: NAME}`, `{file: PATH}` or `{command: CMD}`. A plain
string where a secret belongs is refused, so a passphrase or token cannot end up in a config file
that gets copied, committed or printed. Error messages name the config key, never the value.
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sellerbak.childenv import SECRET_HELPER_ENVIRONMENT, child_environment
from sellerbak.errors import ConfigError

COMMAND_TIMEOUT = 60


@dataclass(frozen=True)
class SecretRef:
    """Where a secret comes from; `key` is the config key, for error messages."""

    key: str
    kind: str  # env | file | command
    value: str
    base_dir: Path | None = None

    def resolve(self) -> str:
        if self.kind == "env":
            secret = os.environ.get(self.value)
            if not secret:
                raise ConfigError(f"{self.key}: environment variable {self.value} is not set")
            return secret
        if self.kind == "file":
            try:
                path = Path(self.value).expanduser()
                if not path.is_absolute() and self.base_dir is not None:
                    path = self.base_dir / path
                return path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{self.key}: cannot read {path}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise ConfigError(f"{self.key}: {path} is not UTF-8 text") from None
            except (RuntimeError, ValueError):  # ~unknown-user, or a NUL character
                raise ConfigError(f"{self.key}: {self.value[:100]!r} is not a usable path") \
                    from None
        try:
            # an allowlisted environment: the helper must not see the passphrase variables,
            # the S3 keys or other secrets this process was given (sellerbak.childenv)
            done = subprocess.run(shlex.split(self.value), capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT, check=False,
                                  env=child_environment(SECRET_HELPER_ENVIRONMENT))
        except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
            raise ConfigError(f"{self.key}: command failed to run ({type(exc).__name__})") \
                from None
        if done.returncode != 0:
            raise ConfigError(f"{self.key}: command exited with status {done.returncode}")
        secret = done.stdout.rstrip("\r\n")
        if not secret:
            raise ConfigError(f"{self.key}: command printed nothing")
        return secret


def parse_secret_ref(value: Any, key: str, source: str,
                     base_dir: Path | None = None) -> SecretRef:
    if isinstance(value, dict) and len(value) == 1:
        ((kind, ref),) = value.items()
        if kind in ("env", "file", "command") and isinstance(ref, str) and ref:
            return SecretRef(key, kind, ref, base_dir)
    if isinstance(value, str):
        raise ConfigError(f"{source}: {key} must not hold the secret itself; "
                          "use {env: NAME}, {file: PATH} or {command: CMD}")
    raise ConfigError(f"{source}: {key} must be one of {{env: NAME}}, {{file: PATH}}, "
                      "{command: CMD}")


def passphrase_from_environment(config_ref: SecretRef | None, confirm: bool = False) -> str:
    """Passphrase sources, first found wins: SELLERBAK_PASSPHRASE, SELLERBAK_PASSPHRASE_FILE,
    $CREDENTIALS_DIRECTORY/passphrase (systemd LoadCredential=), the config's `passphrase:`,
    then a prompt when a person is at a terminal."""
    env = os.environ.get("SELLERBAK_PASSPHRASE")
    if env:
        return env
    if os.environ.get("SELLERBAK_PASSPHRASE_FILE"):
        return SecretRef("SELLERBAK_PASSPHRASE_FILE", "file",
                         os.environ["SELLERBAK_PASSPHRASE_FILE"]).resolve()
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / "passphrase").is_file():
        return SecretRef("$CREDENTIALS_DIRECTORY/passphrase", "file",
                         str(Path(cred_dir) / "passphrase")).resolve()
    if config_ref is not None:
        return config_ref.resolve()
    if sys.stdin.isatty() and sys.stderr.isatty():
        secret = getpass.getpass("repository passphrase: ")
        if confirm and getpass.getpass("repeat passphrase: ") != secret:
            raise ConfigError("passphrases do not match")
        if secret:
            return secret
    raise ConfigError("no passphrase: set SELLERBAK_PASSPHRASE or SELLERBAK_PASSPHRASE_FILE, "
                      "or 'passphrase:' in the config")
