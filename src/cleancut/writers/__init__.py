"""Writers: database adapters that make one database consistent for the cut.

The registry is a table; writers with optional dependencies are imported lazily.
"""

from __future__ import annotations

from cleancut.config.guest import Database
from cleancut.writers.base import Writer


def make_writer(name: str, database: Database) -> Writer:
    """The writer for ``database.kind``."""
    if database.kind == "sqlite":
        from cleancut.writers.sqlite import SqliteWriter

        return SqliteWriter(name, database)
    raise ValueError(f"no writer for database kind {database.kind!r}")  # pragma: no cover


__all__ = ["Writer", "make_writer"]
