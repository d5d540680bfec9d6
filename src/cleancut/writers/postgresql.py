"""PostgreSQL writer: ``CHECKPOINT`` in prepare, a non-exclusive backup held through the snapshot.

``pg_backup_start`` runs in a session that stays open from the hold to the release;
``pg_backup_stop`` after the thaw returns the ``backup_label`` (and ``tablespace_map``)
that the restore puts back into the data directory, byte for byte. A non-exclusive
backup does not block writes — the freeze makes the snapshot atomic — but it makes the
restored copy recover from the backup's checkpoint to the end of the backup, which
:mod:`cleancut.writers.pgwal` makes possible by recording the WAL the snapshot lacks.

Every hold ends on every path: the held session is set to end by itself at the deadline
(``idle_session_timeout``), even when this process is stopped; a killed guest closes its
socket, and a non-exclusive backup ends with its session; :meth:`PostgresqlWriter.abort`
shuts the session's socket from the watchdog's thread without waiting on the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from cleancut.config.guest import PostgresqlDatabase
from cleancut.errors import WriterError
from cleancut.writers.base import Writer
from cleancut.writers.pgwal import read_tail

#: The longest a connection attempt may take (libpq's ``connect_timeout``; at least 2 s).
CONNECT_TIMEOUT = 10
#: How long ``pg_backup_stop`` may take after the thaw.
STOP_TIMEOUT = 30.0
#: The oldest server this writer speaks to (``pg_current_wal_flush_lsn`` is from 10).
MIN_VERSION = 100000


@dataclass(frozen=True)
class BackupSql:
    """The statements of one server version: start and stop of a non-exclusive backup,
    and the setting that ends the held session by itself."""

    start: str
    stop: str
    #: ``idle_session_timeout`` (14 and newer) or, inside a transaction,
    #: ``idle_in_transaction_session_timeout`` (older)
    timeout_setting: str
    in_transaction: bool


def backup_sql(version_num: int) -> BackupSql:
    """The statements for a server of ``server_version_num`` (150004 for 15.4)."""
    if version_num < MIN_VERSION:
        raise WriterError(
            f"PostgreSQL {version_num // 10000}.{version_num // 100 % 100} is too old for "
            "the cleancut writer (it needs 10 or newer); upgrade the server"
        )
    if version_num >= 150000:
        start = "pg_backup_start(%(label)s::text, fast => true)"
        stop = "pg_backup_stop(wait_for_archive => false)"
    else:  # pg_start_backup(label, fast, exclusive); pg_stop_backup(exclusive, wait_for_archive)
        start = "pg_start_backup(%(label)s::text, true, false)"
        stop = "pg_stop_backup(false, false)"
    if version_num >= 140000:
        return BackupSql(start, stop, "idle_session_timeout", in_transaction=False)
    return BackupSql(start, stop, "idle_in_transaction_session_timeout", in_transaction=True)


def start_statement(sql: BackupSql) -> str:
    """One statement: start the backup, then read the flush LSN and set the session to end
    by itself when the milliseconds left at sending (``ms``) have passed —
    counted on the server from the statement's start, so the deadline holds even if this
    process stops the moment the statement returns."""
    return (
        "SELECT b.lsn::text, pg_current_wal_flush_lsn()::text, "
        f"set_config('{sql.timeout_setting}', greatest(1, %(ms)s::bigint - "
        "floor(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)"
        ")::bigint::text, false) "
        f"FROM (SELECT {sql.start} AS lsn OFFSET 0) AS b"
    )


@dataclass
class _Server:
    version: str
    version_num: int
    data_directory: Path
    segment_size: int
    block_size: int


@dataclass
class _Hold:
    label: str
    start_lsn: str
    flush_lsn: str
    held_at: float  # wall clock, when the backup had started (rows committed before are in)
    start_seconds: float  # how long taking the hold took
    since: float  # monotonic, when the hold was in place


def _label_field(label: str, name: str) -> str | None:
    for line in label.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key == name:
            return value.strip()
    return None


class PostgresqlWriter(Writer[PostgresqlDatabase]):
    """Holds a non-exclusive backup of one PostgreSQL server while its volume is snapshotted."""

    blocks_writes = False  # pg_backup_start: writes go on, the freeze stalls them

    def __init__(self, name: str, database: PostgresqlDatabase) -> None:
        super().__init__(name, database)
        self._conn: psycopg.Connection[Any] | None = None
        self._conn_lock = threading.Lock()  # close and abort never race on the socket
        self._server: _Server | None = None
        self._sql: BackupSql | None = None
        self._hold: _Hold | None = None
        self._aborted = False

    @property
    def what(self) -> str:
        return f"postgresql database {self.name}"

    # -- the session ----------------------------------------------------------------

    def _session(self, *, connect: bool = True) -> psycopg.Connection[Any]:
        """The writer's one session; only check and prepare may open a new one: the hold
        and its release must run in the same session, and a hold has no time to connect."""
        if self._aborted:
            raise WriterError(f"{self.what}: the hold was ended from outside (deadline or stop)")
        conn = self._conn
        if (conn is None or conn.closed) and not connect:
            raise WriterError(f"{self.what}: its session to the server ended")
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(
                    self.database.dsn,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT,
                    application_name=f"cleancut writer {self.name}"[:63],
                    client_encoding="UTF8",
                )
            except psycopg.Error as exc:
                raise WriterError(
                    f"{self.what}: cannot connect with databases.{self.name}.dsn: "
                    f"{_first_line(exc)}; check the dsn and that the server runs"
                ) from exc
            with self._conn_lock:
                self._conn = conn
        return conn

    def _query(
        self,
        sql: str,
        params: dict[str, Any] | None = None,
        *,
        doing: str,
        connect: bool = False,
    ) -> tuple[Any, ...]:
        session = self._session(connect=connect)
        try:
            cursor = session.execute(sql.encode(), params)
            row = cursor.fetchone() if cursor.description is not None else None
        except psycopg.Error as exc:
            raise WriterError(f"{self.what}: {doing} failed: {_first_line(exc)}") from exc
        return tuple(row) if row is not None else ()

    def _set_timeout(self, seconds: float, *, doing: str, connect: bool = False) -> None:
        milliseconds = max(1, math.ceil(seconds * 1000))
        self._query(f"SET statement_timeout = {milliseconds}", doing=doing, connect=connect)

    # -- the steps ------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        row = self._query(
            "SELECT current_setting('server_version'), "
            "current_setting('server_version_num')::int, pg_is_in_recovery(), "
            "current_setting('data_directory'), current_setting('wal_level'), "
            "current_setting('full_page_writes'), "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), "
            "current_setting('wal_block_size')::int",
            doing="reading the server's settings (data_directory needs a superuser or "
            "pg_read_all_settings)",
            connect=True,
        )
        version, version_num, in_recovery, datadir, wal_level, fpw, segment, block = row
        self._sql = backup_sql(int(version_num))
        if in_recovery:
            raise WriterError(
                f"{self.what}: the server is a standby (in recovery); cleancut backs up a "
                f"primary: point databases.{self.name}.dsn at the primary server"
            )
        if wal_level == "minimal":
            raise WriterError(
                f"{self.what}: wal_level = minimal allows no online backup; set wal_level = "
                "replica in postgresql.conf and restart the server"
            )
        self._server = _Server(version, int(version_num), Path(datadir), int(segment), int(block))
        return {
            "server_version": version,
            "data_directory": datadir,
            "in_recovery": bool(in_recovery),
            "wal_level": wal_level,
            "full_page_writes": fpw,
        }

    def _facts(self) -> tuple[_Server, BackupSql]:
        if self._server is None or self._sql is None:
            self.check()
        assert self._server is not None and self._sql is not None
        return self._server, self._sql

    def locations(self) -> dict[str, Path]:
        server, _sql = self._facts()
        found = {
            "data directory": server.data_directory,
            "WAL": Path(os.path.realpath(server.data_directory / "pg_wal")),
        }
        try:
            rows = self._session(connect=False).execute(
                "SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace "
                "WHERE pg_tablespace_location(oid) <> '' ORDER BY spcname"
            )
            for name, location in rows.fetchall():
                found[f"tablespace {name}"] = Path(location)
        except psycopg.Error as exc:
            raise WriterError(f"{self.what}: listing tablespaces: {_first_line(exc)}") from exc
        return found

    def prepare(self) -> dict[str, Any]:
        """``CHECKPOINT`` now, so the backup's own checkpoint in the hold is quick."""
        _server, sql = self._facts()
        began = time.monotonic()
        self._set_timeout(
            self.database.lock_timeout, doing="setting statement_timeout", connect=True
        )
        # the session must live until the hold sets its own deadline: no server-wide one
        self._query(f"SET {sql.timeout_setting} = 0", doing=f"setting {sql.timeout_setting}")
        self._query(
            "CHECKPOINT",
            doing=f"CHECKPOINT (bounded by lock_timeout {self.database.lock_timeout:g}s)",
        )
        return {"checkpoint_seconds": round(time.monotonic() - began, 4)}

    def hold(self, seconds: float) -> None:
        began = time.monotonic()
        deadline = began + seconds
        _server, sql = self._facts()
        bound = min(seconds, self.database.lock_timeout)
        if bound <= 0:
            raise WriterError(f"{self.what}: no time left in the cut's deadline to take the hold")
        label = self._label()
        self._set_timeout(bound, doing="setting statement_timeout")
        if sql.in_transaction:
            self._query("BEGIN", doing="BEGIN")
        left_ms = max(1, math.floor((deadline - time.monotonic()) * 1000))
        start_lsn, flush_lsn, _set = self._query(
            start_statement(sql),
            {"label": label, "ms": left_ms},
            doing=f"starting the backup (bounded by {bound:g}s: lock_timeout or the deadline)",
        )
        now = time.monotonic()
        self._hold = _Hold(label, start_lsn, flush_lsn, time.time(), now - began, now)

    def _label(self) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        cut = self.cut_id or stamp
        return f"cleancut {cut} databases.{self.name}"

    def release(self) -> dict[str, Any]:
        hold = self._hold
        if hold is None:
            raise WriterError(f"{self.what}: release without a hold")
        self._hold = None
        server, sql = self._facts()
        try:
            self._set_timeout(STOP_TIMEOUT, doing="setting statement_timeout")
            stop_lsn, label, tablespace_map = self._query(
                f"SELECT lsn::text, labelfile, spcmapfile FROM {sql.stop}",
                doing="stopping the backup",
            )
            held = time.monotonic() - hold.since
            self._query(f"SET {sql.timeout_setting} = 0", doing="ending the session's deadline")
            if sql.in_transaction:
                self._query("COMMIT", doing="COMMIT")
        except WriterError as exc:
            raise WriterError(
                f"{self.what}: the hold did not last to the end (the held session ended "
                f"before pg_backup_stop: deadline, terminated backend or restart): {exc.message}"
            ) from exc
        timeline = _label_field(label, "START TIMELINE") or self._timeline()
        wal_tail = read_tail(
            Path(os.path.realpath(server.data_directory / "pg_wal")),
            int(timeline),
            hold.flush_lsn,
            stop_lsn,
            segment_size=server.segment_size,
            block_size=server.block_size,
        )
        return {
            "server_version": server.version,
            "label": hold.label,
            "start_lsn": hold.start_lsn,
            "stop_lsn": stop_lsn,
            "timeline": int(timeline),
            "held_at": hold.held_at,
            "backup_start_seconds": round(hold.start_seconds, 4),
            "held_seconds": round(held, 4),
            "backup_label": label,
            "backup_label_sha256": hashlib.sha256(label.encode("utf-8")).hexdigest(),
            "tablespace_map": tablespace_map or None,
            "wal_tail": wal_tail,
        }

    def _timeline(self) -> str:
        row = self._query("SELECT timeline_id FROM pg_control_checkpoint()", doing="timeline")
        return str(row[0])

    def abort(self) -> None:
        self._aborted = True
        with self._conn_lock:
            conn = self._conn
            if conn is None or conn.closed:
                return
            try:
                fd = conn.pgconn.socket
            except psycopg.Error:
                return
            # a busy pg_backup_start (waiting for its checkpoint) is cancelled; libpq's
            # cancel may wait on a stuck server, so it runs in a thread of its own
            threading.Thread(target=_cancel, args=(conn,), daemon=True).start()
            # the server sees the socket close and ends the session, and with it the backup;
            # shutdown does not wait for the server, and the thread in hold() sees EOF
            with contextlib.suppress(OSError):
                probe = socket.socket(fileno=os.dup(fd))
                try:
                    probe.shutdown(socket.SHUT_RDWR)
                finally:
                    probe.close()

    def close(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
        self._hold = None
        if conn is not None:
            # closing the session ends a backup still in progress (the server aborts it)
            with contextlib.suppress(Exception):
                conn.close()


def _cancel(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(Exception):
        conn.cancel_safe(timeout=2.0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
