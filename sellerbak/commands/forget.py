"""The `forget` command: retention policies applied per source."""

from __future__ import annotations
