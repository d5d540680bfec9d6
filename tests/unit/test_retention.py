"""Retention per recovery point: restic's keep rules, applied to whole RPs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cleancut.levels import Level
from cleancut.retention import Point, Policy, decide

START = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)


def _points(hours: Sequence[float], level: Level = "application") -> list[Point]:
    return [Point(f"rp{i:03d}", START + timedelta(hours=h), level) for i, h in enumerate(hours)]


def _kept(points: list[Point], policy: Policy) -> list[str]:
    return sorted(d.point.rp_id for d in decide(points, policy) if d.keep)


def test_keep_last_keeps_the_newest_and_says_so() -> None:
    decisions = decide(_points([0, 1, 2, 3]), Policy(keep_last=2))
    assert [d.point.rp_id for d in decisions] == ["rp003", "rp002", "rp001", "rp000"]
    assert [d.keep for d in decisions] == [True, True, False, False]
    assert decisions[0].why == "keep_last 2 (#1)"
    assert decisions[3].why == "no rule keeps it"


def test_daily_keeps_the_newest_of_each_of_the_newest_days_with_an_rp() -> None:
    # three RPs a day for five days, then a gap of three days, then one more day
    hours = [24 * day + h for day in range(5) for h in (1, 8, 20)] + [24 * 8 + 3]
    points = _points(hours)
    kept = _kept(points, Policy(keep_daily=3))
    # the newest day (day 8), then days 4 and 3: days without an RP do not count
    assert kept == ["rp011", "rp014", "rp015"]
    why = {d.point.rp_id: d.why for d in decide(points, Policy(keep_daily=3))}
    assert why["rp015"] == "keep_daily 3: newest of day 2026-01-09"


def test_rules_add_up_and_one_rp_may_be_kept_by_several() -> None:
    points = _points([0, 1, 30, 31, 24 * 10])
    decisions = {d.point.rp_id: d for d in decide(points, Policy(keep_last=1, keep_weekly=2))}
    assert decisions["rp004"].reasons == [
        "keep_last 1 (#1)",
        "keep_weekly 2: newest of week 2026-W02",
    ]
    assert decisions["rp003"].keep and "week 2026-W01" in decisions["rp003"].why
    assert not decisions["rp000"].keep


def test_monthly_and_yearly_buckets() -> None:
    points = [
        Point("a", datetime(2024, 12, 31, 23, tzinfo=UTC), "application"),
        Point("b", datetime(2025, 1, 15, tzinfo=UTC), "application"),
        Point("c", datetime(2025, 1, 20, tzinfo=UTC), "application"),
        Point("d", datetime(2025, 3, 1, tzinfo=UTC), "application"),
    ]
    assert _kept(points, Policy(keep_monthly=2)) == ["c", "d"]
    assert _kept(points, Policy(keep_yearly=5)) == ["a", "d"]


def test_keep_within_counts_from_the_newest_rp_not_from_now() -> None:
    points = _points([0, 10, 40, 47, 48])  # the newest is years before "now"
    assert _kept(points, Policy(keep_within=86400)) == ["rp002", "rp003", "rp004"]
    why = decide(points, Policy(keep_within=2 * 86400))[0].why
    assert why == "keep_within 2d of the newest (2026-01-03 00:30 UTC)"


def test_keep_only_makes_weaker_rps_count_for_nothing() -> None:
    points = [
        *_points([0, 1], "application"),
        Point("weak1", START + timedelta(hours=2), "filesystem"),
        Point("weak2", START + timedelta(hours=3), "crash"),
    ]
    policy = Policy(keep_last=2, keep_only="application")
    decisions = {d.point.rp_id: d for d in decide(points, policy)}
    # the two weaker RPs are the newest, yet the two application RPs fill keep_last
    assert decisions["rp000"].keep and decisions["rp001"].keep
    assert not decisions["weak1"].keep and not decisions["weak2"].keep
    assert decisions["weak2"].why == "level crash is weaker than keep_only = 'application'"
    # without keep_only the newest two are kept, whatever their level
    assert _kept(points, Policy(keep_last=2)) == ["weak1", "weak2"]


def test_buckets_are_utc_whatever_zone_the_time_is_written_in() -> None:
    zone = datetime(2026, 1, 1, tzinfo=UTC).astimezone().tzinfo
    points = [
        Point("late", datetime(2026, 1, 1, 23, 30, tzinfo=UTC).astimezone(zone), "application"),
        Point("early", datetime(2026, 1, 1, 0, 30, tzinfo=UTC), "application"),
    ]
    assert _kept(points, Policy(keep_daily=1)) == ["late"]


def test_an_empty_policy_is_recognised() -> None:
    assert Policy().empty
    assert Policy(keep_only="application").empty
    assert not Policy(keep_within=60).empty
