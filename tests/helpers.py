"""Helpers shared by the tests: configs, in-memory sources, running the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from sellerbak.backup.exporters.base import DatasetExport
from sellerbak.crypto.kdf import KdfParams
from sellerbak.repository.repo import Repository
from sellerbak.storage.base import Store

PASSPHRASE = "test passphrase \u00e9"
FAST_KDF = {"m_kib": 19456, "t": 2, "p": 1}


def fast_kdf() -> KdfParams:
    return KdfParams("argon2id", os.urandom(32), **FAST_KDF)


def init_repo(store: Store) -> Repository:
    return Repository.init(store, PASSPHRASE, fast_kdf())


def open_repo(store: Store) -> Repository:
    return Repository.open(store, lambda: PASSPHRASE)


class ListSource:
    """A source whose datasets are given in memory; `changes` switches to incremental mode."""

    type = "test"

    def __init__(self, name: str, datasets: dict[str, list[dict[str, Any]]],
                 changes: dict[str, tuple[list[dict[str, Any]], list[str]]] | None = None,
                 incomplete: set[str] | None = None) -> None:
        self.name = name
        self.data = datasets
        self.changes = changes or {}
        self.incomplete = incomplete or set()
        self.cursors_seen: dict[str, Any] = {}

    def export(self, cursors: dict[str, Any], full: bool) -> Iterator[DatasetExport]:
        self.cursors_seen = dict(cursors)
        for name, records in self.data.items():
            ok = name not in self.incomplete
            problem = None if ok else "test: source stopped early"
            if name in self.changes and name in cursors and not full:
                recs, deleted = self.changes[name]
                yield DatasetExport(name, recs, mode="changes", deleted_ids=deleted,
                                    cursor={"n": cursors[name]["n"] + 1}, complete=ok,
                                    problem=problem)
            else:
                yield DatasetExport(name, records, cursor={"n": 0}, complete=ok,
                                    problem=problem)


def write_config(directory: Path, url: str, sources: list[dict[str, Any]],
                 **extra: Any) -> Path:
    cfg = {"repository": {"url": url, "kdf": dict(FAST_KDF)}, "sources": sources,
           "state_dir": str(directory / "state")}
    for key, value in extra.items():
        if key == "repository":
            cfg["repository"].update(value)
        else:
            cfg[key] = value
    path = directory / "sellerbak.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELLERBAK_")}
    env["SELLERBAK_PASSPHRASE"] = PASSPHRASE
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user or systemd runs it."""
    return subprocess.run([sys.executable, "-m", "sellerbak", *args], capture_output=True,
                          text=True, env=env if env is not None else cli_env(),
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)


def canonical_sorted(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: str(r["id"]))
