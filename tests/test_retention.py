"""Retention policy semantics, pinned on hand-made timelines (restic's ApplyPolicy rules).

Expected sets are written out by hand from the calendar, not recomputed by a second
implementation, so a change of semantics shows up as a named date.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sellerbak.config import RetentionConfig
from sellerbak.errors import UsageError
from sellerbak.repository.retention import (
    LastSnapshotError,
    RetentionPolicy,
    apply_policy,
    refuse_removing_all,
    spell_duration,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class Snap:
    when: datetime
    source: str = "shop"
    tags: list[str] = field(default_factory=list)
    id: bytes = b""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = random.Random(self.when.isoformat() + self.source).randbytes(32)

    @property
    def datetime(self) -> datetime:
        return self.when


def nightly(first: date, last: date, hour: int = 2, source: str = "shop") -> list[Snap]:
    days = (last - first).days
    return [Snap(datetime(first.year, first.month, first.day, hour, tzinfo=UTC)
                 + timedelta(days=i), source) for i in range(days + 1)]


def kept(decisions) -> list[datetime]:
    return [d.manifest.when for d in decisions if d.keep]


def kept_days(decisions) -> list[date]:
    return [d.manifest.when.date() for d in decisions if d.keep]


def reasons_of(decisions, when: datetime) -> list[str]:
    return next(d.reasons for d in decisions if d.manifest.when == when)


def run(snaps, now: datetime = NOW, **policy):
    shuffled = list(snaps)
    random.Random(3).shuffle(shuffled)  # input order must not matter
    return apply_policy(shuffled, RetentionPolicy(**policy), now=now)


def test_two_years_of_nightlies_daily_weekly_monthly() -> None:
    snaps = nightly(date(2023, 1, 1), date(2024, 12, 31))
    decisions = run(snaps, keep_daily=7, keep_weekly=4, keep_monthly=12)
    assert len(decisions) == len(snaps) == 731
    # newest first; 2024-12-31 is a Tuesday of ISO week 2025-W01, so weekly keeps 12-31, then
    # the Sundays ending 2024-W52, W51, W50; monthly keeps each month's last night back to
    # 2024-01 (2024 is a leap year); nothing is left for the oldest-snapshot rule
    assert kept_days(decisions) == [
        date(2024, 12, d) for d in (31, 30, 29, 28, 27, 26, 25, 22, 15)
    ] + [date(2024, 11, 30), date(2024, 10, 31), date(2024, 9, 30), date(2024, 8, 31),
         date(2024, 7, 31), date(2024, 6, 30), date(2024, 5, 31), date(2024, 4, 30),
         date(2024, 3, 31), date(2024, 2, 29), date(2024, 1, 31)]
    newest = datetime(2024, 12, 31, 2, tzinfo=UTC)
    assert reasons_of(decisions, newest) == ["daily snapshot", "weekly snapshot",
                                             "monthly snapshot"]
    assert reasons_of(decisions, datetime(2024, 12, 29, 2, tzinfo=UTC)) == [
        "daily snapshot", "weekly snapshot"]
    assert reasons_of(decisions, datetime(2024, 12, 15, 2, tzinfo=UTC)) == ["weekly snapshot"]
    assert reasons_of(decisions, datetime(2024, 2, 29, 2, tzinfo=UTC)) == ["monthly snapshot"]
    removed = [d for d in decisions if not d.keep]
    assert len(removed) == 731 - 20 and all(d.reasons == [] for d in removed)


def test_unlimited_monthly_keeps_every_month_and_the_oldest() -> None:
    snaps = nightly(date(2023, 1, 1), date(2024, 12, 31))
    decisions = run(snaps, keep_monthly=-1)
    month_ends = [date(y, m, 1) for y in (2024, 2023) for m in range(12, 0, -1)]
    expected = [(d.replace(month=d.month % 12 + 1, year=d.year + d.month // 12)
                 - timedelta(days=1)) for d in month_ends]
    assert kept_days(decisions) == expected + [date(2023, 1, 1)]
    # -1 still has counts left at the oldest snapshot: it is kept too, and says why
    assert reasons_of(decisions, datetime(2023, 1, 1, 2, tzinfo=UTC)) == [
        "oldest monthly snapshot"]
    assert reasons_of(decisions, datetime(2023, 1, 31, 2, tzinfo=UTC)) == ["monthly snapshot"]


def test_oldest_is_kept_only_while_the_bucket_has_counts_left() -> None:
    day = [Snap(datetime(2024, 5, 1, h, tzinfo=UTC)) for h in (1, 9, 17)]
    decisions = run(day, keep_daily=7)
    assert kept(decisions) == [datetime(2024, 5, 1, 17, tzinfo=UTC),
                               datetime(2024, 5, 1, 1, tzinfo=UTC)]
    assert [d.reasons for d in decisions] == [["daily snapshot"], [],
                                              ["oldest daily snapshot"]]
    exhausted = run(day, keep_daily=1)
    assert kept(exhausted) == [datetime(2024, 5, 1, 17, tzinfo=UTC)]


def test_keep_last_and_hourly() -> None:
    start = datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
    snaps = [Snap(start + timedelta(minutes=20 * i)) for i in range(12)]  # 10:00 .. 13:40
    decisions = run(snaps, keep_last=2, keep_hourly=3)
    assert kept(decisions) == [start + timedelta(minutes=m) for m in (220, 200, 160, 100)]
    assert [d.reasons for d in decisions if d.keep] == [
        ["last snapshot", "hourly snapshot"], ["last snapshot"], ["hourly snapshot"],
        ["hourly snapshot"]]


def test_weekly_uses_iso_weeks_across_new_year() -> None:
    # 2020-12-31 (Thursday) and 2021-01-01..03 belong to ISO week 2020-W53
    snaps = nightly(date(2020, 12, 20), date(2021, 1, 4))
    decisions = run(snaps, keep_weekly=3)
    assert kept_days(decisions) == [date(2021, 1, 4), date(2021, 1, 3), date(2020, 12, 27)]


def test_yearly() -> None:
    snaps = [Snap(datetime(y, m, 15, tzinfo=UTC)) for y in (2021, 2022, 2023) for m in (3, 9)]
    decisions = run(snaps, keep_yearly=2)
    assert kept_days(decisions) == [date(2023, 9, 15), date(2022, 9, 15)]


def test_periods_are_cut_in_utc() -> None:
    # 23:30 at UTC-5 on the 10th is 04:30 UTC on the 11th: same UTC day as the 01:00Z one
    ny = datetime.fromisoformat("2024-03-10T23:30:00-05:00")
    snaps = [Snap(datetime(2024, 3, 11, 1, 0, tzinfo=UTC)), Snap(ny),
             Snap(datetime(2024, 3, 10, 12, 0, tzinfo=UTC))]
    decisions = run(snaps, keep_daily=2)
    assert kept(decisions) == [ny, datetime(2024, 3, 10, 12, 0, tzinfo=UTC)]


def test_within_is_relative_to_the_newest_snapshot_not_now() -> None:
    end = datetime(2020, 2, 10, 12, tzinfo=UTC)
    snaps = [Snap(end - timedelta(hours=12 * i)) for i in range(20)]
    decisions = run(snaps, keep_within=timedelta(days=2))
    # strictly after newest - 2d: the one exactly 48h older is not kept (restic's After)
    assert kept(decisions) == [end - timedelta(hours=h) for h in (0, 12, 24, 36)]
    assert all(d.reasons == ["within 2d"] for d in decisions if d.keep)


def test_within_ignores_snapshots_dated_in_the_future() -> None:
    now = datetime(2024, 1, 6, tzinfo=UTC)
    snaps = [Snap(datetime(2024, 1, d, tzinfo=UTC)) for d in range(1, 6)]
    snaps.append(Snap(datetime(2024, 4, 1, tzinfo=UTC)))
    decisions = run(snaps, now=now, keep_within=timedelta(days=2))
    assert kept_days(decisions) == [date(2024, 4, 1), date(2024, 1, 5), date(2024, 1, 4)]


def test_tags_keep_without_using_up_counts() -> None:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    snaps = [Snap(base + timedelta(days=i), tags=["keep"] if i in (1, 4) else ["nightly"])
             for i in range(5)]
    decisions = run(snaps, keep_last=2, keep_tag=("keep", "audit"))
    # Jan 5 is both tagged and among the last two; Jan 2 is kept by its tag alone
    assert [(d.manifest.when.day, d.reasons) for d in decisions] == [
        (5, ["tagged keep", "last snapshot"]), (4, ["last snapshot"]), (3, []),
        (2, ["tagged keep"]), (1, [])]
    only_tags = run(snaps, keep_tag=("keep",))
    assert kept_days(only_tags) == [date(2024, 1, 5), date(2024, 1, 2)]


def test_each_source_is_judged_alone() -> None:
    old = nightly(date(2019, 3, 1), date(2019, 3, 10), source="old-shop")
    new = nightly(date(2024, 8, 1), date(2024, 8, 10), source="new-shop")
    decisions = run(old + new, keep_last=2, keep_within=timedelta(days=3))
    by_source = {s: [d.manifest.when.date() for d in decisions
                     if d.keep and d.manifest.source == s] for s in ("old-shop", "new-shop")}
    # within 3d of each source's own newest snapshot (not of the newest overall)
    assert by_source == {"old-shop": [date(2019, 3, d) for d in (10, 9, 8)],
                         "new-shop": [date(2024, 8, d) for d in (10, 9, 8)]}
    # sources come out in name order, each newest first
    assert [d.manifest.source for d in decisions] == ["new-shop"] * 10 + ["old-shop"] * 10


def test_equal_times_are_ordered_by_id_whatever_the_input_order() -> None:
    when = datetime(2024, 2, 2, 2, tzinfo=UTC)
    a, b = Snap(when, id=b"\x01" * 32), Snap(when, id=b"\x02" * 32)
    for order in ([a, b], [b, a]):
        last = apply_policy(order, RetentionPolicy(keep_last=1), now=NOW)
        assert [(d.manifest.id, d.keep) for d in last] == [(b.id, True), (a.id, False)]
        daily = apply_policy(order, RetentionPolicy(keep_daily=1), now=NOW)
        assert [d.keep for d in daily] == [True, False]
        both = apply_policy(order, RetentionPolicy(keep_last=2), now=NOW)
        assert all(d.keep for d in both)


def test_empty_policy_is_a_usage_error_not_forget_everything() -> None:
    snaps = nightly(date(2024, 1, 1), date(2024, 1, 3))
    with pytest.raises(UsageError, match="no retention policy"):
        apply_policy(snaps, RetentionPolicy())
    with pytest.raises(UsageError):  # a zero duration keeps nothing: still no policy
        apply_policy(snaps, RetentionPolicy(keep_within=timedelta(0)))
    with pytest.raises(UsageError, match="keep-daily"):
        RetentionPolicy(keep_daily=-2)


def test_config_defaults_and_overrides() -> None:
    cfg = RetentionConfig(keep_daily=7, keep_monthly=12, keep_within=timedelta(days=2),
                          keep_tag=["keep"])
    base = RetentionPolicy.from_config(cfg)
    assert base == RetentionPolicy(keep_daily=7, keep_monthly=12,
                                   keep_within=timedelta(days=2), keep_tag=("keep",))
    over = base.with_overrides(keep_last=3, keep_daily=0, keep_monthly=None, keep_tag=None,
                               keep_within=timedelta(hours=36))
    assert over == RetentionPolicy(keep_last=3, keep_monthly=12,
                                   keep_within=timedelta(hours=36), keep_tag=("keep",))
    assert base.with_overrides(keep_tag=["a", "b"]).keep_tag == ("a", "b")
    assert over.describe() == ("keep 3 latest, 12 monthly snapshots (periods in UTC) and all "
                               "snapshots tagged keep and all snapshots within 1d12h of the "
                               "newest")
    assert RetentionPolicy(keep_yearly=-1).describe() == \
        "keep all yearly snapshots (periods in UTC)"
    assert over.to_json()["keep_within"] == "1d12h"


def test_spell_duration_reads_back() -> None:
    from sellerbak.durations import parse_duration

    for text in ("7d", "1d12h", "90min", "45s", "400d", "2h30min"):
        spelled = spell_duration(parse_duration(text))
        assert parse_duration(spelled) == parse_duration(text)
    assert spell_duration(timedelta(days=7)) == "7d"


def test_refuses_to_remove_every_snapshot_of_a_source() -> None:
    snaps = nightly(date(2024, 1, 1), date(2024, 1, 3), source="a") + \
        [Snap(datetime(2024, 1, 1, tzinfo=UTC), source="b", tags=["keep"])]
    decisions = run(snaps, keep_tag=("keep",))
    with pytest.raises(LastSnapshotError, match="source a"):
        refuse_removing_all(decisions)
    refuse_removing_all(run(snaps, keep_last=1))


_times = st.lists(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2026, 1, 1),
                               timezones=st.just(UTC)), min_size=1, max_size=40, unique=True)


@settings(max_examples=150, deadline=None)
@given(_times, st.sampled_from(["last", "hourly", "daily", "weekly", "monthly", "yearly"]),
       st.integers(min_value=1, max_value=8))
def test_a_larger_count_never_keeps_less(times, rule, n) -> None:
    snaps = [Snap(t) for t in times]
    smaller = {d.manifest.id for d in apply_policy(snaps, RetentionPolicy(**{f"keep_{rule}": n}),
                                                   now=NOW) if d.keep}
    larger = {d.manifest.id for d in
              apply_policy(snaps, RetentionPolicy(**{f"keep_{rule}": n + 1}), now=NOW) if d.keep}
    unlimited = {d.manifest.id for d in
                 apply_policy(snaps, RetentionPolicy(**{f"keep_{rule}": -1}), now=NOW)
                 if d.keep}
    newest = max(snaps, key=lambda s: s.when).id
    assert newest in smaller <= larger <= unlimited


@settings(max_examples=150, deadline=None)
@given(_times)
def test_unlimited_daily_keeps_each_days_newest_and_the_oldest(times) -> None:
    snaps = [Snap(t) for t in times]
    newest_per_day: dict[date, Snap] = {}
    for s in snaps:
        if s.when.date() not in newest_per_day or s.when > newest_per_day[s.when.date()].when:
            newest_per_day[s.when.date()] = s
    expected = {s.id for s in newest_per_day.values()} | {min(snaps, key=lambda s: s.when).id}
    got = {d.manifest.id for d in apply_policy(snaps, RetentionPolicy(keep_daily=-1), now=NOW)
           if d.keep}
    assert got == expected
