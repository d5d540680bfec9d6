"""``cleancut schedule``: the units pass systemd's own checks, the cron file runs under a
real cron daemon, remove leaves nothing behind, and bad expressions are clear errors.

systemd is installed but not PID 1 here, so install writes the units and says it did
not run systemctl; ``systemd-analyze verify`` and ``calendar`` work offline. Each test's
application has a name of its own: the run lock (and cron's lock) is per name and
machine, shared with any other test run at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cleancut.coordinator.runlock import lock_folder
from tests.integration.cutlib import App, make_app, write_private

CONTRACT = {"backup": "*-*-* 02:00", "check": "weekly", "verify": "monthly"}
SHORTHANDS = ["hourly", "daily", "weekly", "monthly"]
CRON_PID_FILE = Path("/run/crond.pid")


def _app(root: Path, schedule: str | None) -> tuple[App, str]:
    """A local two-host application (copy provider: a backup commits, exit 3) of a unique name."""
    guests = {}
    for host in ("vm1", "vm2"):
        folder = root / f"{host}-data"
        folder.mkdir()
        (folder / "file.txt").write_text(f"{host}\n")
        guests[host] = (
            f'staging = "{root / f"{host}-staging"}"\n\n'
            f'[volumes.data]\npath = "{folder}"\nsnapshot = "copy"\nfreeze = false\n'
        )
    app = make_app(root, guests)
    name = f"sched-{uuid.uuid4().hex[:10]}"
    text = app.config.read_text(encoding="utf-8").replace('name = "itest"', f'name = "{name}"')
    if schedule is not None:
        text += f"\n[schedule]\n{schedule}\n"
    write_private(app.config, text)
    return app, name


def _schedule(actions: dict[str, str], delay: str | None = None) -> str:
    lines = [f'{action} = "{when}"' for action, when in actions.items()]
    return "\n".join(lines + ([f'randomized_delay = "{delay}"'] if delay else []))


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done


def test_installed_units_pass_systemd_analyze_verify(trusted_dir: Path) -> None:
    app, name = _app(trusted_dir, _schedule({**CONTRACT, "forget": "daily"}, "10m"))
    units = trusted_dir / "units"

    done = _ok(app.run("schedule install", "--unit-dir", str(units)))

    files = sorted(units.iterdir())
    assert [path.name for path in files] == [
        f"cleancut-{name}-{action}.{kind}"
        for action in ("backup", "check", "forget", "verify")
        for kind in ("service", "timer")
    ]
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in files)
    assert "did not run systemctl: systemd is not running on this machine" in done.stdout
    assert f"systemctl enable --now cleancut-{name}-backup.timer" in done.stdout
    verify = subprocess.run(
        ["systemd-analyze", "verify", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 even for an unknown key or a value it cannot parse: it only warns
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")


def test_every_calendar_expression_of_the_contract_passes_systemd(trusted_dir: Path) -> None:
    for expression in [*CONTRACT.values(), *SHORTHANDS]:
        checked = subprocess.run(
            ["systemd-analyze", "calendar", expression], capture_output=True, timeout=30
        )
        assert checked.returncode == 0, (expression, checked.stderr)
    app, _name = _app(trusted_dir, _schedule(CONTRACT, "10m"))

    shown = json.loads(_ok(app.run("schedule show", "--json")).stdout)

    assert [row["expression"] for row in shown["actions"]] == list(CONTRACT.values())
    assert shown["randomized_delay"] == 600
    now = time.time()
    for row in shown["actions"]:
        times = [_epoch(moment) for moment in row["next"]]
        assert len(times) == 3 and now < times[0] < times[1] < times[2], row
        assert row["timer_installed"] is False
    assert [row["normalized"] for row in shown["actions"]][1:] == [
        "Mon *-*-* 00:00:00",
        "*-*-01 00:00:00",
    ]


def _epoch(moment: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(moment).timestamp()


def test_remove_leaves_nothing_behind(trusted_dir: Path) -> None:
    app, name = _app(trusted_dir, _schedule({**CONTRACT, "forget": "daily"}))
    units, crons, logs = trusted_dir / "units", trusted_dir / "cron.d", trusted_dir / "logs"
    _ok(app.run("schedule install", "--unit-dir", str(units)))
    write_private(app.config, app.config.read_text().replace('forget = "daily"\n', ""))

    again = _ok(app.run("schedule install", "--unit-dir", str(units)))  # forget left [schedule]

    assert f"removed {units}/cleancut-{name}-forget.timer" in again.stdout
    assert len(list(units.iterdir())) == 6
    cron_args = ("--cron", "--cron-dir", str(crons))
    _ok(app.run("schedule install", *cron_args, "--log-dir", str(logs)))
    assert (crons / f"cleancut-{name}").exists()

    _ok(app.run("schedule remove", "--unit-dir", str(units)))
    _ok(app.run("schedule remove", *cron_args))

    assert list(units.iterdir()) == [] and list(crons.iterdir()) == []
    assert "nothing was installed" in _ok(app.run("schedule remove", *cron_args)).stdout


@pytest.mark.parametrize(
    ("schedule", "args", "key", "said"),
    [
        ('backup = "*-*-* 25:00"', (), "schedule.backup", "Failed to parse calendar specification"),
        ('check = "fortnightly"', (), "schedule.check", "Failed to parse calendar specification"),
        (None, (), "schedule", "no [schedule] table"),
        ('randomized_delay = "1m"', (), "schedule", "schedules no action"),
        ('backup = "*-*-* 02:00:30"', ("--cron",), "schedule.backup", "use the systemd timers"),
        ('verify = "Mon *-*-1..7"', ("--cron",), "schedule.verify", "weekday OR the day"),
    ],
)
def test_bad_expressions_are_clear_errors_and_install_nothing(
    trusted_dir: Path, schedule: str | None, args: tuple[str, ...], key: str, said: str
) -> None:
    app, _name = _app(trusted_dir, schedule)
    where = ("--unit-dir", str(trusted_dir / "units"), "--cron-dir", str(trusted_dir / "cron"))

    done = app.run("schedule install", *args, *where)

    assert done.returncode == 2, (done.stdout, done.stderr)
    message = " ".join(done.stderr.split())
    assert f"{app.config}: {key}: " in message and said in message, message
    assert not (trusted_dir / "units").exists() and not (trusted_dir / "cron").exists()
    if not args:
        assert app.run("schedule show").returncode == 2


def test_dry_run_prints_the_files_and_writes_nothing(trusted_dir: Path) -> None:
    app, name = _app(trusted_dir, _schedule({"backup": "hourly"}))
    units, crons, logs = trusted_dir / "units", trusted_dir / "cron.d", trusted_dir / "logs"

    systemd = _ok(app.run("schedule install", "--dry-run", "--unit-dir", str(units)))
    cron = _ok(
        app.run(
            "schedule install",
            "--cron",
            "--dry-run",
            "--cron-dir",
            str(crons),
            "--log-dir",
            str(logs),
        )
    )

    assert f"# {units}/cleancut-{name}-backup.service\n" in systemd.stdout
    assert "[Service]\n" in systemd.stdout and "OnCalendar=hourly\n" in systemd.stdout
    assert f"# {crons}/cleancut-{name}\n" in cron.stdout and "\n0 * * * * root " in cron.stdout
    assert not units.exists() and not crons.exists() and not logs.exists()


def _cron_command(cron_file: Path) -> str:
    """The shell command of the file's one job line (after ``m h dom mon dow root``)."""
    (line,) = [ln for ln in cron_file.read_text().splitlines() if " root " in ln and ln[0] != "#"]
    return line.split(" root ", 1)[1]


def _points(app: App) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(_ok(app.run("points", "--json")).stdout)
    return result


@contextlib.contextmanager
def _held(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _wait_free(lock: Path, timeout: float) -> None:
    """Until no job holds ``lock`` (it ran to its end)."""
    deadline = time.monotonic() + timeout
    while lock.exists():
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise AssertionError(f"a job still holds {lock} after {timeout}s") from None
            time.sleep(0.2)
        finally:
            os.close(fd)


@pytest.mark.restic
def test_a_cron_line_never_runs_beside_its_own_running_job(trusted_dir: Path) -> None:
    app, name = _app(trusted_dir, _schedule({"backup": "hourly"}))
    crons, logs = trusted_dir / "cron.d", trusted_dir / "logs"
    lock = lock_folder() / f"{name}-backup.cron.lock"
    _ok(app.run("schedule install", "--cron", "--cron-dir", str(crons), "--log-dir", str(logs)))
    command = _cron_command(crons / f"cleancut-{name}")
    try:
        with _held(lock):  # as a run still going would
            started = time.monotonic()
            skipped = subprocess.run(["/bin/sh", "-c", command], timeout=30, check=False)
            assert time.monotonic() - started < 5 and skipped.returncode == 1
            assert _points(app) == []
        ran = subprocess.run(["/bin/sh", "-c", command], timeout=240, check=False)
        assert ran.returncode == 3, (logs / f"{name}-backup.log").read_text()  # committed
        assert len(_points(app)) == 1
    finally:
        app.run("schedule remove", "--cron", "--cron-dir", str(crons))
        with contextlib.suppress(FileNotFoundError):
            (lock_folder() / f"{name}.lock").unlink()  # runlock's, of this test's own name
    assert not lock.exists() and list(crons.iterdir()) == []


def _other_cron() -> int | None:
    """The pid of a cron daemon already running, if any."""
    try:
        pid = int(CRON_PID_FILE.read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm == "cron" else None


@pytest.mark.root
@pytest.mark.restic
def test_the_cron_file_runs_under_a_real_cron_daemon(trusted_dir: Path) -> None:
    if shutil.which("cron") is None:
        pytest.skip("no cron daemon installed (scripts/setup.sh installs Debian's cron)")
    if (pid := _other_cron()) is not None:
        pytest.skip(f"a cron daemon already runs (pid {pid}); this test starts its own")
    app, name = _app(trusted_dir, _schedule({"backup": "minutely"}))
    logs = trusted_dir / "logs"
    lock = lock_folder() / f"{name}-backup.cron.lock"
    cron_file = Path("/etc/cron.d") / f"cleancut-{name}"
    daemon: subprocess.Popen[bytes] | None = None
    try:
        _ok(app.run("schedule install", "--cron", "--log-dir", str(logs)))
        assert cron_file.stat().st_mode & 0o777 == 0o644
        daemon = subprocess.Popen(
            ["cron", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        started = time.monotonic()
        while not _points(app):
            assert daemon.poll() is None, f"cron exited with {daemon.returncode}"
            assert time.monotonic() - started < 100, "cron did not run the job within 100 s"
            time.sleep(2)
        print(f"\ncron ran the backup; an RP after {time.monotonic() - started:.0f} s")
        _wait_free(lock, 60)
        assert "thaw" in (logs / f"{name}-backup.log").read_text()  # the run's own output
    finally:
        removed = app.run("schedule remove", "--cron")  # before cron can start the job again
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=10)
            with contextlib.suppress(OSError, ValueError):
                if int(CRON_PID_FILE.read_text().split()[0]) == daemon.pid:
                    CRON_PID_FILE.unlink()
        _wait_free(lock, 60)
        for path in (lock, cron_file, lock_folder() / f"{name}.lock"):  # the last: runlock's
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    assert removed.returncode == 0, removed.stderr
    assert f"removed {cron_file}" in removed.stdout and f"removed {lock}" in removed.stdout
