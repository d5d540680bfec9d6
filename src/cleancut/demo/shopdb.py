"""The shop's two databases behind one small interface: SQLite files, PostgreSQL or MariaDB.

A database is named by a *target*: a SQLite file's path, a ``postgresql://`` URI (any
libpq URI) or a ``mysql://user[:password]@host[:port]/database[?unix_socket=PATH]`` URI
(``mariadb://`` too). The same shop, load generator and invariant checks then run on
one machine's SQLite files (``cleancut demo``) or on servers on three hosts (the
cross-database proof): only the target strings change.
"""

from __future__ import annotations

import abc
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cleancut.errors import CleancutError

#: ``(table, columns)`` of the shop's two tables, written the same way in every dialect.
TABLES = {
    "orders": "customer VARCHAR(64) NOT NULL, amount_cents INTEGER NOT NULL, "
    "created DOUBLE PRECISION NOT NULL",
    "invoices": "order_id INTEGER NOT NULL UNIQUE, amount_cents INTEGER NOT NULL, "
    "created DOUBLE PRECISION NOT NULL",
}


@dataclass(frozen=True)
class ShopTargets:
    """Where the shop's three resources live: two database targets and the receipts folder."""

    orders: str
    invoices: str
    receipts_dir: Path


def is_server(target: str) -> bool:
    """Whether ``target`` names a database server (a URI) rather than a SQLite file."""
    return target.startswith(("postgresql://", "postgres://", "mysql://", "mariadb://"))


class ShopDb(abc.ABC):
    """One of the shop's databases: create its table, add rows, read ids, check it."""

    kind: str

    @abc.abstractmethod
    def create(self, table: str) -> None:
        """Create ``table`` (``orders`` or ``invoices``) if it does not exist."""

    @abc.abstractmethod
    def add_order(self, customer: str, amount_cents: int) -> int:
        """Insert one order and commit; returns its id."""

    @abc.abstractmethod
    def add_invoice(self, order_id: int, amount_cents: int) -> None:
        """Insert the invoice of ``order_id`` and commit."""

    @abc.abstractmethod
    def ids(self, table: str) -> set[int]:
        """Order ids in ``table``: ``orders.id`` or ``invoices.order_id``."""

    @abc.abstractmethod
    def intact(self) -> bool:
        """The database's own integrity check (``PRAGMA integrity_check``, ``CHECK TABLE``;
        a PostgreSQL server that answers is intact here: ``pg_amcheck`` is verify's)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Disconnect; idempotent."""

    def __enter__(self) -> ShopDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_db(target: str, *, busy_timeout: float = 60.0, create: bool = False) -> ShopDb:
    """The shop database at ``target`` (see the module docstring for the forms). A SQLite
    file is created only with ``create``: a missing one is an error, never a new database."""
    if target.startswith(("postgresql://", "postgres://")):
        return _PostgresqlDb(target)
    if target.startswith(("mysql://", "mariadb://")):
        return _MariadbDb(target, busy_timeout)
    return _SqliteDb(Path(target), busy_timeout, create)


def create_tables(shop: ShopTargets, *, create: bool = False) -> None:
    """Create the orders and invoices tables (and, with ``create``, SQLite files)."""
    for target, table in ((shop.orders, "orders"), (shop.invoices, "invoices")):
        with open_db(target, create=create) as db:
            db.create(table)


class _SqliteDb(ShopDb):
    kind = "sqlite"

    def __init__(self, path: Path, busy_timeout: float, create: bool) -> None:
        self.path = path
        mode = "rwc" if create else "rw"
        try:
            self.conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=busy_timeout)
        except sqlite3.Error as exc:
            raise CleancutError(f"{path}: cannot open the shop database: {exc}") from exc
        self.conn.execute("PRAGMA synchronous=NORMAL")

    def create(self, table: str) -> None:
        self.conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
        columns = TABLES[table].replace("VARCHAR(64)", "TEXT").replace("DOUBLE PRECISION", "REAL")
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, {columns})"
        )
        self.conn.commit()

    def add_order(self, customer: str, amount_cents: int) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO orders (customer, amount_cents, created) VALUES (?, ?, ?)",
                (customer, amount_cents, time.time()),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def add_invoice(self, order_id: int, amount_cents: int) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO invoices (order_id, amount_cents, created) VALUES (?, ?, ?)",
                (order_id, amount_cents, time.time()),
            )

    def ids(self, table: str) -> set[int]:
        column = "id" if table == "orders" else "order_id"
        return {row[0] for row in self.conn.execute(f"SELECT {column} FROM {table}")}

    def intact(self) -> bool:
        try:
            return [row[0] for row in self.conn.execute("PRAGMA integrity_check")] == ["ok"]
        except sqlite3.DatabaseError:
            return False

    def close(self) -> None:
        self.conn.close()


class _PostgresqlDb(ShopDb):
    kind = "postgresql"

    def __init__(self, uri: str) -> None:
        import psycopg

        try:
            self.conn = psycopg.connect(uri, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise CleancutError(f"{uri}: cannot connect to the shop database: {exc}") from exc

    def create(self, table: str) -> None:
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id SERIAL PRIMARY KEY, {TABLES[table]})"
        )

    def add_order(self, customer: str, amount_cents: int) -> int:
        row = self.conn.execute(
            "INSERT INTO orders (customer, amount_cents, created) VALUES (%s, %s, %s) RETURNING id",
            (customer, amount_cents, time.time()),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def add_invoice(self, order_id: int, amount_cents: int) -> None:
        self.conn.execute(
            "INSERT INTO invoices (order_id, amount_cents, created) VALUES (%s, %s, %s)",
            (order_id, amount_cents, time.time()),
        )

    def ids(self, table: str) -> set[int]:
        column = "id" if table == "orders" else "order_id"
        return {int(row[0]) for row in self.conn.execute(f"SELECT {column} FROM {table}")}

    def intact(self) -> bool:
        return self.conn.execute("SELECT 1").fetchone() == (1,)

    def close(self) -> None:
        self.conn.close()


def mysql_connect_args(uri: str) -> dict[str, Any]:
    """PyMySQL's keyword arguments for a ``mysql://`` (or ``mariadb://``) URI."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    args: dict[str, Any] = {"user": unquote(parts.username or "root")}
    if parts.password is not None:
        args["password"] = unquote(parts.password)
    if "unix_socket" in query:
        args["unix_socket"] = query["unix_socket"][0]
    else:
        args["host"] = parts.hostname or "127.0.0.1"
        args["port"] = parts.port or 3306
    database = parts.path.lstrip("/")
    if database:
        args["database"] = unquote(database)
    return args


class _MariadbDb(ShopDb):
    kind = "mariadb"

    def __init__(self, uri: str, busy_timeout: float) -> None:
        import pymysql

        self.uri = uri
        args = mysql_connect_args(uri)
        self.database = args.pop("database", "shop")
        try:
            self.conn = pymysql.connect(autocommit=True, connect_timeout=10, **args)
            with self.conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
                cur.execute(f"USE `{self.database}`")
                cur.execute("SET SESSION innodb_lock_wait_timeout = %s", (int(busy_timeout),))
        except pymysql.Error as exc:
            raise CleancutError(f"{uri}: cannot connect to the shop database: {exc}") from exc

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def create(self, table: str) -> None:
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {table} "
            f"(id INTEGER AUTO_INCREMENT PRIMARY KEY, {TABLES[table]}) ENGINE=InnoDB"
        )

    def add_order(self, customer: str, amount_cents: int) -> int:
        with self.conn.cursor() as cur:
            cur.execute(
                "INSERT INTO orders (customer, amount_cents, created) VALUES (%s, %s, %s)",
                (customer, amount_cents, time.time()),
            )
            return int(cur.lastrowid)

    def add_invoice(self, order_id: int, amount_cents: int) -> None:
        self._execute(
            "INSERT INTO invoices (order_id, amount_cents, created) VALUES (%s, %s, %s)",
            (order_id, amount_cents, time.time()),
        )

    def ids(self, table: str) -> set[int]:
        column = "id" if table == "orders" else "order_id"
        return {int(row[0]) for row in self._execute(f"SELECT {column} FROM {table}")}

    def intact(self) -> bool:
        tables = [row[0] for row in self._execute("SHOW TABLES")]
        if not tables:
            return True
        rows = self._execute("CHECK TABLE " + ", ".join(f"`{t}`" for t in tables))
        errors = [row for row in rows if row[2] == "error"]
        statuses = [row for row in rows if row[2] == "status"]
        return not errors and all(row[3] == "OK" for row in statuses)

    def close(self) -> None:
        if self.conn.open:
            self.conn.close()
