"""Schedules: the units and the cron file as written, the cron conversion, reading
``systemd-analyze calendar`` (the real one; it needs no root), and the credential."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cleancut.config.application import Repository
from cleancut.config.load import LoadedApp, load_app
from cleancut.coordinator.repository import resolve_password
from cleancut.errors import ConfigError
from cleancut.schedule import (
    MARK,
    _parse_block,
    check_calendars,
    cleancut_command,
    install_units,
    installed_units,
    next_run,
    schedule_of,
    write_file,
)
from cleancut.schedule_cron import NoCronEquivalent, cron_fields, cron_file, remove_cron
from cleancut.schedule_units import hardening, sandbox_warnings, stop_timeout, systemd_units

BASE = """name = "shop"
freeze_timeout = "20s"

[repository]
url = "/srv/repository"
{password}

[hosts.vm1]
connect = "local"
guest_config = "guest.toml"
"""


def _app(
    folder: Path, schedule: str | None, password: str = 'password_file = "shop.pass"'
) -> LoadedApp:
    text = BASE.format(password=password)
    if schedule is not None:
        text += f"\n[schedule]\n{schedule}\n"
    path = folder / "shop.toml"
    path.write_text(text, encoding="utf-8")
    return load_app(path)


#: where cleancut is installed, for the units (not under /tmp, as a test checkout may be)
COMMAND = ["/opt/cleancut/bin/cleancut"]


def _units(loaded: LoadedApp, folder: Path) -> dict[str, str]:
    files = systemd_units(loaded, check_calendars(loaded), folder, COMMAND)
    return {file.path.name: file.text for file in files}


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_a_service_and_a_timer_per_action_with_the_contracts_directives(
    trusted_dir: Path,
) -> None:
    tmp_path = trusted_dir  # not under /tmp, which would cost the units PrivateTmp=yes
    loaded = _app(tmp_path, 'backup = "*-*-* 02:00"\ncheck = "weekly"\nrandomized_delay = "10m"')
    units = _units(loaded, tmp_path)
    assert sorted(units) == [
        "cleancut-shop-backup.service",
        "cleancut-shop-backup.timer",
        "cleancut-shop-check.service",
        "cleancut-shop-check.timer",
    ]
    service = _directives(units["cleancut-shop-backup.service"])
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == [" ".join([*COMMAND, "backup", "--wait", str(loaded.path)])]
    assert service["Nice"] == ["10"] and service["IOSchedulingClass"] == ["idle"]
    assert service["KillMode"] == ["mixed"]
    assert service["TimeoutStopSec"] == ["100"]  # 2 x 20 s freeze_timeout + 60 s
    assert service["UMask"] == ["0077"]
    password = str(tmp_path / "shop.pass")
    assert service["LoadCredential"] == [f"repository-password:{password}"]
    assert service["InaccessiblePaths"] == [f"-{password}"]
    for setting in ("NoNewPrivileges", "PrivateTmp", "ProtectKernelLogs", "LockPersonality"):
        assert service[setting] == ["yes"], setting
    assert service["ProtectSystem"] == ["full"]
    for never in ("PrivateDevices", "ProtectKernelModules", "DeviceAllow", "ProtectClock"):
        assert never not in service, never
    timer = _directives(units["cleancut-shop-check.timer"])
    assert timer["OnCalendar"] == ["weekly"]
    assert timer["Persistent"] == ["true"]
    assert timer["RandomizedDelaySec"] == ["600"]
    assert timer["Unit"] == ["cleancut-shop-check.service"]
    assert timer["WantedBy"] == ["timers.target"]
    assert all(text.startswith(MARK) for text in units.values())


def test_the_stop_timeout_waits_for_the_hooks_a_stop_must_let_finish(tmp_path: Path) -> None:
    """A stop lets a running pre-script finish, then runs the post-scripts: SIGKILL before
    that would leave the application quiesced (seen under a real systemd)."""
    loaded = _app(tmp_path, 'backup = "daily"')
    without, warnings = stop_timeout(loaded)
    assert without == 100 and "vm1" in warnings[0]  # guest.toml is not there: not counted
    (tmp_path / "guest.toml").write_text(
        '[volumes.data]\npath = "/srv/data"\nsnapshot = "copy"\n\n[[hooks]]\nname = "app"\n'
        'pre = ["/bin/true"]\npost = ["/bin/true"]\ntimeout = "2m"\n',
        encoding="utf-8",
    )
    counted, warnings = stop_timeout(loaded)
    assert counted >= 100 + 2 * 120 and warnings == []  # the pre-script, then the post
    service = _directives(_units(loaded, tmp_path)["cleancut-shop-backup.service"])
    assert service["TimeoutStopSec"] == [str(counted)]
    chosen = _app(tmp_path, 'backup = "daily"\nstop_timeout = "15m"')
    assert stop_timeout(chosen) == (900, [])


def test_the_drill_keeps_a_umask_its_database_servers_can_live_with(tmp_path: Path) -> None:
    """verify starts servers as their own users in folders cleancut creates: under
    UMask=0077 the restored PostgreSQL did not start (seen with test_postgresql's drill)."""
    units = _units(_app(tmp_path, 'verify = "monthly"'), tmp_path)
    assert _directives(units["cleancut-shop-verify.service"])["UMask"] == ["0022"]


def test_password_command_gets_no_credential_and_odd_paths_are_quoted(tmp_path: Path) -> None:
    folder = tmp_path / "my apps %h"
    folder.mkdir()
    loaded = _app(folder, 'backup = "daily"', 'password_command = ["/usr/bin/pass", "shop"]')
    service = _units(loaded, folder)["cleancut-shop-backup.service"]
    assert "LoadCredential" not in _directives(service)
    quoted = '"' + str(folder).replace("%", "%%") + '/shop.toml"'
    assert _directives(service)["ExecStart"][0].endswith(f"--wait {quoted}")


def test_a_password_file_path_loadcredential_cannot_take_is_refused(tmp_path: Path) -> None:
    loaded = _app(tmp_path, 'backup = "daily"', 'password_file = "my pass"')
    with pytest.raises(ConfigError) as caught:
        _units(loaded, tmp_path)
    assert caught.value.key == "repository.password_file"


def test_no_or_an_empty_schedule_is_a_clear_error(tmp_path: Path) -> None:
    for schedule, said in ((None, "no [schedule] table"), ('randomized_delay = "5m"', "no action")):
        with pytest.raises(ConfigError) as caught:
            schedule_of(_app(tmp_path, schedule))
        assert caught.value.key == "schedule" and said in caught.value.message
        assert str(tmp_path / "shop.toml") in caught.value.message
        assert 'backup = "*-*-* 02:00"' in caught.value.message  # the hint


def test_a_bad_expression_names_the_key_and_systemds_message(tmp_path: Path) -> None:
    loaded = _app(tmp_path, 'backup = "daily"\ncheck = "*-*-* 25:00"')
    with pytest.raises(ConfigError) as caught:
        check_calendars(loaded)
    assert caught.value.key == "schedule.check"
    assert "Failed to parse calendar specification '*-*-* 25:00'" in caught.value.message


def test_next_run_is_strictly_after_and_none_when_never(tmp_path: Path) -> None:
    at = datetime(2024, 1, 1, 2, 0, tzinfo=UTC)
    assert next_run("*-*-* 02:00 UTC", at) == datetime(2024, 1, 2, 2, 0, tzinfo=UTC)
    assert next_run("2001-01-01") is None
    with pytest.raises(ConfigError, match="Failed to parse"):
        next_run("often")


def test_times_printed_in_local_time_are_taken_from_their_utc_line() -> None:
    block = """  Original form: *-*-* 02:00
Normalized form: *-*-* 02:00:00
    Next elapse: Fri 2026-12-04 02:00:00 CET
       (in UTC): Fri 2026-12-04 01:00:00 UTC
       From now: 15h left
       Iter. #2: Sat 2026-12-05 02:00:00 CET
       (in UTC): Sat 2026-12-05 01:00:00 UTC
       From now: 1 day 15h left"""
    normalized, upcoming = _parse_block(block)
    assert normalized == "*-*-* 02:00:00"
    assert upcoming == [
        datetime(2026, 12, 4, 1, 0, tzinfo=UTC),
        datetime(2026, 12, 5, 1, 0, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("expression", "fields"),
    [
        ("minutely", "* * * * *"),
        ("hourly", "0 * * * *"),
        ("daily", "0 0 * * *"),
        ("weekly", "0 0 * * 1"),
        ("monthly", "0 0 1 * *"),
        ("yearly", "0 0 1 1 *"),
        ("quarterly", "0 0 1 1,4,7,10 *"),
        ("*-*-* 02:00", "0 2 * * *"),
        ("Mon..Fri *-*-* 03:30", "30 3 * * 1-5"),
        ("Sat,Sun 4:05", "5 4 * * 6,7"),
        ("Mon,Tue..Thu 1:00", "0 1 * * 1-4"),
        ("*-*-* 02,14:30", "30 2,14 * * *"),
        ("*:0/15", "0-59/15 * * * *"),
        ("Mon..Fri 08..18:00/30", "0-59/30 8-18 * * 1-5"),
        ("*-*-1..7 3:00", "0 3 1-7 * *"),
        ("*-1/2-1 0:0", "0 0 1 1-12/2 *"),
    ],
)
def test_systemd_forms_with_a_cron_equivalent(tmp_path: Path, expression: str, fields: str) -> None:
    loaded = _app(tmp_path, f'backup = "{expression}"')
    assert cron_fields(check_calendars(loaded)["backup"].normalized) == fields


@pytest.mark.parametrize(
    ("normalized", "why"),
    [
        ("*-*-* 02:00:30", "whole minutes"),
        ("2027-*-* 02:00:00", "no year"),
        ("*-*-* 02:00:00 Europe/Berlin", "time zone"),
        ("*-*~01 00:00:00", "last days"),
        ("Mon *-*-01..07 00:00:00", "OR"),
        ("*-*-* 02:00:00.500000", "whole minutes"),
    ],
)
def test_forms_cron_cannot_say_are_refused(normalized: str, why: str) -> None:
    with pytest.raises(NoCronEquivalent, match=why):
        cron_fields(normalized)


def test_the_cron_file_locks_logs_and_names_the_key_it_cannot_say(tmp_path: Path) -> None:
    loaded = _app(tmp_path, 'backup = "*-*-* 02:00"\nforget = "daily"\nrandomized_delay = "90s"')
    file = cron_file(
        loaded,
        check_calendars(loaded),
        cron_dir=tmp_path,
        log_dir=tmp_path / "log",
        lock_dir=tmp_path / "lock",
    )
    assert file.path == tmp_path / "cleancut-shop"
    lines = [line for line in file.text.splitlines() if not line.startswith("#")]
    assert lines[:2] == [
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    command = " ".join([*cleancut_command(), "backup", "--wait", str(loaded.path)])
    assert lines[2] == (
        f"0 2 * * * root {{ sleep $(shuf -i 0-90 -n 1); mkdir -p -m 700 {tmp_path}/lock && "
        f"flock -n {tmp_path}/lock/shop-backup.cron.lock {command}; }} "
        f">>{tmp_path}/log/shop-backup.log 2>&1"
    )
    assert lines[3].startswith("0 0 * * * root ")
    seconds = _app(tmp_path, 'backup = "daily"\nverify = "*-*-* 02:00:30"')
    with pytest.raises(ConfigError) as caught:
        cron_file(seconds, check_calendars(seconds), cron_dir=tmp_path)
    assert caught.value.key == "schedule.verify"
    assert "systemd timers" in caught.value.message


def test_only_files_cleancut_wrote_for_this_app_count_as_installed(tmp_path: Path) -> None:
    loaded = _app(tmp_path, 'backup = "daily"')
    for file in systemd_units(loaded, check_calendars(loaded), tmp_path):
        write_file(file)
    (tmp_path / "cleancut-shop-forget.timer").write_text("[Timer]\n")  # the operator's own
    (tmp_path / "cleancut-shop-eu-backup.timer").write_text(f"{MARK} for application shop-eu\n")
    assert [path.name for path in installed_units("shop", tmp_path)] == [
        "cleancut-shop-backup.service",
        "cleancut-shop-backup.timer",
    ]
    assert (tmp_path / "cleancut-shop-backup.timer").stat().st_mode & 0o777 == 0o644


def test_remove_cron_leaves_an_operators_own_file(tmp_path: Path) -> None:
    (tmp_path / "cleancut-shop").write_text("0 1 * * * root true\n")
    done = remove_cron("shop", cron_dir=tmp_path, lock_dir=tmp_path)
    assert not done.removed and "not written by cleancut" in done.warnings[0]
    assert (tmp_path / "cleancut-shop").exists()


def test_sandbox_warnings_name_what_privatetmp_hides() -> None:
    from cleancut.config.application import AppConfig

    config = AppConfig.model_validate(
        {
            "name": "shop",
            "repository": {"url": "/tmp/repo", "password_file": "/etc/cleancut/p"},
            "catalog": "/etc/cleancut/catalog.sqlite",
            "hosts": {"vm1": {"guest_config": "/etc/cleancut/guest.toml"}},
        }
    )
    command = ["/opt/cleancut/bin/cleancut"]
    warnings = sandbox_warnings(config, Path("/etc/cleancut/shop.toml"), command)
    assert len(warnings) == 2
    assert "repository /tmp/repo" in warnings[1] and "PrivateTmp" in warnings[1]
    assert "catalog /etc/cleancut/catalog.sqlite" in warnings[0] and "ProtectSystem" in warnings[0]


def test_a_checkout_in_tmp_keeps_the_units_startable(trusted_dir: Path) -> None:
    """PrivateTmp=yes hides a cleancut installed under /tmp: systemd fails the start with
    203/EXEC (seen under a real systemd with the checkout cloned to /tmp)."""
    loaded = _app(trusted_dir, 'backup = "daily"')
    assert "PrivateTmp=yes" in hardening(loaded, ["/opt/cleancut/bin/cleancut"])
    in_tmp = hardening(loaded, ["/tmp/checkout/.venv/bin/cleancut"])
    assert "PrivateTmp=yes" not in in_tmp
    assert any(line.startswith("# PrivateTmp= left out: cleancut") for line in in_tmp)
    assert "NoNewPrivileges=yes" in in_tmp and "ProtectSystem=full" in in_tmp


def test_cleancut_command_is_the_venvs_console_script() -> None:
    script = Path(sys.executable).absolute().parent / "cleancut"
    assert cleancut_command() == (
        [str(script)] if script.exists() else [sys.executable, "-m", "cleancut"]
    )


def test_a_systemd_credential_is_preferred_to_password_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LoadCredential= hands the password in; the unit itself cannot read password_file."""
    unreadable = tmp_path / "gone" / "shop.pass"  # InaccessiblePaths= hides it in the unit
    repo = Repository(url="/srv/repository", password_file=unreadable)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "repository-password").write_text("from systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert resolve_password(repo, config_file="shop.toml") == "from systemd"
    (credentials / "repository-password").unlink()  # another unit's credentials: the file
    with pytest.raises(ConfigError, match=r"cannot read .*gone/shop\.pass"):
        resolve_password(repo, config_file="shop.toml")


def test_install_refuses_to_overwrite_a_unit_it_did_not_write(tmp_path: Path) -> None:
    loaded = _app(tmp_path, 'backup = "daily"')
    own = tmp_path / "cleancut-shop-backup.timer"
    own.write_text("[Timer]\nOnCalendar=hourly\n")
    files = systemd_units(loaded, check_calendars(loaded), tmp_path)
    with pytest.raises(ConfigError, match="not written by cleancut"):
        install_units("shop", files, tmp_path)
    assert own.read_text() == "[Timer]\nOnCalendar=hourly\n"
    assert not (tmp_path / "cleancut-shop-backup.service").exists()
