"""Hostile YAML configs: any text ends in a Config or a ConfigError naming what is wrong.

The config is the one input an operator writes by hand (or a deployment tool templates), so a
typo must never end in a traceback; and a small file must never turn into a huge structure
(YAML alias and merge-key "billion laughs" bombs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sellerbak import safeyaml
from sellerbak.backup.exporters import validate_sources
from sellerbak.backup.exporters.tiktok import TIKTOK_KEYS
from sellerbak.config import Config, parse_config
from sellerbak.errors import ConfigError
from tests.hostile import (
    DEEP,
    HOSTILE,
    json_text,
    json_values,
    mutate_json,
    replacements,
    watchdog,
)

CONFIG_PATH = Path("/nonexistent/sellerbak-hostile/sellerbak.yaml")

BASE = {
    "repository": {"url": "./repo", "kdf": {"m_kib": 19456, "t": 2, "p": 1},
                   "object_lock": {"mode": "GOVERNANCE", "days": 30}},
    "passphrase": {"env": "SELLERBAK_TEST_PASSPHRASE"},
    "state_dir": "./state",
    "cache_dir": "./cache",
    "sources": [
        {"name": "demo", "type": "demo", "seed": 1, "orders": 20, "night": 0},
        {"name": "files", "type": "files", "path": "./exports"},
        {"name": "tts", "type": "tiktok", "app_key": "29a39d",
         "app_secret": {"env": "TTS_APP_SECRET"}, "refresh_token": {"file": "./token"},
         "shop_cipher": "GCP_XF90igAAAABh", "api_url": "https://open-api.example.com",
         "auth_url": "https://auth.example.com", "datasets": ["orders", "finance"],
         "requests_per_second": 2, "page_size": 50, "overlap_seconds": 600,
         "since": "2024-01-01", "window_records": 5000, "timeout_seconds": 30},
    ],
    "retention": {"keep_last": 3, "keep_daily": 7, "keep_within": "30d", "keep_tag": ["x"]},
    "metrics": {"textfile": "./metrics.prom"},
    "notify": {"command": "logger -t sellerbak", "webhook_url": "https://hooks.example.com/x",
               "timeout": 5},
    "drill": {"max_age": "2d", "scratch_dir": "./scratch"},
}

#: YAML that PyYAML reads in surprising ways
YAML_SNIPPETS = [
    "!!binary AAAA", "!!binary ???", "!!timestamp 2024-13-01", "!!timestamp x", "!!bool maybe",
    "2024-02-30", "2024-01-01 25:00",
    "!!python/object:os.system x", "!!int 0x", "!!float x", "0o777", "0x1F", "1_000", ".inf",
    "-.inf", ".nan", "~", "? [a]\n: 1", "<<: 1", "<<: [1]", "&a [*a]", "*undefined", "!!set {a}",
    "%YAML 1.1\n---\n", "---\na\n---\nb", "\t- x", "\x00", "\ufeff", "\x85", "'unterminated",
    '"\\uD800"', "@x", "`x", "|\n  block", ">-\n  folded", "{a: 1, a: 2}", "- - - - -",
    "a: b: c", "9" * 5000, "[" * 200, "{" * 200,
]


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    with watchdog():
        yield


def _parse(text: str) -> Config | None:
    """parse_config then the source registry's option checks, as every command runs them."""
    try:
        config = parse_config(text, CONFIG_PATH)
        validate_sources(config)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message.rstrip("\n") or "YAML" in message
        assert len(message) < 2000
        return None
    assert isinstance(config.sources, list) and isinstance(config.repository.url, str)
    return config


def test_base_config_is_valid() -> None:
    config = _parse(yaml.safe_dump(BASE))
    assert config is not None and [s.name for s in config.sources] == ["demo", "files", "tts"]


@HOSTILE
@given(st.text(max_size=300))
def test_config_any_text(text: str) -> None:
    _parse(text)


@HOSTILE
@given(st.data())
def test_config_mutations(data: st.DataObject) -> None:
    """One member anywhere in a full config replaced, removed or added (written as JSON, which
    YAML reads as flow style; bare number spellings included)."""
    _parse(json_text(mutate_json(BASE, data)))


@HOSTILE
@given(st.dictionaries(st.sampled_from(sorted(TIKTOK_KEYS)), json_values, max_size=6))
def test_tiktok_source_options(options: dict[str, object]) -> None:
    doc = dict(BASE, sources=[dict(options, name="tts", type="tiktok")])
    _parse(json_text(doc))


@HOSTILE
@given(st.data())
def test_config_yaml_splices(data: st.DataObject) -> None:
    """Real YAML with some of it cut out and YAML oddities (or any text) put in its place."""
    text = yaml.safe_dump(BASE)
    pos = data.draw(st.integers(min_value=0, max_value=len(text)))
    cut = data.draw(st.integers(min_value=pos, max_value=min(len(text), pos + 40)))
    insert = data.draw(st.sampled_from(YAML_SNIPPETS) | st.text(max_size=20))
    _parse(text[:pos] + insert + text[cut:])


def test_config_every_member_replaced() -> None:
    for text in replacements(BASE):
        _parse(text)


@pytest.mark.parametrize("snippet", YAML_SNIPPETS, ids=range(len(YAML_SNIPPETS)))
def test_config_yaml_oddities_everywhere(snippet: str) -> None:
    """Each oddity as the value of every key of a real config."""
    lines = yaml.safe_dump(BASE).splitlines()
    for i, line in enumerate(lines):
        if ":" in line:
            key = line.split(":", 1)[0]
            _parse("\n".join([*lines[:i], f"{key}: {snippet}", *lines[i + 1:]]))


def _laughs(levels: int) -> str:
    """The classic alias bomb: each level lists the previous one nine times."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines)


def _merge_bomb(levels: int) -> str:
    """Merge keys copy the entries they merge: 9 merges per level grow as 9^levels."""
    lines = ["m0: &m0 {k0: 0, k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7, k8: 8}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}"
              for i in range(1, levels + 1)]
    return "\n".join(lines)


def test_billion_laughs_is_refused() -> None:
    """9^9 'lol's: refused while still a 1 KiB node graph (nothing walks it expanded)."""
    text = "repository: {url: ./repo}\nsources:\n- name: t\n  type: tiktok\n  datasets: *a9\n"
    with pytest.raises(ConfigError, match="aliases expand"):
        parse_config(_laughs(9) + "\n" + text, CONFIG_PATH)


def test_merge_key_bomb_is_refused_before_construction() -> None:
    """Without the bound PyYAML itself spends seconds and hundreds of MiB on six levels
    (merging copies), and grows ninefold per level after that."""
    with pytest.raises(ConfigError, match="aliases expand"):
        parse_config(_merge_bomb(6), CONFIG_PATH)
    with pytest.raises(yaml.YAMLError):
        safeyaml.load(_merge_bomb(12))


def test_moderate_aliases_still_work() -> None:
    """Anchors shared between sources (a normal use) load as before."""
    text = yaml.safe_dump(BASE) + "x-common: &common {app_key: '1'}\n"
    doc = safeyaml.load(text + "other: *common\n")
    assert doc["other"] == {"app_key": "1"}
    assert safeyaml.load("a: &a {k: 1}\nb: {<<: *a, j: 2}\n")["b"] == {"k": 1, "j": 2}


@pytest.mark.parametrize("text", ["a: &a [*a]", "a: &a {b: *a}", "a: &a [[[*a]]]"])
def test_self_referencing_aliases_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="refers to the value that contains it"):
        parse_config(text, CONFIG_PATH)


@pytest.mark.parametrize("text", ["[" * DEEP + "]" * DEEP, "{a: " * DEEP + "1" + "}" * DEEP,
                                  "".join(f"{' ' * i}- \n" for i in range(2000)),
                                  "repository: {url: " + "[" * DEEP + "}"],
                         ids=["flow-list", "flow-map", "block-list", "unterminated"])
def test_deep_nesting(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(text, CONFIG_PATH)


@pytest.mark.parametrize("where", [
    {"repository": {"url": "~no-such-user-sellerbak/repo"}},
    {"repository": {"url": "./repo\0x"}},
    {"state_dir": "/var/lib/x\0y"},
    {"sources": [{"name": "f", "type": "files", "path": "~no-such-user-sellerbak/x"}]},
    {"notify": {"command": "logger 'unbalanced"}},
    {"sources": [{"name": "t", "type": "tiktok", "app_key": "1",
                  "app_secret": {"env": "X"}, "api_url": "https://[::1"}]},
    {"sources": [{"name": "t", "type": "tiktok", "app_key": "1",
                  "app_secret": {"env": "X"}, "auth_url": "http://localhost:99999999"}]},
], ids=["url-user", "url-nul", "state-nul", "files-user", "notify-quote", "tts-ipv6",
        "tts-port"])
def test_targeted_values(where: dict[str, object]) -> None:
    doc = {k: v for k, v in BASE.items() if k not in ("sources",)}
    doc.update(where)
    _parse(json_text(doc))


@pytest.mark.parametrize("ref", ["~no-such-user-sellerbak/pass", "/tmp/x\0y", "/", "latin-1",
                                 "missing"])
def test_secret_files_resolve_or_fail_clearly(tmp_path: Path, ref: str) -> None:
    """A `{file: PATH}` secret that cannot be read ends in a ConfigError naming the key (and
    never the secret)."""
    (tmp_path / "latin-1").write_bytes(b"caf\xe9 hunter2")
    doc = dict(BASE, passphrase={"file": ref})
    config = parse_config(json_text(doc), tmp_path / "sellerbak.yaml")
    assert config.passphrase is not None
    with pytest.raises(ConfigError, match="^passphrase: ") as err:
        config.passphrase.resolve()
    assert "hunter2" not in str(err.value)
