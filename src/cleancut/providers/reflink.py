"""The ``reflink`` provider: FICLONE of every file of the volume's tree, in its own file system.

Each file is cloned atomically, but the tree as a whole is not: the result is consistent
only while hooks and writers hold every write to the tree (level ``none`` otherwise).
The clones are written inside the volume's file system, so it must **not** be frozen
(the clones would wait for the thaw forever; DESIGN.md §3a). FICLONE keeps holes; the
shared tree walk keeps extended attributes, ACLs, capabilities and hard links, and records
each source file's stamp for the upload (:mod:`cleancut.providers.changes`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from cleancut.config.guest import Volume
from cleancut.errors import ProviderError
from cleancut.providers.base import Provider, Snapshot, UploadOptions
from cleancut.providers.changes import ChangeTracker
from cleancut.providers.ficlone import clone_file, filesystem_of, require_reflink
from cleancut.providers.staging import (
    claim_destination,
    discard,
    rp_folder,
    snapshot_root,
    state_file,
)
from cleancut.providers.tree import copy_tree


def _clone(src: Path, dst: Path) -> None:
    clone_file(src, dst)


class ReflinkProvider(Provider):
    """Clones the volume's tree into ``<root>/<rp_id>/<volume>`` on the same mount."""

    kind: ClassVar[str] = "reflink"
    freezable: ClassVar[bool] = False
    unheld_level: ClassVar[Literal["crash", "none"]] = "none"

    def __init__(self, name: str, volume: Volume, staging: Path) -> None:
        super().__init__(name, volume, staging)
        self._dest: Path | None = None
        self._changes: ChangeTracker | None = None

    def snapshots_root(self) -> Path:
        """The folder, on the volume's own mount, that holds this volume's clones."""
        return snapshot_root(self.volume.path, self.volume.staging)

    def destination(self, rp_id: str) -> Path:
        """The cloned tree for recovery point ``rp_id``."""
        return rp_folder(self.snapshots_root(), rp_id) / self.name

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"path": str(self.volume.path)}
        try:
            info["fstype"] = filesystem_of(self.volume.path).fstype
        except (OSError, ProviderError) as exc:
            info["error"] = str(exc)
        return info

    def writes_to(self) -> Path:
        return self.snapshots_root()

    def check(self) -> None:
        path = self.volume.path
        if not path.is_dir():
            raise ProviderError(f"volume {self.name}: {path} is not a directory")
        fs = filesystem_of(path)
        root = self.snapshots_root()
        if filesystem_of(root).mount_id != fs.mount_id:
            raise ProviderError(
                f"volume {self.name}: staging {root} is not on the volume's mount "
                f"({fs.fstype} at {fs.mount_point}); FICLONE only works within one mount: "
                "set staging to a folder on it, or remove it"
            )
        require_reflink(path, f"volume {self.name} ({path})")

    def prepare(self, rp_id: str) -> None:
        self.check()
        dest = self.destination(rp_id)
        claim_destination(self.name, dest)
        self._dest = dest
        root = self.snapshots_root()
        self._changes = ChangeTracker(state_file(root, self.name), str(self.volume.path))

    def snapshot(self) -> Snapshot:
        if self._dest is None:
            raise ProviderError(f"volume {self.name}: snapshot() called before prepare()")
        skip = frozenset({self._dest.parent.parent})  # the snapshots root, if inside the tree
        taken_at, started, taken_ns = time.time(), time.monotonic(), time.time_ns()
        try:
            stats = copy_tree(self.volume.path, self._dest, _clone, skip=skip)
        except OSError as exc:
            raise ProviderError(
                f"volume {self.name}: cloning {exc.filename or self.volume.path} to "
                f"{self._dest} failed: {exc.strerror}"
            ) from exc
        seconds = time.monotonic() - started
        if self._changes is not None:
            self._changes.captured(taken_ns, stats.stamps)
        return Snapshot(
            path=self._dest,
            layout="tree",
            taken_at=taken_at,
            seconds=seconds,
            details={
                "files": stats.files,
                "bytes": stats.bytes,
                "hardlinks": stats.hardlinks,
                "skipped": stats.skipped,
            },
        )

    def upload_options(self, parent: str | None) -> UploadOptions:
        """Size and mtime are trusted only if no source file changed behind them."""
        if self._changes is None:
            return super().upload_options(parent)
        return self._changes.options(parent)

    def uploaded(self, snapshot_id: str) -> None:
        if self._changes is not None:
            self._changes.uploaded(snapshot_id)

    def release(self) -> None:
        if self._dest is None:
            return
        try:
            discard(self._dest)
        except OSError as exc:
            raise ProviderError(
                f"volume {self.name}: cannot delete the clone {self._dest}: {exc.strerror}"
            ) from exc
