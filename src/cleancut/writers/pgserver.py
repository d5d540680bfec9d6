"""A PostgreSQL server on restored (or fresh) files: the restore step and the restore drill.

The restore step puts the ``backup_label`` (and ``tablespace_map``) that the writer recorded
back into the data directory byte for byte, writes back the WAL the snapshot lacks (see
:mod:`cleancut.writers.pgwal`) and removes the pid file copied from the running original.
The server then starts with no manual step: recovery runs from the backup's checkpoint to
the end of the backup.

:meth:`PostgresqlServer.start` runs the server as the data directory's owner with its own
socket folder, log and port on 127.0.0.1, and overrides whatever in the restored
configuration would meet the original server or its neighbours (port, sockets, archiving,
a restore command, replication, an external pid file, authentication: the sandbox trusts
local connections).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cleancut.errors import CleancutError
from cleancut.writers.pgwal import write_tail
from cleancut.writers.server import CheckResult, DatabaseServer

#: A unix socket's path must fit in ``sun_path`` (108 bytes with its NUL); a run directory
#: too deep for that gets its socket in a short folder of its own under this one.
SHORT_SOCKETS = Path("/run/cleancut-pg")
_SOCKET_MAX = 100
#: The superuser that ``initialise`` creates and that clients of a sandbox connect as.
SUPERUSER = "postgres"
_LOG_TAIL = 2000
_STOP_WAIT = 30
_HBA = (
    "# cleancut sandbox: local connections only, trusted\n"
    "local all all trust\n"
    "local replication all trust\n"
    "host all all 127.0.0.1/32 trust\n"
    "host all all ::1/128 trust\n"
)
#: Settings that would make a restored copy meet its original or wait for a standby.
_SANDBOX_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "archive_mode": "off",
    "restore_command": "",
    "primary_conninfo": "",
    "synchronous_standby_names": "",
    "ssl": "off",
    "logging_collector": "off",
    "log_destination": "stderr",
    "log_line_prefix": "%m ",
}

_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) \S+ ")
_RECOVERY_STARTS = (
    "database system was interrupted",
    "database system was not properly shut down",
    "starting backup recovery",
    "starting point-in-time recovery",
    "starting archive recovery",
    "redo starts at",
)
_RECOVERY_ENDS = ("database system is ready to accept connections", "redo done at")


def recovery_seconds_in_log(text: str) -> float | None:
    """Seconds the server's last start spent in recovery, from a log written with
    ``log_line_prefix = '%m '``: from the first sign of recovery to the server being
    ready (or, if it never was, to ``redo done``). None: no recovery ran."""
    last_run = text.rsplit("starting PostgreSQL", 1)[-1]
    started: datetime | None = None
    ended: dict[str, datetime] = {}
    for line in last_run.splitlines():
        match = _TIMESTAMP.match(line)
        if match is None:
            continue
        at = datetime.fromisoformat(match.group(1))
        if started is None and any(mark in line for mark in _RECOVERY_STARTS):
            started = at
        elif started is not None:
            for mark in _RECOVERY_ENDS:
                if mark in line and mark not in ended:
                    ended[mark] = at
    if started is None:
        return None
    end = ended.get(_RECOVERY_ENDS[0]) or ended.get(_RECOVERY_ENDS[1])
    return None if end is None else max(0.0, (end - started).total_seconds())


def pg_bin(name: str, datadir: Path | None = None) -> str:
    """The PostgreSQL program ``name`` of the data directory's major version (its
    ``PG_VERSION``), else the newest installed, else the one on PATH."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parts[-3].split(".")],
    )
    if datadir is not None and (datadir / "PG_VERSION").is_file():
        wanted = (datadir / "PG_VERSION").read_text().strip()
        exact = Path("/usr/lib/postgresql") / wanted / "bin" / name
        if exact.is_file():
            return str(exact)
    if versions:
        return str(versions[-1])
    return shutil.which(name) or name


class PostgresqlServer(DatabaseServer):
    """One PostgreSQL server on one data directory, started and stopped by cleancut."""

    kind = "postgresql"

    def __init__(self, datadir: Path, rundir: Path, *, port: int | None = None) -> None:
        super().__init__(datadir, rundir, port=port)
        self._pid: int | None = None

    @classmethod
    def initialise(
        cls,
        datadir: Path,
        rundir: Path,
        *,
        owner: str = "postgres",
        initdb_args: Sequence[str] = (),
    ) -> PostgresqlServer:
        """``initdb --data-checksums`` of a new cluster in ``datadir`` owned by ``owner``
        (superuser ``postgres``, local connections trusted); ``initdb_args`` adds options
        (``["-X", WALDIR]``)."""
        uid, gid = _user(owner)
        datadir.mkdir(parents=True, exist_ok=True)
        os.chown(datadir, uid, gid)
        datadir.chmod(0o700)
        argv = [pg_bin("initdb"), "-D", str(datadir), "--data-checksums", "-A", "trust"]
        argv += ["-U", SUPERUSER, "-E", "UTF8", "--no-sync", *initdb_args]
        done = _run_as(uid, gid, argv, cwd=datadir, timeout=300)
        if done.returncode != 0:
            raise CleancutError(f"initdb of {datadir} failed: {_tail(done.stdout + done.stderr)}")
        return cls(datadir, rundir)

    # -- the restore step -------------------------------------------------------------

    def prepare_restored(self, details: dict[str, Any]) -> list[str]:
        uid, gid = _owner(self.datadir)
        lines: list[str] = []
        label = details.get("backup_label")
        if not isinstance(label, str) or not label:
            raise CleancutError(
                f"{self.datadir}: the recovery point recorded no backup_label for this "
                "database (its writer did not finish the backup); it cannot be restored clean"
            )
        digest = hashlib.sha256(label.encode("utf-8")).hexdigest()
        if details.get("backup_label_sha256") not in (None, digest):
            raise CleancutError(f"{self.datadir}: the recorded backup_label fails its sha256")
        lines.append(self._write_file("backup_label", label, uid, gid) + f" (sha256 {digest})")
        spcmap = details.get("tablespace_map")
        if isinstance(spcmap, str) and spcmap:
            lines.append(self._write_file("tablespace_map", spcmap, uid, gid))
        tail = details.get("wal_tail")
        if isinstance(tail, dict) and tail.get("pieces"):
            wal_dir = self.datadir / "pg_wal"
            if wal_dir.is_symlink() or not wal_dir.is_dir():
                target = os.readlink(wal_dir) if wal_dir.is_symlink() else "nothing"
                raise CleancutError(
                    f"{wal_dir} is a link to {target}: the WAL was kept on another volume; "
                    f"restore that volume too and make {wal_dir} the folder holding its "
                    "restored WAL, then restore again"
                )
            lines += write_tail(wal_dir, tail, uid, gid)
        for name in ("postmaster.pid", "postmaster.opts"):
            with contextlib.suppress(FileNotFoundError):
                (self.datadir / name).unlink()
                lines.append(f"removed {name} (copied from the running original)")
        lines += self._fix_owner_and_mode(uid, gid)
        return lines

    def _write_file(self, name: str, text: str, uid: int, gid: int) -> str:
        path = self.datadir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
            if os.geteuid() == 0:
                os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
        return f"wrote {path}"

    def _fix_owner_and_mode(self, uid: int, gid: int) -> list[str]:
        lines = []
        mode = self.datadir.stat().st_mode & 0o777
        if mode not in (0o700, 0o750):
            self.datadir.chmod(0o700)
            lines.append(f"set {self.datadir} to mode 0700 (was {mode:04o})")
        if os.geteuid() != 0:
            return lines
        changed = 0
        for folder, dirs, files in os.walk(self.datadir):
            for entry in [*dirs, *files]:
                path = os.path.join(folder, entry)
                st = os.lstat(path)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.lchown(path, uid, gid)
                    changed += 1
        if changed:
            lines.append(f"gave {changed} file(s) back to the data directory's owner ({uid}:{gid})")
        return lines

    # -- running --------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> float:
        began = time.monotonic()
        uid, gid = _owner(self.datadir)
        if uid == 0:
            raise CleancutError(
                f"{self.datadir} is owned by root, and PostgreSQL refuses to run as root: "
                f"chown -R postgres:postgres {self.datadir} (its server's user)"
            )
        _check_reachable(self.datadir, uid, gid)
        self._make_rundir(uid, gid)
        argv = [pg_bin("pg_ctl", self.datadir), "-D", str(self.datadir), "-l", str(self.log_file)]
        argv += ["-o", self._options(), "-w", "-t", str(max(1, int(timeout))), "start"]
        done = _run_as(uid, gid, argv, cwd=self.rundir, timeout=timeout + 30)
        self._pid = self._postmaster_pid()
        if done.returncode != 0:
            raise CleancutError(
                f"PostgreSQL on {self.datadir} did not start (see {self.log_file}): "
                f"{_tail(self._log_text()) or _tail(done.stdout + done.stderr)}"
            )
        self._answer(max(1.0, timeout - (time.monotonic() - began)))
        return time.monotonic() - began

    @property
    def socket_dir(self) -> Path:
        """The folder of the server's socket: the run directory, unless the socket's path
        in it would be too long for a unix socket."""
        if len(os.fsencode(self.rundir / f".s.PGSQL.{self.port}")) <= _SOCKET_MAX:
            return self.rundir
        digest = hashlib.sha256(os.fsencode(self.rundir.absolute())).hexdigest()[:16]
        return SHORT_SOCKETS / digest

    def _make_rundir(self, uid: int, gid: int) -> None:
        for folder in (self.rundir, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            _chown(folder, uid, gid)
            folder.chmod(0o755)  # clients reach the socket
        files = {"pg_hba.conf": _HBA, "pg_ident.conf": ""}
        if not (self.datadir / "postgresql.conf").exists():  # Debian keeps it in /etc
            files["postgresql.conf"] = "# cleancut sandbox: settings come from the command line\n"
        for name, text in files.items():
            path = self.rundir / name
            path.write_text(text)
            _chown(path, uid, gid)

    def _options(self) -> str:
        settings = {
            **_SANDBOX_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "hba_file": str(self.rundir / "pg_hba.conf"),
            "ident_file": str(self.rundir / "pg_ident.conf"),
            "external_pid_file": str(self.rundir / "postgresql.pid"),  # not the original's
        }
        if (self.rundir / "postgresql.conf").exists():
            settings["config_file"] = str(self.rundir / "postgresql.conf")
        return " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in settings.items())

    def _answer(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.uri, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as exc:
                if time.monotonic() > deadline:
                    raise CleancutError(
                        f"PostgreSQL on {self.datadir} started but does not answer on "
                        f"{self.uri}: {exc} (see {self.log_file})"
                    ) from exc
                time.sleep(0.1)

    def recovery_seconds(self) -> float | None:
        return recovery_seconds_in_log(self._log_text())

    @property
    def uri(self) -> str:
        return (
            f"postgresql://{SUPERUSER}@/postgres?host={quote(str(self.socket_dir), safe='/')}"
            f"&port={self.port}"
        )

    def builtin_checks(self) -> list[CheckResult]:
        checks = [self._answers()]
        amcheck = pg_bin("pg_amcheck", self.datadir)
        if shutil.which(amcheck) is None:
            return checks
        argv = [amcheck, "--all", "--install-missing", "-h", str(self.socket_dir)]
        argv += ["-p", str(self.port), "-U", SUPERUSER]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return [*checks, CheckResult("pg_amcheck --all", False, str(exc))]
        detail = _tail(done.stdout + done.stderr) or "no corruption found"
        if done.returncode != 0:
            detail = f"exit status {done.returncode}: {detail}"
        return [*checks, CheckResult("pg_amcheck --all", done.returncode == 0, detail)]

    def _answers(self) -> CheckResult:
        import psycopg

        try:
            with psycopg.connect(self.uri, connect_timeout=10) as conn:
                row = conn.execute("SELECT version()").fetchone()
        except psycopg.Error as exc:
            return CheckResult("answers", False, str(exc).strip())
        return CheckResult("answers", True, str(row[0]) if row else "")

    def stop(self) -> None:
        try:
            pid = self._postmaster_pid() or self._pid
            if pid is None:
                return
            uid, gid = _owner(self.datadir)
            argv = [pg_bin("pg_ctl", self.datadir), "-D", str(self.datadir), "-m", "fast"]
            argv += ["-w", "-t", str(_STOP_WAIT), "stop"]
            with contextlib.suppress(CleancutError, OSError, subprocess.SubprocessError):
                _run_as(uid, gid, argv, cwd=self.rundir if self.rundir.is_dir() else Path("/"),
                        timeout=_STOP_WAIT + 10)  # fmt: skip
            if self._ours(pid):
                os.kill(pid, signal.SIGKILL)  # lingered past a fast shutdown
                _wait_gone(pid, 10)
        except Exception:  # never raises: stop runs on every path, after failures too
            return
        finally:
            self._pid = None
            if SHORT_SOCKETS in self.socket_dir.parents:
                shutil.rmtree(self.socket_dir, ignore_errors=True)

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def _ours(self, pid: int) -> bool:
        """Whether ``pid`` is a live postmaster of this data directory (its cwd)."""
        try:
            return Path(os.readlink(f"/proc/{pid}/cwd")) == Path(os.path.realpath(self.datadir))
        except OSError:
            return False

    def _log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


def _user(name: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise CleancutError(f"no system user {name!r} to own the PostgreSQL cluster") from exc
    return entry.pw_uid, entry.pw_gid


def _check_reachable(datadir: Path, uid: int, gid: int) -> None:
    """Refuse, with the fix, a data directory the server's user cannot reach: a folder on
    the way that only root may enter (a sandbox made with mode 0700)."""
    for folder in Path(os.path.realpath(datadir)).parents:
        st = folder.stat()
        if st.st_uid == uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid == gid:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            raise CleancutError(
                f"PostgreSQL runs as uid {uid}, which cannot reach {datadir}: {folder} is "
                f"mode {st.st_mode & 0o777:04o}; allow it through (chmod o+x {folder})"
            )


def _chown(path: Path, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, gid)


def _owner(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise CleancutError(f"{path}: {exc.strerror}: no data directory there") from exc
    return st.st_uid, st.st_gid


def _run_as(
    uid: int, gid: int, argv: list[str], *, cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``argv`` run as ``uid``:``gid`` (from root), in ``cwd``, with a clean environment."""
    switch: dict[str, Any] = {}
    if os.geteuid() != uid:
        if os.geteuid() != 0:
            raise CleancutError(f"{argv[0]} must run as uid {uid}: run cleancut as root")
        switch = {"user": uid, "group": gid, "extra_groups": []}
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(cwd)}
    try:
        return subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
            check=False, **switch,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise CleancutError(f"{argv[0]} not found: install PostgreSQL's server package") from exc
    except subprocess.TimeoutExpired as exc:
        raise CleancutError(f"{' '.join(argv[:1])} did not finish within {timeout:g}s") from exc


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


def _tail(text: str) -> str:
    text = text.strip()
    return text[-_LOG_TAIL:] if len(text) > _LOG_TAIL else text
