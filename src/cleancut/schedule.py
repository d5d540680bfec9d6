"""``[schedule]`` on this machine: calendar expressions, and installing systemd timers.

Every calendar expression is read by ``systemd-analyze calendar``, the parser the timers
themselves use, so what ``schedule show`` and ``status`` say is what the timers will do.
The units' text is :mod:`cleancut.schedule_units`; ``--cron`` is
:mod:`cleancut.schedule_cron`. Every file installed carries :data:`MARK`, and removing
only ever deletes files that do (an operator's own file of the same name stays).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cleancut.config.load import LoadedApp
from cleancut.config.operations import SCHEDULED_ACTIONS, Schedule
from cleancut.errors import CleancutError, ConfigError

UNIT_DIR = Path("/etc/systemd/system")
#: Exists only while systemd runs as the init system (sd_booted(3)).
SYSTEMD_RUNNING = Path("/run/systemd/system")
MARK = "# Written by `cleancut schedule install`"
_ACTIONS = "|".join(SCHEDULED_ACTIONS)


def schedule_of(loaded: LoadedApp) -> Schedule:
    """The application's ``[schedule]``, or a ConfigError when it schedules nothing."""
    schedule = loaded.config.schedule
    if schedule is None or not schedule.actions():
        raise ConfigError(
            "no [schedule] table" if schedule is None else "[schedule] schedules no action",
            file=str(loaded.path),
            key="schedule",
            hint='add e.g. [schedule] backup = "*-*-* 02:00" and check = "weekly" '
            f"(actions: {', '.join(SCHEDULED_ACTIONS)}; systemd OnCalendar expressions)",
        )
    return schedule


@dataclass(frozen=True)
class Calendar:
    """A calendar expression as systemd reads it: its normal form and next elapses (UTC)."""

    expression: str
    normalized: str
    upcoming: list[datetime]


class CalendarInvalid(ValueError):
    """systemd-analyze refused an expression; the message is systemd's own."""

    def __init__(self, expression: str, message: str) -> None:
        self.expression = expression
        super().__init__(message)


def analyze(
    expressions: Sequence[str], *, iterations: int = 1, after: datetime | None = None
) -> list[Calendar]:
    """``systemd-analyze calendar`` on every expression, in one call.

    Times come from the machine's own time zone rules, as the timers' do (TZ is left
    alone): systemd prints them in local time and, unless that is UTC, again in UTC.
    """
    argv = ["systemd-analyze", "calendar", f"--iterations={iterations}"]
    if after is not None:
        argv.append(f"--base-time=@{after.timestamp():.6f}")
    try:
        done = subprocess.run(
            [*argv, "--", *expressions],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0"},
        )
    except FileNotFoundError:
        raise ConfigError(
            "cannot check calendar expressions: systemd-analyze is not installed",
            key="schedule",
            hint="install systemd (Debian: apt-get install systemd)",
        ) from None
    except subprocess.TimeoutExpired as exc:
        raise CleancutError(f"systemd-analyze calendar did not answer in {exc.timeout}s") from exc
    if done.returncode != 0:
        raise _refusal(expressions, done.stderr)
    blocks = [_parse_block(block) for block in done.stdout.split("\n\n") if block.strip()]
    if len(blocks) != len(expressions):
        raise CleancutError(f"cannot read systemd-analyze calendar's output: {done.stdout!r}")
    return [
        Calendar(expression, normalized, upcoming)
        for expression, (normalized, upcoming) in zip(expressions, blocks, strict=True)
    ]


def _refusal(expressions: Sequence[str], stderr: str) -> CalendarInvalid:
    """Which expression systemd refused ("Failed to parse calendar specification 'X': ...")."""
    message = stderr.strip().splitlines()[-1] if stderr.strip() else "refused"
    match = re.search(r"specification '(.*)': ", message)
    named = match[1] if match and match[1] in expressions else expressions[0]
    return CalendarInvalid(named, message)


_MOMENT = re.compile(
    r"^(?:\w+ )?(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.\d+)? ?(\S*)$"
)  # "Fri 2026-12-04 02:00:00 CET"


def _parse_block(block: str) -> tuple[str, list[datetime]]:
    normalized = ""
    upcoming: list[datetime] = []
    for line in block.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "Normalized form":
            normalized = value
        elif key == "(in UTC)" and upcoming:
            upcoming[-1] = _moment(value, utc=True)
        elif (key == "Next elapse" or key.startswith("Iter. #")) and value != "never":
            upcoming.append(_moment(value, utc=False))
    return normalized, upcoming


def _moment(text: str, *, utc: bool) -> datetime:
    match = _MOMENT.match(text)
    if match is None:
        raise CleancutError(f"cannot read the time {text!r} from systemd-analyze calendar")
    naive = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S")
    if utc or match[2] in ("UTC", "GMT", "Z"):
        return naive.replace(tzinfo=UTC)
    return naive.astimezone(UTC)  # local time, as printed when this machine is not on UTC


def check_calendars(loaded: LoadedApp, *, iterations: int = 1) -> dict[str, Calendar]:
    """Each scheduled action's expression as systemd reads it, or a ConfigError naming the
    file, the key ``schedule.<action>`` and systemd's message."""
    actions = schedule_of(loaded).actions()
    try:
        found = analyze(list(actions.values()), iterations=iterations)
    except CalendarInvalid as exc:
        action = next(name for name, when in actions.items() if when == exc.expression)
        raise ConfigError(
            f"{exc.expression!r} is not a calendar expression systemd accepts: {exc}",
            file=str(loaded.path),
            key=f"schedule.{action}",
            hint='use systemd\'s OnCalendar syntax, e.g. "*-*-* 02:00", "Mon..Fri 03:30", '
            '"weekly"; try it with `systemd-analyze calendar`',
        ) from None
    return dict(zip(actions, found, strict=True))


def next_run(expression: str, after: datetime | None = None) -> datetime | None:
    """When ``expression`` next elapses after ``after`` (default now), in UTC; None when it
    never does again. One ``systemd-analyze`` call."""
    try:
        (calendar,) = analyze([expression], after=after)
    except CalendarInvalid as exc:
        raise ConfigError(f"{expression!r}: {exc}", key="schedule") from None
    return calendar.upcoming[0] if calendar.upcoming else None


def cleancut_command() -> list[str]:
    """How a timer or cron starts this cleancut: the console script beside this Python
    (a virtualenv's bin folder), else this Python with ``-m cleancut``; both absolute."""
    python = Path(sys.executable).absolute()  # not resolved: a venv's python is a symlink
    script = python.parent / "cleancut"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(python), "-m", "cleancut"]


@dataclass(frozen=True)
class ScheduleFile:
    """A file ``schedule install`` writes: where, and what it says."""

    path: Path
    text: str


@dataclass
class Applied:
    """What install or remove did, and did not do, on this machine (the CLI tells it)."""

    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    ran: list[list[str]] = field(default_factory=list)
    not_run: list[list[str]] = field(default_factory=list)
    why_not_run: str | None = None
    warnings: list[str] = field(default_factory=list)


def unit_stem(app: str, action: str) -> str:
    return f"cleancut-{app}-{action}"


def installed_units(app: str, unit_dir: Path = UNIT_DIR) -> list[Path]:
    """The unit files of ``app`` in ``unit_dir`` that cleancut wrote, for any action."""
    pattern = re.compile(rf"^{re.escape(unit_stem(app, ''))}(?:{_ACTIONS})\.(?:service|timer)$")
    if not unit_dir.is_dir():
        return []
    return sorted(
        path
        for path in unit_dir.glob(f"cleancut-{app}-*")
        if pattern.match(path.name) and written_by_us(path)
    )


def written_by_us(path: Path) -> bool:
    """Whether ``path`` carries :data:`MARK` (an operator's own file of that name does not)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as text:
            return any(line.startswith(MARK) for line in itertools.islice(text, 3))
    except OSError:
        return False


def write_file(file: ScheduleFile) -> None:
    """Write ``file`` whole or not at all (a timer never reads half a unit), mode 644."""
    file.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    partial = file.path.with_name(f".{file.path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(file.text)
        out.flush()
        os.fsync(out.fileno())
    partial.chmod(0o644)  # whatever the umask
    partial.replace(file.path)


def refuse_foreign(files: list[ScheduleFile]) -> None:
    """A ConfigError, before anything is written, when a file of the same name is not ours."""
    for file in files:
        if file.path.exists() and not written_by_us(file.path):
            raise ConfigError(
                f"{file.path} exists and was not written by cleancut; it is left alone",
                hint="move it away first (or install into another folder)",
            )


def manages_systemd(unit_dir: Path) -> str | None:
    """None when systemctl may be run for ``unit_dir``, else why not."""
    if not SYSTEMD_RUNNING.exists():
        return f"systemd is not running on this machine (no {SYSTEMD_RUNNING})"
    if unit_dir.absolute() != UNIT_DIR:
        return f"--unit-dir {unit_dir} is not {UNIT_DIR}, which systemd reads"
    return None


def install_units(app: str, files: list[ScheduleFile], unit_dir: Path = UNIT_DIR) -> Applied:
    """Write ``files``, drop units of actions no longer scheduled, and start the timers."""
    refuse_foreign(files)
    done = Applied()
    keep = {file.path for file in files}
    stale = [path for path in installed_units(app, unit_dir) if path not in keep]
    timers = [file.path.name for file in files if file.path.suffix == ".timer"]
    stale_timers = [path.name for path in stale if path.suffix == ".timer"]
    why_not = manages_systemd(unit_dir)
    if stale_timers:
        _systemctl(done, why_not, ["disable", "--now", *stale_timers])
    for path in stale:
        path.unlink()
        done.removed.append(path)
    for file in files:
        write_file(file)
        done.written.append(file.path)
    _systemctl(done, why_not, ["daemon-reload"])
    _systemctl(done, why_not, ["enable", "--now", *timers])
    return done


def remove_units(app: str, unit_dir: Path = UNIT_DIR) -> Applied:
    """Stop and disable every timer of ``app`` and delete every unit file cleancut wrote.

    A run in progress is left to finish (stopping it is ``systemctl stop``'s job)."""
    done = Applied()
    found = installed_units(app, unit_dir)
    why_not = manages_systemd(unit_dir)
    timers = [path.name for path in found if path.suffix == ".timer"]
    if timers:
        _systemctl(done, why_not, ["disable", "--now", *timers])
    for path in found:
        path.unlink()
        done.removed.append(path)
    if found:
        _systemctl(done, why_not, ["daemon-reload"])
        services = [path.name for path in found if path.suffix == ".service"]
        _systemctl(done, why_not, ["reset-failed", *services], check=False)
    return done


@dataclass(frozen=True)
class TimerState:
    """A timer as the running systemd sees it."""

    active: str  # ActiveState: active, inactive, failed, ...
    enabled: str  # UnitFileState: enabled, disabled, ... ("" when systemd has no such unit)
    next_elapse: datetime | None  # the random delay included
    last_trigger: datetime | None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "active": self.active,
            "enabled": self.enabled,
            "next_elapse": _iso(self.next_elapse),
            "last_trigger": _iso(self.last_trigger),
        }


def timer_states(units: Sequence[str]) -> dict[str, TimerState]:
    """What systemd says of each timer in ``units``; empty when systemd does not run here."""
    if not units or not SYSTEMD_RUNNING.exists():
        return {}
    properties = "Id,ActiveState,UnitFileState,NextElapseUSecRealtime,LastTriggerUSec"
    argv = ["systemctl", "show", f"--property={properties}", *units]
    env = {**os.environ, "TZ": "UTC", "LC_ALL": "C"}  # times as "Fri 2026-12-04 02:04:09 UTC"
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=False, env=env
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states: dict[str, TimerState] = {}
    for block in done.stdout.split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if fields.get("Id") in units:
            states[fields["Id"]] = TimerState(
                active=fields.get("ActiveState", ""),
                enabled=fields.get("UnitFileState", ""),
                next_elapse=_utc(fields.get("NextElapseUSecRealtime", "")),
                last_trigger=_utc(fields.get("LastTriggerUSec", "")),
            )
    return states


def _utc(text: str) -> datetime | None:
    """A time systemctl show printed under TZ=UTC; None when unset."""
    match = _SHOWN_TIME.search(text)
    if match is None:
        return None
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


_SHOWN_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _systemctl(done: Applied, why_not: str | None, args: list[str], *, check: bool = True) -> None:
    argv = ["systemctl", *args]
    if why_not is not None:
        done.not_run.append(argv)
        done.why_not_run = why_not
        return
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CleancutError(f"cannot run {' '.join(argv)}: {exc}") from exc
    if result.returncode != 0 and check:
        raise CleancutError(
            f"{' '.join(argv)} failed (exit {result.returncode}): {result.stderr.strip()[-400:]}"
        )
    done.ran.append(argv)
