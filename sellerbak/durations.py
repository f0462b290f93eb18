"""Durations as operators write them: `36h`, `7d`, `1y6m`, `2w3d12h30m` (restic's spelling).

One parser serves `forget --keep-within`, `drill.max_age` and lock waits, so a duration means
the same everywhere. Units: y (365 days), m (month = 30 days, as in restic's keep-within: the
letter m is a month there, so minutes are written `min`), w, d, h, min, s.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"y": timedelta(days=365), "m": timedelta(days=30), "w": timedelta(weeks=1),
          "d": timedelta(days=1), "h": timedelta(hours=1), "min": timedelta(minutes=1),
          "s": timedelta(seconds=1)}
_PART = re.compile(r"(\d{1,6})(min|y|m|w|d|h|s)")


def parse_duration(text: str) -> timedelta:
    """`1y2m3d4h` -> timedelta; ValueError (with the accepted spelling) on anything else."""
    cleaned = text.strip().replace(" ", "") if isinstance(text, str) else ""
    pos, total, seen = 0, timedelta(0), False
    while pos < len(cleaned):
        match = _PART.match(cleaned, pos)
        if match is None:
            break
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos, seen = match.end(), True
    if not seen or pos != len(cleaned):
        raise ValueError(f"{text!r} is not a duration (write it like 36h, 7d, 1y6m or 90min; "
                         "units y, m (30 days), w, d, h, min, s)")
    return total


def format_duration(delta: timedelta) -> str:
    """A short human spelling of a duration (`2d 3h`, `45min`, `12s`)."""
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "-" + format_duration(-delta)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "",
             f"{minutes}min" if minutes and not days else "",
             f"{secs}s" if secs and not days and not hours else ""]
    return " ".join(p for p in parts if p) or "0s"
