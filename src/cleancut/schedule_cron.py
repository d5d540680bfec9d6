"""``schedule install --cron``: one ``/etc/cron.d/cleancut-<app>`` file instead of timers.

Each scheduled action is one line that runs ``cleancut <action> --wait APP.toml`` under
``flock -n``: a run still going when its next time comes makes that one a no-op instead
of a second run beside it (what ``Type=oneshot`` does for the timers), and ``--wait``
queues the actions of one application on its run lock. The randomized delay is a
``sleep`` before it; the output goes to a log file per action.

cron has no equivalent for much of systemd's calendar syntax, so each expression is
converted from the normal form ``systemd-analyze calendar`` gives it (``weekly`` is
``Mon *-*-* 00:00:00``): weekdays, ``*-MONTH-DAY`` and ``HOUR:MINUTE:00`` whose fields
are ``*``, numbers, lists, ranges and steps. Anything else (seconds, years, a time zone,
the last days of a month, weekdays together with days of the month, which cron would
OR) is a ConfigError that says to use the systemd timers.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

from cleancut.config.load import LoadedApp
from cleancut.config.operations import SCHEDULED_ACTIONS
from cleancut.coordinator.runlock import lock_folder
from cleancut.errors import ConfigError
from cleancut.schedule import (
    MARK,
    UNIT_DIR,
    Applied,
    Calendar,
    ScheduleFile,
    cleancut_command,
    installed_units,
    refuse_foreign,
    schedule_of,
    timer_states,
    unit_stem,
    write_file,
    written_by_us,
)

CRON_DIR = Path("/etc/cron.d")
LOG_DIR = Path("/var/log/cleancut")
#: cron.d ignores a file whose name has anything else (a dot above all: ``x.dpkg-old``).
_CRON_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
#: cron's own PATH is /usr/bin:/bin; cleancut runs losetup, mount, restic and ssh.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_WEEKDAYS = {"Mon": 1, "Tue": 2, "Wed": 3, "Thu": 4, "Fri": 5, "Sat": 6, "Sun": 7}
_ITEM = re.compile(r"^(\d+)(?:\.\.(\d+))?(?:/(\d+))?$")
_NORMAL = re.compile(
    r"^(?:(?P<weekdays>[A-Za-z.,]+) )?(?P<year>[^-\s]+)-(?P<month>[^-~\s]+)(?P<sep>[-~])"
    r"(?P<day>\S+) (?P<hour>[^:\s]+):(?P<minute>[^:\s]+):(?P<second>\S+?)(?P<zone> \S+)?$"
)


class NoCronEquivalent(ValueError):
    """A calendar expression cron cannot say; the message says which part."""


def cron_file_name(app: str) -> str:
    name = f"cleancut-{app}"
    if not _CRON_NAME.match(name):
        raise ValueError(f"{name!r} is not a name cron.d reads (letters, digits, - and _)")
    return name


def cron_fields(normalized: str) -> str:
    """The five cron fields (``m h dom mon dow``) of a systemd calendar normal form."""
    match = _NORMAL.match(normalized)
    if match is None:
        raise NoCronEquivalent(f"cannot read the normal form {normalized!r}")
    part = match.groupdict()
    if part["zone"]:
        raise NoCronEquivalent(
            f"cron has no time zone ({part['zone'].strip()}); it uses local time"
        )
    if part["sep"] == "~":
        raise NoCronEquivalent("cron has no 'last days of the month' (~)")
    if part["year"] != "*":
        raise NoCronEquivalent(f"cron has no year field ({part['year']})")
    if part["second"] != "00":
        raise NoCronEquivalent(f"cron starts jobs on whole minutes only (seconds {part['second']})")
    weekdays = _weekdays(part["weekdays"])
    day = _field(part["day"], 1, 31, "day of the month")
    if weekdays != "*" and day != "*":
        raise NoCronEquivalent(
            "cron runs a job when the weekday OR the day of the month matches, systemd when both do"
        )
    minute = _field(part["minute"], 0, 59, "minute")
    hour = _field(part["hour"], 0, 23, "hour")
    month = _field(part["month"], 1, 12, "month")
    return f"{minute} {hour} {day} {month} {weekdays}"


def _field(text: str, low: int, high: int, what: str) -> str:
    if text == "*":
        return "*"
    items = []
    for item in text.split(","):
        match = _ITEM.match(item)
        if match is None:
            raise NoCronEquivalent(f"cron cannot say the {what} {text!r}")
        first, last, step = match[1], match[2], match[3]
        if step is None:
            items.append(f"{int(first)}-{int(last)}" if last else str(int(first)))
        else:
            items.append(f"{int(first)}-{int(last) if last else high}/{int(step)}")
        if not all(low <= int(n) <= high for n in (first, last or first)):
            raise NoCronEquivalent(f"the {what} {item} is out of range")
    return ",".join(items)


def _weekdays(text: str | None) -> str:
    if text is None:
        return "*"
    items = []
    for item in text.split(","):
        first, _, last = item.partition("..")
        if first not in _WEEKDAYS or (last and last not in _WEEKDAYS):
            raise NoCronEquivalent(f"cron cannot say the weekdays {text!r}")
        items.append(f"{_WEEKDAYS[first]}-{_WEEKDAYS[last]}" if last else str(_WEEKDAYS[first]))
    return ",".join(items)


def cron_file(
    loaded: LoadedApp,
    calendars: dict[str, Calendar],
    *,
    cron_dir: Path = CRON_DIR,
    log_dir: Path = LOG_DIR,
    lock_dir: Path | None = None,
) -> ScheduleFile:
    """The cron.d file for ``calendars``, or a ConfigError naming the key that cron cannot say."""
    app = loaded.config.name
    delay = schedule_of(loaded).randomized_delay
    locks = lock_dir or lock_folder()
    lines = [
        f"{MARK} for application {app} ({loaded.path}).",
        "# Change [schedule] there and install again rather than editing this file;",
        "# `cleancut schedule remove --cron` deletes it. flock -n: a run still going when",
        "# its next time comes makes that one a no-op; --wait: the actions of the",
        "# application queue on its run lock.",
        "SHELL=/bin/sh",
        f"PATH={PATH}",
    ]
    for action, calendar in calendars.items():
        try:
            fields = cron_fields(calendar.normalized)
        except NoCronEquivalent as exc:
            raise ConfigError(
                f"{calendar.expression!r} has no cron equivalent: {exc}",
                file=str(loaded.path),
                key=f"schedule.{action}",
                hint="use the systemd timers (schedule install without --cron), or a form "
                'cron can say, e.g. "Mon..Fri *-*-* 02:30", "hourly", "*-*-01 03:00"',
            ) from None
        command = _command(loaded, action, locks, log_dir, delay)
        lines.append(f"{fields} root {command}")
    return ScheduleFile(cron_dir / cron_file_name(app), "\n".join(lines) + "\n")


def _command(
    loaded: LoadedApp, action: str, locks: Path, log_dir: Path, delay: float | None
) -> str:
    app = loaded.config.name
    lock = locks / f"{app}-{action}.cron.lock"
    argv = [*cleancut_command(), action, "--wait", str(loaded.path)]
    for word in [*argv, str(lock), str(log_dir)]:
        if "%" in word or "\n" in word:  # cron turns % into a newline
            raise ConfigError(
                f"{word!r} has a % or a newline, which a cron line cannot hold",
                file=str(loaded.path),
                hint="move it to a plain path, or use the systemd timers",
            )
    steps = []
    if delay:
        steps.append(f"sleep $(shuf -i 0-{math.ceil(delay)} -n 1);")
    steps += [
        f"mkdir -p -m 700 {shlex.quote(str(locks))} &&",
        f"flock -n {shlex.quote(str(lock))} {shlex.join(argv)};",
    ]
    log = shlex.quote(str(log_dir / f"{app}-{action}.log"))
    return "{ " + " ".join(steps) + " } >>" + log + " 2>&1"


def install_cron(file: ScheduleFile, *, log_dir: Path = LOG_DIR) -> Applied:
    """Write the cron file (cron reads cron.d again within a minute) and the log folder."""
    refuse_foreign([file])
    done = Applied()
    log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    write_file(file)
    done.written.append(file.path)
    return done


def remove_cron(app: str, *, cron_dir: Path = CRON_DIR, lock_dir: Path | None = None) -> Applied:
    """Delete the cron file cleancut wrote for ``app`` and its lock files (logs stay)."""
    done = Applied()
    path = cron_dir / cron_file_name(app)
    if path.exists():
        if not written_by_us(path):
            done.warnings.append(f"{path} was not written by cleancut; it is left alone")
            return done
        path.unlink()
        done.removed.append(path)
    locks = lock_dir or lock_folder()
    for lock in sorted(locks.glob(f"{app}-*.cron.lock")):
        if lock.name.removeprefix(f"{app}-").removesuffix(".cron.lock") in SCHEDULED_ACTIONS:
            lock.unlink()
            done.removed.append(lock)
    return done


def cron_installed(app: str, cron_dir: Path = CRON_DIR) -> bool:
    path = cron_dir / cron_file_name(app)
    return path.exists() and written_by_us(path)


def unstarted_warnings(
    loaded: LoadedApp, *, unit_dir: Path = UNIT_DIR, cron_dir: Path = CRON_DIR
) -> list[str]:
    """What ``status`` warns of when ``[schedule]`` promises runs nothing will start: no
    timer and no cron file installed for an action, or a timer the running systemd does
    not have active. Editing ``[schedule]`` without installing it protects nothing."""
    schedule = loaded.config.schedule
    actions = list(schedule.actions()) if schedule is not None else []
    name = loaded.config.name
    if not actions or cron_installed(name, cron_dir):
        return []
    installed = {path.name for path in installed_units(name, unit_dir)}
    missing = [a for a in actions if f"{unit_stem(name, a)}.timer" not in installed]
    fix = f"run `cleancut schedule install {loaded.path}`"
    found = []
    if missing:
        found.append(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} in [schedule] but "
            f"nothing starts {'it' if len(missing) == 1 else 'them'}: no systemd timer or "
            f"cron file is installed; {fix}"
        )
    timers = [f"{unit_stem(name, a)}.timer" for a in actions if a not in missing]
    for unit, state in timer_states(timers).items():
        if state.active != "active":
            found.append(f"{unit} is installed but systemd has it {state.active}; {fix}")
    return found
