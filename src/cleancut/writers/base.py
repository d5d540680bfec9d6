"""The writer interface: makes one database consistent on disk for the cut (VSS writers' role).

A writer never knows which provider snapshots its volume. ``hold`` runs just before the
freeze and ``release`` right after the thaw; ``abort`` ends a hold from the watchdog's
thread when the guest's deadline passes; ``close`` runs on every path, so a hold is always
released even when a phase fails or the coordinator disappears. A hold must really hold:
the process that takes a database's lock never otherwise opens its files (see
:mod:`cleancut.writers.helper`).

``locations`` tells where the database keeps its files, asked of the running server, so
hello can refuse a database whose WAL or tablespace lies outside every volume of the cut.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Generic, TypeVar

from cleancut.config.guest import MariadbDatabase, PostgresqlDatabase, SqliteDatabase

D = TypeVar("D", SqliteDatabase, PostgresqlDatabase, MariadbDatabase)


class Writer(abc.ABC, Generic[D]):
    """Makes one database consistent for the cut and records its position."""

    #: The cut this writer holds for (the RP id), set at hello; a label may name it.
    cut_id: str | None = None
    #: Whether the hold stops the application's writes (a lock) and so counts into the
    #: host's write stall; PostgreSQL's ``pg_backup_start`` lets writes go on.
    blocks_writes: bool = True

    def __init__(self, name: str, database: D) -> None:
        self.name = name
        self.database: D = database

    @abc.abstractmethod
    def check(self) -> dict[str, Any]:
        """Reach the database and report what hello shows (version, mode). Touches nothing."""

    @abc.abstractmethod
    def locations(self) -> dict[str, Path]:
        """Where the database keeps its files, by what they are ("data directory", "WAL",
        "tablespace spc1"): absolute paths on this host. Called after :meth:`check`."""

    @abc.abstractmethod
    def prepare(self) -> dict[str, Any]:
        """Slow work before the freeze (checkpoint). Returns what it recorded."""

    @abc.abstractmethod
    def hold(self, seconds: float) -> None:
        """Stop the database's writes reaching disk until release (held session), for at most
        ``seconds``: the hold ends by itself then, even if this process is stopped. Taking
        the hold itself must also end within ``seconds`` (or the writer's own lock timeout,
        if shorter), or fail with :class:`~cleancut.errors.WriterError`."""

    @abc.abstractmethod
    def release(self) -> dict[str, Any]:
        """End the hold; returns the recorded position (LSN, binlog position, page count, ...)
        and whatever the restore needs (PostgreSQL's ``backup_label``), JSON-serialisable."""

    @abc.abstractmethod
    def abort(self) -> None:
        """End the hold now, from any thread, without waiting on a busy database; never raises."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release anything still held and disconnect; idempotent, never raises."""
