"""The ``image`` provider: one FICLONE of the disk image that backs the volume.

The volume is a file system on a loop device whose backing file (the "disk image") lives
on a datastore — another file system, the hypervisor's or cloud's view of a VM disk. The
volume is frozen, the image cloned on the datastore in milliseconds, the volume thawed:
a file-system-consistent image of the whole disk, as clouds and hypervisors make them.

The clone must be on the image's own mount (FICLONE works only there) and never on the
volume's file system, which is frozen while the clone is made (DESIGN.md §3a).

The clone is a new file every time, and a freeze writes to the image (its journal and
superblock; measured: the image's mtime moves at each freeze), so the upload reads the
whole image each time anyway. The provider therefore keeps the default upload options:
restic compares inode and ctime too and never trusts the clone's mtime; deduplication keeps
what is stored to the changed chunks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from cleancut.config.guest import Volume
from cleancut.errors import ProviderError
from cleancut.providers.base import Provider, Snapshot
from cleancut.providers.ficlone import clone_fd, filesystem_of, require_reflink
from cleancut.providers.staging import SNAPSHOT_DIR, discard, rp_folder
from cleancut.system.mounts import MountInfo, loop_backing_file


class ImageProvider(Provider):
    """Clones the disk image backing the volume, on its datastore, with one FICLONE."""

    kind: ClassVar[str] = "image"
    freezable: ClassVar[bool] = True
    unheld_level: ClassVar[Literal["crash", "none"]] = "crash"

    def __init__(self, name: str, volume: Volume, staging: Path) -> None:
        super().__init__(name, volume, staging)
        self._fstype = ""
        self._image: Path | None = None
        self._dest: Path | None = None
        self._rp_dir: Path | None = None
        self._src_fd = -1
        self._dst_fd = -1

    # -- where things are -------------------------------------------------------------

    def image_path(self) -> Path:
        """The disk image: ``volume.image``, else the backing file of the volume's loop device."""
        fs = filesystem_of(self.volume.path)
        backing = loop_backing_file(fs.source, fs.major_minor)
        if self.volume.image is not None:
            image = self.volume.image
            if backing is not None and backing.exists() and not _same_file(backing, image):
                raise ProviderError(
                    f"volume {self.name}: image = {image}, but {fs.mount_point} is mounted from "
                    f"{fs.source}, backed by {backing}; fix image in guest.toml or remove it"
                )
            return image
        if backing is None:
            raise ProviderError(
                f"volume {self.name}: {fs.mount_point} is mounted from {fs.source}, not from a "
                'loop device; set image = "/path/to/disk.img" on the volume, or use '
                'snapshot = "copy"'
            )
        return backing

    def clone_root(self, image: Path) -> Path:
        """Where clones go: the volume's ``staging``, else ``.cleancut-snapshots`` by the image."""
        return self.volume.staging or image.parent / SNAPSHOT_DIR

    def destination(self, image: Path, rp_id: str) -> Path:
        """The clone's path for recovery point ``rp_id``."""
        # named after the image, unique in its folder: two hosts may both call a volume "data"
        return rp_folder(self.clone_root(image), rp_id) / image.name

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"path": str(self.volume.path)}
        try:
            info["fstype"] = filesystem_of(self.volume.path).fstype
            image = self.image_path()
            datastore = filesystem_of(image)
        except (OSError, ProviderError) as exc:
            info["error"] = str(exc)
            return info
        info.update(image=str(image), datastore=str(datastore.mount_point))
        info["datastore_fstype"] = datastore.fstype
        return info

    # -- the provider interface -------------------------------------------------------

    def writes_to(self) -> Path:
        return self.clone_root(self.image_path())

    def check(self) -> None:
        image = self.image_path()
        if not image.is_file():
            raise ProviderError(f"volume {self.name}: disk image {image} does not exist")
        volume_fs = filesystem_of(self.volume.path)
        datastore = filesystem_of(image)
        root = self.clone_root(image)
        self._check_clone_root(root, volume_fs, datastore)
        require_reflink(
            image.parent,
            f"volume {self.name}: datastore of {image}",
        )
        self._fstype = volume_fs.fstype

    def _check_clone_root(self, root: Path, volume_fs: MountInfo, datastore: MountInfo) -> None:
        root_fs = filesystem_of(root)
        if root_fs.major_minor == volume_fs.major_minor:
            raise ProviderError(
                f"volume {self.name}: the clone folder {root} is inside the volume's own file "
                f"system ({volume_fs.fstype} at {volume_fs.mount_point}), which is frozen while "
                "the clone is made: the clone would wait for the thaw forever. Put staging on "
                f"the datastore ({datastore.mount_point})"
            )
        if root_fs.mount_id != datastore.mount_id:
            raise ProviderError(
                f"volume {self.name}: the clone folder {root} is on {root_fs.mount_point}, not "
                f"on the image's datastore {datastore.mount_point}; FICLONE only works within "
                "one mount: set staging to a folder on the datastore, or remove it"
            )

    def prepare(self, rp_id: str) -> None:
        self._close()
        self.check()
        image = self.image_path()
        dest = self.destination(image, rp_id)
        self._image, self._rp_dir = image, dest.parent
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._src_fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
            self._dst_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self._dest = dest  # ours to delete only once we created it
        except OSError as exc:
            self._close()
            raise ProviderError(
                f"volume {self.name}: cannot open {exc.filename}: {exc.strerror}"
            ) from exc

    def snapshot(self) -> Snapshot:
        if self._dest is None or self._dst_fd < 0 or self._src_fd < 0:
            raise ProviderError(f"volume {self.name}: snapshot() called before prepare()")
        taken_at, started = time.time(), time.monotonic()
        try:
            clone_fd(self._src_fd, self._dst_fd, self._dest)
            seconds = time.monotonic() - started
            # the clone carries the image's times, so a restored image has them too
            source = os.fstat(self._src_fd)
            os.utime(self._dst_fd, ns=(source.st_atime_ns, source.st_mtime_ns))
        finally:
            self._close()
        return Snapshot(
            path=self._dest,
            layout="file",
            taken_at=taken_at,
            seconds=seconds,
            details={"image": str(self._image), "fstype": self._fstype},
        )

    def release(self) -> None:
        self._close()
        if self._dest is None:
            return
        try:
            discard(self._dest)
        except OSError as exc:
            raise ProviderError(
                f"volume {self.name}: cannot delete the clone {self._dest}: {exc.strerror}"
            ) from exc

    def _close(self) -> None:
        for fd in (self._src_fd, self._dst_fd):
            if fd >= 0:
                os.close(fd)
        self._src_fd = self._dst_fd = -1


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
