"""``cleancut forget``: retention keeps and removes recovery points whole, on real restic.

The application spans two hosts, so each RP is three restic snapshots (one member per
host and the manifest). restic's own ``forget --keep-last`` would group them by host and
path; cleancut decides per RP and removes catalog row, manifest and members in that order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cleancut.config.load import load_app
from cleancut.coordinator.repository import repository_access
from cleancut.coordinator.runlock import AppLock
from cleancut.manifest import MANIFEST_TAG
from cleancut.mover.restic import ResticMover
from tests.integration.cutlib import CLEANCUT, App, _env, make_app

pytestmark = pytest.mark.restic


def _app(root: Path, retention: str | None = "keep_last = 2") -> App:
    guests = {}
    for host in ("vm1", "vm2"):
        folder = root / f"{host}-data"
        folder.mkdir()
        (folder / "file.txt").write_text(f"{host}\n")
        staging = root / f"{host}-staging"  # each host its own, as on separate machines
        guests[host] = (
            f'staging = "{staging}"\n\n'
            f'[volumes.data]\npath = "{folder}"\nsnapshot = "copy"\nfreeze = false\n'
        )
    app = make_app(root, guests)
    if retention is not None:
        with app.config.open("a", encoding="utf-8") as config:
            config.write(f"\n[retention]\n{retention}\n")
    return app


def _backups(app: App, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        code, manifest, stderr = app.backup_json()
        # 3: committed at a weaker level (an unfrozen copy is not even crash-consistent)
        assert code == 3 and manifest is not None, stderr
        ids.append(manifest["rp_id"])
        time.sleep(1.1)  # RP ids and times are to the second
    return ids


def _mover(app: App) -> ResticMover:
    loaded = load_app(app.config)
    return ResticMover(repository_access(loaded.config.repository, config_file=str(app.config)))


def _snapshots(app: App) -> dict[str, dict[str, Any]]:
    """rp -> its manifest snapshot count and its members' (host, resource)."""
    found: dict[str, dict[str, Any]] = {}
    for snapshot in _mover(app).find({"app": "itest"}):
        rp = found.setdefault(snapshot.tags["rp"], {"manifests": 0, "members": set()})
        if MANIFEST_TAG in snapshot.tags:
            rp["manifests"] += 1
        else:
            rp["members"].add((snapshot.tags["host"], snapshot.tags["resource"]))
    return found


def _points(app: App) -> list[dict[str, Any]]:
    done = app.run("points", "--json")
    assert done.returncode == 0, done.stderr
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def _forget(app: App, *args: str) -> dict[str, Any]:
    done = app.run("forget", "--json", *args)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    (result,) = [line for line in lines if line.get("event") == "forget"]
    return dict(result)


def _assert_listed_points_are_whole(app: App) -> None:
    stored = _snapshots(app)
    for point in _points(app):
        rp = stored.get(point["rp"])
        assert rp is not None, f"{point['rp_id']} is listed but has no snapshot"
        assert rp["manifests"] == 1, (point["rp"], rp)
        assert rp["members"] == {("vm1", "data"), ("vm2", "data")}, (point["rp"], rp)


def test_dry_run_says_why_and_forget_removes_whole_rps(trusted_dir: Path) -> None:
    app = _app(trusted_dir)
    ids = _backups(app, 4)
    before = _snapshots(app)
    assert len(before) == 4

    plan = _forget(app, "--dry-run")

    assert [p["rp"] for p in plan["kept"]] == [ids[3], ids[2]]
    assert [p["rp"] for p in plan["forgotten"]] == [ids[1], ids[0]]
    assert plan["kept"][0]["why"] == "keep_last 2 (#1)"
    assert plan["forgotten"][0]["why"] == "no rule keeps it"
    assert all(p["snapshots"] == 3 for p in plan["kept"] + plan["forgotten"])
    assert plan["dry_run"] is True and plan["removed_snapshots"] == 0
    assert _snapshots(app) == before and len(_points(app)) == 4

    done = _forget(app, "--prune")

    assert done["removed_snapshots"] == 6 and done["pruned"] is True
    assert done["restic_calls"] == 4  # list, forget manifests, forget members, prune
    assert sorted(_snapshots(app)) == sorted(ids[2:])
    assert [p["rp"] for p in _points(app)] == ids[2:]
    _assert_listed_points_are_whole(app)
    restored = trusted_dir / "restored"
    done_restore = app.run("restore", ids[2], "--to", str(restored))
    assert done_restore.returncode == 0, done_restore.stderr
    assert sorted(p.name for p in restored.iterdir()) == ["vm1", "vm2"]


def test_member_snapshots_no_manifest_names_are_removed_and_reported(trusted_dir: Path) -> None:
    app = _app(trusted_dir, "keep_last = 5")
    (kept,) = _backups(app, 1)
    tags = {"cleancut": "", "app": "itest", "rp": "20260101T000000Z-dead", "host": "vm1"}
    _mover(app).backup_bytes(b"half", "data.img", host="vm1", tags={**tags, "resource": "data"})

    done = _forget(app)

    (leftover,) = done["leftovers"]
    assert (leftover["rp"], leftover["host"], leftover["resource"]) == (tags["rp"], "vm1", "data")
    assert done["removed_snapshots"] == 1 and done["forgotten"] == []
    assert sorted(_snapshots(app)) == [kept]


#: Put first on PATH: counts the ``restic forget`` calls and, at call STOP_AT, says so and
#: waits to be killed, before that call runs. The values are written into the script:
#: cleancut hands restic only PATH, HOME and the repository's variables.
STOPPING_RESTIC = """#!/bin/sh
case " $* " in
*" forget "*)
    n=$(( $(cat "{count}" 2>/dev/null || echo 0) + 1 ))
    echo "$n" > "{count}"
    if [ "$n" = "{stop_at}" ]; then touch "{mark}"; exec sleep 600; fi
esac
exec {restic} "$@"
"""


def _forget_killed_at(app: App, stop_at: int, bin_dir: Path) -> None:
    """Run ``cleancut forget`` and SIGKILL it (and its restic) at its ``stop_at``-th
    ``restic forget`` call, before that call ran."""
    mark, count = bin_dir / "stopped", bin_dir / "count"
    restic = shutil.which("restic")
    assert restic is not None
    wrapper = bin_dir / "restic"
    wrapper.write_text(
        STOPPING_RESTIC.format(count=count, stop_at=stop_at, mark=mark, restic=restic)
    )
    wrapper.chmod(0o755)
    env = {**_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [*CLEANCUT, "forget", str(app.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not mark.exists():
            if proc.poll() is not None:
                _out, err = proc.communicate()
                raise AssertionError(f"forget ended before its call {stop_at}: {err}")
            assert time.monotonic() < deadline, "forget never reached its restic forget"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("stop_at", [1, 2], ids=["before-manifests", "before-members"])
def test_a_forget_killed_at_any_moment_leaves_only_whole_points(
    trusted_dir: Path, tmp_path: Path, stop_at: int
) -> None:
    """Killed before it forgets the manifests (the catalog rows already gone) or between
    the manifests and the members: every listed RP is whole and restores, and the next
    forget finishes the job, leftovers included."""
    app = _app(trusted_dir, "keep_last = 1")
    ids = _backups(app, 3)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    _forget_killed_at(app, stop_at, bin_dir)

    assert [p["rp"] for p in _points(app)] == ids[-1:]
    _assert_listed_points_are_whole(app)
    restored = trusted_dir / "restored"
    done = app.run("restore", ids[-1], "--to", str(restored))
    assert done.returncode == 0, done.stderr
    if stop_at == 2:  # the manifests went, the members stayed: leftovers now
        assert set(_snapshots(app)) == set(ids)
    finished = _forget(app)
    assert len(finished["leftovers"]) == (4 if stop_at == 2 else 0)
    assert sorted(_snapshots(app)) == ids[-1:]
    _assert_listed_points_are_whole(app)


def test_forget_and_backup_never_run_at_once(trusted_dir: Path) -> None:
    app = _app(trusted_dir)
    _backups(app, 1)
    with AppLock("itest", action="forget"):
        backup = app.run("backup")
        assert backup.returncode == 11, backup.stderr
        assert f"(pid {os.getpid()}, forget, since " in backup.stderr
    with AppLock("itest", action="backup"):
        forget = app.run("forget")
        assert forget.returncode == 11, forget.stderr
        assert f"(pid {os.getpid()}, backup, since " in forget.stderr
        assert "give --wait" in forget.stderr
        verify = app.run("verify", "latest")
        assert verify.returncode == 11, verify.stderr
    assert len(_points(app)) == 1


@pytest.mark.parametrize("command", ["forget", "backup"])
def test_wait_waits_for_the_run_in_progress(trusted_dir: Path, command: str) -> None:
    app = _app(trusted_dir)
    _backups(app, 1)
    lock = AppLock("itest", action="verify")
    lock.acquire()
    try:
        proc = subprocess.Popen(
            [*CLEANCUT, command, str(app.config), "--wait"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()
    finally:
        lock.release()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 3), err  # 3: the unfrozen copy's weaker level
    assert f"waiting for the run in progress (pid {os.getpid()}, verify, since " in err
    assert len(_points(app)) == (2 if command == "backup" else 1)


def test_forget_needs_a_retention_that_keeps_something(trusted_dir: Path) -> None:
    app = _app(trusted_dir, None)
    done = app.run("forget")
    assert done.returncode == 2, done.stderr
    assert "no [retention] table" in done.stderr and "keep_daily = 7" in done.stderr

    app.config.write_text(app.config.read_text() + '\n[retention]\nkeep_only = "crash"\n')
    done = app.run("forget")
    assert done.returncode == 2, done.stderr
    assert "retention" in done.stderr and "would remove every recovery point" in done.stderr
