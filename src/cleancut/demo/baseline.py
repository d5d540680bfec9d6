"""The "per-resource" baseline: separate backup jobs per database and share, one after another.

This is what backing up each VM, database and share on its own gives today: every job is
consistent by itself — each SQLite database is copied with SQLite's online backup API, the
receipts share file by file — but the jobs run at different moments (minutes apart in real
life; ``gap`` seconds here), so the shop's correlated records do not match across them.
Taking ``orders`` first yields orphan invoices and receipts; taking it last yields orders
whose invoice or receipt is missing.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cleancut.demo.shop import RESOURCES, ShopPaths
from cleancut.errors import CleancutError, ConfigError


def _backup_db(src: Path, dst: Path) -> None:
    """One SQLite database through the online backup API: a consistent copy of that one db."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        source = sqlite3.connect(f"file:{src}?mode=rw", uri=True, timeout=60.0)
        try:
            target = sqlite3.connect(dst)
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise CleancutError(f"{src}: per-resource backup to {dst} failed: {exc}") from exc


def _copy_share(src: Path, dst: Path) -> int:
    """The receipts share, file by file, as a file-level backup job would; returns files copied."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = 0
    for entry in sorted(src.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue  # a receipt being written (temporary name), or lost+found
        with contextlib.suppress(FileNotFoundError):  # renamed or removed since the listing
            shutil.copy2(entry, dst / entry.name)
            copied += 1
    return copied


def per_resource_backup(
    shop: ShopPaths, dest: Path, order: Sequence[str], *, gap: float = 0.5
) -> dict[str, Any]:
    """Back up the shop's resources one job at a time, in ``order``, ``gap`` seconds apart.

    Writes ``dest/orders/orders.db``, ``dest/invoices/invoices.db`` and ``dest/receipts/``
    (the same layout as the live shop, ready for :func:`cleancut.demo.invariants.check`)
    and returns the paths and each job's start offset and duration in seconds.
    """
    if sorted(order) != sorted(RESOURCES):
        raise ConfigError(
            f"{list(order)!r} is not an ordering of the shop's resources",
            key="order",
            hint=f"give each of {list(RESOURCES)} exactly once",
        )
    copy = ShopPaths(
        dest / "orders" / "orders.db", dest / "invoices" / "invoices.db", dest / "receipts"
    )
    started = time.monotonic()
    jobs = []
    for index, name in enumerate(order):
        if index:
            time.sleep(gap)
        begin = time.monotonic()
        if name == "receipts":
            _copy_share(shop.receipts_dir, copy.receipts_dir)
        else:
            _backup_db(shop.resource(name), copy.resource(name))
        end = time.monotonic()
        jobs.append(
            {"resource": name, "start": round(begin - started, 4), "seconds": round(end - begin, 4)}
        )
    return {
        "order": list(order),
        "gap": gap,
        "jobs": jobs,
        "total_seconds": round(time.monotonic() - started, 4),
        "orders_db": copy.orders_db,
        "invoices_db": copy.invoices_db,
        "receipts_dir": copy.receipts_dir,
    }
