"""End to end: the real CLI, the real guest agent, loop-mounted disks, fsfreeze and restic."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from cleancut.demo.disks import Datastore
from tests.integration.cutlib import (
    CLEANCUT,
    children,
    count_rows,
    hook,
    image_volume,
    make_app,
    make_db,
    sqlite_db,
    wait_gone,
    write_script,
)

pytestmark = [pytest.mark.root, pytest.mark.restic]


def shop_guest(ds: Datastore, trusted: Path, *, pre_body: str = "exit 0\n") -> str:
    """Two image volumes on ext4 disks, a SQLite database, and a hook that leaves traces."""
    orders = ds.add_disk("orders", ds.root / "vm" / "orders").mountpoint
    files = ds.add_disk("files", ds.root / "vm" / "files").mountpoint
    make_db(orders / "orders.db", 500)
    (files / "note.txt").write_text("hello from the share\n")
    pre = write_script(trusted / "hooks" / "pre.sh", f"echo pre-ran >> {trusted}/trace\n{pre_body}")
    post = write_script(trusted / "hooks" / "post.sh", f"echo post-ran >> {trusted}/trace\n")
    return "\n".join(
        [
            image_volume("orders", orders),
            image_volume("files", files),
            sqlite_db("orders", orders / "orders.db", "orders"),
            hook("quiesce", pre, post, continue_on_failure=True),
        ]
    )


def trace(trusted: Path) -> list[str]:
    path = trusted / "trace"
    return path.read_text().split() if path.exists() else []


def test_application_cut_restores_clean(datastore: Datastore, trusted_dir: Path) -> None:
    app = make_app(trusted_dir, {"vm1": shop_guest(datastore, trusted_dir)})

    code, manifest, stderr = app.backup_json()

    assert code == 0, stderr
    assert manifest is not None
    assert manifest["level"] == "application"
    assert manifest["group_consistent"] is True
    assert trace(trusted_dir) == ["pre-ran", "post-ran"]
    host = manifest["hosts"][0]
    assert 0 < host["write_stall"] < 10
    assert {m["resource"]: m["level"] for m in manifest["members"]} == {
        "orders": "application",
        "files": "application",
    }
    assert all(m["frozen"] and m["layout"] == "file" for m in manifest["members"])
    assert [w["database"] for w in manifest["writers"]] == ["orders"]
    assert manifest["writers"][0]["details"]["page_count"] > 0
    assert {(h["phase"], h["ok"]) for h in manifest["hooks"]} == {("pre", True), ("post", True)}

    points = app.run("points", "--json")
    assert points.returncode == 0, points.stderr
    listed = json.loads(points.stdout)
    assert [p["rp"] for p in listed] == [manifest["rp_id"]]

    target = trusted_dir / "restored"
    done = app.run("restore", "latest", "--to", str(target), "--extract", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert {m["fsck_ok"] for m in report["members"]} == {True}
    assert (target / "vm1" / "orders.img").is_file()
    assert count_rows(target / "vm1" / "orders" / "orders.db") == 500
    assert (target / "vm1" / "files" / "note.txt").read_text() == "hello from the share\n"
    orders = next(m for m in report["members"] if m["resource"] == "orders")
    assert orders["databases"] == {"orders.db": True}


def test_catalog_rebuild_from_repository(datastore: Datastore, trusted_dir: Path) -> None:
    app = make_app(trusted_dir, {"vm1": shop_guest(datastore, trusted_dir)})
    first = app.backup_json()[1]
    second = app.backup_json()[1]
    assert first is not None and second is not None
    app.catalog.unlink()

    rebuilt = app.run("catalog rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "2 recovery point" in rebuilt.stdout
    points = json.loads(app.run("points", "--json").stdout)
    assert [p["rp"] for p in points] == [first["rp_id"], second["rp_id"]]
    assert all(p["level"] == "application" for p in points)


def test_failing_prehook_abort_keeps_no_rp_and_runs_post(
    datastore: Datastore, trusted_dir: Path
) -> None:
    guest = shop_guest(datastore, trusted_dir, pre_body="echo refusing >&2\nexit 7\n")
    app = make_app(trusted_dir, {"vm1": guest}, on_failure="abort")

    code, manifest, stderr = app.backup_json()

    assert code == 4, stderr
    assert manifest is None
    assert "pre-script quiesce failed" in stderr
    assert trace(trusted_dir) == ["pre-ran", "post-ran"]  # post runs because pre ran
    rebuilt = app.run("catalog rebuild")
    assert "0 recovery point" in rebuilt.stdout


def test_failing_prehook_degrade_records_filesystem_level(
    datastore: Datastore, trusted_dir: Path
) -> None:
    guest = shop_guest(datastore, trusted_dir, pre_body="exit 7\n")
    app = make_app(trusted_dir, {"vm1": guest}, on_failure="degrade")

    code, manifest, stderr = app.backup_json()

    assert code == 3, stderr  # committed, but weaker than application
    assert manifest is not None
    assert manifest["level"] == "filesystem"
    assert manifest["group_consistent"] is True
    pre = next(h for h in manifest["hooks"] if h["phase"] == "pre")
    assert pre["ok"] is False and pre["returncode"] == 7
    assert all("pre-script quiesce failed" in m["reason"] for m in manifest["members"])
    assert trace(trusted_dir) == ["pre-ran", "post-ran"]


def test_hook_refusing_to_continue_aborts_even_in_degrade(
    datastore: Datastore, trusted_dir: Path
) -> None:
    guest = shop_guest(datastore, trusted_dir, pre_body="exit 1\n").replace(
        "continue_on_failure = true", "continue_on_failure = false"
    )
    app = make_app(trusted_dir, {"vm1": guest}, on_failure="degrade")

    code, manifest, stderr = app.backup_json()

    assert code == 4, stderr
    assert manifest is None
    assert "does not allow going on" in stderr


def test_deadline_expiry_thaws_and_marks_not_group_consistent(
    datastore: Datastore, trusted_dir: Path
) -> None:
    """Host fast freezes at once; host slow's writer waits seconds for its database's write
    lock, so fast's freeze deadline (300 ms) passes at the barrier and it thaws by itself.
    (A rollback-journal database: its prepare has no checkpoint that would wait as well.)"""
    fast = datastore.add_disk("fast", datastore.root / "vm" / "fast").mountpoint
    slow = datastore.add_disk("slow", datastore.root / "vm" / "slow").mountpoint
    make_db(slow / "slow.db", 10, wal=False)
    app = make_app(
        trusted_dir,
        {
            "fast": image_volume("data", fast),
            "slow": image_volume("data", slow) + sqlite_db("slow", slow / "slow.db", "data"),
        },
        freeze_timeout="300ms",
    )
    blocker = subprocess.Popen(
        [
            "python3",
            "-c",
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
            "sys.stdin.readline(); c.execute('ROLLBACK')\n",
            str(slow / "slow.db"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    backup = subprocess.Popen(
        [*CLEANCUT, "backup", str(app.config), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    manifest = None
    try:
        assert blocker.stdout is not None and blocker.stdout.readline().strip() == "locked"
        assert backup.stdout is not None and blocker.stdin is not None
        for line in backup.stdout:
            event = json.loads(line)
            if event.get("phase") == "freeze" and event.get("state") == "start":
                time.sleep(1.0)  # slow's writer waits for the lock; fast's deadline passes
                blocker.stdin.write("release\n")
                blocker.stdin.flush()
            if event.get("event") == "result":
                manifest = event["manifest"]
        code = backup.wait(timeout=60)
        stderr = backup.stderr.read() if backup.stderr else ""
    finally:
        if backup.poll() is None:
            backup.kill()
        blocker.kill()
        blocker.wait(timeout=10)
        backup.wait(timeout=10)

    assert code == 3, stderr
    assert manifest is not None
    assert manifest["group_consistent"] is False
    fast_host = next(h for h in manifest["hosts"] if h["host"] == "fast")
    assert fast_host["self_thawed"] == "deadline"
    assert fast_host["write_stall"] < 1.5  # thawed at its deadline, not after the barrier
    # fast's image was cloned inside its own freeze, so the image itself is sound...
    fast_member = next(m for m in manifest["members"] if m["host"] == "fast")
    assert fast_member["level"] == "filesystem"
    # ...but fast's writes resumed before slow's stopped: no instant both images show
    assert "the hosts had no common quiet window" in manifest["notes"]
    assert any("fast thawed by itself (deadline)" in note for note in manifest["notes"])


def test_dry_run_touches_nothing(datastore: Datastore, trusted_dir: Path) -> None:
    app = make_app(trusted_dir, {"vm1": shop_guest(datastore, trusted_dir)})

    done = app.run("backup", "--dry-run")

    assert done.returncode == 0, done.stderr
    assert "FIFREEZE" in done.stdout
    assert "RESTIC_REPOSITORY=" in done.stdout and "restic backup --json" in done.stdout
    assert "restic -r" not in done.stdout  # the URL may hold credentials: never on argv
    assert "correct horse" not in done.stdout
    assert not app.repository.exists()
    assert not app.catalog.exists()
    assert trace(trusted_dir) == []


def test_killed_backup_leaves_no_recovery_point(datastore: Datastore, trusted_dir: Path) -> None:
    """SIGKILL the coordinator as the upload starts: the guest thaws and cleans up, and the
    repository holds no manifest, so no recovery point appears — not even after a rebuild."""
    app = make_app(trusted_dir, {"vm1": shop_guest(datastore, trusted_dir)})
    argv = [*CLEANCUT, "backup", str(app.config), "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    guests: list[int] = []
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("phase") == "upload" and event.get("state") == "start":
            guests = children(proc.pid)
            proc.kill()
            break
    proc.wait(timeout=30)
    assert guests, "the guest agent should have been running"
    for pid in guests:
        wait_gone(pid, 60)

    rebuilt = app.run("catalog rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "0 recovery point" in rebuilt.stdout
    probe = datastore.disks["orders"].mountpoint / "probe"
    probe.write_text("writable")  # would block forever if left frozen
    assert probe.read_text() == "writable"


def test_restore_refuses_live_target(datastore: Datastore, trusted_dir: Path) -> None:
    app = make_app(trusted_dir, {"vm1": shop_guest(datastore, trusted_dir)})
    assert app.backup_json()[0] == 0
    live = datastore.disks["orders"].mountpoint

    refused = app.run("restore", "latest", "--to", str(live))
    no_target = app.run("restore", "latest")

    assert refused.returncode == 2
    assert "--in-place" in refused.stderr and str(live) in refused.stderr
    assert no_target.returncode == 2
    assert "--to" in no_target.stderr


FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"


def azure_fixture() -> Path:
    """Azure's published template, wherever shared/ lies beside the checkout."""
    for base in (FIXTURES, Path("/work/shared/fixtures")):
        path = base / "azure" / "VMSnapshotScriptPluginConfig.json"
        if path.is_file():
            return path
    pytest.skip("shared/fixtures is not beside this checkout")


def test_azure_hook_config_drives_a_cut(datastore: Datastore, trusted_dir: Path) -> None:
    """Azure's template, filled in the way users do, runs its scripts with their params."""
    mount = datastore.add_disk("vm1", datastore.root / "vm1").mountpoint
    record = f"{trusted_dir}/trace"
    pre = write_script(trusted_dir / "azure" / "pre.sh", f'echo "pre $*" >> {record}\n')
    post = write_script(trusted_dir / "azure" / "post.sh", f'echo "post $*" >> {record}\n')
    for script in (pre, post):
        script.chmod(0o700)  # Azure refuses scripts with any group or other permission bit
    template = json.loads(azure_fixture().read_text())
    template.update(
        preScriptLocation=str(pre),
        postScriptLocation=str(post),
        preScriptParams=["--flush", ""],
    )
    config = trusted_dir / "azure" / "VMSnapshotScriptPluginConfig.json"
    config.write_text(json.dumps(template, indent=4))
    config.chmod(0o600)
    guest = image_volume("data", mount) + f'[hooks_import]\nazure = "{config}"\n'
    app = make_app(trusted_dir, {"vm1": guest})

    code, manifest, stderr = app.backup_json()

    assert code == 0, stderr
    assert manifest is not None and manifest["level"] == "application"
    lines = [line.strip() for line in (trusted_dir / "trace").read_text().splitlines()]
    assert lines == ["pre --flush", "post"]
    assert {h["source"] for h in manifest["hooks"]} == {"azure"}


def test_wrong_repository_password_fails_before_any_host_is_touched(
    datastore: Datastore, trusted_dir: Path
) -> None:
    app = make_app(trusted_dir, {"vm1": shop_guest(datastore, trusted_dir)})
    assert app.backup_json()[0] == 0
    (trusted_dir / "trace").unlink()
    (trusted_dir / "repository.pass").write_text("not the password\n")

    code, manifest, stderr = app.backup_json()

    assert code == 7, stderr
    assert manifest is None
    assert "wrong password" in stderr
    assert trace(trusted_dir) == []  # no pre-script ran, nothing was frozen
