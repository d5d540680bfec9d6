"""SQLite writer: checkpoint in prepare, ``BEGIN IMMEDIATE`` held through the snapshot."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

from cleancut.errors import WriterError
from cleancut.writers.base import Writer

_BUSY_TIMEOUT_MS = 5000


class SqliteWriter(Writer):
    """Holds a SQLite database's write lock while its volume is snapshotted.

    ``BEGIN IMMEDIATE`` takes the RESERVED lock: readers go on, writers wait (or get
    SQLITE_BUSY), so the files on disk stay a committed state from the hold to the release.
    The lock is taken before the freeze and released after the thaw, so no SQLite I/O
    happens while the file system is frozen.
    """

    def __init__(self, name: str, database: Any) -> None:
        super().__init__(name, database)
        self._conn: sqlite3.Connection | None = None
        self._held = False

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            path = self.database.path
            if not path.is_file():
                raise WriterError(f"sqlite database {self.name}: {path} does not exist")
            try:
                uri = f"file:{path}?mode=rw"
                self._conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000
                )
                self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            except sqlite3.Error as exc:
                raise WriterError(
                    f"sqlite database {self.name}: cannot open {path}: {exc}"
                ) from exc
        return self._conn

    def _query(self, sql: str) -> Any:
        try:
            return self._connect().execute(sql).fetchone()
        except sqlite3.Error as exc:
            raise WriterError(f"sqlite database {self.name}: {sql}: {exc}") from exc

    def check(self) -> dict[str, Any]:
        return {
            "sqlite_version": sqlite3.sqlite_version,
            "journal_mode": self._query("PRAGMA journal_mode")[0],
        }

    def prepare(self) -> dict[str, Any]:
        mode = self._query("PRAGMA journal_mode")[0]
        details: dict[str, Any] = {"journal_mode": mode}
        if mode == "wal":
            busy, log, checkpointed = self._query("PRAGMA wal_checkpoint(TRUNCATE)")
            details["wal_checkpoint"] = {"busy": busy, "log": log, "checkpointed": checkpointed}
        return details

    def hold(self) -> None:
        self._query("BEGIN IMMEDIATE")
        self._held = True

    def release(self) -> dict[str, Any]:
        try:
            return {
                "page_count": self._query("PRAGMA page_count")[0],
                "page_size": self._query("PRAGMA page_size")[0],
                "journal_mode": self._query("PRAGMA journal_mode")[0],
            }
        finally:
            self._end_hold()  # whatever the queries did, the lock goes

    def _end_hold(self) -> None:
        if self._held and self._conn is not None:
            self._held = False
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise WriterError(f"sqlite database {self.name}: ROLLBACK: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error, WriterError):
            self._end_hold()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
