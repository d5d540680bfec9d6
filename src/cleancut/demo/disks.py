"""The disk testbed, and the demo's "hypervisor" (DESIGN.md §8 Disks).

A :class:`Datastore` is an XFS file system with reflink (itself a loop-mounted sparse
image) that holds each VM's disk images; every disk is a sparse image formatted ext4, XFS
or btrfs, attached with ``losetup`` and mounted where the "VM" expects it. An ``image``
snapshot then clones a disk image on the datastore while the disk's file system is frozen,
as a hypervisor or cloud does.

Cleanup is the point of this module: a file system left frozen hangs the machine's
writers. ``close()`` thaws, unmounts (retrying, lazily as a last resort) and detaches
everything it made, never raises, and runs from ``__exit__`` after errors too; an
``atexit`` handler thaws whatever this process mounted, belt and braces.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from cleancut.errors import ProviderError
from cleancut.system.ioctls import FITHAW

FsType = Literal["ext4", "xfs", "btrfs"]

XFS_MIN_MIB = 300
BTRFS_MIXED_BELOW_MIB = 256

_MKFS: dict[str, list[str]] = {
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}

#: Mount points this process created and has not unmounted yet (thawed at exit).
_MOUNTED: set[Path] = set()


def mounted_here() -> list[Path]:
    """The mount points this process created and still holds (for test finalisers)."""
    return sorted(_MOUNTED)


def thaw_mount(mount_point: Path) -> bool:
    """Thaw ``mount_point`` if it is frozen; True if it was. Never raises.

    Only a mount point is touched: thawing a plain folder would thaw its parent file system.
    """
    if not os.path.ismount(mount_point):
        return False
    try:
        fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.ioctl(fd, FITHAW, 0)
        return True
    except OSError:
        return False  # EINVAL: not frozen
    finally:
        os.close(fd)


@atexit.register
def _thaw_everything_mounted_here() -> None:
    for mount_point in sorted(_MOUNTED, reverse=True):
        thaw_mount(mount_point)


@dataclass
class Disk:
    """One VM disk: an image on the datastore, its loop device and where it is mounted."""

    name: str
    image: Path
    device: str
    mountpoint: Path
    fstype: FsType


class Datastore:
    """An XFS (reflink) datastore of loop-mounted VM disks; a context manager.

    ``root`` gets ``datastore.img`` and the ``datastore`` mount point; disk images live in
    ``datastore/disks``. Needs root: loop devices and mounts do.
    """

    def __init__(self, root: Path, size_mib: int = 512, *, remove_images: bool = False) -> None:
        if os.geteuid() != 0:
            raise ProviderError(
                "the disk testbed needs root: loop devices (losetup) and mounts do; "
                "run as root (e.g. sudo) or skip the tests marked root"
            )
        if size_mib < XFS_MIN_MIB:
            raise ProviderError(f"datastore size {size_mib} MiB: XFS needs at least {XFS_MIN_MIB}")
        self.root = root
        self.size_mib = size_mib
        self.remove_images = remove_images
        self.image = root / "datastore.img"
        self.path = root / "datastore"
        self.device: str | None = None
        self.disks: dict[str, Disk] = {}
        self._mounted = False

    def open(self) -> Datastore:
        """Create, format, attach and mount the datastore (idempotent)."""
        if self._mounted:
            return self
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _make_sparse(self.image, self.size_mib)
            _run([*_MKFS["xfs"], str(self.image)])
            self.device = _attach(self.image)
            _mount(self.device, self.path, "xfs")
            self._mounted = True
            (self.path / "disks").mkdir(exist_ok=True)
        except BaseException:
            self.close()
            raise
        return self

    def add_disk(
        self, name: str, mountpoint: Path, size_mib: int = 64, fstype: FsType = "ext4"
    ) -> Disk:
        """Make a sparse ``fstype`` disk image on the datastore, attach and mount it."""
        if not self._mounted:
            raise ProviderError("Datastore.add_disk: open the datastore first (use `with`)")
        if name in self.disks:
            raise ProviderError(f"disk {name!r} already exists on datastore {self.path}")
        if fstype not in _MKFS:
            raise ProviderError(f"disk {name!r}: fstype {fstype!r} is not one of {sorted(_MKFS)}")
        if fstype == "xfs" and size_mib < XFS_MIN_MIB:
            raise ProviderError(
                f"disk {name!r}: {size_mib} MiB is too small for XFS (at least {XFS_MIN_MIB})"
            )
        image = self.path / "disks" / f"{name}.img"
        _make_sparse(image, size_mib)
        mkfs = [*_MKFS[fstype]]
        if fstype == "btrfs" and size_mib < BTRFS_MIXED_BELOW_MIB:
            mkfs.append("--mixed")  # small btrfs needs data and metadata in shared groups
        _run([*mkfs, str(image)])
        device = _attach(image)
        disk = Disk(name, image, device, mountpoint, fstype)
        try:
            _mount(device, mountpoint, fstype)
        except BaseException:
            _detach(device)
            raise
        self.disks[name] = disk
        return disk

    def remove_disk(self, name: str, *, remove_image: bool = False) -> None:
        """Thaw, unmount and detach one disk. Never raises."""
        disk = self.disks.pop(name, None)
        if disk is None:
            return
        _teardown(disk.mountpoint, disk.device)
        if remove_image:
            with contextlib.suppress(OSError):
                disk.image.unlink()

    def close(self, remove_images: bool | None = None) -> None:
        """Tear down every disk, then the datastore. Idempotent; never raises."""
        remove = self.remove_images if remove_images is None else remove_images
        for name in reversed(list(self.disks)):
            self.remove_disk(name, remove_image=remove)
        if self._mounted or self.device is not None:
            _teardown(self.path if self._mounted else None, self.device)
            self._mounted = False
            self.device = None
        if remove:
            with contextlib.suppress(OSError):
                self.image.unlink()

    def __enter__(self) -> Datastore:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _run(argv: list[str], timeout: float = 60) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True)
    except FileNotFoundError as exc:
        raise ProviderError(
            f"{argv[0]} not found: install it (util-linux, e2fsprogs, ...)"
        ) from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip()
        raise ProviderError(f"{' '.join(argv)} failed ({exc.returncode}): {detail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProviderError(f"{' '.join(argv)} did not finish within {timeout} s") from exc
    return done.stdout


def _make_sparse(path: Path, size_mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as image:
        image.truncate(size_mib * 1024 * 1024)


def _attach(image: Path) -> str:
    return _run(["losetup", "--find", "--show", str(image)]).strip()


def _mount(device: str, mountpoint: Path, fstype: str) -> None:
    mountpoint.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", fstype, device, str(mountpoint)])
    _MOUNTED.add(mountpoint)


def _teardown(mountpoint: Path | None, device: str | None) -> None:
    """Thaw, unmount (retrying, then lazily) and detach. Never raises."""
    if mountpoint is not None:
        thaw_mount(mountpoint)
        _unmount(mountpoint)
        _MOUNTED.discard(mountpoint)
    if device is not None:
        _detach(device)


def _unmount(mountpoint: Path) -> None:
    for attempt in range(5):
        if _quiet(["umount", str(mountpoint)]) or not os.path.ismount(mountpoint):
            return
        time.sleep(0.1 * (attempt + 1))
    _quiet(["umount", "--lazy", str(mountpoint)])


def _detach(device: str) -> None:
    for attempt in range(3):
        if _quiet(["losetup", "-d", device]):
            return
        time.sleep(0.1 * (attempt + 1))


def _quiet(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
