"""What the writer benchmarks share: real database servers on loop-mounted disks, a client
that commits one row at a time, and cuts by the real coordinator with a local guest.

One workspace (under :func:`bench.common.workspace`) holds an XFS datastore of ext4 disk
images (DESIGN.md §8 Disks), a restic repository and the configs. Each database gets a
disk of its own, declared ``snapshot = "image"``, ``freeze = true``; its server keeps its
sockets and log in the workspace, off the disk a cut freezes (a frozen log would stall
the server). The servers are the classes restore and ``cleancut verify`` start restored
copies with (:class:`PostgresqlServer`, :class:`MariadbServer`), made as the integration
fixtures make them.

Everything is undone by :func:`torn_down`'s stack in reverse order: load processes,
servers, disks, the datastore, the workspace and the coordinator's run lock files of the
run's applications (their names carry the workspace's tag, so no two runs share one);
stop signals are held back meanwhile, and SIGTERM unwinds like Ctrl-C. The servers run as
``postgres`` and ``mysql``, so the benchmarks' base folder gets the search bit for others
(mode 0711, as ``cleancut verify``'s sandbox base has).
"""

from __future__ import annotations

import bisect
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from bench.common import REPRODUCE, machine_report, workspace, write_private
from cleancut import signals
from cleancut.config.load import LoadedApp, load_app
from cleancut.coordinator import Coordinator
from cleancut.coordinator.repository import repository_access
from cleancut.coordinator.runlock import lock_folder
from cleancut.demo.disks import Datastore, Disk
from cleancut.errors import CleancutError, Interrupted
from cleancut.manifest import Manifest
from cleancut.mover.restic import ResticMover
from cleancut.writers.mysqlserver import MariadbServer
from cleancut.writers.pgserver import PostgresqlServer

#: The MariaDB options of the integration fixtures (tests/integration/mariadb_fixtures.py):
#: small enough for a 400 MiB disk and quick to start.
MARIADB_SMALL = (
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=16M",
    "--innodb-page-size=8k",
)
#: Appended to a new cluster's postgresql.conf: checkpoints come often enough that the WAL
#: fits a small disk beside the data.
PG_SETTINGS = "\n# cleancut bench: a small disk\nmax_wal_size = 96MB\nmin_wal_size = 32MB\n"
HOST = "db1"
VOLUME = "data"
#: What a reader runs to get the same figures.
HOW = (
    "as root, from a clone: "
    "`.venv/bin/python -m bench.writers [--cuts N] [--quick] [--only stall|rto]`"
)
#: The client's sleep between commits.
CLIENT_PAUSE = 0.002

# Runs as `python -c CLIENT KIND TARGET PAUSE`: one INSERT per commit, as fast as it goes,
# printing the wall clock each time a commit has returned.
CLIENT = r"""
import sys, time
kind, target, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
if kind == "sqlite":
    import sqlite3
    conn = sqlite3.connect(target, timeout=300, isolation_level=None)
    def commit():
        conn.execute("INSERT INTO rows (at) VALUES (?)", (time.time(),))
elif kind == "postgresql":
    import psycopg
    conn = psycopg.connect(target, autocommit=True)
    def commit():
        conn.execute("INSERT INTO rows (at) VALUES (%s)", (time.time(),))
else:
    import pymysql
    conn = pymysql.connect(unix_socket=target, user="root", autocommit=True, read_timeout=300)
    cur = conn.cursor()
    def commit():
        cur.execute("INSERT INTO app.rows (at) VALUES (%s)", (time.time(),))
while True:
    commit()
    print(repr(time.time()), flush=True)
    time.sleep(pause)
"""


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: everything is torn down


@contextmanager
def torn_down() -> Iterator[ExitStack]:
    """An ExitStack that is unwound on every path with stop signals held back, so Ctrl-C
    cannot cut the teardown short; SIGTERM meanwhile unwinds like Ctrl-C."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    stack = ExitStack()
    try:
        yield stack
    finally:
        try:
            with signals.deferred() as received:
                stack.close()
        finally:
            signal.signal(signal.SIGTERM, previous)
        if received:
            raise KeyboardInterrupt


@dataclass(frozen=True)
class Bed:
    """The workspace: its datastore, the repository's password, and a tag that makes the
    application names of this run its own."""

    root: Path
    tag: str
    datastore: Datastore
    password: Path
    #: the application names written so far (their run locks go with the bed)
    apps: list[str] = field(default_factory=list)

    def disk(self, name: str, mib: int) -> Disk:
        """A new ext4 disk image on the datastore, mounted at ``vm/NAME``."""
        return self.datastore.add_disk(name, self.root / "vm" / name, mib)

    def app(self, name: str, guest: str) -> Path:
        """Write a guest config and the application naming it (one local host); the
        application config. Every application of a bed shares one restic repository."""
        etc = self.root / "etc"
        etc.mkdir(mode=0o700, exist_ok=True)
        guest_file = etc / f"guest-{name}.toml"
        write_private(guest_file, f'staging = "{self.root / "staging"}"\n\n{guest}')
        app = etc / f"{name}.toml"
        self.apps.append(f"bench-writers-{self.tag}-{name}")
        write_private(
            app,
            f'name = "{self.apps[-1]}"\nfreeze_timeout = "10s"\n'
            f'on_failure = "degrade"\ncatalog = "{self.root / f"{name}.catalog.sqlite"}"\n\n'
            f'[repository]\nurl = "{self.root / "repository"}"\n'
            f'password_file = "{self.password}"\n\n'
            f'[hosts.{HOST}]\nconnect = "local"\nguest_config = "{guest_file}"\n',
        )
        return app


def open_bed(stack: ExitStack, prefix: str, datastore_mib: int) -> Bed:
    """A workspace with a datastore of ``datastore_mib`` MiB; undone when ``stack`` closes."""
    root = workspace(prefix)
    stack.callback(subprocess.run, ["rm", "-rf", "--one-file-system", str(root)], check=False)
    store = stack.enter_context(
        Datastore(root / "hypervisor", size_mib=datastore_mib, remove_images=True)
    )
    (root / "staging").mkdir(mode=0o700)
    password = root / "repository.pass"
    write_private(password, os.urandom(16).hex() + "\n")
    bed = Bed(root, root.name.removeprefix(prefix).lower(), store, password)
    stack.callback(remove_run_locks, bed)
    return bed


def remove_run_locks(bed: Bed) -> None:
    """Remove the coordinator's run lock file of each application of ``bed`` (their names
    are this run's own, so nobody else holds or waits for them)."""
    for app in bed.apps:
        (lock_folder() / f"{app}.lock").unlink(missing_ok=True)


def volume_toml(disk: Disk) -> str:
    """The disk as the image volume every config of it declares."""
    return f'[volumes.{VOLUME}]\npath = "{disk.mountpoint}"\nsnapshot = "image"\nfreeze = true\n'


def start_postgresql(stack: ExitStack, bed: Bed, name: str, mib: int) -> PostgresqlServer:
    """A new cluster on its own ``mib`` MiB disk (as the fixtures' ``make_cluster``), with
    :data:`PG_SETTINGS`, started; stopped when ``stack`` closes (before its disk goes)."""
    disk = bed.disk(name, mib)
    server = PostgresqlServer.initialise(disk.mountpoint / "pgdata", bed.root / "run" / name)
    with (server.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(PG_SETTINGS)
    stack.callback(server.stop)
    server.start()
    return server


def start_mariadb(stack: ExitStack, bed: Bed, name: str, mib: int) -> MariadbServer:
    """MariaDB with its binary log and the fixtures' small options on its own disk, with a
    table ``app.rows``; stopped when ``stack`` closes."""
    disk = bed.disk(name, mib)
    server = MariadbServer.initialise(
        disk.mountpoint / "mysql", bed.root / "run" / name, log_bin=True, options=MARIADB_SMALL
    )
    stack.callback(server.stop)
    server.start()
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE app")
            cur.execute(
                "CREATE TABLE app.rows (id BIGINT AUTO_INCREMENT PRIMARY KEY, at DOUBLE) "
                "ENGINE=InnoDB"
            )
    finally:
        conn.close()
    return server


def make_sqlite(disk: Disk) -> Path:
    """A SQLite database in WAL mode with a table ``rows`` on ``disk``."""
    path = disk.mountpoint / "bench.db"
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, at REAL)")
        conn.commit()
    finally:
        conn.close()
    return path


def pg_sql(server: PostgresqlServer, statement: str) -> list[tuple[object, ...]]:
    """One statement on a new autocommit connection; its rows."""
    import psycopg

    with psycopg.connect(server.uri, autocommit=True, connect_timeout=10) as conn:
        cursor = conn.execute(statement.encode())
        return cursor.fetchall() if cursor.description is not None else []


def stop_process(proc: subprocess.Popen[Any], how: int = signal.SIGKILL) -> None:
    """End a process this benchmark started, by its pid: ``how``, then SIGKILL."""
    for sig in (how, signal.SIGKILL):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue


class CommitLog:
    """A client process committing one small row at a time (:data:`CLIENT`); when each
    commit returned, on the wall clock (the guest's instants are on it too: one host)."""

    def __init__(self, kind: str, target: str, log: Path) -> None:
        self.kind = kind
        self.times: list[float] = []
        self._log: IO[str] = log.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT, kind, target, str(CLIENT_PAUSE)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.times.append(float(line))

    def wait_for(self, count: int, within: float = 60.0) -> None:
        """Until ``count`` commits returned; raises when the client died or is stuck."""
        deadline = time.monotonic() + within
        while len(self.times) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise CleancutError(f"the {self.kind} client stopped: see {self._log.name}")
            time.sleep(0.01)

    def longest_gap(self, start: float, end: float, within: float = 30.0) -> float:
        """The longest gap between two successive commits that overlaps ``[start, end]``:
        what this client waited through the cut. Waits for the first commit after ``end``."""
        deadline = time.monotonic() + within
        while not self.times or self.times[-1] <= end:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise CleancutError(f"the {self.kind} client made no commit after the cut")
            time.sleep(0.01)
        times = list(self.times)
        first = max(1, bisect.bisect_left(times, start))
        after = bisect.bisect_right(times, end)  # the first commit after the window
        return max(times[k] - times[k - 1] for k in range(first, after + 1))

    def rate(self) -> float:
        """Commits per second over the client's life so far."""
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])

    def stop(self) -> None:
        """Kill the client (by its pid) and close its log."""
        stop_process(self.proc)
        self._reader.join(timeout=5)
        self._log.close()


def start_client(stack: ExitStack, bed: Bed, kind: str, target: str) -> CommitLog:
    """A :class:`CommitLog` client, already committing; killed when ``stack`` closes."""
    client = CommitLog(kind, target, bed.root / f"client-{kind}.log")
    stack.callback(client.stop)
    client.wait_for(20)
    return client


class Cutter:
    """One application, cut by the real :class:`Coordinator` (a local guest)."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.loaded: LoadedApp = load_app(config)
        self.access = repository_access(self.loaded.config.repository, config_file=str(config))
        self.mover = ResticMover(self.access)

    def cut(self) -> Manifest:
        """One committed recovery point. A Ctrl-C the coordinator turned into
        :class:`Interrupted` (every host released) stops the benchmark, not only this cut."""
        try:
            return Coordinator(self.loaded, access=self.access, mover=self.mover).run().manifest
        except Interrupted as exc:
            raise KeyboardInterrupt from exc


def machine(places: dict[str, Path]) -> str:
    """The machine report of :mod:`bench.common`, saying how to run these benchmarks."""
    return machine_report(places).replace(REPRODUCE, HOW)


def failures(errors: dict[str, list[str]]) -> list[str]:
    """One line per distinct error of each method: how often it came."""
    lines = []
    for name, found in errors.items():
        for error in sorted(set(found)):
            lines.append(f"{name}: failed {found.count(error)}x: {error}")
    return lines
