"""PostgreSQL fixtures: a real server whose data directory lives on a loop-mounted disk.

``pg_cluster`` makes a fresh cluster with :class:`~cleancut.writers.pgserver.PostgresqlServer`
(the class restore and ``cleancut verify`` start restored copies with) on its own datastore
disk, its sockets and log outside that disk (a frozen log would stall the server), and
stops it on every path. :class:`RowWriter` inserts numbered rows in a loop and reports
each commit, so a test can tell which rows a restored copy must have.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cleancut.demo.disks import Datastore, Disk
from cleancut.writers.pgserver import PostgresqlServer

#: The session name the writer's held session carries (``application_name``).
WRITER_SESSION = "cleancut writer %"

ROW_WRITER = """
import sys, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
n = 0
while True:
    n += 1
    conn.execute("INSERT INTO rows (id) VALUES (%s)", (n,))
    print(n, repr(time.time()), flush=True)
    time.sleep(0.004)
"""


@dataclass
class PgCluster:
    """A running server on a datastore disk; ``datadir`` is ``disk.mountpoint / "pgdata"``."""

    server: PostgresqlServer
    disk: Disk

    @property
    def datadir(self) -> Path:
        return self.server.datadir

    @property
    def uri(self) -> str:
        return self.server.uri

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.uri, autocommit=True, connect_timeout=5)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            conn.execute("SET statement_timeout = 10000")
            cursor = conn.execute(query.encode(), params or None)
            return cursor.fetchall() if cursor.description is not None else []

    def guest_toml(self, volume: str = "pg", *, lock_timeout: str | None = None) -> str:
        """An image volume for the disk and ``[databases.main]`` on it."""
        text = (
            f'[volumes.{volume}]\npath = "{self.disk.mountpoint}"\nsnapshot = "image"\n'
            f'freeze = true\n\n[databases.main]\nkind = "postgresql"\ndsn = "{self.uri}"\n'
            f'volume = "{volume}"\n'
        )
        if lock_timeout is not None:
            text += f'lock_timeout = "{lock_timeout}"\n'
        return text

    def writer_sessions(self) -> list[tuple[Any, ...]]:
        """The writer's sessions still connected: ``(pid, state, query)``."""
        return self.sql(
            "SELECT pid, state, query FROM pg_stat_activity WHERE application_name LIKE %s",
            WRITER_SESSION,
        )

    def assert_released(self, within: float = 10.0) -> None:
        """No writer session is left (a non-exclusive backup lives exactly as long as its
        session), a new backup starts and stops in another session, and a write commits."""
        deadline = time.monotonic() + within
        while self.writer_sessions():
            assert time.monotonic() < deadline, f"still held: {self.writer_sessions()}"
            time.sleep(0.05)
        with self.connect() as conn:
            conn.execute("SET statement_timeout = 5000")
            conn.execute("SELECT pg_backup_start('probe', fast => true)")
            conn.execute("SELECT * FROM pg_backup_stop(wait_for_archive => false)")
            conn.execute("CREATE TABLE IF NOT EXISTS probe (at double precision)")
            conn.execute("INSERT INTO probe VALUES (%s)", (time.time(),))


class RowWriter:
    """Inserts rows 1, 2, 3, ... one commit each, and remembers when each commit returned."""

    def __init__(self, cluster: PgCluster) -> None:
        cluster.sql("CREATE TABLE IF NOT EXISTS rows (id bigint PRIMARY KEY)")
        self.committed: list[tuple[int, float]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ROW_WRITER, cluster.uri], stdout=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            number, at = line.split()
            self.committed.append((int(number), float(at)))

    def wait_for(self, rows: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.committed) < rows:
            assert time.monotonic() < deadline, f"only {len(self.committed)} rows committed"
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


def make_cluster(
    datastore: Datastore, folder: Path, name: str = "pg", *, initdb_args: tuple[str, ...] = ()
) -> PgCluster:
    """A started cluster on a new 256 MiB ext4 disk of ``datastore``; ``folder`` holds its
    run folder (sockets, log)."""
    disk = datastore.add_disk(name, datastore.root / name, 256)
    server = PostgresqlServer.initialise(
        disk.mountpoint / "pgdata", folder / f"{name}-run", initdb_args=initdb_args
    )
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return PgCluster(server, disk)


@pytest.fixture
def pg_cluster(datastore: Datastore, trusted_dir: Path) -> Iterator[PgCluster]:
    """A running PostgreSQL server on its own datastore disk; stopped afterwards."""
    cluster = make_cluster(datastore, trusted_dir)
    try:
        yield cluster
    finally:
        cluster.server.stop()


@pytest.fixture
def servers() -> Iterator[list[PostgresqlServer]]:
    """Collects servers a test starts (restored copies); stops them all afterwards."""
    started: list[PostgresqlServer] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def postgres_owned(path: Path) -> Path:
    """``path`` created as a folder owned by ``postgres`` (mode 0700)."""
    import pwd

    entry = pwd.getpwnam("postgres")
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)
    return path
