"""The `systemd` command: writes the service and timer units for nightly snapshots."""

from __future__ import annotations
