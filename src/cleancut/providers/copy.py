"""The ``copy`` provider: the volume's tree copied to a staging area on another file system.

Reads work while a file system is frozen, so the volume can be frozen and copied; the
price is that the copy time is write stall (recorded as ``stall_includes_copy``). The
staging area must be on another file system: a copy written into the frozen one would
wait for the thaw, and the guest would wait for itself forever (DESIGN.md §3a).

The copy keeps what the file system holds — extended attributes, ACLs, capabilities, hard
links, holes (:mod:`cleancut.providers.tree`) — and records each source file's stamp, so
the upload may trust size and mtime when no file changed behind them
(:mod:`cleancut.providers.changes`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from cleancut.config.guest import Volume
from cleancut.errors import ProviderError
from cleancut.providers.base import Provider, Snapshot, UploadOptions
from cleancut.providers.changes import ChangeTracker, keeps_nanoseconds
from cleancut.providers.ficlone import filesystem_of
from cleancut.providers.staging import claim_destination, discard, rp_folder, state_file
from cleancut.providers.tree import copy_sparse, copy_tree


class CopyProvider(Provider):
    """Copies the volume's tree to ``<staging>/<rp_id>/<volume>`` on another file system."""

    kind: ClassVar[str] = "copy"
    freezable: ClassVar[bool] = True
    unheld_level: ClassVar[Literal["crash", "none"]] = "none"

    def __init__(self, name: str, volume: Volume, staging: Path) -> None:
        super().__init__(name, volume, staging)
        self._rp_dir: Path | None = None
        self._exact_times = True
        self.changes = ChangeTracker(state_file(self.staging_root, name), str(volume.path))

    @property
    def staging_root(self) -> Path:
        """Where this volume's copies go: the volume's own ``staging``, else the host's."""
        return self.volume.staging or self.staging

    def destination(self, rp_id: str) -> Path:
        """The folder the tree is copied into for recovery point ``rp_id``."""
        return rp_folder(self.staging_root, rp_id) / self.name

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.volume.path), "staging": str(self.staging_root)}

    def writes_to(self) -> Path:
        return self.staging_root

    def check(self) -> None:
        path = self.volume.path
        if not path.is_dir():
            raise ProviderError(f"volume {self.name}: {path} is not a directory")
        if self.staging_root.resolve().is_relative_to(path.resolve()):
            raise ProviderError(
                f"volume {self.name}: staging {self.staging_root} is inside the volume it copies; "
                "set staging (in guest.toml or on the volume) to a folder outside it"
            )
        volume_fs = filesystem_of(path)
        staging_fs = filesystem_of(self.staging_root)
        if self.volume.frozen and staging_fs.major_minor == volume_fs.major_minor:
            raise ProviderError(
                f"volume {self.name}: staging {self.staging_root} is on the volume's own file "
                f"system ({volume_fs.fstype} at {volume_fs.mount_point}); a copy written into a "
                "frozen file system waits for the thaw forever. Set staging (in guest.toml or "
                "on the volume) to a folder on another file system"
            )

    def prepare(self, rp_id: str) -> None:
        dest = self.destination(rp_id)
        self._rp_dir = dest.parent
        claim_destination(self.name, dest)
        try:  # restic compares the copies' mtimes: truncated ones would hide a change
            self._exact_times = keeps_nanoseconds(dest.parent)
        except OSError as exc:
            raise ProviderError(
                f"volume {self.name}: cannot write in staging {dest.parent}: {exc.strerror}"
            ) from exc

    def snapshot(self) -> Snapshot:
        if self._rp_dir is None:
            raise ProviderError(f"volume {self.name}: snapshot() called before prepare()")
        dest = self._rp_dir / self.name
        taken_at, started, taken_ns = time.time(), time.monotonic(), time.time_ns()
        try:
            stats = copy_tree(self.volume.path, dest, copy_sparse)
        except OSError as exc:
            raise ProviderError(
                f"volume {self.name}: copying {exc.filename or self.volume.path} to {dest} "
                f"failed: {exc.strerror}"
            ) from exc
        seconds = time.monotonic() - started
        self.changes.captured(taken_ns, stats.stamps, self._exact_times)
        return Snapshot(
            path=dest,
            layout="tree",
            taken_at=taken_at,
            seconds=seconds,
            details={
                "stall_includes_copy": True,
                "files": stats.files,
                "bytes": stats.bytes,
                "hardlinks": stats.hardlinks,
                "skipped": stats.skipped,
            },
        )

    def upload_options(self, parent: str | None) -> UploadOptions:
        """Size and mtime are trusted only if no source file changed behind them."""
        return self.changes.options(parent)

    def uploaded(self, snapshot_id: str) -> None:
        self.changes.uploaded(snapshot_id)

    def release(self) -> None:
        if self._rp_dir is None:
            return
        dest = self._rp_dir / self.name
        try:
            discard(dest)
        except OSError as exc:
            raise ProviderError(
                f"volume {self.name}: cannot delete the copy {dest}: {exc.strerror}"
            ) from exc
