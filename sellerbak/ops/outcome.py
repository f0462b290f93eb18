"""What one run of a command did, as monitoring needs it (metrics file, failure notices).

Commands fill it in as they go; `sellerbak.cli.main` completes it with the exit code and the
error line, then hands it to the metrics writer and, on failure, to the notifier. It holds
counts, sizes and ids only: never a secret, never a record's content.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DatasetCount:
    source: str
    dataset: str
    records: int
    bytes: int


@dataclass
class RunOutcome:
    command: str
    started: float = field(default_factory=time.time)
    finished: float | None = None
    exit_code: int | None = None
    #: the one `error:` line printed on failure (already free of secrets and customer data)
    error: str | None = None
    #: bytes newly stored in the repository (snapshot, prune repacks)
    bytes_added: int | None = None
    #: records and bytes per source and dataset (snapshot, drill)
    datasets: list[DatasetCount] = field(default_factory=list)
    #: snapshot ids this run wrote or verified
    snapshots: list[str] = field(default_factory=list)
    #: further numeric results by metric suffix, e.g. {"rto_seconds": 3.2, "bytes_freed": 10}
    gauges: dict[str, float] = field(default_factory=dict)
    hostname: str = field(default_factory=socket.gethostname)

    @property
    def duration(self) -> float:
        return (self.finished or time.time()) - self.started

    @property
    def success(self) -> bool:
        return self.exit_code == 0

    def summary(self) -> dict[str, Any]:
        """The short JSON summary a failure notice carries."""
        return {"tool": "sellerbak", "command": self.command, "host": self.hostname,
                "exit_code": self.exit_code, "success": self.success, "error": self.error,
                "started": round(self.started, 3),
                "duration_seconds": round(self.duration, 3), "snapshots": self.snapshots,
                "bytes_added": self.bytes_added}
