"""Objects in the repository that do not open or parse, and how they are reported.

Anyone who can write to the bucket can plant bytes under a valid-looking name (`index/<hex>`,
`snapshots/<hex>`), and under S3 Object Lock nobody can remove them again before their
retention ends. Such an object cannot be authenticated, so it is not part of the repository:
readers leave it out, say so once per run (a warning naming the object), and `check` reports
it as an error (damage, or an attack).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: what an unreadable object may be, in the words every report uses
SUSPECT = "damaged, or planted by someone without the key"

_warned: set[str] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Unreadable:
    """One object left out: its name, and why it could not be read (never its content)."""

    name: str
    reason: str

    def describe(self) -> str:
        reason = self.reason
        if reason.startswith(self.name + " "):  # "index/… failed authentication: …"
            reason = "it " + reason[len(self.name) + 1:]
        elif reason.startswith(self.name + ":"):  # "index/…: bad index magic"
            reason = reason[len(self.name) + 1:].lstrip()
        return f"{self.name} cannot be read ({SUSPECT}): {reason}"


def warn_once(item: Unreadable) -> None:
    """One warning line per object per process: a run may load the index or the manifests
    more than once (snapshot starts afresh after a failed source), the user needs it once."""
    with _warned_lock:
        if item.name in _warned:
            return
        _warned.add(item.name)
    log.warning("skipping %s", item.describe())
