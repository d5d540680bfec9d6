"""MariaDB/MySQL writer: ``FLUSH TABLES`` in prepare, ``FLUSH TABLES WITH READ LOCK`` held through
the snapshot on a connection of its own, ``UNLOCK TABLES`` after the thaw.

While the global read lock is held no statement changes data or commits, so the files
the snapshot captures are a committed state that InnoDB recovers by itself; the binary
log's file:position (and GTID position) recorded inside the lock is exactly that state's.

The lock must never outlast what the cut allows, nor be waited for too long: while
``FLUSH TABLES WITH READ LOCK`` *waits* (a long write or ``LOCK TABLES`` in the way) the
server already blocks every writer. So taking it is bounded twice — the session's
``lock_wait_timeout`` on the server and a ``KILL QUERY`` sent from a second connection
when the client's deadline passes — and holding it is bounded by the session's
``wait_timeout``: the server drops the connection, and with it the lock, when this
process is stopped or killed or the connection is cut. :meth:`MariadbWriter.abort` ends a
hold from the watchdog's thread with ``KILL CONNECTION`` and a shutdown of the socket.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from cleancut.config.guest import MariadbDatabase
from cleancut.errors import WriterError
from cleancut.writers.base import Writer
from cleancut.writers.mysqlconn import (
    CONNECT_TIMEOUT,
    Deadline,
    close_quietly,
    connect,
    describe,
    error_code,
    read_password,
    rows,
    whole,
)

#: The longest any other statement of the writer may take (a read timeout on the client).
READ_TIMEOUT = 30.0
#: The short-lived connection that sends ``KILL``: its connect, read and write timeouts.
KILL_TIMEOUT = 2.0
#: How long :meth:`MariadbWriter.abort` waits for its ``KILL CONNECTION`` at most.
ABORT_WAIT = 1.0
#: The client's own read timeout beyond a lock's bound, should no ``KILL`` get through.
_GRACE = 3.0
#: Errors of a lock wait that was given up: ``lock_wait_timeout``, or our ``KILL QUERY``.
_GAVE_UP = frozenset({1205, 1317})
#: Settings a restore may need to know, recorded with the position.
_RECORDED = ("innodb_page_size", "lower_case_table_names", "server_id", "log_bin_basename")
#: Variables hello reports and the writer needs (those a server lacks are left out).
_VARIABLES = (
    "version",
    "datadir",
    "log_bin",
    "log_bin_basename",
    "read_only",
    "innodb_data_home_dir",
    "innodb_log_group_home_dir",
    "innodb_undo_directory",
    "innodb_page_size",
    "lower_case_table_names",
    "server_id",
    "gtid_mode",
    "gtid_binlog_pos",
    "gtid_current_pos",
)


@dataclass
class _Server:
    flavor: str  # "mariadb" or "mysql"
    version: str
    datadir: Path
    settings: dict[str, str]

    @property
    def log_bin(self) -> bool:
        return self.settings.get("log_bin", "OFF").upper() in ("ON", "1")

    def place(self, setting: str) -> Path | None:
        """A directory setting as an absolute path (relative ones are the datadir's)."""
        value = self.settings.get(setting) or ""
        if not value:
            return None
        return Path(os.path.normpath(self.datadir / value))


@dataclass
class _Hold:
    conn: pymysql.Connection[Any]
    connection_id: int
    since: float  # monotonic, when the lock was in place
    held_at: float  # wall clock, when the lock was in place
    lock_seconds: float  # how long taking it took
    position: dict[str, Any] = field(default_factory=dict)


class MariadbWriter(Writer[MariadbDatabase]):
    """Holds ``FLUSH TABLES WITH READ LOCK`` on one MariaDB or MySQL server for the snapshot."""

    def __init__(self, name: str, database: MariadbDatabase) -> None:
        super().__init__(name, database)
        self._password: str | None = None  # read once: abort() must not read files
        self._control: pymysql.Connection[Any] | None = None
        self._control_id: int | None = None
        self._server: _Server | None = None
        self._hold: _Hold | None = None
        self._lock = threading.Lock()  # guards the holder, for abort() from another thread
        self._holder: pymysql.Connection[Any] | None = None
        self._holder_id: int | None = None
        self._aborted = False

    @property
    def what(self) -> str:
        return f"{self.database.kind} database {self.name}"

    # -- connections ----------------------------------------------------------------

    def _connect(
        self, *, read_timeout: float, connect_timeout: float = CONNECT_TIMEOUT
    ) -> pymysql.Connection[Any]:
        if self._password is None:
            path = self.database.password_file
            self._password = read_password(self.name, path) if path is not None else ""
        return connect(
            self.name,
            self.database,
            self._password,
            read_timeout=read_timeout,
            connect_timeout=connect_timeout,
        )

    def _session(self) -> pymysql.Connection[Any]:
        if self._control is None:
            timeout = max(READ_TIMEOUT, self.database.lock_timeout + _GRACE)
            conn = self._connect(read_timeout=timeout)
            self._control = conn
            self._control_id = int(rows(conn, "SELECT CONNECTION_ID()")[0][0])
        return self._control

    def _query(self, sql: str, *, doing: str) -> list[tuple[Any, ...]]:
        try:
            return rows(self._session(), sql)
        except pymysql.Error as exc:
            raise WriterError(f"{self.what}: {doing} failed: {describe(exc)}") from exc

    def _kill(self, statement: str) -> str | None:
        """Send ``KILL …`` from a fresh short-lived connection; the error, if any."""
        try:
            conn = self._connect(read_timeout=KILL_TIMEOUT, connect_timeout=KILL_TIMEOUT)
        except WriterError as exc:
            return exc.message
        try:
            rows(conn, statement)
            return None
        except pymysql.Error as exc:
            return describe(exc)
        finally:
            close_quietly(conn)

    # -- the steps ------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        names = ", ".join(f"'{n}'" for n in _VARIABLES)
        found_rows = self._query(
            f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({names})",
            doing="reading the server's settings",
        )
        settings = {str(k): "" if v is None else str(v) for k, v in found_rows}
        version = settings.get("version", "")
        flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
        datadir = settings.get("datadir") or ""
        if not datadir:
            raise WriterError(f"{self.what}: the server reports no datadir")
        self._server = server = _Server(flavor, version, Path(os.path.normpath(datadir)), settings)
        found: dict[str, Any] = {
            "server_version": version,
            "flavor": flavor,
            "datadir": str(server.datadir),
            "log_bin": server.log_bin,
            "read_only": settings.get("read_only", "OFF").upper() in ("ON", "1"),
        }
        for name in ("gtid_mode", "gtid_binlog_pos", "gtid_current_pos"):
            if settings.get(name):
                found[name] = settings[name]
        return found

    def _facts(self) -> _Server:
        if self._server is None:
            self.check()
        assert self._server is not None
        return self._server

    def locations(self) -> dict[str, Path]:
        server = self._facts()
        found = {"data directory": server.datadir}
        for label, setting in (
            ("InnoDB data", "innodb_data_home_dir"),
            ("InnoDB logs", "innodb_log_group_home_dir"),
            ("InnoDB undo", "innodb_undo_directory"),
        ):
            place = server.place(setting)
            if place is not None:
                found[label] = place
        basename = server.place("log_bin_basename")
        if server.log_bin and basename is not None:
            found["binary logs"] = basename.parent
        return found

    def prepare(self) -> dict[str, Any]:
        """``FLUSH TABLES`` now (not written to the binary log), so the lock is quick to
        take, bounded by ``lock_timeout``; a flush given up is recorded, not fatal (the
        hold decides). Opens the connection that will take the lock."""
        self._facts()
        found = self._flush_tables()
        _conn, conn_id = self._open_holder()
        return {**found, "holder_connection_id": conn_id}

    def _flush_tables(self) -> dict[str, Any]:
        timeout = self.database.lock_timeout
        self._query(f"SET SESSION lock_wait_timeout = {whole(timeout)}", doing="setting")
        began = time.monotonic()
        guard = Deadline(timeout, lambda: self._kill(f"KILL QUERY {self._control_id}"))
        try:
            rows(self._session(), "FLUSH NO_WRITE_TO_BINLOG TABLES")
        except pymysql.Error as exc:
            if not (guard.finish() or error_code(exc) in _GAVE_UP):
                raise WriterError(f"{self.what}: FLUSH TABLES failed: {describe(exc)}") from exc
            return {
                "flush_tables_seconds": round(time.monotonic() - began, 4),
                "flush_tables": f"given up after lock_timeout {timeout:g}s: {describe(exc)}",
            }
        finally:
            guard.finish()
        return {"flush_tables_seconds": round(time.monotonic() - began, 4)}

    def hold(self, seconds: float) -> None:
        began = time.monotonic()
        bound = min(seconds, self.database.lock_timeout)
        if bound <= 0:
            raise WriterError(f"{self.what}: no time left in the cut's deadline to take the lock")
        server = self._facts()
        try:
            conn, conn_id = self._open_holder()
            self._hold = self._take(conn, conn_id, server, began, seconds, bound)
        except BaseException:
            self._drop_holder()
            raise

    def _open_holder(self) -> tuple[pymysql.Connection[Any], int]:
        """The connection that takes the lock (opened in prepare, so the hold is quick)."""
        with self._lock:
            conn, conn_id, aborted = self._holder, self._holder_id, self._aborted
        if aborted:
            raise WriterError(f"{self.what}: the holds were ended before the lock was taken")
        if conn is not None and conn_id is not None:
            try:
                conn.ping()  # opened in prepare: still there?
                return conn, conn_id
            except pymysql.Error:
                self._drop_holder()
        conn = self._connect(read_timeout=self.database.lock_timeout + _GRACE)
        with self._lock:
            self._holder = conn
        try:
            conn_id = int(rows(conn, "SELECT CONNECTION_ID()")[0][0])
        except pymysql.Error as exc:
            raise WriterError(f"{self.what}: the new connection failed: {describe(exc)}") from exc
        with self._lock:
            self._holder_id = conn_id
        return conn, conn_id

    def _take(
        self,
        conn: pymysql.Connection[Any],
        conn_id: int,
        server: _Server,
        began: float,
        seconds: float,
        bound: float,
    ) -> _Hold:
        """``FLUSH TABLES WITH READ LOCK`` within ``bound``, and the position inside it."""
        try:
            rows(conn, f"SET SESSION lock_wait_timeout = {whole(bound)}")
            # the server ends an idle session after wait_timeout: the lock with it
            rows(conn, f"SET SESSION wait_timeout = {math.ceil(seconds) + 1}")
            left = began + bound - time.monotonic()
            guard = Deadline(left, lambda: self._kill(f"KILL QUERY {conn_id}"))
            try:
                rows(conn, "FLUSH TABLES WITH READ LOCK")
            finally:
                late = guard.finish()
            taken = time.monotonic()
            if late:  # taken as the deadline passed: given back by dropping the connection
                raise pymysql.err.OperationalError(1317, "taken only after the deadline")
            position = _position(conn, server)
            left = max(1, math.ceil(began + seconds - time.monotonic()))
            rows(conn, f"SET SESSION wait_timeout = {left + 1}")
        except pymysql.Error as exc:
            raise self._hold_error(exc, bound) from exc
        return _Hold(conn, conn_id, taken, time.time(), taken - began, position)

    def _hold_error(self, exc: pymysql.Error, bound: float) -> WriterError:
        if self._aborted:
            return WriterError(
                f"{self.what}: the lock was ended from outside while it was being taken "
                f"(deadline or stop): {describe(exc)}"
            )
        if error_code(exc) in _GAVE_UP:
            return WriterError(
                f"{self.what}: FLUSH TABLES WITH READ LOCK could not be taken within "
                f"{bound:g}s (lock_timeout, or what was left of freeze_timeout): a long write, "
                f"an open LOCK TABLES or a commit was in the way ({describe(exc)}); the wait was "
                "given up and the server not left read-only. Find the session in SHOW "
                f"PROCESSLIST, or raise databases.{self.name}.lock_timeout"
            )
        return WriterError(f"{self.what}: taking FLUSH TABLES WITH READ LOCK: {describe(exc)}")

    def release(self) -> dict[str, Any]:
        hold, self._hold = self._hold, None
        if hold is None:
            raise WriterError(f"{self.what}: release without a hold")
        try:
            if self._aborted:
                raise pymysql.err.OperationalError(1927, "ended from outside (deadline or stop)")
            rows(hold.conn, "UNLOCK TABLES")
        except pymysql.Error as exc:
            raise WriterError(
                f"{self.what}: the hold did not last to the end (the locking connection "
                f"{hold.connection_id} was lost, killed or timed out before UNLOCK TABLES): "
                f"{describe(exc)}"
            ) from exc
        finally:
            self._drop_holder()
        server = self._facts()
        return {
            "server_version": server.version,
            "flavor": server.flavor,
            **hold.position,
            "connection_id": hold.connection_id,
            "settings": {k: server.settings[k] for k in _RECORDED if k in server.settings},
            "held_at": hold.held_at,
            "released_at": time.time(),
            "lock_seconds": round(hold.lock_seconds, 4),
            "held_seconds": round(time.monotonic() - hold.since, 4),
        }

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            conn, conn_id = self._holder, self._holder_id
        if conn is None:
            return
        killer = None
        if conn_id is not None:  # a lock still waited for needs the server's own KILL
            killer = threading.Thread(
                target=self._kill, args=(f"KILL CONNECTION {conn_id}",), daemon=True
            )
            killer.start()
        # an idle locking session ends when the server reads the socket's end
        sock = getattr(conn, "_sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if killer is not None:
            killer.join(ABORT_WAIT)

    def _drop_holder(self) -> None:
        with self._lock:
            conn, self._holder, self._holder_id = self._holder, None, None
        if conn is not None:
            close_quietly(conn)  # the server ends the session, and any lock it holds

    def close(self) -> None:
        self._hold = None
        self._drop_holder()
        conn, self._control = self._control, None
        if conn is not None:
            close_quietly(conn)


def _position(conn: pymysql.Connection[Any], server: _Server) -> dict[str, Any]:
    """The binary log's file:position and the GTID position, read inside the lock."""
    found: dict[str, Any] = {"binlog_file": None, "binlog_position": None, "gtid": None}
    if server.log_bin:
        try:
            try:
                status = rows(conn, "SHOW MASTER STATUS")
            except pymysql.err.ProgrammingError:  # MySQL 8.4 renamed it
                status = rows(conn, "SHOW BINARY LOG STATUS")
            if status:
                found["binlog_file"], found["binlog_position"] = (
                    str(status[0][0]),
                    int(status[0][1]),
                )
        except pymysql.err.OperationalError as exc:
            if error_code(exc) not in (1227, 1045):  # lost connection: the hold failed
                raise
            found["binlog_error"] = f"{describe(exc)} (grant BINLOG MONITOR to read it)"
    if server.flavor == "mariadb":
        binlog_pos, current = rows(conn, "SELECT @@gtid_binlog_pos, @@gtid_current_pos")[0]
        found["gtid"] = binlog_pos or None
        found["gtid_current_pos"] = current or None
    elif server.settings.get("gtid_mode", "OFF").upper() != "OFF":
        found["gtid"] = str(rows(conn, "SELECT @@GLOBAL.gtid_executed")[0][0]) or None
    return found
