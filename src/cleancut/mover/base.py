"""The mover interface: moves snapshots into the backup repository and back.

Built on restic today (:mod:`cleancut.mover.restic`); kopia or another tool would be a
second implementation of the same small surface.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

#: called with progress figures: {"percent", "bytes_done", "total_bytes", "files_done", ...}
ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RepositoryAccess:
    """Where the repository is and the password that opens it; neither is ever put on a
    command line (a URL may hold credentials: ``rest:https://user:pass@host/``)."""

    url: str
    password: str

    def __repr__(self) -> str:
        return f"RepositoryAccess(url={self.url!r}, password=***)"


@dataclass(frozen=True)
class Upload:
    """The result of one backup into the repository."""

    snapshot_id: str
    bytes_processed: int
    bytes_added: int
    files: int
    seconds: float
    #: of ``files``: new paths, changed files (read again), unmodified (equal to the parent)
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0


@dataclass(frozen=True)
class StoredSnapshot:
    """A snapshot found in the repository."""

    snapshot_id: str
    time: datetime
    host: str
    tags: dict[str, str]
    paths: list[str]


@dataclass(frozen=True)
class RepositoryCheck:
    """What the repository tool's own check found: ``ok`` False when it reported damage
    (or could not finish); ``output`` is the tail of what it printed."""

    ok: bool
    seconds: float
    output: list[str]
    read_data_subset: str | None = None


class Mover(abc.ABC):
    """Moves data into the repository and back."""

    @abc.abstractmethod
    def ensure_repository(self) -> bool:
        """Initialise the repository if it does not exist; True if it was created."""

    @abc.abstractmethod
    def backup(
        self,
        source: Path,
        *,
        host: str,
        tags: dict[str, str],
        progress: ProgressCallback | None = None,
        parent: str | None = None,
        ignore_inode: bool = False,
        ignore_ctime: bool = False,
    ) -> Upload:
        """Back up a file or a tree; the repository stores it relative to ``source``.

        ``parent`` names the resource's previous snapshot: a file whose size, mtime, inode
        and ctime all match it is taken from it unread. ``ignore_inode`` / ``ignore_ctime``
        drop those two from the comparison; only the snapshot's provider can tell when that
        is safe (:meth:`cleancut.providers.base.Provider.upload_options`).
        """

    @abc.abstractmethod
    def backup_bytes(
        self, data: bytes, filename: str, *, host: str, tags: dict[str, str]
    ) -> Upload:
        """Store ``data`` as one file (used for the manifest, written last)."""

    @abc.abstractmethod
    def describe_backup_bytes(self, filename: str, host: str, tags: Mapping[str, str]) -> list[str]:
        """The command :meth:`backup_bytes` would run, for ``--dry-run``; no secrets in it."""

    @abc.abstractmethod
    def preview_backup(self, source: Path, host: str, tags: Mapping[str, str]) -> str:
        """The command :meth:`backup` of ``source`` would run, as one shell line with its
        working folder, for ``--dry-run``; no secrets in it."""

    @abc.abstractmethod
    def describe_init(self) -> list[str]:
        """The command that would initialise the repository, for ``--dry-run``."""

    @abc.abstractmethod
    def find(self, tags: dict[str, str]) -> list[StoredSnapshot]:
        """The snapshots carrying all of ``tags``."""

    @abc.abstractmethod
    def read_file(self, snapshot_id: str, filename: str) -> bytes:
        """The contents of one file of a snapshot."""

    @abc.abstractmethod
    def forget(self, snapshot_ids: Sequence[str]) -> None:
        """Remove these snapshots from the repository, in one call (their data stays
        until :meth:`prune`)."""

    @abc.abstractmethod
    def prune(self) -> None:
        """Reclaim the space no snapshot refers to any more."""

    @abc.abstractmethod
    def repository_size(self) -> int:
        """The bytes the repository stores (after deduplication and compression)."""

    @abc.abstractmethod
    def check(self, read_data_subset: str | None = None) -> RepositoryCheck:
        """Verify the repository's structure and, with ``read_data_subset`` (``5%``,
        ``1/10`` or ``500M``), read back that part of its data. Damage found is a result,
        not an error; a repository that cannot be opened or is locked raises."""

    @abc.abstractmethod
    def snapshot_sizes(self, snapshot_ids: Sequence[str]) -> dict[str, int]:
        """Per snapshot, the bytes its backup processed (:attr:`Upload.bytes_processed`):
        what a recovery point's manifest recorded for the member, so the two can be
        compared. Keys are the ids as given; an id the repository lacks is left out."""

    @abc.abstractmethod
    def restore(
        self, snapshot_id: str, target: Path, *, progress: ProgressCallback | None = None
    ) -> None:
        """Restore a snapshot's contents into ``target``."""
