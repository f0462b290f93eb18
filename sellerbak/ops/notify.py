"""Failure notices (placeholder until written)."""

from __future__ import annotations

from typing import Any


def notify_failure(config: Any, summary: dict[str, Any]) -> list[str]:
    return []
