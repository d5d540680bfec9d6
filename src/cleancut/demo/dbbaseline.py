"""The per-resource baseline with database servers: the separate jobs operators run today.

Each job is consistent by itself — ``pg_basebackup`` of PostgreSQL (WAL streamed along),
``mariadb-backup`` of MariaDB, ``tar`` of the receipts share — but they run one after
another, so the shop's correlated records do not match across them.
:func:`per_resource_backup` writes ``DEST/orders`` (a PostgreSQL base backup),
``DEST/invoices`` (a MariaDB backup, not yet prepared) and ``DEST/receipts.tar``.

:func:`drill` is the restore drill of such a backup, done the way each tool's manual says
and timed like ``cleancut verify``: copy the base backup into a sandbox, ``mariadb-backup
--prepare`` and ``--copy-back`` the MariaDB backup, unpack the share; start both servers
on free ports (PostgreSQL replays the streamed WAL, InnoDB its redo log); the RTO runs
from the first copy to both servers answering.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleancut.demo.invariants import InvariantReport, check
from cleancut.errors import CleancutError
from cleancut.writers.mysqlserver import MariadbServer
from cleancut.writers.pgserver import PostgresqlServer, pg_bin
from cleancut.writers.server import CheckResult, DatabaseServer

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
    dest.chmod(0o755)  # the base backup is written by the server's user
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
    return {"order": list(order), "gap": gap, "jobs": done}


def _basebackup(shop: LiveShop, dest: Path) -> None:
    """``pg_basebackup`` as the server's user: a data directory that starts by itself."""
    target = dest / "orders"
    shutil.rmtree(target, ignore_errors=True)
    _owned_folder(target, shop.pg_user)
    _run(
        [
            "runuser", "-u", shop.pg_user, "--",
            pg_bin("pg_basebackup"),
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


def _tar_share(shop: LiveShop, dest: Path) -> None:
    _run(
        ["tar", "-C", str(shop.receipts_dir), "--exclude=./lost+found", "-cf",
         str(dest / "receipts.tar"), "."],
        "tar",
        ok_codes=(0, 1),  # 1: a file changed while it was read (the share is live)
    )  # fmt: skip


@dataclass
class DrillResult:
    """What restoring one per-resource backup showed."""

    report: InvariantReport | None = None
    rto_seconds: float | None = None
    restore_seconds: float | None = None
    recovery_seconds: dict[str, float | None] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def started(self) -> bool:
        """Both servers answered."""
        return self.rto_seconds is not None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def drill(backup: Path, sandbox: Path, *, mariadb_options: Sequence[str] = ()) -> DrillResult:
    """Restore the per-resource ``backup`` into ``sandbox``, start both databases, check
    the shop's invariants and each server's own checks; servers stopped and the sandbox
    removed afterwards, on every path."""
    result = DrillResult()
    shutil.rmtree(sandbox, ignore_errors=True)
    sandbox.mkdir(parents=True)
    sandbox.chmod(0o755)
    running: list[DatabaseServer] = []
    try:
        began = time.monotonic()
        _run(["cp", "-a", str(backup / "orders"), str(sandbox / "orders")], "cp base backup")
        _prepare_mariadb(backup / "invoices", sandbox / "invoices")
        receipts = sandbox / "receipts"
        receipts.mkdir()
        _run(["tar", "-C", str(receipts), "-xf", str(backup / "receipts.tar")], "tar -x")
        result.restore_seconds = time.monotonic() - began
        pg = PostgresqlServer(sandbox / "orders", sandbox / "run-orders")
        maria = MariadbServer(
            sandbox / "invoices", sandbox / "run-invoices", options=mariadb_options
        )
        servers: dict[str, DatabaseServer] = {"orders": pg, "invoices": maria}
        for name, server in servers.items():
            try:
                seconds = server.start()
            except CleancutError as exc:
                server.stop()
                result.checks.append(CheckResult(f"{name}: starts", False, exc.message))
                continue
            running.append(server)
            result.recovery_seconds[name] = server.recovery_seconds()
            result.checks.append(CheckResult(f"{name}: starts", True, f"after {seconds:.2f}s"))
        if len(running) == 2:
            result.rto_seconds = time.monotonic() - began
            for name, server in servers.items():
                for found in server.builtin_checks():
                    result.checks.append(
                        CheckResult(f"{name}: {found.name}", found.ok, found.detail)
                    )
            result.report = check(pg.uri, maria.uri, receipts)
            result.checks.append(
                CheckResult("every order has its invoice and its receipt", result.report.clean)
            )
    finally:
        for started in reversed(running):
            started.stop()
        shutil.rmtree(sandbox, ignore_errors=True)
    return result


def _prepare_mariadb(backup: Path, datadir: Path) -> None:
    """``mariadb-backup --prepare`` (apply the redo log; on a scratch copy, so the backup
    itself stays as it was taken) and ``--copy-back`` into ``datadir``, owned by mysql."""
    scratch = datadir.with_name(datadir.name + ".prepare")
    _run(["cp", "-a", str(backup), str(scratch)], "cp mariadb backup")
    try:
        _run(["mariadb-backup", "--prepare", f"--target-dir={scratch}"], "mariadb-backup --prepare")
        _run(
            ["mariadb-backup", "--copy-back", f"--target-dir={scratch}", f"--datadir={datadir}"],
            "mariadb-backup --copy-back",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    user = pwd.getpwnam("mysql")
    _run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(datadir)], "chown")


def _owned_folder(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    path.mkdir(mode=0o700)
    os.chown(path, entry.pw_uid, entry.pw_gid)


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
