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

__all__ = [
    "Mover",
    "ProgressCallback",
    "RepositoryAccess",
    "ResticMover",
    "StoredSnapshot",
    "Upload",
    "parse_tags",
    "redact_url",
    "render_tags",
]
