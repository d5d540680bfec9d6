"""``cleancut status``: am I protected? The last run of each action, the next one, and
what is wrong, from the run log, the catalog and ``[schedule]`` — never the repository.

A warning is raised for what an operator must act on: no recovery point, none at
application level for longer than the schedule allows, a last run that failed, was
degraded or was interrupted, a scheduled action that is overdue or never ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cleancut.catalog import Catalog, CatalogEntry
from cleancut.config.load import LoadedApp
from cleancut.runs import ACTIONS, Run, RunLog

#: Without a backup schedule, an application-level RP older than this is a warning: a
#: daily backup with two hours to spare.
UNSCHEDULED_MAX_AGE = timedelta(hours=26)
#: What a scheduled action may be late by beyond its interval and randomized delay.
SLACK = timedelta(hours=2)

NextRun = Callable[[str, datetime], datetime | None]


@dataclass(frozen=True)
class ActionStatus:
    """One action: its last run, last success, schedule and next run."""

    action: str
    last: Run | None
    last_success: Run | None
    schedule: str | None
    next_run: datetime | None
    interval: timedelta | None

    def as_dict(self, now: datetime) -> dict[str, Any]:
        last = self.last
        return {
            "action": self.action,
            "last_run": None if last is None else last.as_dict(),
            "age_seconds": None if last is None else _age(last, now).total_seconds(),
            "last_success_at": (
                None
                if self.last_success is None or self.last_success.ended_at is None
                else datetime.fromtimestamp(self.last_success.ended_at, UTC).isoformat()
            ),
            "schedule": self.schedule,
            "next_run": None if self.next_run is None else self.next_run.isoformat(),
        }


@dataclass(frozen=True)
class Status:
    app: str
    now: datetime
    actions: list[ActionStatus]
    points: int
    newest: CatalogEntry | None
    newest_strong: CatalogEntry | None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.warnings

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "now": self.now.isoformat(timespec="seconds"),
            "ok": self.ok,
            "actions": {a.action: a.as_dict(self.now) for a in self.actions},
            "recovery_points": self.points,
            "newest_rp": _point(self.newest),
            "newest_application_rp": _point(self.newest_strong),
            "warnings": self.warnings,
        }


def gather(
    loaded: LoadedApp,
    catalog: Catalog,
    runs: RunLog,
    *,
    next_run: NextRun,
    now: datetime | None = None,
) -> Status:
    """The status of ``loaded``'s application at ``now``; ``next_run(expression, after)``
    answers when a calendar expression next elapses."""
    app = loaded.config.name
    moment = now or datetime.now(UTC)
    schedule = loaded.config.schedule
    planned = schedule.actions() if schedule is not None else {}
    delay = timedelta(seconds=(schedule.randomized_delay or 0) if schedule else 0)
    actions = []
    for action in ACTIONS:
        expression = planned.get(action)
        upcoming = following = None
        if expression is not None:
            upcoming = next_run(expression, moment)
            following = None if upcoming is None else next_run(expression, upcoming)
        interval = following - upcoming if upcoming and following else None
        actions.append(
            ActionStatus(
                action=action,
                last=runs.last(app, action),
                last_success=runs.last_success(app, action),
                schedule=expression,
                next_run=upcoming,
                interval=interval,
            )
        )
    status = Status(
        app=app,
        now=moment,
        actions=actions,
        points=catalog.count(app),
        newest=catalog.newest(app),
        newest_strong=catalog.newest(app, application_level=True),
    )
    status.warnings.extend(_warnings(status, delay))
    return status


def _warnings(status: Status, delay: timedelta) -> list[str]:
    found = []
    backup = status.actions[ACTIONS.index("backup")]
    allowed = UNSCHEDULED_MAX_AGE if backup.interval is None else backup.interval + SLACK + delay
    strong = status.newest_strong
    if status.newest is None:
        found.append("no recovery point yet: run `cleancut backup`")
    elif strong is None:
        found.append(
            "no application-level, group-consistent recovery point at all (newest: "
            f"{status.newest.rp_id}, level {status.newest.level})"
        )
    elif status.now - _utc(strong.created_at) > allowed:
        hours = (status.now - _utc(strong.created_at)).total_seconds() / 3600
        found.append(
            f"no application-level RP for {hours:.0f} h (newest: {strong.rp_id}; the "
            f"schedule allows {allowed.total_seconds() / 3600:.0f} h)"
        )
    for item in status.actions:
        found.extend(_action_warnings(item, status.now, delay))
    return found


def _action_warnings(item: ActionStatus, now: datetime, delay: timedelta) -> list[str]:
    last = item.last
    found = []
    if last is not None and last.outcome == "failure":
        error = last.summary.get("error") or _failed_checks(last) or "see its log"
        host = last.summary.get("host")
        where = f" on host {host}" if host else ""
        found.append(f"last {item.action} failed{where} {_ago(last, now)} ago: {error}")
    elif last is not None and last.outcome == "degraded":
        summary = last.summary
        consistent = "yes" if summary.get("group_consistent") else "no"
        found.append(
            f"last {item.action} was degraded {_ago(last, now)} ago: level "
            f"{summary.get('level')}, group-consistent {consistent}"
        )
    elif last is not None and last.outcome == "interrupted":
        found.append(
            f"last {item.action} was interrupted {_ago(last, now)} ago (process {last.pid} "
            "ended without finishing)"
        )
    if item.schedule is None or item.interval is None:
        return found
    allowed = item.interval + SLACK + delay
    if last is None and item.action in ("check", "verify"):
        found.append(f"{item.action} is scheduled ({item.schedule}) but never ran")
    elif last is not None and _age(last, now) > allowed:
        found.append(
            f"{item.action} is overdue: last ran {_ago(last, now)} ago, scheduled {item.schedule}"
        )
    return found


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _failed_checks(run: Run) -> str:
    failed = run.summary.get("failed_checks") or run.summary.get("problems") or []
    return ", ".join(str(item) for item in failed[:3])


def _age(run: Run, now: datetime) -> timedelta:
    return now - datetime.fromtimestamp(run.ended_at or run.started_at, UTC)


def _ago(run: Run, now: datetime) -> str:
    return human_age(_age(run, now))


def human_age(age: timedelta) -> str:
    """``42s``, ``12m``, ``5h``, ``3d``: an age at a glance."""
    seconds = max(0, int(age.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _point(entry: CatalogEntry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {
        "rp": entry.rp_id,
        "created_at": entry.created_at.isoformat(),
        "level": entry.level,
        "group_consistent": entry.group_consistent,
    }
