"""The systemd units ``cleancut schedule install`` writes, each directive with its reason.

A oneshot ``cleancut-<app>-<action>.service`` runs ``cleancut <action> --wait APP.toml``
and a ``.timer`` starts it on the action's calendar expression. The service is what a
careful operator would write by hand for a root process that freezes file systems: no run
overlaps itself, actions of one application queue on its run lock, a stop lets cleancut
release every host before anything is killed, the repository password comes in as a
credential, and the hardening stops short of what freezing, loop devices, mounts, ssh,
restic and database servers need. ``systemd-analyze verify`` accepts them.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from cleancut.config.application import AppConfig
from cleancut.config.load import LoadedApp, load_guest
from cleancut.coordinator.repository import CREDENTIAL
from cleancut.errors import CleancutError, ConfigError
from cleancut.guest.hooks import collect_hooks
from cleancut.guest.hooks_phase import HookPhases
from cleancut.schedule import (
    MARK,
    UNIT_DIR,
    Calendar,
    ScheduleFile,
    cleancut_command,
    schedule_of,
    unit_stem,
)


def systemd_units(
    loaded: LoadedApp,
    calendars: dict[str, Calendar],
    unit_dir: Path = UNIT_DIR,
    command: list[str] | None = None,
) -> list[ScheduleFile]:
    """A service and a timer for each scheduled action; ``command`` starts cleancut
    (default: this one, :func:`cleancut_command`)."""
    delay = schedule_of(loaded).randomized_delay
    command = command or cleancut_command()
    seconds, _ = stop_timeout(loaded)  # reads the local guest configs: once, not per unit
    files = []
    for action, calendar in calendars.items():
        stem = unit_stem(loaded.config.name, action)
        service = service_text(loaded, action, command, seconds)
        timer = timer_text(loaded, action, calendar.expression, delay)
        files.append(ScheduleFile(unit_dir / f"{stem}.service", service))
        files.append(ScheduleFile(unit_dir / f"{stem}.timer", timer))
    return files


def _header(app: str, app_file: Path) -> list[str]:
    return [
        f"{MARK} for application {app} ({app_file}).",
        "# Change [schedule] there and install again rather than editing this file;",
        "# `cleancut schedule remove` deletes it.",
    ]


def service_text(loaded: LoadedApp, action: str, command: list[str], stop_seconds: int) -> str:
    """The oneshot that runs ``action``: each directive with the reason it is there."""
    config = loaded.config
    argv = [*command, action, "--wait", str(loaded.path)]
    return "\n".join(
        [
            *_header(config.name, loaded.path),
            "[Unit]",
            f"Description=cleancut {action} of {config.name}",
            "# ssh hosts and a remote repository need the network",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            '# a oneshot stays "activating" until cleancut exits, so its timer never starts a',
            "# second run beside it; it has no start timeout: a backup takes what it takes",
            "Type=oneshot",
            "# --wait: backup, forget, check and verify of one application queue on its run lock",
            "ExecStart="
            + " ".join(_unit_word(word, loaded, "the application file") for word in argv),
            "# root: freezing, loop devices and mounts need it; also sets $HOME (restic's cache)",
            "User=root",
            "# uploads, checks and drills yield CPU and disk to the applications they protect",
            "Nice=10",
            "IOSchedulingClass=idle",
            "# lines reach the journal as they are written, not when cleancut exits",
            "Environment=PYTHONUNBUFFERED=1",
            *_umask(action),
            "# a stop sends SIGTERM to cleancut alone, which thaws and releases every host and",
            "# ends its own children; whatever is left after TimeoutStopSec gets SIGKILL: it",
            "# covers a running pre-script, the post-scripts and a freeze (twice freeze_timeout)",
            "KillMode=mixed",
            f"TimeoutStopSec={stop_seconds}",
            *_password(loaded),
            *hardening(loaded, command),
            "",
        ]
    )


def _umask(action: str) -> list[str]:
    if action == "verify":
        return [
            "# the drill starts database servers as their own users, which must reach the",
            "# folders cleancut creates for them",
            "UMask=0022",
        ]
    return ["# files it creates (catalog, caches, run log) are root's alone", "UMask=0077"]


def _password(loaded: LoadedApp) -> list[str]:
    repo = loaded.config.repository
    if repo.password_file is None:
        return ["# the repository password comes from repository.password_command"]
    path = _unit_path(repo.password_file, loaded)
    return [
        "# the repository password as a credential: systemd reads the file and hands it in",
        "# under $CREDENTIALS_DIRECTORY; the service itself cannot read the path",
        f"LoadCredential={CREDENTIAL}:{path}",
        f"InaccessiblePaths=-{path}",
    ]


#: What a root process that freezes file systems, mounts them, sets up loop devices and
#: runs ssh, restic and database servers can still live with.
HARDENING = [
    "# hardening that freezing, mounts, loop devices, ssh, restic and drills still allow",
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "# /usr, /boot and /etc read-only; state, repositories and mount points stay writable",
    "ProtectSystem=full",
    "ProtectHostname=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "# local sockets, IP (ssh, restic, databases) and netlink (device and mount tools)",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "# ProtectClock= by hand: its implied DeviceAllow=char-rtc denies every other device",
    "# (loop devices, /dev/mapper) on systemd older than 252 (systemd issue 18142)",
    "CapabilityBoundingSet=~CAP_SYS_TIME CAP_WAKE_ALARM",
    "SystemCallFilter=~@clock",
    "SystemCallErrorNumber=EPERM",
    "# left out on purpose: PrivateDevices=, DevicePolicy= (loop devices, /dev/mapper),",
    "# ProtectKernelModules= (the loop module loads on demand), ProtectSystem=strict and",
    "# ProtectHome= (repositories, caches and mount points may be anywhere),",
    "# ProtectKernelTunables= (hooks and snapshot tools may tune /sys or /proc/sys),",
    "# RestrictSUIDSGID= (a drill restores setuid files), MemoryDenyWriteExecute= and",
    "# RestrictNamespaces= (hooks and database servers in drills may need them)",
]


def timer_text(loaded: LoadedApp, action: str, expression: str, delay: float | None) -> str:
    """The timer that starts ``action``'s service on ``expression``."""
    app = loaded.config.name
    spread = []
    if delay:
        spread = [
            "# each run starts up to this much later, so many machines do not start at once",
            f"RandomizedDelaySec={math.ceil(delay)}",
        ]
    return "\n".join(
        [
            *_header(app, loaded.path),
            "[Unit]",
            f"Description=cleancut {action} of {app} on schedule",
            "",
            "[Timer]",
            f"OnCalendar={expression}",
            "# a run missed while the machine was off starts soon after it boots",
            "Persistent=true",
            *spread,
            f"Unit={unit_stem(app, action)}.service",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )


_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")
_UNSAFE_PATH = re.compile(r"[\x00-\x20\x7f\"'\\]")


def _unit_word(word: str, loaded: LoadedApp, what: str) -> str:
    """``word`` as one ExecStart= word: quoted as systemd unquotes it, ``%`` and ``$``
    doubled so neither a specifier nor a variable is expanded."""
    if re.search(r"[\x00-\x1f\x7f]", word):
        raise ConfigError(
            f"{what} {word!r} has a control character a unit file cannot hold",
            file=str(loaded.path),
            hint="move it to a path without one",
        )
    escaped = word.replace("%", "%%").replace("$", "$$")
    if _PLAIN_WORD.match(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unit_path(path: Path, loaded: LoadedApp) -> str:
    """``path`` for LoadCredential= and InaccessiblePaths=, which take it unquoted."""
    if _UNSAFE_PATH.search(str(path)):
        raise ConfigError(
            f"{path} has a space, quote, backslash or control character, which "
            "LoadCredential= cannot take",
            file=str(loaded.path),
            key="repository.password_file",
            hint="move the password file to a plain path, e.g. /etc/cleancut/APP.pass",
        )
    return str(path).replace("%", "%%")


def stop_timeout(loaded: LoadedApp) -> tuple[int, list[str]]:
    """Seconds a stopped run gets to thaw and release every host before SIGKILL, and
    warnings about what that bound could not count.

    A stop waits for a pre-script that is running (it finishes first, within its timeout),
    then the post-scripts; a freeze in progress may need its full timeout twice (freeze,
    then thaw). A SIGKILL before all that is done would skip post-scripts and could leave
    an application quiesced, so the bound counts the hooks of every guest config on this
    machine; ``[schedule] stop_timeout`` overrides it.
    """
    config = loaded.config
    chosen = config.schedule.stop_timeout if config.schedule is not None else None
    if chosen is not None:
        return math.ceil(chosen), []
    hooks, unknown = 0.0, []
    for name, host in config.hosts.items():
        if host.connect != "local" or host.guest_config is None:
            unknown.append(name)
            continue
        try:
            specs = collect_hooks(load_guest(host.guest_config))
        except CleancutError:
            unknown.append(name)  # `config check` says what is wrong with it
            continue
        hooks = max(hooks, HookPhases(specs).release_bound())
    seconds = math.ceil(2 * config.freeze_timeout + _STOP_SLACK + hooks)
    if not unknown:
        return seconds, []
    return seconds, [
        f"TimeoutStopSec={seconds} counts no time for the pre- and post-scripts of "
        f"{', '.join(sorted(unknown))} (their guest configs are not readable here): if a "
        "stop may have to wait for them, set [schedule] stop_timeout to cover them"
    ]


_STOP_SLACK = 60.0


def hardening(loaded: LoadedApp, command: list[str]) -> list[str]:
    """:data:`HARDENING`, without ``PrivateTmp=yes`` when something the runs need lives
    in /tmp or /var/tmp (a checkout there, say): the unit would not even start."""
    in_tmp = [what for what, path in _needed(loaded.config, loaded.path, command) if _in_tmp(path)]
    if not in_tmp:
        return HARDENING
    index = HARDENING.index("PrivateTmp=yes")
    why = f"# PrivateTmp= left out: {', '.join(in_tmp)} in /tmp or /var/tmp (move it to have it)"
    return [*HARDENING[:index], why, *HARDENING[index + 1 :]]


def sandbox_warnings(config: AppConfig, app_file: Path, command: list[str]) -> list[str]:
    """Paths the scheduled runs need but the unit's sandbox hides or makes read-only."""
    warnings = []
    for what, path in _needed(config, app_file, command):
        if _in_tmp(path):
            warnings.append(
                f"{what} {path} is in /tmp or /var/tmp, which PrivateTmp=yes would replace "
                "with a private one: the units go without that hardening; move it to have it"
            )
        elif what in ("catalog", "repository", "monitoring.prometheus_textfile") and (
            path.absolute().parts[1:2] in (("etc",), ("usr",), ("boot",))
        ):
            warnings.append(
                f"{what} {path} is read-only in the units (ProtectSystem=full): "
                "move it, e.g. under /var/lib"
            )
    return warnings


def _needed(config: AppConfig, app_file: Path, command: list[str]) -> list[tuple[str, Path]]:
    """What a scheduled run reads or writes on this machine, named for a message."""
    needed = [("cleancut", Path(command[0])), ("the application file", app_file)]
    needed.append(("its Python", Path(sys.executable).resolve()))
    if config.catalog is not None:
        needed.append(("catalog", config.catalog))
    if config.repository.url.startswith("/"):
        needed.append(("repository", Path(config.repository.url)))
    if config.monitoring is not None and config.monitoring.prometheus_textfile:
        needed.append(
            ("monitoring.prometheus_textfile", Path(config.monitoring.prometheus_textfile))
        )
    for name, host in config.hosts.items():
        if host.connect == "local" and host.guest_config is not None:
            needed.append((f"the guest config of {name}", host.guest_config))
    return needed


def _in_tmp(path: Path) -> bool:
    top = path.absolute().parts[1:3]
    return top[:1] == ("tmp",) or top == ("var", "tmp")
