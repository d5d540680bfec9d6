"""The units of ``cleancut schedule install`` under a real systemd (PID 1 of a container).

``schedule install`` is run inside the container as an operator would run it: it writes
the units, reloads systemd and enables the timers; the backup service then runs under its
own hardening, reading the repository password from its ``LoadCredential=`` (the file's
path is inaccessible to it), and freezes a loop-mounted ext4 disk for an
application-level recovery point. ``systemctl stop`` in the middle of a cut ends it the
way the unit promises: cleancut alone gets SIGTERM, the post-script owed to a pre-script
that ran still runs, nothing of the unit outlives it and no SIGKILL was needed.
``schedule remove`` leaves systemd knowing nothing of the application.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cleancut.demo.disks import Datastore
from tests.integration.conftest import TEST_BASE
from tests.integration.cutlib import write_private, write_script
from tests.integration.systemd_bed import CHECKOUT, SystemdContainer, nspawn_missing

pytestmark = [pytest.mark.root, pytest.mark.restic]
CLEANCUT = str(CHECKOUT / ".venv" / "bin" / "cleancut")


@dataclass
class Box:
    systemd: SystemdContainer
    root: Path  # bound into the container at the same path
    disk: Path  # a loop-mounted ext4 disk in it


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    missing = nspawn_missing()
    if missing is not None:
        pytest.skip(missing)
    TEST_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=TEST_BASE))
    scratch = Path(tempfile.mkdtemp(dir=TEST_BASE))
    for folder in (root, scratch):
        folder.chmod(0o755)
    store = Datastore(root / "ds", remove_images=True)
    try:
        store.open()
        disk = store.add_disk("vol", root / "vm1" / "vol").mountpoint
        with SystemdContainer(scratch, binds=[root]) as systemd:
            yield Box(systemd, root, disk)
    finally:
        store.close()
        subprocess.run(["rm", "-rf", "--one-file-system", str(root), str(scratch)], check=False)


def _application(box: Box, *, hooks: str = "") -> tuple[Path, str, Path]:
    """An application of a name of its own on the disk: its config, name and folder."""
    name = f"sysd-{uuid.uuid4().hex[:8]}"
    folder = box.root / name
    folder.mkdir(mode=0o755)
    db = box.disk / f"{name}.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        conn.executemany("INSERT INTO orders (item) VALUES (?)", [("book",)] * 50)
    conn.close()
    guest = write_private(
        folder / "guest.toml",
        f'staging = "{folder / "staging"}"\n\n'
        f'[volumes.vol]\npath = "{box.disk}"\nsnapshot = "copy"\nfreeze = true\n\n'
        f'[databases.orders]\nkind = "sqlite"\npath = "{db}"\nvolume = "vol"\n\n{hooks}',
    )
    check = write_script(
        folder / "orders_kept.sh",
        'test "$(sqlite3 "$CLEANCUT_DB_ORDERS" "SELECT count(*) FROM orders")" -ge 50\n',
    )
    write_private(folder / "repository.pass", "correct horse battery staple\n")
    config = write_private(
        folder / "app.toml",
        f'name = "{name}"\nfreeze_timeout = "10s"\ncatalog = "{folder / "catalog.sqlite"}"\n\n'
        f'[repository]\nurl = "{folder / "repository"}"\npassword_file = "repository.pass"\n\n'
        f'[hosts.vm1]\nconnect = "local"\nguest_config = "{guest}"\n\n'
        f'[[checks]]\nname = "the orders are there"\nrun = ["{check}"]\n\n'
        '[schedule]\nbackup = "*-*-* 02:00"\ncheck = "weekly"\nverify = "monthly"\n'
        'randomized_delay = "10m"\n',
    )
    return config, name, folder


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, (done.args, done.stdout, done.stderr)
    return done


def test_installed_timers_run_a_hardened_backup_and_remove_forgets_them(box: Box) -> None:
    systemd = box.systemd
    config, name, folder = _application(box)
    installed = _ok(systemd.run(CLEANCUT, "schedule", "install", str(config)))
    assert "ran systemctl enable --now" in installed.stdout, installed.stdout
    units = [f"cleancut-{name}-{action}.{kind}" for action in ("backup", "check", "verify")
             for kind in ("service", "timer")]  # fmt: skip
    assert all((systemd.root / "etc/systemd/system" / unit).is_file() for unit in units)

    shown = json.loads(_ok(systemd.run(CLEANCUT, "schedule", "show", str(config), "--json")).stdout)
    rows = {row["action"]: row for row in shown["actions"]}
    for action in ("backup", "check"):
        timer = systemd.show(f"cleancut-{name}-{action}.timer", "ActiveState", "UnitFileState")
        assert timer == {"ActiveState": "active", "UnitFileState": "enabled"}, timer
        row = rows[action]
        assert row["timer_installed"], row
        assert row["timer"]["active"] == "active" and row["timer"]["enabled"] == "enabled", row
        # systemd's next elapse is the calendar's plus at most the randomized delay
        planned = datetime.fromisoformat(row["next"][0])
        elapse = datetime.fromisoformat(row["timer"]["next_elapse"])
        assert planned <= elapse <= planned + timedelta(minutes=10), row
    listed = _ok(systemd.run("systemctl", "list-timers", "--all", "--no-legend", "--no-pager"))
    assert f"cleancut-{name}-backup.timer" in listed.stdout, listed.stdout

    started = systemd.run("systemctl", "start", f"cleancut-{name}-backup.service", timeout=300)
    journal = systemd.journal(f"cleancut-{name}-backup.service")
    assert started.returncode == 0, (started.stderr, journal)
    result = systemd.show(f"cleancut-{name}-backup.service", "Result", "ExecMainStatus")
    assert result == {"Result": "success", "ExecMainStatus": "0"}, (result, journal)
    points = _ok(systemd.run(CLEANCUT, "points", str(config), "--json"))
    (point,) = json.loads(points.stdout)
    assert point["level"] == "application" and point["group_consistent"], point
    assert "sqlite writer orders held" in journal, journal
    # the check and the restore drill run under their units' sandboxes too
    for action in ("check", "verify"):
        service = f"cleancut-{name}-{action}.service"
        started = systemd.run("systemctl", "start", service, timeout=300)
        assert started.returncode == 0, (started.stderr, systemd.journal(service))
    assert "the orders are there" in systemd.journal(f"cleancut-{name}-verify.service")
    status = json.loads(_ok(systemd.run(CLEANCUT, "status", str(config), "--json")).stdout)
    for action in ("backup", "check", "verify"):
        last = status["actions"][action]["last_run"]
        assert last["outcome"] == "success" and status["actions"][action]["next_run"], last
    assert status["ok"], status["warnings"]

    removed = _ok(systemd.run(CLEANCUT, "schedule", "remove", str(config)))
    assert "disable --now" in removed.stdout, removed.stdout
    assert not any((systemd.root / "etc/systemd/system" / unit).exists() for unit in units)
    for unit in units:
        assert systemd.show(unit, "LoadState") == {"LoadState": "not-found"}, unit
    listed = _ok(systemd.run("systemctl", "list-timers", "--all", "--no-legend", "--no-pager"))
    assert name not in listed.stdout
    assert (folder / "repository.pass").exists()  # the operator's own files stay


def test_systemctl_stop_mid_cut_runs_the_owed_post_script_and_leaves_nothing(box: Box) -> None:
    systemd = box.systemd
    marks = box.root / f"marks-{uuid.uuid4().hex[:6]}"
    marks.mkdir(mode=0o755)
    # a pre-script still quiescing when the stop comes: it finishes first (within its
    # timeout), then its post-script runs; 85 s outlasts a TimeoutStopSec that counted
    # only freeze_timeout (80 s here), which SIGKILLed it all and skipped the post-script
    pre = write_script(marks / "pre.sh", f"echo $$ > {marks}/pre.pid\nexec sleep 85\n")
    post = write_script(marks / "post.sh", f"date +%s.%N > {marks}/post.ran\n")
    hooks = f'[[hooks]]\nname = "app"\npre = ["{pre}"]\npost = ["{post}"]\ntimeout = "2m"\n'
    config, name, _ = _application(box, hooks=hooks)
    _ok(systemd.run(CLEANCUT, "schedule", "install", str(config)))
    service = f"cleancut-{name}-backup.service"
    _ok(systemd.run("systemctl", "start", "--no-block", service))
    deadline = time.monotonic() + 60
    while not (marks / "pre.pid").exists():
        assert time.monotonic() < deadline, systemd.journal(service)
        time.sleep(0.05)
    hook_pid = (marks / "pre.pid").read_text().strip()
    unit_text = (systemd.root / "etc/systemd/system" / service).read_text()
    timeout = float(unit_text.split("TimeoutStopSec=", 1)[1].split()[0])

    began = time.monotonic()
    _ok(systemd.run("systemctl", "stop", service, timeout=300))
    took = time.monotonic() - began
    journal = systemd.journal(service)
    assert (marks / "post.ran").exists(), journal  # the release ran the owed post-script
    state = systemd.show(service, "ActiveState", "ExecMainStatus", "MainPID")
    assert state["ActiveState"] in ("inactive", "failed") and state["MainPID"] == "0", state
    assert state["ExecMainStatus"] == "143", (state, journal)  # cleancut's own SIGTERM exit
    assert "Killing" not in journal and "SIGKILL" not in journal, journal
    assert took < timeout, (took, timeout)
    assert systemd.run("kill", "-0", hook_pid).returncode != 0  # the pre-script is gone too
    with sqlite3.connect(box.disk / f"{name}.db", timeout=5) as conn:  # nothing held
        conn.execute("INSERT INTO orders (item) VALUES ('after the stop')")
    conn.close()

    _ok(systemd.run("systemctl", "start", service, timeout=300))  # and the next run works
    _ok(systemd.run(CLEANCUT, "schedule", "remove", str(config)))
