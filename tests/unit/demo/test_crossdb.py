"""The cross-database proof's bookkeeping: its configs parse, its table counts right."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cleancut.config.application import AppConfig
from cleancut.config.guest import MariadbDatabase, PostgresqlDatabase
from cleancut.config.load import parse_guest, parse_toml, validate
from cleancut.demo import hostconfigs
from cleancut.demo.crossdb import (
    CLEANCUT,
    COLUMNS,
    PER_RESOURCE,
    Drill,
    DrillRow,
    _json_report,
    expectations,
    quantile,
)
from cleancut.demo.invariants import InvariantReport

CLEAN = InvariantReport(10, 10, 10, 0, 0, 0, {"orders": True, "invoices": True})
BROKEN = InvariantReport(10, 14, 12, 6, 0, 0, {"orders": True, "invoices": True}, (11, 12))


def _drill(report: InvariantReport | None, *, passed: bool = True, rto: float = 2.0) -> Drill:
    recovery: dict[str, float | None] = {"orders": 0.1, "invoices": None}
    return Drill(report, passed, True, rto, recovery, [], rto / 2)


def test_quantile_is_nearest_rank_and_none_for_nothing() -> None:
    assert quantile([], 50) is None
    assert quantile([3.0], 99) == 3.0
    assert quantile([4.0, 1.0, 3.0, 2.0, 5.0], 50) == 3.0
    assert quantile([float(i) for i in range(1, 101)], 99) == 99.0


def test_a_row_counts_broken_backups_and_prints_every_column() -> None:
    row = DrillRow("m", "application", [_drill(CLEAN), _drill(BROKEN), _drill(None, rto=4.0)])
    row.stalls = [0.05, 0.07]
    assert row.broken_backups == 2  # a shop that could not be read is broken too
    assert (row.orphans, row.started, row.passed) == (6, 3, 3)
    cells = row.cells()
    assert len(cells) == len(COLUMNS)
    assert cells[COLUMNS.index("write stall p50")] == "50.0 ms"
    assert cells[COLUMNS.index("RTO p50")] == "2.00 s"
    assert cells[COLUMNS.index("MariaDB recovery p50")] == "-"
    json.dumps(row.as_dict())  # JSON-ready


def test_the_shops_check_output_is_read_back_and_garbage_is_not() -> None:
    detail = "exit status 1\n" + json.dumps(BROKEN.to_dict()) + "\n6 orphans, ..."
    assert _json_report(detail) == BROKEN
    assert _json_report("exit status 2\ncleancut.demo.check: not found") is None
    assert _json_report('{"orders": "many"}') is None


def test_expectations_name_what_did_not_hold() -> None:
    good = {
        PER_RESOURCE: DrillRow(PER_RESOURCE, "none", [_drill(BROKEN, passed=False)]),
        CLEANCUT: DrillRow(CLEANCUT, "application", [_drill(CLEAN)]),
    }
    assert expectations(good) == []
    bad = {
        PER_RESOURCE: DrillRow(PER_RESOURCE, "none", [_drill(CLEAN)]),
        CLEANCUT: DrillRow(CLEANCUT, "filesystem", [_drill(BROKEN, passed=False)]),
    }
    problems = " / ".join(expectations(bad))
    assert "1 cleancut backups show broken records" in problems
    assert "failed its restore drill" in problems
    assert "level filesystem" in problems
    assert "the load is too light" in problems


def test_the_database_guests_and_the_app_with_its_check_parse(tmp_path: Path) -> None:
    pg = hostconfigs.server_guest(
        "orders",
        tmp_path / "vm1" / "orders",
        tmp_path / "staging",
        'kind = "postgresql"\ndsn = "postgresql://postgres@/postgres?host=/run/x&port=5"\n',
    )
    database = parse_guest(pg.encode(), "vm1.toml").databases["orders"]
    assert isinstance(database, PostgresqlDatabase) and database.volume == "orders"
    maria = hostconfigs.server_guest(
        "invoices", tmp_path / "m", tmp_path / "s", 'kind = "mariadb"\nsocket = "/run/m.sock"\n'
    )
    database = parse_guest(maria.encode(), "vm2.toml").databases["invoices"]
    assert isinstance(database, MariadbDatabase) and database.socket == Path("/run/m.sock")

    table = f'[hosts.vm1]\nconnect = "ssh://root@198.18.0.2"\nknown_hosts = "{tmp_path / "kh"}"\n'
    argv = [sys.executable, "-m", "cleancut.demo.check"]
    text = hostconfigs.app_toml("shop", tmp_path, {"vm1": table}, checks={"shop": argv})
    app = validate(AppConfig, parse_toml(text, "shop.toml"), "shop.toml")
    assert [(c.name, c.run) for c in app.checks] == [("shop", argv)]
