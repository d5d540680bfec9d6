"""Where providers put their snapshots, and how they take them away again.

Every provider keeps a recovery point's snapshots under ``<root>/<rp_id>/``: the ``copy``
provider in its staging area on another file system, ``btrfs`` and ``reflink`` in a
``.cleancut-snapshots`` folder on the volume's own file system, ``image`` beside the disk
image on its datastore. These helpers name those folders (refusing a recovery point id
that could escape them), claim a new snapshot's place, and delete snapshots, also
read-only ones.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cleancut.errors import ProviderError
from cleancut.providers.ficlone import filesystem_of

_RP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

#: the folder in-place providers and the image provider keep their snapshots in
SNAPSHOT_DIR = ".cleancut-snapshots"

#: the folder, beside the recovery point folders, that keeps what each volume's last upload
#: held (:mod:`cleancut.providers.changes`); its leading dot keeps it apart from any rp id
STATE_DIR = ".cleancut-state"


def rp_folder(root: Path, rp_id: str) -> Path:
    """``root/rp_id``, after checking ``rp_id`` cannot escape ``root``."""
    if not _RP_ID.match(rp_id):
        raise ProviderError(
            f"recovery point id {rp_id!r} cannot name a staging folder: use letters, digits, "
            "'_', '.', ':' and '-' only, starting with a letter or digit"
        )
    return root / rp_id


def state_file(root: Path, name: str) -> Path:
    """The file under ``root`` that records what volume (or image) ``name`` last uploaded."""
    return root / STATE_DIR / f"{name}.json"


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
