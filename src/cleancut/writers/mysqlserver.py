"""A MariaDB (or MySQL) server on a data directory: fresh for tests, restored for ``verify``.

The server runs with ``--no-defaults`` (nothing of the host's ``my.cnf`` leaks into a
sandbox), as the data directory's owner, its socket and pid file in the run directory,
TCP only on 127.0.0.1. What the copied data directory itself needs to start is read from
it: InnoDB's page size (from ``ibdata1``; a server started with another one refuses the
files), the redo log's size (so it is not rewritten at start), and the binary log when
the directory holds one (``NAME.index``). InnoDB's crash recovery then runs by itself.

Clients reach it by :attr:`MariadbServer.uri`:
``mysql://root@localhost/?unix_socket=/PATH/TO/mysqld.sock`` (the socket path
percent-encoded; :func:`cleancut.demo.shopdb.mysql_connect_args` reads it back). ``root``
logs in by the ``unix_socket`` plugin, as ``mariadb-install-db`` sets it up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import pymysql

from cleancut.errors import CleancutError
from cleancut.writers.mysqlconn import describe, error_code
from cleancut.writers.mysqlfiles import (
    binlog_basename,
    chown_tree,
    closed_ancestor,
    innodb_page_size,
    owner_of,
    remove_stale_files,
)
from cleancut.writers.mysqllog import LogWatch, recovery
from cleancut.writers.server import CheckResult, DatabaseServer

#: A unix socket's path must fit in ``sun_path`` (108 bytes with its NUL); longer run
#: directories get their socket in a short folder of their own under this one.
SHORT_SOCKETS = Path("/run/cleancut-mysql")
_SOCKET_MAX = 100
#: Errors that still prove the server answers: it refused this login.
_ANSWERS_ANYWAY = frozenset({1045, 1698})
#: Schemas that are the server's own, not the application's.
_SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
_STOP_WAIT = 60.0
_KILL_WAIT = 10.0


def server_binary() -> str:
    """``mariadbd`` (or ``mysqld``) on PATH or in /usr/sbin."""
    for name in ("mariadbd", "mysqld"):
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
        if found:
            return found
    raise CleancutError("no MariaDB server here: install mariadb-server (mariadbd)")


class MariadbServer(DatabaseServer):
    """One ``mariadbd`` on one data directory, started and stopped by cleancut.

    ``log_bin`` turns the binary log on under that base name (it is also turned on when
    the data directory holds one); ``options`` are further ``mariadbd`` options (tests use
    a small buffer pool).
    """

    kind = "mariadb"

    def __init__(
        self,
        datadir: Path,
        rundir: Path,
        *,
        port: int | None = None,
        log_bin: str | None = None,
        options: Sequence[str] = (),
    ) -> None:
        super().__init__(datadir, rundir, port=port)
        self.log_bin = log_bin
        self.options = list(options)
        self._proc: subprocess.Popen[bytes] | None = None
        self._watch: LogWatch | None = None

    # -- where things are -----------------------------------------------------------

    @property
    def socket(self) -> Path:
        """The server's socket: in the run directory, unless that path is too long."""
        path = self.rundir / "mysqld.sock"
        if len(os.fsencode(path)) <= _SOCKET_MAX:
            return path
        digest = hashlib.sha256(os.fsencode(self.rundir.absolute())).hexdigest()[:16]
        return SHORT_SOCKETS / digest / "mysqld.sock"

    @property
    def pid_file(self) -> Path:
        return self.rundir / "mysqld.pid"

    @property
    def uri(self) -> str:
        return f"mysql://root@localhost/?unix_socket={quote(str(self.socket), safe='/')}"

    def connect(self, *, read_timeout: float = 30.0) -> pymysql.Connection[Any]:
        """A connection as root over the socket (raises PyMySQL's errors)."""
        return pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            connect_timeout=5,
            read_timeout=read_timeout,
            write_timeout=read_timeout,
            autocommit=True,
            charset="utf8mb4",
        )

    # -- a new cluster --------------------------------------------------------------

    @classmethod
    def initialise(
        cls,
        datadir: Path,
        rundir: Path,
        *,
        owner: str = "mysql",
        log_bin: bool = False,
        options: Sequence[str] = (),
    ) -> MariadbServer:
        """``mariadb-install-db`` into an empty ``datadir`` owned by ``owner``; root logs in
        by socket. ``log_bin`` starts the server with its binary log (``mysql-bin``)."""
        user = pwd.getpwnam(owner)
        datadir.mkdir(mode=0o750, parents=True, exist_ok=True)
        if any(datadir.iterdir()):
            raise CleancutError(f"{datadir} is not empty: initialise makes a new data directory")
        os.chown(datadir, user.pw_uid, user.pw_gid)
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if install is None:
            raise CleancutError("no mariadb-install-db here: install mariadb-server")
        argv = [
            install,
            "--no-defaults",
            f"--datadir={datadir}",
            f"--user={owner}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            *options,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise CleancutError(f"mariadb-install-db failed in {datadir}: {' / '.join(tail)}")
        chown_tree(datadir, user.pw_uid, user.pw_gid)
        return cls(datadir, rundir, log_bin="mysql-bin" if log_bin else None, options=options)

    # -- restored files -------------------------------------------------------------

    def prepare_restored(self, details: dict[str, Any]) -> list[str]:
        """Remove the pid and socket files the copy holds (a server that finds its old pid
        file, or a socket path in use, may refuse to start) and give every file to the
        data directory's owner (``mysql`` when the copy came back owned by root)."""
        if not self.datadir.is_dir():
            raise CleancutError(f"{self.datadir}: no restored MariaDB data directory here")
        done = [f"removed stale {name}" for name in remove_stale_files(self.datadir)]
        owner = owner_of(self.datadir)
        if owner == "root":
            owner = "mysql"
        try:
            user = pwd.getpwnam(owner)
        except KeyError as exc:
            raise CleancutError(
                f"{self.datadir}: no user {owner!r} here to own the restored data directory; "
                "install mariadb-server (it creates the user mysql) or chown the directory "
                "to the server's user"
            ) from exc
        changed = chown_tree(self.datadir, user.pw_uid, user.pw_gid)
        if changed:
            done.append(f"gave {changed} files to {owner}")
        if details.get("binlog_file"):
            done.append(
                f"binary log position at the cut: {details['binlog_file']}:"
                f"{details.get('binlog_position')}"
                + (f", GTID {details['gtid']}" if details.get("gtid") else "")
            )
        done.append("InnoDB recovers by itself when the server starts")
        return done

    # -- running --------------------------------------------------------------------

    def command(self, owner: str) -> list[str]:
        """The ``mariadbd`` command line for this data directory."""
        argv = [
            server_binary(),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.log_file}",
            f"--user={owner}",
        ]
        page = innodb_page_size(self.datadir)
        if page is not None and page != 16384:
            argv.append(f"--innodb-page-size={page}")
        with contextlib.suppress(OSError):
            argv.append(f"--innodb-log-file-size={(self.datadir / 'ib_logfile0').stat().st_size}")
        binlog = self.log_bin or binlog_basename(self.datadir)
        if binlog:
            argv.append(f"--log-bin={binlog}")
        return [*argv, *self.options]

    def start(self, timeout: float = 120.0) -> float:
        began = time.monotonic()
        owner = self._ready_to_run()
        self._watch = LogWatch(self.log_file)
        with self.log_file.open("ab") as log:
            self._proc = _spawn(self.command(owner), log)
        deadline = began + timeout
        while not self._answers():
            self._watch.poll()
            if self._proc.poll() is not None:
                raise CleancutError(
                    f"mariadbd on {self.datadir} exited with status {self._proc.returncode} "
                    f"before it answered: {self._log_tail()} (log: {self.log_file})"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise CleancutError(
                    f"mariadbd on {self.datadir} did not answer within {timeout:g}s: "
                    f"{self._log_tail()} (log: {self.log_file})"
                )
            time.sleep(0.02)
        self._watch.poll()
        return time.monotonic() - began

    def _ready_to_run(self) -> str:
        """The run directory (and log) made, owned by the data directory's owner, who must
        reach every file; that owner's name."""
        owner = owner_of(self.datadir)
        if owner == "root":
            raise CleancutError(
                f"{self.datadir} is owned by root; MariaDB runs as its own user: "
                f"chown -R mysql:mysql {self.datadir} (the restore step does this)"
            )
        user = pwd.getpwnam(owner)
        for folder in (self.rundir, self.socket.parent):
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chown(folder, user.pw_uid, user.pw_gid)
        for place in (self.datadir, self.socket.parent, self.rundir):
            closed = closed_ancestor(place, user)
            if closed is not None:
                raise CleancutError(
                    f"mariadbd runs as {owner}, who cannot reach {place}: {closed} is closed "
                    f"to it (mode {stat.S_IMODE(closed.stat().st_mode):04o}); run chmod o+x "
                    f"{closed}, or keep the data directory under folders {owner} may enter"
                )
        self.log_file.touch(mode=0o640)
        os.chown(self.log_file, user.pw_uid, user.pw_gid)
        return owner

    def _answers(self) -> bool:
        try:
            conn = self.connect(read_timeout=5)
        except pymysql.Error as exc:
            return error_code(exc) in _ANSWERS_ANYWAY
        conn.close()
        return True

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "no log"
        found = [ln for ln in text.splitlines() if "[ERROR]" in ln] or text.splitlines()
        return " / ".join(found[-lines:]) or "empty log"

    def recovery_seconds(self) -> float | None:
        """InnoDB's crash recovery at the last start: timed as its log lines appeared when
        this object started the server, else from the log's own (whole-second) stamps."""
        watch = self._watch
        if watch is not None:
            watch.poll()
            if watch.recovery_seen is not None:
                return watch.recovery_seconds
            if watch.ready_seen is not None:
                return None  # started here, and no recovery ran
        try:
            found = recovery(self.log_file.read_text(errors="replace"))
        except OSError:
            return None
        return None if found is None else found.seconds

    def builtin_checks(self) -> list[CheckResult]:
        """The server answers ``SELECT 1``; ``CHECK TABLE`` passes on every user table."""
        try:
            conn = self.connect(read_timeout=3600)
        except pymysql.Error as exc:
            return [CheckResult("answers", False, describe(exc))]
        try:
            return _checks(conn)
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._stop()
        short = self.socket.parent
        if SHORT_SOCKETS in short.parents:
            shutil.rmtree(short, ignore_errors=True)

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _end(proc.pid, proc.poll)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_KILL_WAIT)
            return
        pid = self._pid_from_file()
        if pid is not None:
            _end(pid, lambda: None if Path(f"/proc/{pid}").exists() else 0)

    def _pid_from_file(self) -> int | None:
        """The pid in the pid file, if that process is a server on this data directory."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if os.fsencode(f"--datadir={self.datadir}") in cmdline else None


def _spawn(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            start_new_session=True,  # a Ctrl-C meant for us is not the server's
        )
    except OSError as exc:
        raise CleancutError(f"cannot start {argv[0]}: {exc}") from exc


def _end(pid: int, exited: Callable[[], int | None]) -> None:
    """SIGTERM (MariaDB shuts down cleanly), then SIGKILL when it lingers."""
    for sig, wait in ((signal.SIGTERM, _STOP_WAIT), (signal.SIGKILL, _KILL_WAIT)):
        if exited() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while exited() is None and time.monotonic() < deadline:
            time.sleep(0.05)


def _checks(conn: pymysql.Connection[Any]) -> list[CheckResult]:
    with conn.cursor() as cur:
        cur.execute("SELECT 1, @@version")
        row = cur.fetchone()
        results = [CheckResult("answers", row is not None and row[0] == 1, str(row and row[1]))]
        cur.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE "
            "table_type = 'BASE TABLE' AND table_schema NOT IN %s ORDER BY 1, 2",
            (_SYSTEM_SCHEMAS,),
        )
        tables = [(str(s), str(t)) for s, t in cur.fetchall()]
        for schema, table in tables:
            results.append(_check_table(cur, schema, table))
    return results


def _check_table(cur: Any, schema: str, table: str) -> CheckResult:
    name = f"CHECK TABLE {schema}.{table}"
    quoted = "`{}`.`{}`".format(schema.replace("`", "``"), table.replace("`", "``"))
    try:
        cur.execute(f"CHECK TABLE {quoted}")
        rows = [(str(r[2]), str(r[3])) for r in cur.fetchall()]
    except pymysql.Error as exc:
        return CheckResult(name, False, describe(exc))
    ok = any(
        kind == "status" and text in ("OK", "Table is already up to date") for kind, text in rows
    )
    unsupported = any("doesn't support check" in text for _kind, text in rows)
    return CheckResult(name, ok or unsupported, "; ".join(f"{k}: {t}" for k, t in rows))
