"""The Prometheus text exposition of one application, from the run log and the catalog.

Nothing here touches the repository: every figure was recorded when its run ended (the
repository size by the last run that measured it), so rendering is instant however many
recovery points there are. Names follow Prometheus conventions: base units in the name
(``_seconds``, ``_bytes``), ``_total`` for the one counter, outcomes and levels as state
sets (one series per state, 1 for the current one) so alerts need no string matching.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from cleancut.catalog import Catalog, CatalogEntry
from cleancut.levels import ORDER
from cleancut.runs import ACTIONS, Run, RunLog

OUTCOMES = ("success", "degraded", "failure", "interrupted", "running")


@dataclass
class Family:
    """One metric family: its name, type, help text and samples."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float | None, **labels: str) -> None:
        if value is not None:
            self.samples.append((labels, float(value)))


def render(app: str, runs: RunLog, catalog: Catalog) -> str:
    """Every family of ``app`` in the text exposition format (families without samples
    are left out, as a scrape expects)."""
    return exposition(families(app, runs, catalog))


def families(app: str, runs: RunLog, catalog: Catalog) -> list[Family]:
    last_run = Family(
        "cleancut_last_run_timestamp_seconds",
        "gauge",
        "When the last run of the action ended (or started, while it runs), Unix time.",
    )
    last_success = Family(
        "cleancut_last_success_timestamp_seconds",
        "gauge",
        "When the last successful run of the action ended, Unix time; a failed or degraded "
        "run leaves it as it was.",
    )
    duration = Family(
        "cleancut_last_run_duration_seconds", "gauge", "How long the last run of the action took."
    )
    outcome = Family(
        "cleancut_last_run_outcome",
        "gauge",
        "The outcome of the last run of the action: 1 for the current outcome, 0 for the others.",
    )
    totals = Family(
        "cleancut_runs_total", "counter", "Runs of the action this log recorded, per outcome."
    )
    for action in ACTIONS:
        run = runs.last(app, action)
        if run is not None:
            last_run.add(run.ended_at or run.started_at, app=app, action=action)
            duration.add(run.duration, app=app, action=action)
            for state in OUTCOMES:
                outcome.add(float(run.outcome == state), app=app, action=action, outcome=state)
        success = runs.last_success(app, action)
        if success is not None:
            last_success.add(success.ended_at, app=app, action=action)
    for (action, state), count in sorted(runs.counts(app).items()):
        totals.add(count, app=app, action=action, outcome=state)
    out = [last_run, last_success, duration, outcome, totals]
    out += _point_families(app, catalog)
    out += _repository_families(app, runs)
    return out


def _point_families(app: str, catalog: Catalog) -> list[Family]:
    count = Family(
        "cleancut_recovery_points", "gauge", "Recovery points the catalog lists for the app."
    )
    count.add(catalog.count(app), app=app)
    newest = catalog.newest(app)
    strong = catalog.newest(app, application_level=True)
    created = Family(
        "cleancut_last_rp_timestamp_seconds", "gauge", "When the newest recovery point was cut."
    )
    level = Family(
        "cleancut_last_rp_level",
        "gauge",
        "The consistency level of the newest recovery point: 1 for its level, 0 for the others.",
    )
    consistent = Family(
        "cleancut_last_rp_group_consistent",
        "gauge",
        "1 when every host of the newest recovery point was frozen at one moment, else 0.",
    )
    stall = Family(
        "cleancut_last_rp_write_stall_seconds",
        "gauge",
        "How long writes stalled on the host for the newest recovery point.",
    )
    pause = Family(
        "cleancut_last_rp_application_pause_seconds",
        "gauge",
        "How long the host's pre-/post-scripts paused the application for the newest RP.",
    )
    quiet = Family(
        "cleancut_last_rp_quiet_window_seconds",
        "gauge",
        "The window in which every host of the newest recovery point was frozen at once.",
    )
    added = Family(
        "cleancut_last_rp_added_bytes", "gauge", "Bytes the newest recovery point added."
    )
    size = Family("cleancut_last_rp_size_bytes", "gauge", "Bytes the newest recovery point holds.")
    strong_time = Family(
        "cleancut_last_application_rp_timestamp_seconds",
        "gauge",
        "When the newest application-level, group-consistent recovery point was cut.",
    )
    if newest is not None:
        _describe(newest, app, created, level, consistent, stall, pause, quiet, added, size)
    if strong is not None:
        strong_time.add(strong.created_at.timestamp(), app=app)
    return [count, created, level, consistent, stall, pause, quiet, added, size, strong_time]


def _describe(
    entry: CatalogEntry,
    app: str,
    created: Family,
    level: Family,
    consistent: Family,
    stall: Family,
    pause: Family,
    quiet: Family,
    added: Family,
    size: Family,
) -> None:
    created.add(entry.created_at.timestamp(), app=app)
    for name in ORDER:
        level.add(float(entry.level == name), app=app, level=name)
    consistent.add(float(entry.group_consistent), app=app)
    for host in entry.manifest.hosts:
        stall.add(host.write_stall, app=app, host=host.host)
        pause.add(host.pause, app=app, host=host.host)
    quiet.add(entry.quiet_window_seconds, app=app)
    added.add(entry.added_bytes, app=app)
    size.add(entry.size_bytes, app=app)


def _repository_families(app: str, runs: RunLog) -> list[Family]:
    size = Family(
        "cleancut_repository_size_bytes",
        "gauge",
        "The repository's stored size, as the last run that measured it found it.",
    )
    size.add(runs.latest_value(app, "repository_size_bytes"), app=app)
    check = Family(
        "cleancut_last_check_success", "gauge", "1 when the last repository check passed, else 0."
    )
    drill = Family(
        "cleancut_last_drill_success", "gauge", "1 when the last restore drill passed, else 0."
    )
    rto = Family(
        "cleancut_last_drill_rto_seconds",
        "gauge",
        "The RTO the last passed restore drill measured (restore start until every database "
        "answers).",
    )
    last_check = _ended(runs.last(app, "check"))
    if last_check is not None:
        check.add(float(last_check.outcome == "success"), app=app)
    last_drill = _ended(runs.last(app, "verify"))
    if last_drill is not None:
        drill.add(float(last_drill.outcome == "success"), app=app)
    passed = runs.last_success(app, "verify")
    if passed is not None:
        value = passed.summary.get("rto_seconds")
        rto.add(value if isinstance(value, int | float) else None, app=app)
    return [size, check, drill, rto]


def _ended(run: Run | None) -> Run | None:
    """The run, unless it is still going (its outcome is not known yet)."""
    return None if run is None or run.outcome == "running" else run


def exposition(families: Iterable[Family]) -> str:
    """The text format: HELP and TYPE once per family, then its samples."""
    lines: list[str] = []
    for family in families:
        if not family.samples:
            continue
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            text = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels.items())
            lines.append(f"{family.name}{{{text}}} {_number(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)
