"""The demo shop: schema, load generator, quiesce control, hooks, baseline and invariants.

Everything runs for real: the generator is a subprocess writing real SQLite databases and
files, paused and resumed over its unix socket, by the real hook scripts too.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleancut.demo import invariants
from cleancut.demo.baseline import per_resource_backup
from cleancut.demo.shop import LoadGenerator, ShopPaths, create_shop, write_hook_scripts
from cleancut.errors import ConfigError, HookSecurityError


@pytest.fixture
def shop(tmp_path: Path) -> ShopPaths:
    return create_shop(tmp_path / "orders", tmp_path / "invoices", tmp_path / "receipts")


@pytest.fixture
def sock() -> Iterator[Path]:
    """A short socket path (unix socket paths are limited to 107 bytes; tmp_path can be longer)."""
    folder = Path(tempfile.mkdtemp(prefix="ccshop-"))
    try:
        yield folder / "shop.sock"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check(shop: ShopPaths) -> invariants.InvariantReport:
    return invariants.check(shop.orders_db, shop.invoices_db, shop.receipts_dir)


def _counts(shop: ShopPaths) -> tuple[int, int, int]:
    report = _check(shop)
    return report.orders, report.invoices, report.receipts


def _wait_for_orders(shop: ShopPaths, at_least: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _counts(shop)[0] < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} orders after {timeout} s"
        time.sleep(0.05)


def test_create_shop_makes_wal_schemas_and_is_idempotent(tmp_path: Path) -> None:
    dirs = (tmp_path / "o", tmp_path / "i", tmp_path / "r")
    shop = create_shop(*dirs)
    assert shop == create_shop(*dirs)
    assert shop.orders_db == dirs[0] / "orders.db" and shop.receipts_dir.is_dir()
    for db, table in ((shop.orders_db, "orders"), (shop.invoices_db, "invoices")):
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        finally:
            conn.close()
    report = _check(shop)
    assert report.clean and report.orders == 0


def test_stopped_generator_leaves_complete_records(shop: ShopPaths, sock: Path) -> None:
    with LoadGenerator(shop, sock) as load:
        assert load.pid is not None
        _wait_for_orders(shop, 30)
        stats = load.stop()
    assert stats.returncode == 0 and stats.error is None
    report = _check(shop)
    assert report.orders == stats.orders >= 30
    assert report.orphans == 0 and report.incomplete <= 1
    assert report.consistent_cut() and all(report.integrity_ok.values())
    assert not sock.exists(), "the generator removes its socket on exit"


def test_pause_holds_after_disconnect_and_resume_continues(shop: ShopPaths, sock: Path) -> None:
    with LoadGenerator(shop, sock) as load:
        _wait_for_orders(shop, 10)
        load.pause()  # the client connection is closed once this returns
        before = _check(shop)
        time.sleep(0.5)
        assert _counts(shop) == (before.orders, before.invoices, before.receipts)
        assert before.clean, before.to_dict()
        assert load.status()["paused"] is True
        load.resume()
        _wait_for_orders(shop, before.orders + 10)
        assert load.status()["paused"] is False
        stats = load.stop()
    assert stats.pauses == 1 and stats.auto_resumes == 0


def test_pause_resumes_by_itself_after_the_safety_limit(shop: ShopPaths, sock: Path) -> None:
    with LoadGenerator(shop, sock, auto_resume=1.0) as load:
        _wait_for_orders(shop, 5)
        load.pause()
        paused_at = _counts(shop)
        time.sleep(0.5)
        assert _counts(shop) == paused_at, "still paused inside the safety limit"
        _wait_for_orders(shop, paused_at[0] + 10, timeout=3.0)
        stats = load.stop()
    assert stats.auto_resumes == 1
    assert "resumed by itself" in stats.stderr


@pytest.mark.parametrize(
    ("order", "expect"),
    [
        (["orders", "invoices", "receipts"], "orphans"),
        (["receipts", "invoices", "orders"], "incomplete"),
    ],
)
def test_per_resource_backup_under_load_breaks_records(
    shop: ShopPaths, sock: Path, tmp_path: Path, order: list[str], expect: str
) -> None:
    with LoadGenerator(shop, sock):
        _wait_for_orders(shop, 10)
        result = per_resource_backup(shop, tmp_path / "backup", order, gap=0.2)
    report = invariants.check(result["orders_db"], result["invoices_db"], result["receipts_dir"])
    assert [job["resource"] for job in result["jobs"]] == order
    assert result["jobs"][2]["start"] >= 0.4  # two gaps of 0.2 s
    assert all(report.integrity_ok.values()), "each job is consistent on its own"
    assert report.broken > 0 and getattr(report, expect) > 1, report.to_dict()
    assert not report.consistent_cut()


def test_per_resource_backup_rejects_a_bad_order(shop: ShopPaths, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="order"):
        per_resource_backup(shop, tmp_path / "b", ["orders", "orders", "receipts"])


def _write_records(shop: ShopPaths, orders: list[int], invoices: list[int], receipts: list[int]):
    with sqlite3.connect(shop.orders_db) as conn:
        conn.executemany(
            "INSERT INTO orders (id, customer, amount_cents, created) VALUES (?, 'c', 100, 0)",
            [(i,) for i in orders],
        )
    with sqlite3.connect(shop.invoices_db) as conn:
        conn.executemany(
            "INSERT INTO invoices (order_id, amount_cents, created) VALUES (?, 100, 0)",
            [(i,) for i in invoices],
        )
    for i in receipts:
        (shop.receipts_dir / f"{i}.txt").write_text(f"order {i}\n")


def test_checker_finds_orphans_and_incomplete_orders(shop: ShopPaths) -> None:
    _write_records(shop, orders=[1, 2, 3], invoices=[1, 3, 99], receipts=[1, 3, 98])
    (shop.receipts_dir / ".4.txt.tmp").write_text("half a receipt")  # ignored: not finished
    report = _check(shop)
    assert (report.orders, report.invoices, report.receipts) == (3, 3, 3)
    assert report.orphans == 2 and report.orphan_ids == (98, 99)
    assert report.incomplete == 1 and report.incomplete_ids == (2,)
    assert report.in_flight_tolerance == 0, "order 2 is older than complete order 3"
    assert report.broken == 3 and not report.clean and not report.consistent_cut()


def test_checker_tolerates_only_the_order_in_flight(shop: ShopPaths) -> None:
    _write_records(shop, orders=[1, 2, 3], invoices=[1, 2, 3], receipts=[1, 2])
    report = _check(shop)
    assert report.incomplete == report.in_flight_tolerance == 1
    assert report.consistent_cut() and not report.clean
    assert report.to_dict()["broken"] == 1


def test_checker_recovers_a_hot_wal_of_a_copied_database(shop: ShopPaths, tmp_path: Path) -> None:
    live = sqlite3.connect(shop.orders_db)
    try:
        live.execute("PRAGMA wal_autocheckpoint=0")  # the rows stay in the -wal only
        with live:
            live.execute("INSERT INTO orders (customer, amount_cents, created) VALUES ('c', 1, 0)")
        copy = tmp_path / "copy"
        for name in ("orders", "invoices", "receipts"):
            shutil.copytree(
                shop.resource(name).parent if name != "receipts" else shop.receipts_dir, copy / name
            )
    finally:
        live.close()
    assert (copy / "orders" / "orders.db-wal").stat().st_size > 0
    report = invariants.check(
        copy / "orders" / "orders.db", copy / "invoices" / "invoices.db", copy / "receipts"
    )
    assert report.orders == 1 and report.incomplete == 1


def test_hook_scripts_pause_and_resume_through_the_real_scripts(
    shop: ShopPaths, sock: Path, trusted_dir: Path
) -> None:
    pre, post = write_hook_scripts(trusted_dir / "hooks", sys.executable, sock)
    for script in (pre, post):
        mode = script.stat().st_mode
        assert stat.S_IMODE(mode) == 0o755 and script.read_text().startswith("#!/bin/sh\n")
    with LoadGenerator(shop, sock) as load:
        _wait_for_orders(shop, 10)
        done = subprocess.run([str(pre)], env={}, capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        paused_at = _check(shop)
        time.sleep(0.3)
        assert _counts(shop) == (paused_at.orders, paused_at.invoices, paused_at.receipts)
        assert paused_at.clean
        done = subprocess.run([str(post)], env={}, capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        _wait_for_orders(shop, paused_at.orders + 10)
        load.stop()


def test_hook_scripts_refuse_a_world_writable_parent(tmp_path: Path, sock: Path) -> None:
    with pytest.raises(HookSecurityError, match="group/other may write"):
        write_hook_scripts(tmp_path / "hooks", sys.executable, sock)  # /tmp is world-writable


def test_control_pause_fails_with_a_message_when_nobody_listens(sock: Path) -> None:
    argv = [sys.executable, "-m", "cleancut.demo.control", "pause", "--socket", str(sock)]
    done = subprocess.run([*argv, "--timeout", "0.3"], capture_output=True, text=True, timeout=20)
    assert done.returncode == 1
    assert str(sock) in done.stderr and "no shop load generator listening" in done.stderr


def test_generator_fails_loudly_when_its_database_is_missing(tmp_path: Path, sock: Path) -> None:
    shop = create_shop(tmp_path / "o", tmp_path / "i", tmp_path / "r")
    shop.invoices_db.unlink()
    argv = LoadGenerator(shop, sock).argv
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert done.returncode == 1
    assert str(shop.invoices_db) in json.loads(done.stdout)["error"]
    assert str(shop.invoices_db) in done.stderr
    assert not shop.invoices_db.exists(), "never creates an empty database by accident"
