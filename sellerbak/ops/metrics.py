"""Prometheus textfile metrics (placeholder until written)."""

from __future__ import annotations

from pathlib import Path

from sellerbak.ops.outcome import RunOutcome


def write_run_metrics(path: Path, outcome: RunOutcome) -> None:
    raise NotImplementedError
