"""status warnings: stale application-level RPs by the schedule, failed and overdue runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cleancut.catalog import Catalog
from cleancut.config.load import load_app
from cleancut.runs import RunLog
from cleancut.schedule import MARK, next_run
from cleancut.schedule_cron import unstarted_warnings
from cleancut.status import gather

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _loaded(tmp_path: Path, schedule: str) -> object:
    config = tmp_path / "app.toml"
    guest = tmp_path / "guest.toml"
    guest.write_text('[volumes.data]\npath = "/srv"\nsnapshot = "copy"\nfreeze = false\n')
    guest.chmod(0o600)
    config.write_text(
        f'name = "shop"\ncatalog = "{tmp_path / "catalog.sqlite"}"\n'
        f'[repository]\nurl = "{tmp_path / "repo"}"\n'
        f'[hosts.vm1]\nconnect = "local"\nguest_config = "{guest}"\n{schedule}'
    )
    config.chmod(0o600)
    return load_app(config)


def test_warnings_follow_the_schedule(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, '[schedule]\nbackup = "daily"\ncheck = "weekly"\n')
    catalog = Catalog(tmp_path / "catalog.sqlite")
    runs = RunLog(tmp_path / "shop.runs.sqlite")
    stamp = (NOW - timedelta(days=9, seconds=10)).timestamp()
    run = runs.start("shop", "check", at=stamp)
    runs.finish(run, "failure", {"error": "2 missing members"}, at=stamp + 3)
    status = gather(loaded, catalog, runs, next_run=next_run, now=NOW)  # type: ignore[arg-type]
    assert not status.ok
    assert status.warnings[0] == "no recovery point yet: run `cleancut backup`"
    assert "last check failed 9d ago: 2 missing members" in status.warnings
    assert "check is overdue: last ran 9d ago, scheduled weekly" in status.warnings
    backup = status.actions[0]
    assert backup.next_run == datetime(2026, 12, 4, tzinfo=UTC)
    assert backup.interval == timedelta(days=1)
    assert status.as_dict()["actions"]["check"]["last_run"]["outcome"] == "failure"


def test_a_schedule_nothing_starts_is_a_warning(tmp_path: Path) -> None:
    """[schedule] edited but never installed protects nothing; a cron file or the timers
    make the warning go (whether systemd has them active is asked of systemd, where it runs:
    tests/integration/test_schedule_systemd.py)."""
    loaded = _loaded(tmp_path, '[schedule]\nbackup = "daily"\ncheck = "weekly"\n')
    units, cron = tmp_path / "units", tmp_path / "cron.d"
    units.mkdir()
    cron.mkdir()
    (warning,) = unstarted_warnings(loaded, unit_dir=units, cron_dir=cron)  # type: ignore[arg-type]
    assert warning.startswith("backup, check are in [schedule] but nothing starts them")
    assert "cleancut schedule install" in warning
    for action in ("backup",):
        (units / f"cleancut-shop-{action}.timer").write_text(f"{MARK} for application shop\n")
    (warning,) = unstarted_warnings(loaded, unit_dir=units, cron_dir=cron)  # type: ignore[arg-type]
    assert warning.startswith("check is in [schedule] but nothing starts it")
    (cron / "cleancut-shop").write_text(f"{MARK} for application shop\n")
    assert unstarted_warnings(loaded, unit_dir=units, cron_dir=cron) == []  # type: ignore[arg-type]
