"""Snapshot times against the clock: what counts as "now", and which snapshots are in the future.

A snapshot's time decides which one is `latest`, which one the next night builds on (its cursors
say where the source's incremental export starts) and how old the newest backup is. One night
with the clock far ahead (or a mistyped `snapshot --time`) would otherwise freeze all of that:
the future-dated snapshot stays the newest for good, and the nights after it use its cursors and
store nothing new. So a snapshot dated more than MAX_CLOCK_SKEW after now is never taken as the
newest: not as a parent, not as `latest`, not by retention, not for a drill's recovery point.

"Now" is a Clock (a function returning an aware UTC datetime) passed in by the caller, so tests
give the library any time they need without touching the machine's clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from sellerbak.errors import SellerbakError, UsageError

#: how far a snapshot may be dated after this machine's "now" and still count as the newest:
#: room for two machines' clocks disagreeing by a little, not for a clock that is wrong
MAX_CLOCK_SKEW = timedelta(minutes=5)

Clock = Callable[[], datetime]


class Dated(Protocol):
    """What the checks need of a snapshot (a Manifest has all of it)."""

    id: bytes
    source: str
    time: str

    @property
    def datetime(self) -> datetime: ...


D = TypeVar("D", bound=Dated)


class ClockBehindError(SellerbakError):
    """This machine's clock says it is earlier than the snapshot a new one would build on; the
    new snapshot would be older than its parent (and never become `latest`)."""


def system_clock() -> datetime:
    """The machine's time, in UTC."""
    return datetime.now(UTC)


def is_future(snapshot: Dated, now: datetime) -> bool:
    """True when the snapshot is dated more than MAX_CLOCK_SKEW after `now`."""
    return snapshot.datetime > now + MAX_CLOCK_SKEW


def split_future(snapshots: Iterable[D], now: datetime) -> tuple[list[D], list[D]]:
    """(snapshots not in the future, snapshots dated in the future), each in the given order."""
    past: list[D] = []
    future: list[D] = []
    for s in snapshots:
        (future if is_future(s, now) else past).append(s)
    return past, future


def future_warning(snapshot: Dated, what: str) -> str:
    """The warning naming a future-dated snapshot and what was done about it."""
    return (f"snapshot {snapshot.id.hex()[:8]} of {snapshot.source} is dated {snapshot.time}, "
            f"in the future (this machine's clock was ahead, or --time was); {what}; remove it "
            f"with 'sellerbak forget {snapshot.id.hex()[:8]}' if it is wrong")


def check_new_snapshot_time(when: datetime, now: datetime, parent: Dated | None,
                            given: bool) -> None:
    """Refuse a new snapshot time in the future, or before the time of the snapshot it follows
    (`parent`: the newest not-future snapshot of its source). `given` says the time came from
    `--time` (a usage error) rather than from this machine's clock (a clock problem)."""
    stamp = when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    if when > now + MAX_CLOCK_SKEW:
        raise UsageError(f"--time {stamp} is in the future; a snapshot may not be dated "
                         "after now")
    if parent is None or when >= parent.datetime:
        return
    name = f"snapshot {parent.id.hex()[:8]} of {parent.source} ({parent.time})"
    if given:
        raise UsageError(f"--time {stamp} is before {name}, the newest of its source; a "
                         "snapshot may not be older than the one before it")
    raise ClockBehindError(f"this machine's clock ({stamp}) is behind the time of {name}, the "
                           "newest of its source; fix the clock (NTP) and run again; nothing "
                           "was stored")
