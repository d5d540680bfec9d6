"""Restoring in place: disk images only while detached; trees replaced exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cleancut.demo.disks import Datastore
from cleancut.restore import attached_read_only
from tests.integration.cutlib import count_rows, image_volume, make_app, make_db

pytestmark = [pytest.mark.root, pytest.mark.restic]


def test_in_place_image_restore_waits_for_the_vm_to_stop(
    datastore: Datastore, trusted_dir: Path
) -> None:
    disk = datastore.add_disk("vm1", datastore.root / "vm1")
    make_db(disk.mountpoint / "a.db", 50)
    app = make_app(trusted_dir, {"vm1": image_volume("data", disk.mountpoint)})
    code, _manifest, stderr = app.backup_json()
    assert code == 3, stderr  # file-system level: no hook or writer declared
    make_db(disk.mountpoint / "a.db", 25)  # changes after the backup
    (disk.mountpoint / "later.txt").write_text("written after the backup")

    refused = app.run("restore", "latest", "--in-place")
    assert refused.returncode == 2
    assert "in use by /dev/loop" in refused.stderr and str(disk.image) in refused.stderr

    datastore.remove_disk("vm1")  # the VM is stopped: its disk is detached
    done = app.run("restore", "latest", "--in-place", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["members"][0]["fsck_ok"] is True
    with attached_read_only(disk.image, "ext4") as mounted:
        assert not (mounted / "later.txt").exists()
        for name in ("a.db", "a.db-wal"):  # SQLite cannot open WAL files on a read-only mount
            if (mounted / name).exists():
                shutil.copy2(mounted / name, trusted_dir / name)
    assert count_rows(trusted_dir / "a.db") == 50


def test_in_place_tree_restore_replaces_contents(trusted_dir: Path) -> None:
    volume = trusted_dir / "srv" / "files"
    volume.mkdir(parents=True)
    (volume / "keep.txt").write_text("version 1")
    (volume / "sub").mkdir()
    (volume / "sub" / "deep.txt").write_text("deep")
    guest = (
        f'staging = "{trusted_dir / "staging"}"\n'
        f'[volumes.files]\npath = "{volume}"\nsnapshot = "copy"\nfreeze = false\n'
    )
    app = make_app(trusted_dir, {"vm1": guest})
    code, manifest, stderr = app.backup_json()
    assert code == 3, stderr  # copy without freeze or hooks: level none, still committed
    assert manifest is not None and manifest["level"] == "none"
    (volume / "keep.txt").write_text("version 2")
    (volume / "extra.txt").write_text("not in the backup")

    done = app.run("restore", "latest", "--in-place")

    assert done.returncode == 0, done.stderr
    assert (volume / "keep.txt").read_text() == "version 1"
    assert (volume / "sub" / "deep.txt").read_text() == "deep"
    assert sorted(p.name for p in volume.iterdir()) == ["keep.txt", "sub"]
