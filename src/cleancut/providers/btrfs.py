"""The ``btrfs`` provider: a read-only snapshot of the volume's btrfs subvolume.

The snapshot is atomic (crash-consistent on its own) and made inside the same file
system, so the volume must **not** be frozen: the snapshot's own metadata writes would
wait for the thaw, and the guest would wait for itself forever (DESIGN.md §3a).
Application consistency comes from hooks and writers holding the writes instead.

A snapshot keeps the subvolume's inode numbers and ctimes, so restic's own comparison
with the previous snapshot (size, mtime, inode, ctime) skips exactly the unchanged files:
the provider keeps the default upload options, never the ignore flags.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from cleancut.config.guest import Volume
from cleancut.errors import ProviderError
from cleancut.providers.base import Provider, Snapshot
from cleancut.providers.ficlone import filesystem_of
from cleancut.providers.staging import claim_destination, rp_folder, snapshot_root

#: the inode number of every btrfs subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID)
SUBVOLUME_INODE = 256
_TIMEOUT = 120.0


class BtrfsProvider(Provider):
    """``btrfs subvolume snapshot -r`` of the volume into ``.cleancut-snapshots``."""

    kind: ClassVar[str] = "btrfs"
    freezable: ClassVar[bool] = False
    unheld_level: ClassVar[Literal["crash", "none"]] = "crash"

    def __init__(self, name: str, volume: Volume, staging: Path) -> None:
        super().__init__(name, volume, staging)
        self._btrfs = ""
        self._dest: Path | None = None

    def snapshots_root(self) -> Path:
        """The folder (on the volume's btrfs file system) that holds this volume's snapshots."""
        return snapshot_root(self.volume.path, self.volume.staging)

    def destination(self, rp_id: str) -> Path:
        """The snapshot subvolume for recovery point ``rp_id``: ``<root>/<rp_id>-<volume>``."""
        folder = rp_folder(self.snapshots_root(), rp_id)
        return folder.with_name(f"{folder.name}-{self.name}")

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.volume.path), "fstype": "btrfs", "subvolume": True}

    def writes_to(self) -> Path:
        return self.snapshots_root()

    def check(self) -> None:
        path = self.volume.path
        fs = filesystem_of(path)
        if fs.fstype != "btrfs":
            raise ProviderError(
                f"volume {self.name}: {path} is on {fs.fstype} ({fs.mount_point}), not btrfs; "
                'use snapshot = "image", "copy" or "reflink"'
            )
        if not path.is_dir() or os.stat(path).st_ino != SUBVOLUME_INODE:
            raise ProviderError(
                f"volume {self.name}: {path} is not a btrfs subvolume; create one with "
                "`btrfs subvolume create` and move the data into it"
            )
        root = self.snapshots_root()
        if filesystem_of(root).major_minor != fs.major_minor:
            raise ProviderError(
                f"volume {self.name}: snapshot folder {root} is not on the volume's btrfs file "
                f"system ({fs.mount_point}); set staging to a folder on it"
            )
        self._btrfs = shutil.which("btrfs") or ""
        if not self._btrfs:
            raise ProviderError(
                f"volume {self.name}: the btrfs command is not installed (apt install btrfs-progs)"
            )

    def prepare(self, rp_id: str) -> None:
        self.check()
        dest = self.destination(rp_id)
        claim_destination(self.name, dest, "delete it with `btrfs subvolume delete`")
        self._dest = dest

    def snapshot(self) -> Snapshot:
        if self._dest is None or not self._btrfs:
            raise ProviderError(f"volume {self.name}: snapshot() called before prepare()")
        taken_at, started = time.time(), time.monotonic()
        self._run("snapshot", "-r", str(self.volume.path), str(self._dest))
        return Snapshot(
            path=self._dest,
            layout="tree",
            taken_at=taken_at,
            seconds=time.monotonic() - started,
            details={"fstype": "btrfs", "readonly": True},
        )

    def release(self) -> None:
        if self._dest is None or not os.path.lexists(self._dest):
            return
        self._run("delete", str(self._dest))

    def _run(self, *args: str) -> None:
        argv = [self._btrfs or "btrfs", "subvolume", *args]
        try:
            subprocess.run(
                argv,
                check=True,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT,
                stdin=subprocess.DEVNULL,  # stdin carries the cut protocol: never share it
            )
        except subprocess.CalledProcessError as exc:
            raise ProviderError(
                f"volume {self.name}: `{' '.join(argv)}` failed: {exc.stderr.strip()}"
            ) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProviderError(f"volume {self.name}: `{' '.join(argv)}` failed: {exc}") from exc
