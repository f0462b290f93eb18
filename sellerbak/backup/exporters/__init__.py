"""Source registry: builds the exporter a config's `sources:` entry asks for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sellerbak.backup.exporters.base import Source
from sellerbak.config import Config, SourceConfig, option, shown_key
from sellerbak.errors import ConfigError

DEMO_KEYS = {"seed", "orders", "night"}
FILES_KEYS = {"path"}


def validate_sources(config: Config) -> None:
    """Check every source's options when the config is loaded, so a typo is reported by any
    command, not first by the nightly snapshot."""
    for src in config.sources:
        _options(config, src)


def _options(config: Config, src: SourceConfig) -> dict[str, Any]:
    path = config.path
    if src.type == "demo":
        _only(src, DEMO_KEYS, path)
        orders = option(src, "orders", int, 2000, path)
        if orders < 1 or orders > 50_000_000:
            raise ConfigError(f"{path}: {src.key}.orders: must be between 1 and 50000000")
        night = src.options.get("night")
        if night is not None and (isinstance(night, bool) or not isinstance(night, int)
                                  or night < 0):
            raise ConfigError(f"{path}: {src.key}.night: must be a non-negative integer")
        return {"seed": option(src, "seed", int, 1, path), "orders": orders, "night": night}
    if src.type == "files":
        _only(src, FILES_KEYS, path)
        raw = option(src, "path", str, None, path)
        try:
            if "\0" in raw:
                raise ValueError
            p = Path(raw).expanduser()
        except (RuntimeError, ValueError):  # ~unknown-user, or a NUL character
            raise ConfigError(f"{path}: {src.key}.path: not a usable path") from None
        return {"path": p if p.is_absolute() else src.base_dir / p}
    if src.type == "tiktok":
        return {"tiktok": _tiktok_options(config, src)}
    raise ConfigError(f"{path}: {src.key}.type: source type {src.type!r} is not available yet")


def _tiktok_options(config: Config, src: SourceConfig) -> Any:
    """`type: tiktok`: validated by the tiktok package (keys, secrets, URLs, datasets)."""
    from sellerbak.backup.exporters.tiktok import parse_options

    return parse_options(config, src)


def build_source(config: Config, src: SourceConfig) -> Source:
    opts = _options(config, src)
    if src.type == "demo":
        from sellerbak.backup.exporters.demo import DemoSource

        night = opts["night"] if opts["night"] is not None else demo_night(config, src.name)
        return DemoSource(src.name, seed=opts["seed"], orders=opts["orders"], night=night)
    if src.type == "tiktok":
        from sellerbak.backup.exporters.tiktok import TikTokSource

        return TikTokSource(src.name, opts["tiktok"])
    from sellerbak.backup.exporters.files import FilesSource

    return FilesSource(src.name, opts["path"])


def _only(src: SourceConfig, allowed: set[str], path: Path) -> None:
    for key in src.options:
        if key not in allowed:
            raise ConfigError(f"{path}: {src.key}.{shown_key(key)}: unknown key for a {src.type} "
                              f"source (allowed: {', '.join(sorted(allowed))})")


def _demo_state(config: Config, name: str) -> Path:
    return config.state_dir / "demo" / f"{name}.json"


def demo_night(config: Config, name: str) -> int:
    """The night a demo shop has been advanced to with `sellerbak demo advance`."""
    try:
        return int(json.loads(_demo_state(config, name).read_text())["night"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def advance_demo(config: Config, name: str, nights: int) -> int:
    night = demo_night(config, name) + nights
    from sellerbak.localfiles import write_private

    write_private(_demo_state(config, name), json.dumps({"night": night}).encode(),
                  f"the state of demo source {name}")
    return night
