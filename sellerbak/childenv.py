"""The environment a program sellerbak starts may inherit: an allowlist, never a copy.

sellerbak's own environment may hold the repository passphrase (SELLERBAK_PASSPHRASE), the S3
keys (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), the variables `{env: NAME}` secrets name and
$CREDENTIALS_DIRECTORY. A `notify.command` or a `{command: ...}` secret helper needs none of
them, so each gets only the variables below: enough to find programs, write text in the
right language and time zone and use a temporary directory. A secret helper also gets the
variables that say where a password manager keeps its keys and agents (gpg, pass, vault,
secret-tool): locations and settings, not credentials. Anything else a helper needs it must
read from a file itself (vault: ~/.vault-token or a token helper; a wrapper script).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

#: never passed on, whatever an allowlist says: the passphrase and where it is found
SECRET_ENVIRONMENT = frozenset({"SELLERBAK_PASSPHRASE", "SELLERBAK_PASSPHRASE_FILE",
                                "SELLERBAK_NEW_PASSPHRASE", "CREDENTIALS_DIRECTORY"})
#: what every child inherits (plus LC_*): find programs, write text, nothing secret
SAFE_ENVIRONMENT = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ",
                              "TMPDIR", "SHELL", "TERM", "INVOCATION_ID", "JOURNAL_STREAM",
                              "SYSTEMD_EXEC_PID"})
#: what a `{command: ...}` secret helper also inherits: where gpg, gpg-agent, pass, the
#: desktop keyring (secret-tool, over D-Bus) and the vault CLI find their keys and servers
SECRET_HELPER_ENVIRONMENT = frozenset({
    "GNUPGHOME", "GPG_TTY", "GPG_AGENT_INFO", "PINENTRY_USER_DATA",
    "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "DBUS_SESSION_BUS_ADDRESS",
    "PASSWORD_STORE_DIR", "PASSWORD_STORE_KEY", "PASSWORD_STORE_GPG_OPTS",
    "PASSWORD_STORE_UMASK", "VAULT_ADDR", "VAULT_NAMESPACE", "VAULT_CACERT", "VAULT_CAPATH",
    "VAULT_TLS_SERVER_NAME",
})


def child_environment(extra: Iterable[str] = (),
                      source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allowlisted part of `source` (default: os.environ): SAFE_ENVIRONMENT, LC_* and the
    `extra` names, never a name in SECRET_ENVIRONMENT."""
    allowed = SAFE_ENVIRONMENT | frozenset(extra)
    environ = os.environ if source is None else source
    return {name: value for name, value in environ.items()
            if (name in allowed or name.startswith("LC_")) and name not in SECRET_ENVIRONMENT}
