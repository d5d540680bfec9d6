"""The ``copy`` provider: the volume's tree copied to a staging area on another file system.

Reads work while a file system is frozen, so the volume can be frozen and copied; the
price is that the copy time is write stall (recorded as ``stall_includes_copy``). The
staging area must be on another file system: a copy written into the frozen one would
wait for the thaw, and the guest would wait for itself forever (DESIGN.md §3a).

This module also holds the tree walk the ``reflink`` provider reuses, and the staging
folder layout all providers share.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from cleancut.config.guest import Volume
from cleancut.errors import ProviderError
from cleancut.providers.base import Provider, Snapshot
from cleancut.providers.ficlone import filesystem_of

_RP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_IS_ROOT = os.geteuid() == 0

#: the folder in-place providers and the image provider keep their snapshots in
SNAPSHOT_DIR = ".cleancut-snapshots"

#: copies one regular file's content from the first path to the (new) second path
FileCopier = Callable[[Path, Path], None]


def rp_folder(root: Path, rp_id: str) -> Path:
    """``root/rp_id``, after checking ``rp_id`` cannot escape ``root``."""
    if not _RP_ID.match(rp_id):
        raise ProviderError(
            f"recovery point id {rp_id!r} cannot name a staging folder: use letters, digits, "
            "'_', '.', ':' and '-' only, starting with a letter or digit"
        )
    return root / rp_id


def claim_destination(volume: str, dest: Path, remedy: str = "delete it") -> None:
    """Create ``dest``'s folder for a new snapshot; refuse one a previous run left behind."""
    if os.path.lexists(dest):
        raise ProviderError(
            f"volume {volume}: {dest} already exists; a previous run with the same "
            f"recovery point id left it: {remedy}"
        )
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)


def snapshot_root(path: Path, configured: Path | None) -> Path:
    """Where an in-place provider (btrfs, reflink) keeps snapshots of the volume at ``path``.

    ``configured`` (the volume's ``staging``) wins; else ``.cleancut-snapshots`` beside the
    volume when its parent is on the same mount, else inside the volume itself (a volume
    that is a mount point has its parent on another file system).
    """
    if configured is not None:
        return configured
    if filesystem_of(path.parent).mount_id == filesystem_of(path).mount_id:
        return path.parent / SNAPSHOT_DIR
    return path / SNAPSHOT_DIR


@dataclass
class TreeStats:
    """What a tree copy did; goes into the snapshot's details."""

    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


def _copy_metadata(st: os.stat_result, dst: Path) -> None:
    """Owner (when root), mode and times of ``st`` onto ``dst``, without following symlinks."""
    if _IS_ROOT:
        os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_tree(
    src: Path, dst: Path, copy_file: FileCopier, *, skip: frozenset[Path] = frozenset()
) -> TreeStats:
    """Recreate the tree ``src`` at ``dst`` (which must not exist).

    Directories and symlinks are recreated, regular files copied by ``copy_file``; modes,
    times and (as root) owners are kept. Like ``tar --one-file-system`` it stays on
    ``src``'s file system (a staging area mounted inside the volume is never copied into
    itself); paths in ``skip`` are left out too. Sockets, FIFOs and devices are skipped
    and listed, since a backup cannot hold their state.
    """
    stats = TreeStats()
    _copy_dir(src, dst, os.lstat(src), copy_file, skip, stats)
    return stats


def _copy_dir(
    src: Path,
    dst: Path,
    st: os.stat_result,
    copy_file: FileCopier,
    skip: frozenset[Path],
    stats: TreeStats,
) -> None:
    os.mkdir(dst, 0o700)
    with os.scandir(src) as entries:
        children = sorted(entries, key=lambda entry: entry.name)
    for entry in children:
        child, target = Path(entry.path), dst / entry.name
        if child in skip:
            continue
        child_st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(child_st.st_mode):
            if child_st.st_dev != st.st_dev:
                stats.skipped.append(f"{child} (another file system)")
                continue
            _copy_dir(child, target, child_st, copy_file, skip, stats)
            continue
        if stat.S_ISLNK(child_st.st_mode):
            os.symlink(os.readlink(child), target)
        elif stat.S_ISREG(child_st.st_mode):
            copy_file(child, target)
            stats.files += 1
            stats.bytes += child_st.st_size
        else:
            stats.skipped.append(f"{child} (not a file, directory or symlink)")
            continue
        _copy_metadata(child_st, target)
    # directory times last: creating the children changed them
    _copy_metadata(st, dst)


def _copy_content(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst, follow_symlinks=False)


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything under it, also read-only folders; no error if absent."""

    def make_writable(_func: Callable[..., Any], failed: str, _exc: Any) -> None:
        parent = os.path.dirname(failed)
        os.chmod(parent, 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
            shutil.rmtree(failed)
        else:
            os.unlink(failed)

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, onerror=make_writable)
    elif os.path.lexists(path):
        os.unlink(path)


def discard(entry: Path) -> None:
    """Delete one volume's snapshot ``entry`` and then its recovery point folder if that is
    now empty (other volumes of the same recovery point may still have theirs in it)."""
    remove_tree(entry)
    try:
        entry.parent.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


class CopyProvider(Provider):
    """Copies the volume's tree to ``<staging>/<rp_id>/<volume>`` on another file system."""

    kind: ClassVar[str] = "copy"
    freezable: ClassVar[bool] = True
    unheld_level: ClassVar[Literal["crash", "none"]] = "none"

    def __init__(self, name: str, volume: Volume, staging: Path) -> None:
        super().__init__(name, volume, staging)
        self._rp_dir: Path | None = None

    @property
    def staging_root(self) -> Path:
        """Where this volume's copies go: the volume's own ``staging``, else the host's."""
        return self.volume.staging or self.staging

    def destination(self, rp_id: str) -> Path:
        """The folder the tree is copied into for recovery point ``rp_id``."""
        return rp_folder(self.staging_root, rp_id) / self.name

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.volume.path), "staging": str(self.staging_root)}

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

    def snapshot(self) -> Snapshot:
        if self._rp_dir is None:
            raise ProviderError(f"volume {self.name}: snapshot() called before prepare()")
        dest = self._rp_dir / self.name
        taken_at, started = time.time(), time.monotonic()
        try:
            stats = copy_tree(self.volume.path, dest, _copy_content)
        except OSError as exc:
            raise ProviderError(
                f"volume {self.name}: copying {exc.filename or self.volume.path} to {dest} "
                f"failed: {exc.strerror}"
            ) from exc
        return Snapshot(
            path=dest,
            layout="tree",
            taken_at=taken_at,
            seconds=time.monotonic() - started,
            details={
                "stall_includes_copy": True,
                "files": stats.files,
                "bytes": stats.bytes,
                "skipped": stats.skipped,
            },
        )

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
