"""YAML configuration -> typed config. Every error names the file and the key at fault.

Relative paths in the config (the repository path, a `files` source's path, secret files) are
relative to the config file's directory, so a config works the same from any working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sellerbak.credentials import SecretRef, parse_secret_ref
from sellerbak.errors import ConfigError

SEARCH_PATH = ("./sellerbak.yaml", "~/.config/sellerbak/config.yaml",
               "/etc/sellerbak/config.yaml")
TOP_KEYS = {"repository", "passphrase", "state_dir", "cache_dir", "sources"}
REPO_KEYS = {"url", "endpoint_url", "region", "storage_class", "kdf"}
KDF_KEYS = {"m_kib", "t", "p"}
SOURCE_TYPES = {"demo", "files", "tiktok"}


@dataclass
class RepositoryConfig:
    url: str
    endpoint_url: str | None = None
    region: str | None = None
    storage_class: str | None = None
    kdf: dict[str, int] = field(default_factory=dict)


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

    def source(self, name: str) -> SourceConfig:
        for src in self.sources:
            if src.name == name:
                return src
        names = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"{self.path}: no source named {name!r} (configured: {names})")


def find_config(explicit: str | None) -> Path:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    env = os.environ.get("SELLERBAK_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
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
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({exc.problem})") from None
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
        kdf=dict(kdf))

    passphrase = None
    if raw.get("passphrase") is not None:
        passphrase = parse_secret_ref(raw["passphrase"], "passphrase", str(path), base)

    state_dir_raw = raw.get("state_dir") or os.environ.get("STATE_DIRECTORY") \
        or "~/.local/state/sellerbak"
    if not isinstance(state_dir_raw, str):
        raise ConfigError(f"{path}: state_dir: must be a path")
    state_dir = _resolve_path(state_dir_raw.split(":")[0], base)

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
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"{path}: {key}.name: missing or not a plain name")
        if name in seen:
            raise ConfigError(f"{path}: {key}.name: duplicate source name {name!r}")
        seen.add(name)
        if stype not in SOURCE_TYPES:
            raise ConfigError(f"{path}: {key}.type: must be one of "
                              f"{', '.join(sorted(SOURCE_TYPES))}")
        options = {k: v for k, v in src.items() if k not in ("name", "type")}
        sources.append(SourceConfig(name, str(stype), options, key, base))
    return Config(path, repository, passphrase, state_dir, sources, raw)


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
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


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
            raise ConfigError(f"{path}: {prefix}{key}: unknown key (allowed: "
                              f"{', '.join(sorted(allowed))})")


def option(src: SourceConfig, key: str, kind: type, default: Any, path: Path) -> Any:
    """A typed option of a source, with an error naming `sources[N].key` on a bad value."""
    value = src.options.get(key, default)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{path}: {src.key}.{key}: must be an integer")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{path}: {src.key}.{key}: must be a string")
    return value
