"""The write stall a host reports counts only holds that stop writes.

PostgreSQL's ``pg_backup_start`` lets the application write on (the freeze stalls it),
while MariaDB's ``FLUSH TABLES WITH READ LOCK`` and SQLite's ``BEGIN IMMEDIATE`` stop it.
:class:`~cleancut.guest.writer_set.WriterSet` tells the session which hold blocks, and
ends the blocking holds first, so the application writes again as early as it can and
the stall ends before the slow ``pg_backup_stop``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cleancut.config.guest import Database, MariadbDatabase, PostgresqlDatabase
from cleancut.guest import writer_set
from cleancut.guest.writer_set import WriterSet
from cleancut.writers import Writer
from cleancut.writers.mysql import MariadbWriter
from cleancut.writers.postgresql import PostgresqlWriter


class _Recording(Writer[Any]):
    """Records its hold and release in ``events`` instead of reaching a server."""

    def __init__(self, name: str, blocks: bool, events: list[str]) -> None:
        self.name = name
        self.blocks_writes = blocks
        self.events = events

    def check(self) -> dict[str, Any]:
        return {}

    def locations(self) -> dict[str, Path]:
        return {}

    def prepare(self) -> dict[str, Any]:
        return {}

    def hold(self, seconds: float) -> None:
        self.events.append(f"hold {self.name}")

    def release(self) -> dict[str, Any]:
        self.events.append(f"release {self.name}")
        return {}

    def abort(self) -> None:
        self.events.append(f"abort {self.name}")

    def close(self) -> None:
        pass


def test_the_real_writers_say_whether_their_hold_blocks_writes() -> None:
    assert PostgresqlWriter.blocks_writes is False
    assert MariadbWriter.blocks_writes is True


@pytest.mark.parametrize("order", [("pg", "maria"), ("maria", "pg")])
def test_blocking_holds_end_first_and_the_stall_ends_with_them(
    monkeypatch: pytest.MonkeyPatch, order: tuple[str, str]
) -> None:
    events: list[str] = []
    configs: dict[str, Database] = {
        "pg": PostgresqlDatabase(kind="postgresql", dsn="host=/nowhere", volume="data"),
        "maria": MariadbDatabase(kind="mariadb", socket=Path("/nowhere.sock"), volume="data"),
    }
    blocking = {"pg": False, "maria": True}
    monkeypatch.setattr(
        writer_set, "make_writer", lambda name, _db: _Recording(name, blocking[name], events)
    )
    writers = WriterSet({name: configs[name] for name in order})

    writers.hold(lambda: 10.0, on_first=lambda blocks: events.append(f"starts blocks={blocks}"))
    writers.release(on_unblocked=lambda: events.append("unblocked"))

    expected_holds = []
    for name in order:
        expected_holds += [f"starts blocks={blocking[name]}", f"hold {name}"]
    assert events == [*expected_holds, "release maria", "unblocked", "release pg"]


def test_without_a_blocking_hold_the_stall_ends_before_any_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(
        writer_set, "make_writer", lambda name, _db: _Recording(name, False, events)
    )
    writers = WriterSet(
        {"pg": PostgresqlDatabase(kind="postgresql", dsn="host=/nowhere", volume="data")}
    )
    writers.hold(lambda: 10.0, on_first=lambda _blocks: None)
    writers.release(on_unblocked=lambda: events.append("unblocked"))
    assert events == ["hold pg", "unblocked", "release pg"]


def test_with_only_blocking_holds_the_stall_ends_after_the_last_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    fake = lambda name, _db: _Recording(name, True, events)  # noqa: E731
    monkeypatch.setattr(writer_set, "make_writer", fake)
    maria = MariadbDatabase(kind="mariadb", socket=Path("/nowhere.sock"), volume="data")
    writers = WriterSet({"a": maria, "b": maria})
    writers.hold(lambda: 10.0, on_first=lambda _blocks: None)
    writers.release(on_unblocked=lambda: events.append("unblocked"))
    assert events == ["hold a", "hold b", "release a", "release b", "unblocked"]
