"""mountinfo parsing and mount lookup, without root."""

from __future__ import annotations

import os
from pathlib import Path

from cleancut.guest.freezer import freeze_plan
from cleancut.system.mounts import (
    MountInfo,
    loop_backing_file,
    mount_of,
    parse_mountinfo,
    read_mountinfo,
    unescape,
)

SAMPLE = (
    b"22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    b"27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
    b"40 27 7:0 / /srv/my\\040disk rw,relatime shared:5 master:2 - xfs /dev/loop0 rw\n"
    b"41 27 7:1 /sub /mnt/tab\\011and\\134slash rw - ext4 /dev/loop1 rw\n"
    b"garbage line\n"
    b"42 27 0:50 / /mnt/caf\\303\\251 rw - tmpfs my\\040tmpfs rw\n"
)


def test_parse_handles_optional_fields_and_skips_garbage() -> None:
    mounts = parse_mountinfo(SAMPLE)
    assert [m.mount_point for m in mounts] == [
        Path("/proc"),
        Path("/"),
        Path("/srv/my disk"),
        Path("/mnt/tab\tand\\slash"),
        Path("/mnt/café"),
    ]
    disk = mounts[2]
    assert (disk.fstype, disk.source, disk.major_minor, disk.mount_id) == (
        "xfs",
        "/dev/loop0",
        "7:0",
        40,
    )
    assert mounts[3].root == "/sub"
    assert mounts[4].source == "my tmpfs"


def test_unescape_octal_sequences() -> None:
    assert unescape(b"a\\040b\\012c\\134") == "a b\nc\\"
    assert unescape(b"plain") == "plain"


def test_mount_of_prefers_the_longest_matching_mount_point(tmp_path: Path) -> None:
    st_dev = os.stat(tmp_path).st_dev
    device = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    outer = MountInfo(Path("/"), "ext4", "/dev/x", device)
    inner = MountInfo(tmp_path, "ext4", "/dev/y", device)
    unrelated = MountInfo(tmp_path / "nope", "ext4", "/dev/z", device)
    other_device = MountInfo(tmp_path, "xfs", "/dev/w", "999:999")
    assert mount_of(tmp_path / ".", [outer, inner, unrelated, other_device]) == inner
    assert mount_of(tmp_path, [outer, other_device]) == outer


def test_mount_of_the_real_root() -> None:
    assert mount_of(Path("/"), read_mountinfo()).mount_point == Path("/")


def test_loop_backing_file_reads_sysfs(tmp_path: Path) -> None:
    loop = tmp_path / "block" / "loop7" / "loop"
    loop.mkdir(parents=True)
    (loop / "backing_file").write_text("/data/disk 1.img (deleted)\n")
    assert loop_backing_file("/dev/loop7", sys_root=tmp_path) == Path("/data/disk 1.img")
    assert loop_backing_file("/dev/loop8", sys_root=tmp_path) is None
    assert loop_backing_file("/dev/vda", sys_root=tmp_path) is None
    assert loop_backing_file("tmpfs", sys_root=tmp_path) is None


def test_freeze_plan_puts_root_last_alone() -> None:
    root = MountInfo(Path("/"), "ext4", "/dev/vda", "254:0")
    a = MountInfo(Path("/b"), "ext4", "/dev/vdb", "254:16")
    b = MountInfo(Path("/a"), "xfs", "/dev/vdc", "254:32")
    assert freeze_plan([root, a, b], [root, a, b]) == [[b, a], [root]]
