"""Connections of the MariaDB/MySQL writer and server: timeouts, the password file, errors.

Every connection is bounded: its connect, read and write timeouts are set, so no statement
of cleancut's waits on a stuck server for longer than the step allows. The password file
is read once and refused when others may read it.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql

from cleancut.config.guest import MariadbDatabase
from cleancut.errors import ConfigError, WriterError

#: The longest a connection attempt may take.
CONNECT_TIMEOUT = 5.0


def connect(
    name: str,
    db: MariadbDatabase,
    password: str,
    *,
    read_timeout: float,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> pymysql.Connection[Any]:
    """A connection to ``databases.NAME`` (autocommit, UTF-8), every wait bounded."""
    where: dict[str, Any] = (
        {"unix_socket": str(db.socket)}
        if db.socket is not None
        else {"host": db.host, "port": db.port}
    )
    try:
        return pymysql.connect(
            user=db.user,
            password=password,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=read_timeout,
            autocommit=True,
            charset="utf8mb4",
            program_name=f"cleancut writer {name}"[:64],
            **where,
        )
    except pymysql.Error as exc:
        via = f"socket {db.socket}" if db.socket is not None else f"{db.host}:{db.port}"
        key = "socket" if db.socket is not None else "host"
        raise WriterError(
            f"{db.kind} database {name}: cannot connect to {via} as {db.user!r}: "
            f"{describe(exc)}; check databases.{name}.{key}, user and password_file, and "
            "that the server runs"
        ) from exc


def read_password(name: str, path: Path) -> str:
    """The password in ``path`` without one trailing newline; refused when the file grants
    group or other any access (a password others can read is no secret)."""
    key = f"databases.{name}.password_file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(
            f"{key}: cannot read {path}: {exc.strerror}; give a file with the password"
        ) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{key}: {path} is not a regular file; give a file with the password")
        if mode & 0o077:
            raise ConfigError(
                f"{key}: {path} is readable by group or other (mode {stat.S_IMODE(mode):04o}); "
                f"run chmod 600 {path}"
            )
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="strict")
    for newline in ("\r\n", "\n"):
        if text.endswith(newline):
            return text[: -len(newline)]
    return text


def error_code(exc: BaseException) -> int | None:
    """The server's (or client's) error number of a PyMySQL error, if it has one."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def describe(exc: BaseException) -> str:
    """``error 1205: Lock wait timeout exceeded``: one line for messages."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return f"error {args[0]}: {str(args[1]).splitlines()[0] if args[1] else ''}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Deadline:
    """Runs ``kill`` when ``seconds`` have passed, unless :meth:`finish` came first."""

    def __init__(self, seconds: float, kill: Callable[[], object]) -> None:
        self._lock = threading.Lock()
        self._finished = False
        self.fired = False
        self._timer = threading.Timer(max(0.0, seconds), self._fire, args=(kill,))
        self._timer.daemon = True
        self._timer.start()

    def _fire(self, kill: Callable[[], object]) -> None:
        with self._lock:
            if self._finished:
                return
            self.fired = True
        kill()

    def finish(self) -> bool:
        """Stop the timer; whether it fired (the statement was, or was about to be, killed)."""
        with self._lock:
            self._finished = True
        self._timer.cancel()
        return self.fired


def rows(conn: pymysql.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def close_quietly(conn: pymysql.Connection[Any]) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def whole(seconds: float) -> int:
    """Seconds as the server's integer timeouts take them: whole, at least 1."""
    return max(1, math.floor(seconds))
