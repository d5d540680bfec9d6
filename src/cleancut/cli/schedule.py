"""``cleancut schedule``: install, remove and show an application's systemd timers or cron file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cleancut.cli.common import APP_CONFIG, JSON, load
from cleancut.cli.output import emit_json, err, out, print_table
from cleancut.config.load import LoadedApp
from cleancut.errors import ConfigError
from cleancut.schedule import (
    UNIT_DIR,
    Applied,
    Calendar,
    ScheduleFile,
    TimerState,
    check_calendars,
    cleancut_command,
    install_units,
    installed_units,
    remove_units,
    timer_states,
    unit_stem,
)
from cleancut.schedule_cron import (
    CRON_DIR,
    LOG_DIR,
    cron_file,
    cron_installed,
    install_cron,
    remove_cron,
)
from cleancut.schedule_units import sandbox_warnings, stop_timeout, systemd_units

app = typer.Typer(
    help="Run an application's backup, forget, check and verify on its [schedule]: "
    "systemd timers, or a cron file with --cron.",
    no_args_is_help=True,
)

CRON = typer.Option(False, "--cron", help="A file in /etc/cron.d instead of systemd timers.")
UNIT_DIR_OPTION = typer.Option(
    UNIT_DIR,
    "--unit-dir",
    help="Where the systemd units go; systemctl is only run for the default.",
)
CRON_DIR_OPTION = typer.Option(
    CRON_DIR, "--cron-dir", help="Where the cron file goes (cron itself reads /etc/cron.d)."
)


@app.command("install")
def install(
    config: Path = APP_CONFIG,
    cron: bool = CRON,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the files and their contents; write nothing."
    ),
    unit_dir: Path = UNIT_DIR_OPTION,
    cron_dir: Path = CRON_DIR_OPTION,
    log_dir: Path = typer.Option(
        LOG_DIR, "--log-dir", help="With --cron: the folder of each action's log file."
    ),
) -> None:
    """Write a systemd service and timer per scheduled action (or, with --cron, one cron file).

    Each run is `cleancut ACTION --wait APP.toml`: one at a time per action (Type=oneshot,
    or flock -n under cron), the actions of the application queued on its run lock. The
    units carry the randomized delay, Nice and idle I/O, the repository password as a
    systemd credential, a stop that lets cleancut release every host first, and the
    hardening a root process that freezes file systems still allows. When systemd runs and
    --unit-dir is the default, the timers are enabled and started; units of actions no
    longer in [schedule] are removed. Every calendar expression is checked with
    systemd-analyze calendar first (exit code 2 for a bad one).
    """
    loaded = load(config)
    _require_password(loaded)
    calendars = check_calendars(loaded)
    if cron:
        files = [cron_file(loaded, calendars, cron_dir=cron_dir, log_dir=log_dir)]
    else:
        files = systemd_units(loaded, calendars, unit_dir)
    if dry_run:
        preview(files)
        err.print("dry run: nothing was written", markup=False)
        return
    name = loaded.config.name
    if cron:
        done = install_cron(files[0], log_dir=log_dir)
        done.warnings += _cron_notes(cron_dir, log_dir, name)
        if installed_units(name):
            done.warnings.append(_both("systemd timers", "schedule remove"))
    else:
        done = install_units(name, files, unit_dir)
        done.warnings += sandbox_warnings(loaded.config, loaded.path, cleancut_command())
        done.warnings += stop_timeout(loaded)[1]
        if cron_installed(name):
            done.warnings.append(_both("cron file", "schedule remove --cron"))
    render(done)


@app.command("remove")
def remove(
    config: Path = APP_CONFIG,
    cron: bool = CRON,
    unit_dir: Path = UNIT_DIR_OPTION,
    cron_dir: Path = CRON_DIR_OPTION,
) -> None:
    """Stop and delete everything `schedule install` put in place for the application.

    Every timer of it is disabled and stopped (when systemd runs) and every unit file
    cleancut wrote for it deleted, also those of actions no longer in [schedule]; with
    --cron, its cron file and lock files (the logs stay). A run in progress finishes.
    """
    loaded = load(config)
    name = loaded.config.name
    done = remove_cron(name, cron_dir=cron_dir) if cron else remove_units(name, unit_dir)
    if not done.removed and not done.warnings:
        out.print(f"nothing was installed for {name} in {cron_dir if cron else unit_dir}")
        return
    render(done)


@app.command("show")
def show(
    config: Path = APP_CONFIG,
    json_output: bool = JSON,
    unit_dir: Path = UNIT_DIR_OPTION,
    cron_dir: Path = CRON_DIR_OPTION,
) -> None:
    """Each scheduled action: its calendar expression as systemd reads it, its next three
    runs, and whether its systemd units or the cron file are installed. Where systemd
    runs, also what it says of each timer: active, enabled, its next elapse (the
    randomized delay included) and when it last fired."""
    loaded = load(config)
    calendars = check_calendars(loaded, iterations=3)
    name = loaded.config.name
    units = {path.name for path in installed_units(name, unit_dir)}
    cron = cron_installed(name, cron_dir)
    delay = loaded.config.schedule.randomized_delay if loaded.config.schedule else None
    timers = timer_states([f"{unit_stem(name, action)}.timer" for action in calendars])
    rows = [
        _row(name, action, calendar, units, timers.get(f"{unit_stem(name, action)}.timer"))
        for action, calendar in calendars.items()
    ]
    if json_output:
        emit_json(
            "schedule",
            {"app": name, "randomized_delay": delay, "cron_installed": cron, "actions": rows},
        )
        return
    table = Table(title=f"schedule of {name}")
    for column in ("action", "expression", "normal form", "next runs (UTC)", "systemd timer"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["action"],
            row["expression"],
            row["normalized"],
            "\n".join(moment[:19].replace("T", " ") for moment in row["next"]) or "never",
            _timer_cell(row),
        )
    print_table(table)
    if delay:
        out.print(f"each run starts up to {delay:.0f} s later (randomized_delay)")
    out.print(f"cron file: {'installed' if cron else 'not installed'} in {cron_dir}")


def _row(
    app: str, action: str, calendar: Calendar, units: set[str], timer: TimerState | None
) -> dict[str, Any]:
    stem = unit_stem(app, action)
    return {
        "action": action,
        "expression": calendar.expression,
        "normalized": calendar.normalized,
        "next": [moment.isoformat() for moment in calendar.upcoming],
        "timer_installed": {f"{stem}.service", f"{stem}.timer"} <= units,
        "timer": None if timer is None else timer.as_dict(),  # systemd's view, when it runs
    }


def _timer_cell(row: dict[str, Any]) -> str:
    """ "installed" or "-"; with systemd running, its state and its next elapse too."""
    timer = row["timer"]
    if timer is None or not timer["enabled"]:
        return "installed" if row["timer_installed"] else "-"
    lines = [f"{timer['active']}, {timer['enabled']}"]
    if timer["next_elapse"]:
        lines.append(f"next {timer['next_elapse'][:19].replace('T', ' ')}")
    if timer["last_trigger"]:
        lines.append(f"last {timer['last_trigger'][:19].replace('T', ' ')}")
    return "\n".join(lines)


def _require_password(loaded: LoadedApp) -> None:
    repo = loaded.config.repository
    if repo.password_file is None and repo.password_command is None:
        raise ConfigError(
            "a scheduled run would have no repository password: RESTIC_PASSWORD of this "
            "shell is not handed to timers or cron",
            file=str(loaded.path),
            key="repository",
            hint="set password_file (mode 600) or password_command",
        )


def _cron_notes(cron_dir: Path, log_dir: Path, app: str) -> list[str]:
    notes = [f"each run's output goes to {log_dir}/{app}-<action>.log"]
    if cron_dir.absolute() != CRON_DIR:
        notes.append(f"--cron-dir {cron_dir} is not {CRON_DIR}: cron will not read it there")
    return notes


def _both(other: str, command: str) -> str:
    return (
        f"this application also has {other} installed, which run the same actions; "
        f"`cleancut {command}` removes them"
    )


def render(done: Applied) -> None:
    """What was written, removed and run, and what was not run and why."""
    for path in done.removed:
        out.print(f"removed {path}", markup=False)
    for path in done.written:
        out.print(f"wrote {path}", markup=False)
    for argv in done.ran:
        out.print(f"ran {' '.join(argv)}", markup=False)
    if done.not_run:
        commands = " && ".join(" ".join(argv) for argv in done.not_run)
        out.print(
            f"did not run systemctl: {done.why_not_run}; where systemd reads these units, "
            f"run: {commands}",
            markup=False,
        )
    for warning in done.warnings:
        err.print(f"note: {warning}", markup=False)


def preview(files: list[ScheduleFile]) -> None:
    """Each file's path as a comment line, then its text: what install would write."""
    for file in files:
        out.print(f"# {file.path}\n{file.text}", markup=False)
