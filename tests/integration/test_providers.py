"""Snapshot providers on real loop-mounted file systems (DESIGN.md §3a, §8 Disks).

An XFS (reflink) datastore holds the disk images; an ``image`` clone is made while the
ext4 disk is frozen with the real FIFREEZE, and must be a clean file system holding what
was written before the freeze. Every mount, loop device, freeze and snapshot made here is
undone in a ``finally``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleancut.config.guest import Volume
from cleancut.demo.disks import Datastore
from cleancut.errors import ProviderError
from cleancut.providers import make_provider

pytestmark = pytest.mark.root

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def datastore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Datastore]:
    with Datastore(tmp_path_factory.mktemp("providers"), 1024, remove_images=True) as ds:
        yield ds


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@contextlib.contextmanager
def frozen(mount_point: Path) -> Iterator[None]:
    """``mount_point`` (a mount this test made) frozen with FIFREEZE, thawed on every path."""
    assert os.path.ismount(mount_point), f"refusing to freeze {mount_point}: not a mount point"
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
        try:
            yield
        finally:
            fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)


@contextlib.contextmanager
def loop_mounted(image: Path, mount_point: Path, *options: str) -> Iterator[str]:
    """``image`` attached to a loop device and mounted; detached and unmounted afterwards."""
    ro = ["--read-only"] if "ro" in options else []
    attached = _run("losetup", "--find", "--show", *ro, str(image))
    assert attached.returncode == 0, attached.stderr
    device = attached.stdout.strip()
    try:
        mount_point.mkdir(parents=True, exist_ok=True)
        opts = ["-o", ",".join(options)] if options else []
        mounted = _run("mount", *opts, device, str(mount_point))
        assert mounted.returncode == 0, mounted.stderr
        try:
            yield device
        finally:
            _run("umount", str(mount_point))
    finally:
        _run("losetup", "-d", device)


def _tree(root: Path, skip: str = "") -> dict[str, tuple[str, int, object]]:
    out: dict[str, tuple[str, int, object]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if skip and rel.split("/")[0] == skip:
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


def _fill(root: Path) -> None:
    (root / "docs" / "2024").mkdir(parents=True)
    (root / "docs" / "2024" / "invoice-1.pdf").write_bytes(os.urandom(16 * MIB))
    (root / "docs" / "readme.txt").write_text("before the cut\n")
    (root / "docs" / "readme.txt").chmod(0o640)
    (root / "latest").symlink_to("docs/2024/invoice-1.pdf")


def test_image_clone_of_a_frozen_ext4_disk(datastore: Datastore, trusted_dir: Path) -> None:
    disk = datastore.add_disk("vm1", trusted_dir / "vm1", 128, "ext4")
    try:
        (disk.mountpoint / "orders.db").write_bytes(os.urandom(8 * MIB))
        (disk.mountpoint / "marker.txt").write_text("written before the freeze\n")
        provider = make_provider("data", Volume(path=disk.mountpoint), trusted_dir / "staging")
        provider.check()  # the image is found from the loop device, not configured
        assert provider.describe()["image"] == str(disk.image)
        assert provider.describe()["fstype"] == "ext4"
        provider.prepare("rp-1")
        try:
            with frozen(disk.mountpoint):
                snap = provider.snapshot()
            (disk.mountpoint / "after.txt").write_text("written after the thaw\n")

            assert snap.path == disk.image.parent / ".cleancut-snapshots" / "rp-1" / "vm1.img"
            assert snap.layout == "file"
            assert snap.details == {"image": str(disk.image), "fstype": "ext4"}
            assert snap.seconds < 0.5, f"FICLONE of a 128 MiB image took {snap.seconds:.3f} s"
            print(f"image clone inside the freeze: {snap.seconds * 1000:.1f} ms")
            fsck = _run("e2fsck", "-fn", str(snap.path))
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
            with loop_mounted(snap.path, trusted_dir / "check", "ro"):
                check = trusted_dir / "check"
                assert (check / "marker.txt").read_text() == "written before the freeze\n"
                assert (check / "orders.db").read_bytes() == (
                    disk.mountpoint / "orders.db"
                ).read_bytes()
                assert not (check / "after.txt").exists()
        finally:
            provider.release()
        assert not snap.path.exists()
        assert not snap.path.parent.exists()
        provider.release()  # idempotent
    finally:
        datastore.remove_disk("vm1", remove_image=True)


def test_image_on_an_ext4_datastore_is_refused(datastore: Datastore, trusted_dir: Path) -> None:
    plain = datastore.add_disk("plainds", trusted_dir / "plainds", 128, "ext4")
    try:
        inner = plain.mountpoint / "vm2.img"
        with inner.open("wb") as handle:
            handle.truncate(32 * MIB)
        made = _run("mkfs.ext4", "-q", "-F", str(inner))
        assert made.returncode == 0, made.stderr
        with loop_mounted(inner, trusted_dir / "vm2"):
            provider = make_provider("data", Volume(path=trusted_dir / "vm2"), trusted_dir)
            with pytest.raises(ProviderError) as err:
                provider.check()
        message = err.value.message
        assert f"ext4 at {plain.mountpoint} does not support reflink" in message
        assert "XFS" in message and "btrfs" in message
        assert str(inner) in message
    finally:
        datastore.remove_disk("plainds", remove_image=True)


def test_copy_of_a_frozen_disk_to_another_file_system(
    datastore: Datastore, trusted_dir: Path
) -> None:
    disk = datastore.add_disk("vm3", trusted_dir / "vm3", 128, "ext4")
    try:
        _fill(disk.mountpoint)
        volume = Volume(path=disk.mountpoint, snapshot="copy")
        provider = make_provider("share", volume, trusted_dir / "staging")
        provider.check()
        provider.prepare("rp-1")
        try:
            with frozen(disk.mountpoint):
                snap = provider.snapshot()
            assert snap.details["stall_includes_copy"] is True
            assert _tree(snap.path) == _tree(disk.mountpoint)
        finally:
            provider.release()
        assert not (trusted_dir / "staging" / "rp-1").exists()
    finally:
        datastore.remove_disk("vm3", remove_image=True)


def test_btrfs_snapshot_is_read_only_and_point_in_time(
    datastore: Datastore, trusted_dir: Path
) -> None:
    disk = datastore.add_disk("bt", trusted_dir / "bt", 200, "btrfs")
    try:
        subvolume = disk.mountpoint / "data"
        made = _run("btrfs", "subvolume", "create", str(subvolume))
        assert made.returncode == 0, made.stderr
        _fill(subvolume)
        provider = make_provider("data", Volume(path=subvolume, snapshot="btrfs"), trusted_dir)
        provider.check()
        provider.prepare("rp-1")
        try:
            snap = provider.snapshot()
            (subvolume / "docs" / "readme.txt").write_text("after the cut\n")

            assert snap.path == disk.mountpoint / ".cleancut-snapshots" / "rp-1-data"
            assert (snap.path / "docs" / "readme.txt").read_text() == "before the cut\n"
            assert (snap.path / "latest").is_symlink()
            ro = _run("btrfs", "property", "get", "-ts", str(snap.path), "ro")
            assert ro.stdout.strip() == "ro=true"
            with pytest.raises(OSError, match="Read-only file system"):
                (snap.path / "new").write_text("x")
        finally:
            provider.release()
        assert not snap.path.exists()
        provider.release()  # idempotent

        (disk.mountpoint / "plain").mkdir()
        not_sub = make_provider(
            "p", Volume(path=disk.mountpoint / "plain", snapshot="btrfs"), trusted_dir
        )
        with pytest.raises(ProviderError, match="not a btrfs subvolume"):
            not_sub.check()
    finally:
        datastore.remove_disk("bt", remove_image=True)


def test_reflink_clones_a_tree_on_xfs(datastore: Datastore, trusted_dir: Path) -> None:
    disk = datastore.add_disk("xf", trusted_dir / "xf", 300, "xfs")
    try:
        _fill(disk.mountpoint)
        shutil.copy(disk.mountpoint / "docs" / "readme.txt", disk.mountpoint / "copy.txt")
        volume = Volume(path=disk.mountpoint, snapshot="reflink")
        provider = make_provider("share", volume, trusted_dir)
        provider.check()
        provider.prepare("rp-1")
        try:
            free_before = os.statvfs(disk.mountpoint).f_bfree * os.statvfs(disk.mountpoint).f_frsize
            snap = provider.snapshot()
            free_after = os.statvfs(disk.mountpoint).f_bfree * os.statvfs(disk.mountpoint).f_frsize
            (disk.mountpoint / "docs" / "readme.txt").write_text("after the cut\n")

            # the volume is a mount point: snapshots live inside it and are not cloned into
            # themselves
            assert snap.path == disk.mountpoint / ".cleancut-snapshots" / "rp-1" / "share"
            expected = _tree(disk.mountpoint, skip=".cleancut-snapshots")
            expected["docs/readme.txt"] = ("file", 0o640, b"before the cut\n")
            assert _tree(snap.path) == expected
            assert snap.details["files"] == 3
            # shared blocks, not a copy: 16 MiB of data cost well under 1 MiB of space
            assert free_before - free_after < MIB, (free_before, free_after)
        finally:
            provider.release()
        assert not snap.path.exists()
    finally:
        datastore.remove_disk("xf", remove_image=True)
