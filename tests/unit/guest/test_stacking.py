"""Which file systems lie beneath which, from the kernel's sysfs links (a recorded tree).

The kernel shows a device-mapper or md device's parts in ``/sys/dev/block/M:N/slaves``, a
partition as a child folder of its disk, and a loop device's file in ``loop/backing_file``.
Each test lays out a sysfs tree the way the kernel does and checks the walk down to the
mount holding the backing file (a real file here), so the stacked file system is frozen
in an earlier wave than the one beneath it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cleancut.guest.freezer import freeze_plan, lower_file_systems
from cleancut.system.mounts import MountInfo, devices_below


def block(sys_root: Path, name: str, dev: str, parent: Path | None = None) -> Path:
    """A block device folder under devices/ and its /sys/dev/block/M:N link."""
    folder = (parent or sys_root / "devices" / "virtual" / "block") / name
    folder.mkdir(parents=True)
    (folder / "dev").write_text(dev + "\n")
    links = sys_root / "dev" / "block"
    links.mkdir(parents=True, exist_ok=True)
    (links / dev).symlink_to(os.path.relpath(folder, links))
    return folder


def loop(sys_root: Path, name: str, dev: str, backing: Path) -> Path:
    folder = block(sys_root, name, dev)
    (folder / "loop").mkdir()
    (folder / "loop" / "backing_file").write_text(f"{backing}\n")
    return folder


def datastore_mount(tmp_path: Path) -> tuple[MountInfo, Path]:
    """A "datastore" mount for the folder holding a real image file (matched by st_dev)."""
    image = tmp_path / "store" / "disk.img"
    image.parent.mkdir()
    image.write_bytes(b"\0" * 512)
    st_dev = os.stat(image).st_dev
    mount = MountInfo(image.parent, "xfs", "/dev/loop0", f"{os.major(st_dev)}:{os.minor(st_dev)}")
    return mount, image


def test_device_mapper_on_a_loop_device_lies_on_the_backing_files_mount(tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    store, image = datastore_mount(tmp_path)
    loop_dir = loop(sys_root, "loop9", "7:9", image)
    dm = block(sys_root, "dm-3", "253:3")
    (dm / "slaves").mkdir()
    (dm / "slaves" / "loop9").symlink_to(os.path.relpath(loop_dir, dm / "slaves"))
    upper = MountInfo(Path("/srv/vm"), "ext4", "/dev/mapper/vm-data", "253:3")

    assert devices_below("253:3", sys_root) == {"7:9"}
    assert lower_file_systems(upper, [store, upper], sys_root) == {store.major_minor}


def test_a_partition_of_a_loop_device_lies_on_the_backing_files_mount(tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    store, image = datastore_mount(tmp_path)
    disk = loop(sys_root, "loop9", "7:9", image)
    part = block(sys_root, "loop9p1", "259:1", parent=disk)
    (part / "partition").write_text("1\n")
    upper = MountInfo(Path("/srv/vm"), "ext4", "/dev/loop9p1", "259:1")

    assert devices_below("259:1", sys_root) == {"7:9"}
    assert lower_file_systems(upper, [store, upper], sys_root) == {store.major_minor}


def test_a_plain_disk_has_nothing_beneath(tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    block(sys_root, "vda", "254:0")
    plain = MountInfo(Path("/srv"), "ext4", "/dev/vda", "254:0")
    assert devices_below("254:0", sys_root) == set()
    assert lower_file_systems(plain, [plain], sys_root) == set()
    assert devices_below("1:99", sys_root) == set()  # an unknown device is no error


def test_plan_puts_the_stacked_file_system_first(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MountInfo(Path("/store"), "xfs", "/dev/loop0", "7:0")
    upper = MountInfo(Path("/srv/vm"), "ext4", "/dev/mapper/vm", "253:3")
    other = MountInfo(Path("/srv/other"), "ext4", "/dev/vdb", "254:16")
    lowers = {"253:3": {"7:0"}, "7:0": set(), "254:16": set()}
    monkeypatch.setattr(
        "cleancut.guest.freezer.lower_file_systems", lambda m, _mounts: lowers[m.major_minor]
    )
    plan = freeze_plan([store, upper, other], [store, upper, other])
    assert plan == [[other, upper], [store]]
