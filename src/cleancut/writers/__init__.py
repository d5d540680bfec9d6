"""Writers: database adapters that make one database consistent for the cut.

The registry is a table; writers with optional dependencies are imported lazily, so a
host without a PostgreSQL or MariaDB driver can still hold its SQLite databases.
"""

from __future__ import annotations

from typing import Any

from cleancut.config.guest import Database, MariadbDatabase, PostgresqlDatabase
from cleancut.writers.base import Writer


def make_writer(name: str, database: Database) -> Writer[Any]:
    """The writer for ``database.kind``."""
    if isinstance(database, PostgresqlDatabase):
        from cleancut.writers.postgresql import PostgresqlWriter

        return PostgresqlWriter(name, database)
    if isinstance(database, MariadbDatabase):
        from cleancut.writers.mysql import MariadbWriter

        return MariadbWriter(name, database)
    from cleancut.writers.sqlite import SqliteWriter

    return SqliteWriter(name, database)


__all__ = ["Writer", "make_writer"]
