"""A database server started on restored files: the restore step and the restore drill.

After a restore, each database's files are made ready to start with no manual step
(:meth:`DatabaseServer.prepare_restored`: PostgreSQL's ``backup_label`` goes back into its
data directory, a stale pid file goes), and ``cleancut verify`` starts the server in a
sandbox — its own run directory for sockets, pid and log, a free TCP port on 127.0.0.1,
run as the owner of the data directory — measures how long recovery took, runs the
database's built-in checks and gives the application's checks a connection URI.

Tests use the same classes to create fresh servers (:meth:`DatabaseServer.initialise`),
so the code that starts a restored server is the code the tests exercise.
"""

from __future__ import annotations

import abc
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class CheckResult:
    """One check's outcome: its name, whether it passed, and what it printed or found."""

    name: str
    ok: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class DatabaseServer(abc.ABC):
    """One server on one data directory, started and stopped by cleancut.

    ``rundir`` holds the server's socket(s), pid file and log; it is created (owned by the
    data directory's owner) if missing. ``port`` defaults to a free one.
    """

    kind: str

    def __init__(self, datadir: Path, rundir: Path, *, port: int | None = None) -> None:
        self.datadir = datadir
        self.rundir = rundir
        self.port = port if port is not None else free_port()

    @classmethod
    @abc.abstractmethod
    def initialise(cls, datadir: Path, rundir: Path, *, owner: str) -> DatabaseServer:
        """Create a new, empty database cluster in ``datadir`` owned by the system user
        ``owner`` (tests and demos); the server is not started."""

    @abc.abstractmethod
    def prepare_restored(self, details: dict[str, Any]) -> list[str]:
        """The writer's restore step on restored files, from what its ``release`` recorded
        (the manifest's writer details); returns one line per thing it did."""

    @abc.abstractmethod
    def start(self, timeout: float = 120.0) -> float:
        """Start the server and wait until it answers; returns the seconds that took.
        Raises :class:`~cleancut.errors.CleancutError` naming the log on failure."""

    @abc.abstractmethod
    def recovery_seconds(self) -> float | None:
        """How long the server's own recovery took, read from its log (None: none ran)."""

    @property
    @abc.abstractmethod
    def uri(self) -> str:
        """A connection URI for clients: ``postgresql://…`` or ``mysql://…``."""

    @abc.abstractmethod
    def builtin_checks(self) -> list[CheckResult]:
        """The database's own checks: it answers; ``pg_amcheck`` / ``CHECK TABLE``."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the server (fast shutdown; killed if it lingers); idempotent, never raises."""

    @property
    def log_file(self) -> Path:
        return self.rundir / f"{self.kind}.log"


#: Database kinds whose files need a server to be checked (SQLite's need none).
SERVER_KINDS = frozenset({"postgresql", "mariadb", "mysql"})


def server_class(kind: str) -> type[DatabaseServer]:
    """The server class for a writer kind (imported lazily: each needs its own driver)."""
    if kind == "postgresql":
        from cleancut.writers.pgserver import PostgresqlServer

        return PostgresqlServer
    if kind in ("mariadb", "mysql"):
        from cleancut.writers.mysqlserver import MariadbServer

        return MariadbServer
    raise ValueError(f"no server for database kind {kind!r}")


def data_directory(details: dict[str, Any]) -> tuple[str, str] | None:
    """``(volume, path inside it)`` of a writer's data directory, as hello recorded it."""
    files = details.get("files")
    if not isinstance(files, dict):
        return None
    place = files.get("data directory")
    if not isinstance(place, dict) or "volume" not in place:
        return None
    return str(place["volume"]), str(place.get("path", "."))
