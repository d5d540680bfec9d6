"""The shop's own [[checks]] program, as cleancut verify runs it (names in the environment)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from cleancut.demo.shop import create_shop


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cleancut.demo.check", *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_check_reads_the_restored_shop_from_the_environment(tmp_path: Path) -> None:
    shop = create_shop(tmp_path / "orders", tmp_path / "invoices", tmp_path / "receipts")
    env = {
        "CLEANCUT_DB_ORDERS": str(shop.orders_db),
        "CLEANCUT_DB_INVOICES": str(shop.invoices_db),
        "CLEANCUT_VOLUME_RECEIPTS": str(shop.receipts_dir),
    }
    with sqlite3.connect(shop.orders_db) as conn:
        conn.execute("INSERT INTO orders (customer, amount_cents, created) VALUES ('a', 1, 0)")
    with sqlite3.connect(shop.invoices_db) as conn:
        conn.execute("INSERT INTO invoices (order_id, amount_cents, created) VALUES (1, 1, 0)")
    (shop.receipts_dir / "1.txt").write_text("order 1\n")
    assert _run(env).returncode == 0

    with sqlite3.connect(shop.invoices_db) as conn:  # an invoice without its order
        conn.execute("INSERT INTO invoices (order_id, amount_cents, created) VALUES (2, 1, 0)")
    broken = _run(env)
    assert broken.returncode == 1
    assert '"orphans": 1' in broken.stdout and "1 orphans" in broken.stderr


def test_the_check_says_what_it_misses(tmp_path: Path) -> None:
    done = _run({})
    assert done.returncode == 2
    assert "CLEANCUT_DB_ORDERS" in done.stderr
