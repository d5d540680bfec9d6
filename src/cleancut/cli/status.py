"""``cleancut status`` and ``cleancut metrics``: what the run log and the catalog say."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from cleancut.cli.common import APP_CONFIG, JSON, load, open_catalog
from cleancut.cli.output import emit_json, out, print_table
from cleancut.errors import EXIT_DEGRADED
from cleancut.monitoring import metrics as exposition
from cleancut.runs import RunLog, runs_path
from cleancut.status import Status, gather, human_age


def status(config: Path = APP_CONFIG, json_output: bool = JSON) -> None:
    """Am I protected? Per action (backup, forget, check, verify) the last run, its
    outcome and age, the next scheduled run; the newest recovery points; and warnings
    such as "no application-level RP for 26 h", "last check failed" or "backup is in
    [schedule] but nothing starts it" (no timer or cron file installed).

    Reads only the local run log and catalog, never the repository, so it is instant and
    needs no password. Exit code 0 when there is no warning, 3 when there is one.
    """
    from cleancut.schedule import next_run  # systemd-analyze, only when [schedule] asks
    from cleancut.schedule_cron import unstarted_warnings

    loaded = load(config)
    catalog = open_catalog(loaded)
    runs = RunLog(runs_path(catalog.path, loaded.config.name))
    report = gather(loaded, catalog, runs, next_run=next_run)
    report.warnings.extend(unstarted_warnings(loaded))  # [schedule] edited, never installed
    if json_output:
        emit_json("status", report.as_dict())
    else:
        render(report)
    if not report.ok:
        raise typer.Exit(EXIT_DEGRADED)


def metrics(config: Path = APP_CONFIG) -> None:
    """Print the application's Prometheus metrics (text exposition format) on stdout.

    The same text [monitoring] prometheus_textfile receives after every run: last run,
    last success, duration and outcome of each action, the newest RP's level, group
    consistency, write stall and pause per host, RP count, repository size, the last
    check's and drill's result and the drill's RTO. Reads only the local run log and
    catalog.
    """
    loaded = load(config)
    catalog = open_catalog(loaded)
    runs = RunLog(runs_path(catalog.path, loaded.config.name))
    print(exposition.render(loaded.config.name, runs, catalog), end="")


def render(report: Status) -> None:
    table = Table(title=f"status of {report.app}")
    for column in ("action", "last run (UTC)", "outcome", "age", "took", "next run (UTC)"):
        table.add_column(column)
    for item in report.actions:
        last = item.last
        took = "-" if last is None or last.duration is None else f"{last.duration:.1f}s"
        table.add_row(
            item.action,
            "never" if last is None else last.started().strftime("%Y-%m-%d %H:%M:%S"),
            "-" if last is None else last.outcome,
            "-" if last is None else human_age(report.now - _ended(last.ended_at, last.started_at)),
            took,
            _next(item.next_run, item.schedule),
        )
    print_table(table)
    out.print(f"recovery points: {report.points}", markup=False)
    for label, entry in (
        ("newest", report.newest),
        ("newest application-level", report.newest_strong),
    ):
        if entry is not None:
            out.print(
                f"{label}: {entry.rp_id} ({entry.level}, "
                f"{human_age(report.now - entry.created_at)} ago)",
                markup=False,
            )
    for warning in report.warnings:
        out.print(f"warning: {warning}", markup=False)
    if report.ok:
        out.print("protected: no warnings", markup=False)


def _ended(ended_at: float | None, started_at: float) -> datetime:
    return datetime.fromtimestamp(ended_at or started_at, UTC)


def _next(moment: datetime | None, schedule: str | None) -> str:
    if schedule is None:
        return "not scheduled"
    if moment is None:
        return f"never ({schedule})"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
