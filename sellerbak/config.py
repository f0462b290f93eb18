"""YAML configuration -> typed config. Every error names the file and the key at fault.

Relative paths in the config (the repository path, a `files` source's path, secret files) are
relative to the config file's directory, so a config works the same from any working directory.
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from sellerbak import safeyaml
from sellerbak.credentials import SecretRef, parse_secret_ref
from sellerbak.durations import parse_duration
from sellerbak.errors import ConfigError

SEARCH_PATH = ("./sellerbak.yaml", "~/.config/sellerbak/config.yaml",
               "/etc/sellerbak/config.yaml")
TOP_KEYS = {"repository", "passphrase", "state_dir", "cache_dir", "sources", "retention",
            "metrics", "notify", "drill"}
REPO_KEYS = {"url", "endpoint_url", "region", "storage_class", "kdf", "object_lock"}
RETENTION_KEYS = {"keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                  "keep_yearly", "keep_within", "keep_tag"}
METRICS_KEYS = {"textfile"}
NOTIFY_KEYS = {"command", "webhook_url", "timeout"}
DRILL_KEYS = {"max_age", "scratch_dir"}
OBJECT_LOCK_KEYS = {"mode", "days"}
OBJECT_LOCK_MODES = {"GOVERNANCE", "COMPLIANCE"}
KDF_KEYS = {"m_kib", "t", "p"}
SOURCE_TYPES = {"demo", "files", "tiktok"}
#: a real config is a few KiB; past this the file is refused unread
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass
class RepositoryConfig:
    url: str
    endpoint_url: str | None = None
    region: str | None = None
    storage_class: str | None = None
    kdf: dict[str, int] = field(default_factory=dict)
    #: S3 Object Lock retention for every object written: {"mode": ..., "days": N}
    object_lock: dict[str, Any] | None = None


@dataclass
class RetentionConfig:
    """`retention:` defaults for `forget`; each applies per source (restic's semantics).
    A count of -1 keeps every snapshot of that kind."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None
    keep_tag: list[str] = field(default_factory=list)


@dataclass
class NotifyConfig:
    """Who hears about failures: a command (gets a JSON summary on stdin) and/or a webhook
    (gets it as a POST). The webhook URL may carry a token, so it may be a secret reference."""

    command: list[str] | None = None
    webhook_url: str | SecretRef | None = None
    timeout: float = 10.0


@dataclass
class DrillConfig:
    #: a drill fails when the newest snapshot of a source is older than this
    max_age: timedelta | None = None
    #: where drills restore to (default: a temporary directory)
    scratch_dir: Path | None = None


@dataclass
class SourceConfig:
    name: str
    type: str
    options: dict[str, Any]
    #: "sources[N]" for error messages
    key: str
    base_dir: Path


@dataclass
class Config:
    path: Path
    repository: RepositoryConfig
    passphrase: SecretRef | None
    state_dir: Path
    sources: list[SourceConfig]
    raw: dict[str, Any]
    cache_dir: Path | None = None
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    #: Prometheus textfile-collector file written after snapshot, check, prune and drill
    metrics_textfile: Path | None = None
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    drill: DrillConfig = field(default_factory=DrillConfig)

    def source(self, name: str) -> SourceConfig:
        for src in self.sources:
            if src.name == name:
                return src
        names = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"{self.path}: no source named {name!r} (configured: {names})")


def find_config(explicit: str | None) -> Path:
    # a named path that exists but is no regular file (/dev/zero, a FIFO, a directory) is
    # refused by read_config_text with that reason, not reported as missing
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        return path
    env = os.environ.get("SELLERBAK_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.exists():
            raise ConfigError(f"SELLERBAK_CONFIG names {path}, which does not exist")
        return path
    for candidate in SEARCH_PATH:
        path = Path(candidate).expanduser()
        if path.is_file():
            return path
    raise ConfigError("no config file: pass -c FILE or set SELLERBAK_CONFIG (also looked for "
                      + ", ".join(SEARCH_PATH) + ")")


def load_config(explicit: str | None = None) -> Config:
    path = find_config(explicit)
    return parse_config(read_config_text(path), path)


def read_config_text(path: Path) -> str:
    """The config file's text, read with a cap: a config is a few KiB, so a larger file (or
    /dev/zero, a FIFO that never ends, a device) is a mistake or an attack and must not be
    read into memory whole. The file is opened once and checked through that descriptor
    (fstat), so it cannot be swapped for something else between the check and the read;
    O_NONBLOCK keeps opening a FIFO without a writer from hanging."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"config file {path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None


def parse_config(text: str, path: Path) -> Config:
    try:
        raw = safeyaml.load(text)  # bounded: no alias bombs, no deep-nesting crash
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({exc.problem})") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping with a 'repository' key")
    base = path.resolve().parent
    _no_unknown(raw, TOP_KEYS, "", path)

    repo_raw = raw.get("repository")
    if not isinstance(repo_raw, dict):
        raise ConfigError(f"{path}: repository: missing (it needs at least 'url')")
    _no_unknown(repo_raw, REPO_KEYS, "repository.", path)
    url = repo_raw.get("url")
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{path}: repository.url: missing or not a string")
    url = _resolve_repo_url(url, base)
    kdf = repo_raw.get("kdf") or {}
    if not isinstance(kdf, dict):
        raise ConfigError(f"{path}: repository.kdf: must be a mapping of m_kib, t, p")
    _no_unknown(kdf, KDF_KEYS, "repository.kdf.", path)
    for k, v in kdf.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{path}: repository.kdf.{k}: must be a positive integer")
    repository = RepositoryConfig(
        url=url,
        endpoint_url=_opt_str(repo_raw, "endpoint_url", "repository.", path),
        region=_opt_str(repo_raw, "region", "repository.", path),
        storage_class=_opt_str(repo_raw, "storage_class", "repository.", path),
        kdf=dict(kdf),
        object_lock=_object_lock(repo_raw.get("object_lock"), path))

    passphrase = None
    if raw.get("passphrase") is not None:
        passphrase = parse_secret_ref(raw["passphrase"], "passphrase", str(path), base)

    state_dir_raw = raw.get("state_dir") or os.environ.get("STATE_DIRECTORY") \
        or "~/.local/state/sellerbak"
    if not isinstance(state_dir_raw, str):
        raise ConfigError(f"{path}: state_dir: must be a path")
    state_dir = _resolve_path(state_dir_raw.split(":")[0], base)
    cache_dir_raw = raw.get("cache_dir") or os.environ.get("CACHE_DIRECTORY")
    if cache_dir_raw is not None and not isinstance(cache_dir_raw, str):
        raise ConfigError(f"{path}: cache_dir: must be a path")
    cache_dir = _resolve_path(cache_dir_raw.split(":")[0], base) if cache_dir_raw else None

    sources_raw = raw.get("sources") or []
    if not isinstance(sources_raw, list):
        raise ConfigError(f"{path}: sources: must be a list")
    sources: list[SourceConfig] = []
    seen: set[str] = set()
    for i, src in enumerate(sources_raw):
        key = f"sources[{i}]"
        if not isinstance(src, dict):
            raise ConfigError(f"{path}: {key}: must be a mapping with 'name' and 'type'")
        name, stype = src.get("name"), src.get("type")
        if not isinstance(name, str) or not name or "/" in name or not name.isprintable():
            raise ConfigError(f"{path}: {key}.name: missing or not a plain name")
        if name in seen:
            raise ConfigError(f"{path}: {key}.name: duplicate source name {name!r}")
        seen.add(name)
        if not isinstance(stype, str) or stype not in SOURCE_TYPES:
            raise ConfigError(f"{path}: {key}.type: must be one of "
                              f"{', '.join(sorted(SOURCE_TYPES))}")
        options = {k: v for k, v in src.items() if k not in ("name", "type")}
        sources.append(SourceConfig(name, str(stype), options, key, base))
    return Config(path, repository, passphrase, state_dir, sources, raw, cache_dir,
                  _retention(raw.get("retention"), path), _metrics(raw.get("metrics"), base, path),
                  _notify(raw.get("notify"), base, path), _drill(raw.get("drill"), base, path))


def _section(value: Any, key: str, allowed: set[str], path: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: must be a mapping ({', '.join(sorted(allowed))})")
    _no_unknown(value, allowed, f"{key}.", path)
    return value


def _duration(value: Any, key: str, path: Path) -> timedelta:
    try:
        return parse_duration(value if isinstance(value, str) else "")
    except ValueError as exc:
        raise ConfigError(f"{path}: {key}: {exc}") from None


def _retention(value: Any, path: Path) -> RetentionConfig:
    raw = _section(value, "retention", RETENTION_KEYS, path)
    out = RetentionConfig()
    for key in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                "keep_yearly"):
        if key in raw:
            n = raw[key]
            if isinstance(n, bool) or not isinstance(n, int) or n < -1:
                raise ConfigError(f"{path}: retention.{key}: must be a count (-1 keeps all)")
            setattr(out, key, n)
    if raw.get("keep_within") is not None:
        out.keep_within = _duration(raw["keep_within"], "retention.keep_within", path)
    tags = raw.get("keep_tag") or []
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise ConfigError(f"{path}: retention.keep_tag: must be a tag or a list of tags")
    out.keep_tag = list(tags)
    return out


def _metrics(value: Any, base: Path, path: Path) -> Path | None:
    raw = _section(value, "metrics", METRICS_KEYS, path)
    textfile = raw.get("textfile")
    if textfile is None:
        return None
    if not isinstance(textfile, str) or not textfile:
        raise ConfigError(f"{path}: metrics.textfile: must be a path")
    return _resolve_path(textfile, base)


def _notify(value: Any, base: Path, path: Path) -> NotifyConfig:
    raw = _section(value, "notify", NOTIFY_KEYS, path)
    out = NotifyConfig()
    command = raw.get("command")
    if command is not None:
        if isinstance(command, str) and command.strip():
            try:
                out.command = shlex.split(command)
            except ValueError as exc:  # an unbalanced quote or a trailing backslash
                raise ConfigError(f"{path}: notify.command: {exc}") from None
        elif (isinstance(command, list) and command
              and all(isinstance(c, str) for c in command)):
            out.command = list(command)
        else:
            raise ConfigError(f"{path}: notify.command: must be a command line or a list of "
                              "arguments")
    url = raw.get("webhook_url")
    if url is not None:
        if isinstance(url, str):
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{path}: notify.webhook_url: must be an http(s) URL")
            out.webhook_url = url
        else:
            out.webhook_url = parse_secret_ref(url, "notify.webhook_url", str(path), base)
    timeout = raw.get("timeout", out.timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"{path}: notify.timeout: must be a number of seconds")
    out.timeout = float(timeout)
    return out


def _drill(value: Any, base: Path, path: Path) -> DrillConfig:
    raw = _section(value, "drill", DRILL_KEYS, path)
    out = DrillConfig()
    if raw.get("max_age") is not None:
        out.max_age = _duration(raw["max_age"], "drill.max_age", path)
    scratch = raw.get("scratch_dir")
    if scratch is not None:
        if not isinstance(scratch, str) or not scratch:
            raise ConfigError(f"{path}: drill.scratch_dir: must be a path")
        out.scratch_dir = _resolve_path(scratch, base)
    return out


def _object_lock(value: Any, path: Path) -> dict[str, Any] | None:
    if value is None:
        return None
    raw = _section(value, "repository.object_lock", OBJECT_LOCK_KEYS, path)
    mode = raw.get("mode", "GOVERNANCE")
    if not isinstance(mode, str) or mode.upper() not in OBJECT_LOCK_MODES:
        raise ConfigError(f"{path}: repository.object_lock.mode: must be GOVERNANCE or "
                          "COMPLIANCE")
    days = raw.get("days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 36500:
        raise ConfigError(f"{path}: repository.object_lock.days: must be a number of days "
                          "(1 to 36500)")
    return {"mode": mode.upper(), "days": days}


def _resolve_repo_url(url: str, base: Path) -> str:
    if url.startswith("s3://"):
        return url
    if url.startswith("file://"):
        rest = url[len("file://"):]
        return "file://" + str(_resolve_path(rest, base))
    if "://" in url:
        return url  # open_store reports the unsupported scheme
    return "file://" + str(_resolve_path(url, base))


def _resolve_path(value: str, base: Path) -> Path:
    try:
        if "\0" in value:
            raise ValueError  # no file system takes it
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path).resolve()
    except (RuntimeError, ValueError):  # ~unknown-user, or a NUL character
        raise ConfigError(f"config: path {value[:100]!r} cannot be used (unknown user in "
                          "~user, or a NUL character)") from None


def _opt_str(obj: dict[str, Any], key: str, prefix: str, path: Path) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {prefix}{key}: must be a string")
    return value


def _no_unknown(obj: dict[str, Any], allowed: set[str], prefix: str, path: Path) -> None:
    for key in obj:
        if key not in allowed:
            raise ConfigError(f"{path}: {prefix}{shown_key(key)}: unknown key (allowed: "
                              f"{', '.join(sorted(allowed))})")


def shown_key(key: Any) -> str:
    """A key from the file as an error message shows it: on one line, and short."""
    if isinstance(key, str) and key.isprintable() and len(key) <= 60:
        return key
    return repr(key)[:60]


def option(src: SourceConfig, key: str, kind: type, default: Any, path: Path) -> Any:
    """A typed option of a source, with an error naming `sources[N].key` on a bad value."""
    value = src.options.get(key, default)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{path}: {src.key}.{key}: must be an integer")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{path}: {src.key}.{key}: must be a string")
    return value
