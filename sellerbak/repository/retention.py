"""Retention policies: which snapshots `forget` keeps, and why (restic's semantics, per source).

Pure code: no repository access, so the rules can be pinned by tests on hand-made timelines.
The rules are restic's `ApplyPolicy`, so an operator's restic habits carry over:

- each source's snapshots are judged alone, newest first (equal times: larger id first, so the
  outcome never depends on the order the store lists objects in);
- `keep_last N` keeps the N newest;
- `keep_hourly/daily/weekly/monthly/yearly N` walk the snapshots newest first and keep the first
  (newest) snapshot of each hour/day/ISO week/month/year seen, until N such periods are kept;
  -1 keeps one snapshot of every period. When the walk reaches the oldest snapshot with periods
  still to fill, that snapshot is kept too (restic's "oldest daily snapshot"): the history kept
  reaches as far back as there is history. Periods are cut in UTC, whatever the host's zone;
- `keep_within D` keeps every snapshot taken less than D before the group's newest snapshot
  (not before now: a source that stopped backing up keeps its last days of history);
- `keep_tag T` keeps every snapshot carrying tag T (not counted against any bucket).

A snapshot is kept when any rule keeps it; the reasons list every rule that did.

A snapshot dated in the future (more than timeline.MAX_CLOCK_SKEW after now: the clock was
ahead, or `--time` was) is judged by no rule: counted, it would be the "newest" and push real
snapshots out of every bucket. It is kept, marked `future`, and `forget` names it in a warning,
so it is neither lost by accident nor kept silently forever (`forget ID` removes it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sellerbak.errors import SellerbakError, UsageError
from sellerbak.repository.timeline import MAX_CLOCK_SKEW

#: bucket name -> the period a UTC time falls in (restic's ymdh, ymd, yw, ym, y)
_PERIODS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}
COUNT_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


class Snapshot(Protocol):
    """What the policy needs of a snapshot (a Manifest has all of it)."""

    id: bytes
    source: str
    tags: list[str]

    @property
    def datetime(self) -> datetime: ...


class LastSnapshotError(SellerbakError):
    """The policy would remove every snapshot of a source; restic refuses this too, since it
    is almost always a mistyped tag or option rather than a wish to lose the source's history."""


@dataclass(frozen=True)
class RetentionPolicy:
    """Counts are 0 (rule off), N, or -1 (unlimited). Build with `from_config` and
    `with_overrides` so that each command-line option replaces only its own config default."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None
    keep_tag: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for rule in COUNT_RULES:
            n = getattr(self, f"keep_{rule}")
            if isinstance(n, bool) or not isinstance(n, int) or n < -1:
                raise UsageError(f"--keep-{rule} must be a count (-1 keeps all), not {n!r}")
        if self.keep_within is not None and self.keep_within < timedelta(0):
            raise UsageError("--keep-within must not be negative")
        if any(not isinstance(t, str) or not t for t in self.keep_tag):
            raise UsageError("--keep-tag needs a non-empty tag")

    @classmethod
    def from_config(cls, retention: Any) -> RetentionPolicy:
        """The `retention:` section (sellerbak.config.RetentionConfig) as a policy."""
        return cls(*(getattr(retention, f"keep_{r}") for r in COUNT_RULES),
                   keep_within=retention.keep_within, keep_tag=tuple(retention.keep_tag))

    def with_overrides(self, **options: Any) -> RetentionPolicy:
        """This policy with the given options replaced; None means "not given, keep the
        default" (so `--keep-daily 0` switches a config rule off, while omitting it keeps it)."""
        given = {k: (tuple(v) if k == "keep_tag" else v) for k, v in options.items()
                 if v is not None}
        return replace(self, **given)

    @property
    def within(self) -> timedelta | None:
        """keep_within if it keeps anything (a zero duration is "not set", as in restic)."""
        return self.keep_within if self.keep_within else None

    def is_empty(self) -> bool:
        return (all(getattr(self, f"keep_{r}") == 0 for r in COUNT_RULES)
                and self.within is None and not self.keep_tag)

    def require_rules(self) -> None:
        """An empty policy is a usage error, never "forget everything" (nor a silent no-op)."""
        if self.is_empty():
            raise UsageError("no retention policy: give --keep-last/--keep-hourly/--keep-daily/"
                             "--keep-weekly/--keep-monthly/--keep-yearly/--keep-within/"
                             "--keep-tag, or set them in the config's retention: section; "
                             "no snapshot was removed")

    def describe(self) -> str:
        """One line saying what the policy keeps, as `forget` prints it before acting."""
        counts = []
        for rule in COUNT_RULES:
            n = getattr(self, f"keep_{rule}")
            name = "latest" if rule == "last" else rule
            if n > 0:
                counts.append(f"{n} {name}")
            elif n == -1:
                counts.append(f"all {name}")
        parts = [f"{', '.join(counts)} snapshots"] if counts else []
        if any(getattr(self, f"keep_{r}") for r in _PERIODS):
            parts[0] += " (periods in UTC)"
        if self.keep_tag:
            parts.append("all snapshots tagged " + " or ".join(self.keep_tag))
        if self.within is not None:
            parts.append(f"all snapshots within {spell_duration(self.within)} of the newest")
        return "keep " + " and ".join(parts) if parts else "keep nothing"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"keep_{r}": getattr(self, f"keep_{r}") for r in COUNT_RULES}
        out["keep_within"] = spell_duration(self.within) if self.within else None
        out["keep_tag"] = list(self.keep_tag)
        return out


@dataclass
class Decision:
    manifest: Any
    keep: bool
    #: why it is kept, e.g. ["last snapshot", "daily snapshot", "within 7d", "tagged keep"]
    reasons: list[str] = field(default_factory=list)
    #: dated in the future: kept, judged by no rule (see the module docstring)
    future: bool = False


def spell_duration(delta: timedelta) -> str:
    """A duration in the spelling `parse_duration` reads back: `7d`, `1d12h`, `90min`."""
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = "".join(f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min"),
                                                  (secs, "s")) if n)
    return out or "0s"


def _utc(snapshot: Snapshot) -> datetime:
    when = snapshot.datetime
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)


def newest_first(snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    return sorted(snapshots, key=lambda s: (_utc(s), s.id), reverse=True)


def apply_policy(manifests: Iterable[Snapshot], policy: RetentionPolicy,
                 now: datetime | None = None) -> list[Decision]:
    """Judge every snapshot: each source's group alone, sources in name order, newest first
    within a source. `now` only matters for snapshots dated in the future (see the module
    docstring); tests pass it to stay independent of the clock."""
    policy.require_rules()
    groups: dict[str, list[Snapshot]] = {}
    for m in manifests:
        groups.setdefault(m.source, []).append(m)
    now = now or datetime.now(UTC)
    out: list[Decision] = []
    for source in sorted(groups):
        out.extend(_apply_group(newest_first(groups[source]), policy, now))
    return out


def _apply_group(group: Sequence[Snapshot], policy: RetentionPolicy,
                 now: datetime) -> list[Decision]:
    future = [s for s in group if _utc(s) > now + MAX_CLOCK_SKEW]
    decisions = [Decision(s, True, ["dated in the future"], future=True) for s in future]
    group = [s for s in group if _utc(s) <= now + MAX_CLOCK_SKEW]
    times = [_utc(s) for s in group]
    cutoff = None
    if policy.within is not None and times:
        cutoff = times[0] - policy.within  # the newest snapshot not in the future
    counts = {r: getattr(policy, f"keep_{r}") for r in COUNT_RULES}
    last_period: dict[str, tuple[int, ...] | None] = dict.fromkeys(COUNT_RULES)
    oldest = len(group) - 1
    for nr, (snap, when) in enumerate(zip(group, times, strict=True)):
        reasons = [f"tagged {tag}" for tag in policy.keep_tag if tag in snap.tags]
        if policy.within is not None and (cutoff is None or when > cutoff):
            reasons.append(f"within {spell_duration(policy.within)}")
        for rule in COUNT_RULES:
            if counts[rule] == 0:
                continue
            period = (nr,) if rule == "last" else _PERIODS[rule](when)
            if period != last_period[rule] or nr == oldest:
                reason = f"{rule} snapshot"
                if period == last_period[rule]:
                    reason = f"oldest {reason}"
                last_period[rule] = period
                if counts[rule] > 0:
                    counts[rule] -= 1
                reasons.append(reason)
        decisions.append(Decision(snap, bool(reasons), reasons))
    return decisions


def refuse_removing_all(decisions: Sequence[Decision]) -> None:
    """Raise if a source would be left without any snapshot (checked before anything is
    deleted). A future-dated snapshot kept does not count: it is no backup to fall back on."""
    sources: dict[str, bool] = {}
    for d in decisions:
        if d.future:
            continue
        sources[d.manifest.source] = sources.get(d.manifest.source, False) or d.keep
    emptied = sorted(s for s, kept in sources.items() if not kept)
    if emptied:
        raise LastSnapshotError(f"refusing to remove every snapshot of source {emptied[0]}: "
                                "the policy keeps none of them (check --keep-tag and the "
                                "other rules); nothing was removed")


def decide_by_ids(manifests: Sequence[Snapshot], refs: Sequence[str]) -> list[Decision]:
    """`forget ID...`: remove exactly the snapshots named by unique hex id prefixes (as restic's
    `forget <snapshot-id>`), no policy applied. Every other snapshot of the sources touched is
    listed as kept, so the output shows what is left. An unknown or ambiguous prefix removes
    nothing (raised before any decision is used)."""
    from sellerbak.errors import SnapshotNotFoundError

    named: dict[bytes, Snapshot] = {}
    for ref in refs:
        prefix = ref.lower()
        if not prefix or prefix.strip("0123456789abcdef"):
            raise UsageError(f"{ref!r} is not a snapshot id (hex); nothing was removed")
        matches = [m for m in manifests if m.id.hex().startswith(prefix)]
        if not matches:
            raise SnapshotNotFoundError(f"snapshot {ref} not found; nothing was removed")
        if len(matches) > 1:
            raise SnapshotNotFoundError(f"snapshot id prefix {ref} is ambiguous; give more "
                                        "digits; nothing was removed")
        named[matches[0].id] = matches[0]
    touched = {m.source for m in named.values()}
    out: list[Decision] = []
    for source in sorted(touched):
        for m in newest_first(s for s in manifests if s.source == source):
            out.append(Decision(m, m.id not in named, [] if m.id in named else ["not named"]))
    return out
