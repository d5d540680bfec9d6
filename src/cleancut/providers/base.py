"""The snapshot provider interface: how a point-in-time image of one volume is made.

A provider never knows about databases or hooks (that is the writers' axis); the guest
agent composes them. ``snapshot()`` runs while the volume's file system may be frozen,
so it must not write inside that file system, import modules or log to disk.

A provider also knows what its snapshots are made of, so it decides how the mover may
compare a snapshot with the previous one (:meth:`Provider.upload_options`), and it is told
which repository snapshot each upload became (:meth:`Provider.uploaded`). The guest calls,
per volume, after the thaw::

    options = provider.upload_options(parent)          # parent: the previous snapshot id
    upload = mover.backup(path, ..., parent=options.parent,
                          ignore_inode=options.ignore_inode,
                          ignore_ctime=options.ignore_ctime)
    provider.uploaded(upload.snapshot_id)              # a ProviderError here is a warning
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from cleancut.config.guest import Volume


@dataclass(frozen=True)
class UploadOptions:
    """How the mover may use the previous snapshot of a volume when it uploads a new one.

    Without the ignore flags the mover skips only files whose size, mtime, inode and ctime
    all match the parent (always correct; for a new copy or clone it means every file is
    read). With them it trusts size and mtime alone, which only the provider can vouch for.
    ``reason`` says why, for the upload report.
    """

    parent: str | None
    ignore_inode: bool = False
    ignore_ctime: bool = False
    reason: str = ""


@dataclass
class Snapshot:
    """A point-in-time image of a volume, ready to be uploaded."""

    path: Path
    layout: Literal["file", "tree"]
    taken_at: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


class Provider(abc.ABC):
    """Makes point-in-time images of one volume."""

    #: the ``snapshot =`` value that selects this provider
    kind: ClassVar[str]
    #: whether the volume's file system may be frozen while this provider snapshots it
    freezable: ClassVar[bool]
    #: the level the snapshot gives with no freeze and no hold: crash (atomic) or none
    unheld_level: ClassVar[Literal["crash", "none"]]

    def __init__(self, name: str, volume: Volume, staging: Path) -> None:
        self.name = name
        self.volume = volume
        self.staging = staging

    def describe(self) -> dict[str, Any]:
        """What hello reports about this volume (image path, file system type, ...)."""
        return {}

    @abc.abstractmethod
    def writes_to(self) -> Path:
        """The folder this provider writes its snapshots into. It must not lie on a file
        system the host freezes: the snapshot would wait for the thaw forever."""

    @abc.abstractmethod
    def check(self) -> None:
        """Refuse early (ProviderError) what cannot work: no reflink support, staging inside
        the frozen file system, not a subvolume. Runs at hello, before anything is touched."""

    @abc.abstractmethod
    def prepare(self, rp_id: str) -> None:
        """Slow set-up before the freeze: create staging folders, open what snapshot needs."""

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """Make the point-in-time image. Runs inside the freeze: keep it short and in-memory."""

    @abc.abstractmethod
    def release(self) -> None:
        """Delete the local snapshot; safe to call more than once and after a failure."""

    def upload_options(self, parent: str | None) -> UploadOptions:
        """How the snapshot just taken may be compared with ``parent`` (the volume's previous
        repository snapshot) when it is uploaded.

        By default restic compares inode and ctime too: right for snapshots that keep the
        source's inodes and ctimes (btrfs), and for those that are read in full anyway.
        """
        return UploadOptions(parent, reason="restic compares size, mtime, inode and ctime")

    def uploaded(self, snapshot_id: str) -> None:
        """The snapshot just taken is now repository snapshot ``snapshot_id``.

        Called after each successful upload; providers that vouch for size and mtime
        record here what the upload held. Raises ProviderError if that record cannot be
        kept (the next upload then reads every file): report it, do not fail the upload.
        By default there is nothing to record.
        """
        return None
