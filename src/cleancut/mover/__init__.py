"""Movers: move snapshots into the backup repository and back (restic today)."""

from __future__ import annotations

from cleancut.mover.base import (
    Mover,
    ProgressCallback,
    RepositoryAccess,
    StoredSnapshot,
    Upload,
)
from cleancut.mover.restic import ResticMover, parse_tags, redact_url, render_tags

#: The movers by name; restic is the one there is today (kopia would be a second).
MOVERS: dict[str, type[ResticMover]] = {"restic": ResticMover}


def make_mover(access: RepositoryAccess, kind: str = "restic") -> Mover:
    """The mover that moves snapshots into the repository at ``access``."""
    return MOVERS[kind](access)


__all__ = [
    "MOVERS",
    "Mover",
    "ProgressCallback",
    "RepositoryAccess",
    "ResticMover",
    "StoredSnapshot",
    "Upload",
    "make_mover",
    "parse_tags",
    "redact_url",
    "render_tags",
]
