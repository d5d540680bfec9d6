"""The datastore's side of ``snapshot = "external"``: clone a VM's disk image held here.

A hypervisor or a cloud snapshots a VM's disk from outside the VM. In cleancut the VM's
guest config marks the volume ``snapshot = "external"`` and only freezes it; the host that
holds the disk image (the datastore host) declares it under ``[disks.NAME]`` with the
volume it backs, and clones it when the coordinator asks, between the VM's freeze and its
thaw. The clone is the :class:`~cleancut.providers.image.ImageProvider`'s FICLONE, without
a volume of its own to look at: the file system inside the image belongs to the VM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from cleancut.config.guest import DiskImage, Volume
from cleancut.errors import ProviderError
from cleancut.providers.ficlone import filesystem_of, require_reflink
from cleancut.providers.image import ImageProvider


class DiskProvider(ImageProvider):
    """Clones the disk image ``disk.image`` for the volume it backs on another host."""

    kind: ClassVar[str] = "disk"
    freezable: ClassVar[bool] = True
    unheld_level: ClassVar[Literal["crash", "none"]] = "crash"

    def __init__(self, name: str, disk: DiskImage, staging: Path) -> None:
        volume = Volume(path=disk.image, snapshot="image", image=disk.image, staging=disk.staging)
        super().__init__(name, volume, staging)
        self.disk = disk

    def image_path(self) -> Path:
        return self.disk.image

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"image": str(self.disk.image), "backs": self.disk.backs}
        try:
            datastore = filesystem_of(self.disk.image)
        except (OSError, ProviderError) as exc:
            info["error"] = str(exc)
            return info
        info.update(datastore=str(datastore.mount_point), datastore_fstype=datastore.fstype)
        return info

    def check(self) -> None:
        image = self.disk.image
        if not image.is_file():
            raise ProviderError(
                f"disks.{self.name}: disk image {image} does not exist (it backs {self.disk.backs})"
            )
        datastore = filesystem_of(image)
        root = self.clone_root(image)
        root_fs = filesystem_of(root)
        if root_fs.mount_id != datastore.mount_id:
            raise ProviderError(
                f"disks.{self.name}: the clone folder {root} is on {root_fs.mount_point}, not on "
                f"the image's datastore {datastore.mount_point}; FICLONE only works within one "
                "mount: set staging to a folder on the datastore, or remove it"
            )
        require_reflink(image.parent, f"disks.{self.name}: datastore of {image}")
        self._fstype = ""  # the file system inside belongs to the VM, which reports it
