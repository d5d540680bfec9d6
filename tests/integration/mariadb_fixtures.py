"""A real MariaDB for the writer's tests: its data directory on a loop-mounted disk of the
datastore (the volume a cut freezes and clones), started by :class:`MariadbServer` — the
same class that starts restored copies — with its binary log on.

Import the fixtures into a test module: ``from tests.integration.mariadb_fixtures import
mariadb_fixture  # noqa: F401`` (the fixture is named ``mariadb``).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest

from cleancut.demo.disks import Datastore
from cleancut.writers.mysqlserver import MariadbServer

#: small enough for a 400 MiB disk and quick to start; not the default page size, so a
#: restored copy shows that the server reads it from the files
SMALL = ("--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M", "--innodb-page-size=8k")

SCHEMA = [
    "CREATE DATABASE app",
    "CREATE TABLE app.orders (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(40)) ENGINE=InnoDB",
    "CREATE TABLE app.probe (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB",
    "CREATE TABLE app.blocker (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB",
    "INSERT INTO app.blocker VALUES (1, 'first')",
]


@dataclass
class Mariadb:
    """The server, the volume holding its data directory, and ways to poke at it."""

    server: MariadbServer
    mount: Path

    @property
    def socket(self) -> Path:
        return self.server.socket

    def connect(self, read_timeout: float = 30.0) -> pymysql.Connection[Any]:
        return self.server.connect(read_timeout=read_timeout)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return list(cur.fetchall())
        finally:
            conn.close()

    def one(self, statement: str) -> Any:
        return self.sql(statement)[0][0]

    def guest(
        self, *, lock_timeout: str = "3s", volume_path: Path | None = None, extra: str = ""
    ) -> str:
        """A guest config: the disk as image volume ``db``, the server as ``databases.shop``."""
        path = volume_path or self.mount
        return (
            f'[volumes.db]\npath = "{path}"\nsnapshot = "image"\nfreeze = true\n\n'
            f'[databases.shop]\nkind = "mariadb"\nsocket = "{self.socket}"\nvolume = "db"\n'
            f'lock_timeout = "{lock_timeout}"\n{extra}'
        )

    def connection_ids(self) -> set[int]:
        """Every client connection the server has now (not its own threads)."""
        rows = self.sql(
            "SELECT id FROM information_schema.processlist "
            "WHERE command <> 'Daemon' AND id <> CONNECTION_ID()"
        )
        return {int(row[0]) for row in rows}

    def insert_seconds(self, timeout: float = 30.0) -> float:
        """One INSERT from a new connection; how long it took (raises when it fails)."""
        started = time.monotonic()
        conn = self.connect(read_timeout=timeout)
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO app.probe (v) VALUES ('probe')")
        finally:
            conn.close()
        return time.monotonic() - started

    def read_only(self) -> bool:
        return bool(self.one("SELECT @@GLOBAL.read_only"))


@pytest.fixture(name="mariadb")
def mariadb_fixture(datastore: Datastore, trusted_dir: Path) -> Iterator[Mariadb]:
    """MariaDB 10.11, binary log on, data directory ``mysql`` on disk ``db`` of the datastore."""
    mount = datastore.add_disk("db", datastore.root / "db", 400).mountpoint
    server = MariadbServer.initialise(
        mount / "mysql", trusted_dir / "mysqld", log_bin=True, options=SMALL
    )
    try:
        server.start()
        db = Mariadb(server, mount)
        for statement in SCHEMA:
            db.sql(statement)
        yield db
    finally:
        # a test that failed while frozen must not leave the server unable to stop
        subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True, check=False)
        server.stop()


INSERTER = """
import sys, time, pymysql
conn = pymysql.connect(unix_socket=sys.argv[1], user="root", autocommit=True, read_timeout=120)
cur = conn.cursor()
while True:
    before = time.time()
    cur.execute("INSERT INTO app.orders (note) VALUES ('order')")
    print(cur.lastrowid, before, time.time(), flush=True)
    time.sleep(0.002)
"""


@dataclass
class Order:
    id: int
    sent: float  # wall clock, just before the INSERT was sent
    committed: float  # wall clock, when its commit had returned


@dataclass
class Inserter:
    """A process inserting orders one after another, each committed on its own."""

    proc: subprocess.Popen[str]
    orders: list[Order] = field(default_factory=list)

    @classmethod
    def start(cls, db: Mariadb) -> Inserter:
        proc = subprocess.Popen(
            [sys.executable, "-c", INSERTER, str(db.socket)], stdout=subprocess.PIPE, text=True
        )
        inserter = cls(proc)
        threading.Thread(target=inserter._read, daemon=True).start()
        return inserter

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ident, sent, committed = line.split()
            self.orders.append(Order(int(ident), float(sent), float(committed)))

    def wait_for(self, count: int, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while len(self.orders) < count:
            assert self.proc.poll() is None, "the inserter died"
            assert time.monotonic() < deadline, f"fewer than {count} orders in {within}s"
            time.sleep(0.01)

    def advances(self, within: float) -> bool:
        start = len(self.orders)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if len(self.orders) > start:
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture(name="inserter")
def inserter_fixture(mariadb: Mariadb) -> Iterator[Inserter]:
    running = Inserter.start(mariadb)
    try:
        running.wait_for(50)
        yield running
    finally:
        running.stop()


class Prober:
    """INSERTs one after another on one connection from a thread, each timed: how long the
    server made writers wait while something (a lock, a frozen disk) was in the way."""

    def __init__(self, db: Mariadb) -> None:
        self.conn = db.connect(read_timeout=60)
        with self.conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            self.conn_id = int(cur.fetchall()[0][0])
        self.latencies: list[float] = []
        self.read_only: set[int] = set()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                while not self._stop.is_set():
                    started = time.monotonic()
                    cur.execute("INSERT INTO app.probe (v) VALUES ('prober')")
                    self.latencies.append(time.monotonic() - started)
                    cur.execute("SELECT @@GLOBAL.read_only")
                    row = cur.fetchone()
                    self.read_only.add(int(row[0]) if row else -1)
                    time.sleep(0.01)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(timeout=60)
        self.conn.close()
        if self.error is not None:
            raise AssertionError(f"a probe INSERT failed: {self.error}")
        return self.latencies
