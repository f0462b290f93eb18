"""The `diff` command: records added, removed and changed between two snapshots."""

from __future__ import annotations
