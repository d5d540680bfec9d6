"""The run log: when each action of an application last ran and how it ended.

``status`` and ``metrics`` answer from it (and from the catalog) without touching the
repository, so they are instant. A run is recorded as ``running`` before it starts and
finished with its outcome; a run whose process died without finishing (SIGKILL, power
loss) reads back as ``interrupted``, also when its pid now belongs to a later process.
Unlike the catalog, the log cannot be rebuilt from the repository: losing it loses the
history of outcomes, not a recovery point.

The file sits beside the catalog (``<app>.runs.sqlite``, mode 600). Each call opens,
uses and closes its own connection; nothing here holds a lock across a run.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cleancut.errors import CatalogError

#: The actions the log records, in the order status shows them.
ACTIONS = ("backup", "forget", "check", "verify")

Outcome = Literal["running", "success", "degraded", "failure", "interrupted"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    app        TEXT NOT NULL,
    action     TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at   REAL,
    outcome    TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    summary    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS runs_app_action ON runs (app, action, started_at);
"""
_SCHEMA_VERSION = 1
_COLUMNS = "run_id, app, action, started_at, ended_at, outcome, pid, summary"


def runs_path(catalog_path: Path, app: str) -> Path:
    """The run log of ``app``: ``<app>.runs.sqlite`` in the catalog's folder."""
    return catalog_path.parent / f"{app}.runs.sqlite"


@dataclass(frozen=True)
class Run:
    """One run of one action."""

    run_id: int
    app: str
    action: str
    started_at: float
    ended_at: float | None
    outcome: Outcome
    pid: int
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    @property
    def finished(self) -> bool:
        return self.outcome not in ("running", "interrupted")

    def started(self) -> datetime:
        return datetime.fromtimestamp(self.started_at, UTC)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "action": self.action,
            "started_at": self.started().isoformat(timespec="seconds"),
            "ended_at": (
                None
                if self.ended_at is None
                else datetime.fromtimestamp(self.ended_at, UTC).isoformat(timespec="seconds")
            ),
            "duration_seconds": self.duration,
            "outcome": self.outcome,
            "pid": self.pid,
            "summary": self.summary,
        }


class RunLog:
    """The SQLite run log at ``path``; the file (mode 600) appears on first write."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self, app: str, action: str, *, at: float | None = None) -> int:
        """Record that ``action`` starts now in this process; its run id."""
        with self._connect(create=True) as db:
            cursor = db.execute(
                "INSERT INTO runs (app, action, started_at, outcome, pid) VALUES (?, ?, ?, ?, ?)",
                (app, action, at if at is not None else _now(), "running", os.getpid()),
            )
            return int(cursor.lastrowid or 0)

    def finish(
        self,
        run_id: int,
        outcome: Outcome,
        summary: Mapping[str, Any],
        *,
        at: float | None = None,
    ) -> None:
        """Record how the run ended and what it did."""
        with self._connect(create=True) as db:
            db.execute(
                "UPDATE runs SET ended_at = ?, outcome = ?, summary = ? WHERE run_id = ?",
                (
                    at if at is not None else _now(),
                    outcome,
                    json.dumps(summary, default=str),
                    run_id,
                ),
            )

    def last(self, app: str, action: str, *, outcomes: tuple[str, ...] = ()) -> Run | None:
        """The newest run of ``action`` (only of these outcomes, when given)."""
        where = "app = ? AND action = ?"
        params: list[object] = [app, action]
        if outcomes:
            where += f" AND outcome IN ({', '.join('?' * len(outcomes))})"
            params.extend(outcomes)
        with self._connect() as db:
            if db is None:
                return None
            row = db.execute(
                f"SELECT {_COLUMNS} FROM runs WHERE {where} ORDER BY started_at DESC, run_id DESC "
                "LIMIT 1",
                params,
            ).fetchone()
        return None if row is None else _run(row)

    def last_success(self, app: str, action: str) -> Run | None:
        """The newest run of ``action`` that did what was asked (a degraded backup did not)."""
        return self.last(app, action, outcomes=("success",))

    def latest_value(self, app: str, key: str) -> float | None:
        """The newest figure ``key`` any finished run recorded in its summary."""
        with self._connect() as db:
            if db is None:
                return None
            row = db.execute(
                "SELECT json_extract(summary, ?) FROM runs WHERE app = ? AND ended_at IS NOT "
                "NULL AND json_extract(summary, ?) IS NOT NULL ORDER BY ended_at DESC LIMIT 1",
                (f"$.{key}", app, f"$.{key}"),
            ).fetchone()
        return None if row is None or not isinstance(row[0], int | float) else float(row[0])

    def counts(self, app: str) -> dict[tuple[str, str], int]:
        """How many runs ended with each outcome, per action: ``{(action, outcome): n}``."""
        with self._connect() as db:
            if db is None:
                return {}
            done = db.execute(
                "SELECT action, outcome, count(*) FROM runs WHERE app = ? AND outcome != "
                "'running' GROUP BY action, outcome",
                (app,),
            ).fetchall()
            running = db.execute(
                "SELECT action, pid, started_at FROM runs WHERE app = ? AND outcome = 'running'",
                (app,),
            ).fetchall()
        counts: dict[tuple[str, str], int] = {}
        for action, outcome, count in done:
            counts[(str(action), str(outcome))] = int(count)
        for action, pid, started_at in running:
            key = (str(action), _settled("running", int(pid), float(started_at), None))
            counts[key] = counts.get(key, 0) + 1
        return counts

    # -- plumbing -------------------------------------------------------------------

    @contextmanager
    def _connect(self, *, create: bool = False) -> Iterator[Any]:
        """A connection in one transaction; None when reading a log that does not exist."""
        if not create and not self.path.exists():
            yield None
            return
        try:
            if create:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            db = sqlite3.connect(self.path, timeout=30)
        except (OSError, sqlite3.Error) as exc:
            raise CatalogError(f"cannot open the run log {self.path}: {exc}") from exc
        try:
            with db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    db.executescript(_SCHEMA)
                    db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                elif version != _SCHEMA_VERSION:
                    raise CatalogError(
                        f"the run log {self.path} has schema version {version}, this "
                        f"cleancut expects {_SCHEMA_VERSION}; move it away (the history "
                        "of outcomes starts again)"
                    )
                yield db
        except sqlite3.Error as exc:
            raise CatalogError(
                f"the run log {self.path} is unreadable ({exc}); move it away (the history "
                "of outcomes starts again; no recovery point is lost)"
            ) from exc
        finally:
            db.close()


def _now() -> float:
    return datetime.now(UTC).timestamp()


def _alive(pid: int, since: float) -> bool:
    """Whether the process that started a run at ``since`` still lives as ``pid``.

    A pid is reused once its process is gone (certainly after a reboot), so a live pid
    counts only if its process started before the run did; the margin covers the
    boot time's whole seconds and the clock ticks of the start time.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start(pid)
    return started is None or started <= since + _START_SLACK


_START_SLACK = 2.0


def _process_start(pid: int) -> float | None:
    """When ``pid`` started (Unix time) by /proc, or None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _settled(outcome: str, pid: int, started_at: float, ended_at: object) -> Outcome:
    """A ``running`` row whose process is gone was interrupted."""
    if outcome == "running" and ended_at is None and not _alive(pid, started_at):
        return "interrupted"
    return outcome  # type: ignore[return-value]


def _run(row: tuple[Any, ...]) -> Run:
    run_id, app, action, started_at, ended_at, outcome, pid, summary = row
    try:
        data = json.loads(summary or "{}")
    except ValueError:
        data = {"unreadable_summary": summary}
    return Run(
        run_id=int(run_id),
        app=str(app),
        action=str(action),
        started_at=float(started_at),
        ended_at=None if ended_at is None else float(ended_at),
        outcome=_settled(str(outcome), int(pid), float(started_at), ended_at),
        pid=int(pid),
        summary=data if isinstance(data, dict) else {"summary": data},
    )
