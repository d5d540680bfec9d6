"""Retention decided per recovery point, never per restic snapshot.

restic's own ``forget --keep-*`` groups snapshots by host and path: on an application of
several hosts it would keep one host's half of a recovery point and drop another's. Here
the rules run on whole RPs (from the catalog's manifests), with restic's meaning:

* ``keep_last N`` — the N newest RPs;
* ``keep_hourly/daily/weekly/monthly/yearly N`` — for each of the N newest hours (days,
  ISO weeks, months, years) that have an RP, the newest RP of it;
* ``keep_within D`` — every RP created within D of the newest RP (not of now: an
  application that stopped backing up keeps its last RPs);
* ``keep_only LEVEL`` — RPs weaker than LEVEL count for nothing: no rule keeps them, so
  they go, and they do not use up a bucket a stronger RP could fill.

Every decision carries its reasons (``--dry-run`` prints them). Times are bucketed in UTC,
so a decision does not change with the machine's time zone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cleancut.levels import ORDER, Level

#: rule name -> the bucket an RP's time falls in, and how the bucket is spelled
_BUCKETS: dict[str, tuple[Callable[[datetime], tuple[int, ...]], str]] = {
    "hourly": (lambda t: (t.year, t.month, t.day, t.hour), "hour {0:04d}-{1:02d}-{2:02d} {3:02d}h"),
    "daily": (lambda t: (t.year, t.month, t.day), "day {0:04d}-{1:02d}-{2:02d}"),
    "weekly": (lambda t: tuple(t.isocalendar()[:2]), "week {0:04d}-W{1:02d}"),
    "monthly": (lambda t: (t.year, t.month), "month {0:04d}-{1:02d}"),
    "yearly": (lambda t: (t.year,), "year {0:04d}"),
}


@dataclass(frozen=True)
class Policy:
    """The ``[retention]`` rules; a count of 0 (or None) leaves a rule out."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: float | None = None  # seconds
    keep_only: Level | None = None

    @property
    def empty(self) -> bool:
        """No rule would keep anything: forgetting with it would remove every RP."""
        counts = (self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly)
        return not (self.keep_last or any(counts) or self.keep_yearly or self.keep_within)


@dataclass(frozen=True)
class Point:
    """What retention needs to know of one RP."""

    rp_id: str
    created_at: datetime  # aware, UTC
    level: Level


@dataclass
class Decision:
    """Keep or forget one RP, and why."""

    point: Point
    #: the rules that keep it (none: it is forgotten)
    reasons: list[str] = field(default_factory=list)
    #: why no rule may keep it (``keep_only``)
    excluded: str | None = None

    @property
    def keep(self) -> bool:
        return bool(self.reasons)

    @property
    def why(self) -> str:
        """One line: the rules that keep it, or why it goes."""
        if self.reasons:
            return "; ".join(self.reasons)
        return self.excluded or "no rule keeps it"


def decide(points: Sequence[Point], policy: Policy) -> list[Decision]:
    """One decision per RP, newest first."""
    ordered = sorted(points, key=lambda p: (p.created_at, p.rp_id), reverse=True)
    decisions = [Decision(point) for point in ordered]
    counted: list[Decision] = []
    for decision in decisions:
        level = decision.point.level
        if policy.keep_only is not None and ORDER.index(level) < ORDER.index(policy.keep_only):
            decision.excluded = f"level {level} is weaker than keep_only = {policy.keep_only!r}"
        else:
            counted.append(decision)
    for index, decision in enumerate(counted[: policy.keep_last]):
        decision.reasons.append(f"keep_last {policy.keep_last} (#{index + 1})")
    for rule, (bucket_of, spelling) in _BUCKETS.items():
        limit = getattr(policy, f"keep_{rule}")
        seen: list[tuple[int, ...]] = []
        for decision in counted:
            if len(seen) >= limit:
                break
            bucket = bucket_of(decision.point.created_at.astimezone(UTC))
            if bucket in seen:
                continue
            seen.append(bucket)
            decision.reasons.append(f"keep_{rule} {limit}: newest of {spelling.format(*bucket)}")
    if policy.keep_within and counted:
        newest = counted[0].point.created_at.astimezone(UTC)
        since = newest - timedelta(seconds=policy.keep_within)
        for decision in counted:
            if decision.point.created_at >= since:
                span = _span(policy.keep_within)
                decision.reasons.append(
                    f"keep_within {span} of the newest ({newest:%Y-%m-%d %H:%M} UTC)"
                )
    return decisions


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
