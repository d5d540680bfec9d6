"""The freezer under faults, on real loop-mounted file systems: ioctls that hang, a signal
arriving inside FIFREEZE, and stacks the loop-device walk alone would miss.

A freeze or thaw of a disk image's file system writes through its loop device into the
datastore, so freezing the datastore first (as someone else might) makes the disk's own
FIFREEZE or FITHAW hang until the datastore thaws: a real stuck ioctl.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleancut.demo.disks import Datastore
from cleancut.guest.freezer import Freezer
from cleancut.system.mounts import read_mountinfo

from .conftest import _CREATED_MOUNTS, finishes, start_probe
from .test_freezer import assert_frozen, read_line

pytestmark = pytest.mark.root

SYS_IOCTL = 16  # x86_64

INTERRUPTED_GUEST = """
import signal, sys, time
from pathlib import Path
from cleancut.guest.freezer import Freezer

def stop(signum, frame):
    raise SystemExit(128 + signum)

signal.signal(signal.SIGTERM, stop)
freezer = Freezer([Path(sys.argv[1])])
freezer.open()
print("opened", flush=True)
sys.stdin.readline()
try:
    freezer.freeze(deadline_seconds=120)
    print("frozen", flush=True)
except BaseException as exc:
    print("interrupted", type(exc).__name__, flush=True)
freezer.close()
print("released", flush=True)
time.sleep(3600)  # a guest lives on after a release: its sentinel's EOF must not be needed
"""


def fsfreeze(flag: str, mount: Path) -> None:
    subprocess.run(["fsfreeze", flag, str(mount)], capture_output=True, check=False, timeout=30)


def threads_in_ioctl(pid: int) -> int:
    """How many threads of ``pid`` are inside an ioctl system call right now."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            if (task / "syscall").read_text().split()[0] == str(SYS_IOCTL):
                count += 1
    return count


def wait_for(condition: object, within: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_hanging_fifreeze_leaves_nothing_frozen(
    datastore: Datastore, probes: list[subprocess.Popen[bytes]], signum: int
) -> None:
    """KeyboardInterrupt (Ctrl-C) or SystemExit (SIGTERM) while FIFREEZE waits: the freeze
    was recorded before the ioctl, so the release thaws it once the ioctl returns, and the
    sentinel is not told "done" while it may still be frozen."""
    disk = datastore.add_disk("vm1", datastore.root / "vm1").mountpoint
    guest = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_GUEST, str(disk)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert read_line(guest) == "opened"
        (disk / "dirty").write_bytes(os.urandom(4 << 20))
        fsfreeze("-f", datastore.path)  # the disk's FIFREEZE now hangs in its journal flush
        assert guest.stdin is not None
        guest.stdin.write(b"go\n")
        guest.stdin.flush()
        wait_for(lambda: threads_in_ioctl(guest.pid) >= 1, 5, "FIFREEZE issued")
        time.sleep(0.3)
        assert threads_in_ioctl(guest.pid) >= 1, "FIFREEZE should still hang"
        guest.send_signal(signum)
        time.sleep(0.5)
        fsfreeze("-u", datastore.path)  # the ioctl returns: the disk is frozen now
        assert read_line(guest).startswith("interrupted")
        assert read_line(guest, timeout=15) == "released"
        assert guest.poll() is None, "the guest must live on: its sentinel was not the one"
        probe = start_probe(disk)
        probes.append(probe)
        assert finishes(probe, 2.0), "the disk stayed frozen after the release"
    finally:
        fsfreeze("-u", datastore.path)
        guest.kill()
        guest.wait(timeout=10)


@pytest.fixture
def second_datastore(datastore: Datastore) -> Iterator[Datastore]:
    """Another datastore, whose paths sort after the first one's disks."""
    store = Datastore(datastore.root / "zz-second", remove_images=True)
    try:
        store.open()
        yield store
    finally:
        _CREATED_MOUNTS.update(disk.mountpoint for disk in store.disks.values())
        _CREATED_MOUNTS.add(store.path)
        fsfreeze("-u", store.path)
        store.close()


def test_one_hanging_fithaw_does_not_keep_the_others_frozen(
    datastore: Datastore,
    second_datastore: Datastore,
    probes: list[subprocess.Popen[bytes]],
) -> None:
    first = datastore.add_disk("a", datastore.root / "a").mountpoint
    second = second_datastore.add_disk("b", datastore.root / "zz-second" / "b").mountpoint
    freezer = Freezer([first, second])
    assert [[m.mount_point for m in w] for w in freezer.plan] == [[first, second]]
    freezer.open(sentinel=False)
    thawer: threading.Thread | None = None
    try:
        freezer.freeze()
        assert_frozen(first, probes)
        fsfreeze("-f", second_datastore.path)  # the second disk's thaw will hang
        errors: list[BaseException] = []

        def thaw() -> None:
            try:
                freezer.thaw(wait=30)
            except BaseException as exc:
                errors.append(exc)

        thawer = threading.Thread(target=thaw, daemon=True)
        thawer.start()
        assert finishes(probes[0], 1.5), "the first disk waited for the second one's thaw"
        assert thawer.is_alive(), "the second disk's thaw should still hang"
        assert freezer.frozen
        fsfreeze("-u", second_datastore.path)
        thawer.join(15)
        assert not thawer.is_alive() and not errors, errors
        assert not freezer.frozen
    finally:
        fsfreeze("-u", second_datastore.path)
        if thawer is not None:
            thawer.join(15)
        freezer.close()


def _kernel_has_device_mapper() -> bool:
    try:
        return "device-mapper" in Path("/proc/misc").read_text()
    except OSError:
        return False


@pytest.fixture
def dm_disk(datastore: Datastore) -> Iterator[Path]:
    """An ext4 file system on a device-mapper device on a loop device on the datastore.

    Skipped on a kernel without device-mapper (this development machine's has none; the
    same walk is tested on a recorded sysfs tree in tests/unit/guest/test_stacking.py).
    """
    if not _kernel_has_device_mapper():
        pytest.skip("this kernel has no device-mapper driver (/proc/misc lists none)")
    image = datastore.path / "disks" / "dm.img"
    image.parent.mkdir(exist_ok=True)
    with image.open("wb") as handle:
        handle.truncate(64 << 20)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    name = f"cleancut-test-{os.getpid()}"
    mount = datastore.root / "dm"
    mapped = False
    try:
        sectors = subprocess.run(
            ["blockdev", "--getsz", loop], capture_output=True, text=True, check=True
        ).stdout.strip()
        subprocess.run(
            ["dmsetup", "create", name, "--table", f"0 {sectors} linear {loop} 0"],
            capture_output=True,
            check=True,
        )
        mapped = True
        subprocess.run(["mkfs.ext4", "-q", f"/dev/mapper/{name}"], capture_output=True, check=True)
        mount.mkdir()
        subprocess.run(["mount", f"/dev/mapper/{name}", str(mount)], check=True)
        _CREATED_MOUNTS.add(mount)
        yield mount
    finally:
        fsfreeze("-u", mount)
        subprocess.run(["umount", str(mount)], capture_output=True, check=False)
        if mapped:
            subprocess.run(["dmsetup", "remove", name], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)
        image.unlink(missing_ok=True)


def test_a_device_mapper_disk_is_frozen_before_the_datastore_beneath_it(
    datastore: Datastore, dm_disk: Path, probes: list[subprocess.Popen[bytes]]
) -> None:
    """dm → loop → image on the datastore: found through sysfs, so the upper file system
    freezes in an earlier wave (in one parallel wave it could wait for itself forever)."""
    mount = next(m for m in read_mountinfo() if m.mount_point == dm_disk)
    assert mount.source.startswith("/dev/mapper/") or mount.source.startswith("/dev/dm-")
    freezer = Freezer([datastore.path, dm_disk])
    assert [[m.mount_point for m in wave] for wave in freezer.plan] == [
        [dm_disk],
        [datastore.path],
    ]
    (dm_disk / "dirty").write_bytes(os.urandom(4 << 20))
    with freezer:
        freezer.freeze()
        assert_frozen(dm_disk, probes)
        assert_frozen(datastore.path, probes)
        freezer.thaw()
    assert all(finishes(probe, 3) for probe in probes)
