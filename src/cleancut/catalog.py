"""The catalog: a local SQLite index of an application's recovery points.

The repository is the source of truth (each RP's manifest is stored there, written last);
the catalog only makes listing fast. :meth:`Catalog.rebuild` recreates it from the
repository alone, so losing the file loses nothing.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from cleancut.errors import CatalogError, NotFound
from cleancut.levels import Level
from cleancut.manifest import MANIFEST_FILENAME, MANIFEST_TAG, Manifest
from cleancut.mover.base import Mover

SCHEMA_VERSION = 1
_SHOWN_IDS = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recovery_points (
    rp_id                TEXT PRIMARY KEY,
    app                  TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    level                TEXT NOT NULL,
    group_consistent     INTEGER NOT NULL,
    max_write_stall      REAL,
    quiet_window_seconds REAL,
    size_bytes           INTEGER NOT NULL,
    added_bytes          INTEGER NOT NULL,
    manifest_snapshot    TEXT NOT NULL,
    manifest_json        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recovery_points_app ON recovery_points (app, created_at);
"""

_COLUMNS = (
    "rp_id, app, created_at, level, group_consistent, max_write_stall, "
    "quiet_window_seconds, size_bytes, added_bytes, manifest_snapshot, manifest_json"
)


def default_catalog_path(app: str) -> Path:
    """``$XDG_STATE_HOME/cleancut/<app>.catalog.sqlite`` (``~/.local/state`` by default)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "cleancut" / f"{app}.catalog.sqlite"


@dataclass(frozen=True)
class CatalogEntry:
    """One recovery point as the catalog lists it: the summary columns and the manifest."""

    rp_id: str
    app: str
    created_at: datetime
    level: Level
    group_consistent: bool
    max_write_stall: float | None
    quiet_window_seconds: float | None
    size_bytes: int
    added_bytes: int
    manifest_snapshot: str
    manifest: Manifest


class Catalog:
    """The SQLite index at ``path``; the file (mode 600) and its folders appear on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, manifest: Manifest, manifest_snapshot: str) -> None:
        """Record a committed RP whose manifest is stored in ``manifest_snapshot``.

        Adding the same RP again replaces its row (a retried commit is harmless).
        """
        with self._connect() as db:
            db.execute(_insert_sql(), _row(manifest, manifest_snapshot))

    def list(self, app: str) -> list[CatalogEntry]:
        """The application's recovery points, oldest first (newest last)."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM recovery_points WHERE app = ? ORDER BY created_at, rp_id",
                (app,),
            ).fetchall()
        return [self._entry(row) for row in rows]

    def count(self, app: str) -> int:
        """How many recovery points the application has."""
        with self._connect() as db:
            row = db.execute(
                "SELECT count(*) FROM recovery_points WHERE app = ?", (app,)
            ).fetchone()
        return int(row[0])

    def newest(self, app: str, *, application_level: bool = False) -> CatalogEntry | None:
        """The newest RP, or the newest application-level, group-consistent one; one row
        read however many the catalog holds."""
        where = "app = ?"
        if application_level:
            where += " AND level = 'application' AND group_consistent = 1"
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM recovery_points WHERE {where} "
                "ORDER BY created_at DESC, rp_id DESC LIMIT 1",
                (app,),
            ).fetchone()
        return None if row is None else self._entry(row)

    def get(self, app: str, rp_id: str) -> CatalogEntry:
        """One RP by its id, a unique prefix of it, or ``latest``."""
        entries = self.list(app)
        if rp_id == "latest":
            if not entries:
                raise NotFound(f"application {app!r} has no recovery points in {self.path}")
            return entries[-1]
        exact = [entry for entry in entries if entry.rp_id == rp_id]
        matches = exact or [entry for entry in entries if entry.rp_id.startswith(rp_id)]
        if len(matches) == 1:
            return matches[0]
        known = [entry.rp_id for entry in entries]
        if matches:
            ids = ", ".join(entry.rp_id for entry in matches[:_SHOWN_IDS])
            raise NotFound(f"recovery point {rp_id!r} of {app!r} is ambiguous: matches {ids}")
        shown = ", ".join(known[-_SHOWN_IDS:]) or "none"
        more = f" (newest {_SHOWN_IDS} of {len(known)})" if len(known) > _SHOWN_IDS else ""
        raise NotFound(
            f"no recovery point {rp_id!r} for application {app!r}; known ids{more}: {shown}. "
            "If the catalog is stale, run `cleancut catalog rebuild`"
        )

    def remove(self, app: str, rp_ids: Sequence[str]) -> None:
        """Drop these RPs' rows in one transaction: ``points`` stops listing them at once."""
        with self._connect() as db:
            db.executemany(
                "DELETE FROM recovery_points WHERE app = ? AND rp_id = ?",
                [(app, rp_id) for rp_id in rp_ids],
            )

    def rebuild(self, app: str, mover: Mover) -> int:
        """Recreate the application's rows from the manifests in the repository; their count.

        Every manifest is read before the catalog is touched, so a failure leaves it as
        it was. Snapshots of an RP whose manifest was never written do not appear.
        """
        rows = []
        for snapshot in mover.find({MANIFEST_TAG: "", "app": app}):
            data = mover.read_file(snapshot.snapshot_id, MANIFEST_FILENAME)
            try:
                manifest = Manifest.model_validate_json(data)
            except ValidationError as exc:
                raise CatalogError(
                    f"manifest snapshot {snapshot.snapshot_id} of {app!r} is not a valid "
                    f"manifest ({exc.error_count()} errors: {exc.errors()[0]['msg']}); "
                    f"remove it with `restic forget {snapshot.snapshot_id}` or repair it"
                ) from exc
            if manifest.app == app:
                rows.append(_row(manifest, snapshot.snapshot_id))
        with self._connect() as db:
            db.execute("DELETE FROM recovery_points WHERE app = ?", (app,))
            db.executemany(_insert_sql(), rows)
        return len({row[0] for row in rows})

    # -- plumbing -------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one transaction, committed on success and always closed."""
        try:
            self._create_file()
            db = sqlite3.connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise CatalogError(f"cannot open the catalog {self.path}: {exc}") from exc
        try:
            with db:
                self._ensure_schema(db)
                yield db
        except sqlite3.Error as exc:
            raise CatalogError(
                f"the catalog {self.path} is unreadable ({exc}); move it away and run "
                "`cleancut catalog rebuild` to recreate it from the repository"
            ) from exc
        finally:
            db.close()

    def _create_file(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)

    def _ensure_schema(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise CatalogError(
                f"the catalog {self.path} has schema version {version}, this cleancut "
                f"expects {SCHEMA_VERSION}; move it away and run `cleancut catalog rebuild`"
            )

    def _entry(self, row: tuple[object, ...]) -> CatalogEntry:
        try:
            manifest = Manifest.model_validate_json(str(row[10]))
        except ValidationError as exc:
            raise CatalogError(
                f"the catalog {self.path} holds an unreadable manifest for {row[0]}; "
                "run `cleancut catalog rebuild`"
            ) from exc
        return CatalogEntry(
            rp_id=manifest.rp_id,
            app=manifest.app,
            created_at=manifest.created_at,
            level=manifest.level,
            group_consistent=manifest.group_consistent,
            max_write_stall=manifest.max_write_stall,
            quiet_window_seconds=manifest.quiet_window_seconds,
            size_bytes=manifest.size,
            added_bytes=manifest.added,
            manifest_snapshot=str(row[9]),
            manifest=manifest,
        )


def _insert_sql() -> str:
    return f"INSERT OR REPLACE INTO recovery_points ({_COLUMNS}) VALUES ({', '.join('?' * 11)})"


def _row(manifest: Manifest, manifest_snapshot: str) -> tuple[object, ...]:
    return (
        manifest.rp_id,
        manifest.app,
        _utc_text(manifest.created_at),
        manifest.level,
        int(manifest.group_consistent),
        manifest.max_write_stall,
        manifest.quiet_window_seconds,
        manifest.size,
        manifest.added,
        manifest_snapshot,
        manifest.model_dump_json(),
    )


def _utc_text(moment: datetime) -> str:
    """A sortable UTC timestamp (naive times are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
