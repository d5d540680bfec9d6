"""The per-resource baseline with database servers: the separate jobs operators run today.

Each job is consistent by itself — ``pg_basebackup`` of PostgreSQL (WAL streamed along),
``mariadb-backup`` of MariaDB (prepared afterwards, so it starts like a restored data
directory), ``tar`` of the receipts share — but they run one after another, so the
shop's correlated records do not match across them. :func:`per_resource_backup` writes
``DEST/orders`` (a PostgreSQL data directory), ``DEST/invoices`` (a MariaDB one) and
``DEST/receipts.tar``; :func:`unpack_receipts` turns the archive back into a folder.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleancut.errors import CleancutError

JOB_TIMEOUT = 600.0


@dataclass(frozen=True)
class LiveShop:
    """How the per-resource jobs reach the live shop's three resources."""

    pg_socket_dir: Path
    pg_port: int
    mariadb_socket: Path
    receipts_dir: Path
    pg_user: str = "postgres"


def per_resource_backup(
    shop: LiveShop, dest: Path, order: Sequence[str], *, gap: float = 0.5
) -> dict[str, Any]:
    """One job per resource in ``order`` (``orders``, ``invoices``, ``receipts``), ``gap``
    seconds apart; returns each job's start offset and duration."""
    jobs = {"orders": _basebackup, "invoices": _mariadb_backup, "receipts": _tar_share}
    dest.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = []
    for index, name in enumerate(order):
        if index:
            time.sleep(gap)
        begin = time.monotonic()
        jobs[name](shop, dest)
        done.append(
            {
                "resource": name,
                "start": round(begin - started, 4),
                "seconds": round(time.monotonic() - begin, 4),
            }
        )
    if "invoices" in order:
        _prepare_mariadb(dest / "invoices")
    return {"order": list(order), "gap": gap, "jobs": done}


def _basebackup(shop: LiveShop, dest: Path) -> None:
    """``pg_basebackup`` as the server's user: a data directory that starts by itself."""
    target = dest / "orders"
    shutil.rmtree(target, ignore_errors=True)
    dest.chmod(0o755)
    _run(
        [
            "runuser", "-u", shop.pg_user, "--",
            _pg_bin("pg_basebackup"),
            "-h", str(shop.pg_socket_dir), "-p", str(shop.pg_port), "-U", shop.pg_user,
            "-D", str(target), "-X", "stream", "-c", "fast", "--no-sync",
        ],
        "pg_basebackup",
    )  # fmt: skip


def _mariadb_backup(shop: LiveShop, dest: Path) -> None:
    target = dest / "invoices"
    shutil.rmtree(target, ignore_errors=True)
    _run(
        [
            "mariadb-backup", "--backup", f"--target-dir={target}",
            f"--socket={shop.mariadb_socket}", "--user=root",
        ],
        "mariadb-backup --backup",
    )  # fmt: skip


def _prepare_mariadb(target: Path) -> None:
    """``mariadb-backup --prepare``: apply the redo log so the copy starts like a data dir."""
    _run(["mariadb-backup", "--prepare", f"--target-dir={target}"], "mariadb-backup --prepare")
    _run(["chown", "-R", "mysql:mysql", str(target)], "chown")


def _tar_share(shop: LiveShop, dest: Path) -> None:
    _run(
        ["tar", "-C", str(shop.receipts_dir), "--exclude=./lost+found", "-cf",
         str(dest / "receipts.tar"), "."],
        "tar",
        ok_codes=(0, 1),  # 1: a file changed while it was read (the share is live)
    )  # fmt: skip


def unpack_receipts(dest: Path) -> Path:
    """``DEST/receipts.tar`` unpacked into ``DEST/receipts``; returns that folder."""
    folder = dest / "receipts"
    folder.mkdir(exist_ok=True)
    _run(["tar", "-C", str(folder), "-xf", str(dest / "receipts.tar")], "tar -x")
    return folder


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else name


def _run(argv: list[str], what: str, ok_codes: tuple[int, ...] = (0,)) -> None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=JOB_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CleancutError(f"per-resource job {what} failed: {exc}") from exc
    if done.returncode not in ok_codes:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise CleancutError(
            f"per-resource job {what} failed (exit {done.returncode}): {' / '.join(tail)}"
        )
