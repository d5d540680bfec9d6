"""``cleancut verify``: the restore drill — restore into a sandbox, start, check, measure RTO."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cleancut.cli.common import (
    APP_CONFIG,
    JSON,
    WAIT,
    load,
    open_catalog,
    open_repository,
    tracked,
)
from cleancut.cli.output import emit_json, err, out, print_table
from cleancut.coordinator.runlock import AppLock
from cleancut.errors import CleancutError
from cleancut.monitoring.summaries import verify_summary
from cleancut.verify import VerifyReport, verify_rp


def verify(
    config: Path = APP_CONFIG,
    rp: str = typer.Argument(
        "latest", help="The recovery point id (a unique prefix will do) or 'latest'."
    ),
    json_output: bool = JSON,
    keep: bool = typer.Option(
        False, "--keep", help="Leave the sandbox (restored files, server logs) for inspection."
    ),
    sandbox: Path | None = typer.Option(
        None,
        "--sandbox",
        help="Folder to create the sandbox in (default /var/lib/cleancut/verify as root).",
    ),
    wait: bool = WAIT,
) -> None:
    """Prove a recovery point restores: restore it into a sandbox and check everything.

    Restores every resource (disk images extracted, each writer's restore step applied),
    starts every PostgreSQL and MariaDB server on its restored files on a free port on
    127.0.0.1, runs their built-in checks (the server answers; pg_amcheck; CHECK TABLE),
    every image's file-system check and SQLite's integrity_check, then the application's
    own [[checks]] with CLEANCUT_DB_<NAME> (a connection URI, or a SQLite file's path) and
    CLEANCUT_VOLUME_<NAME> (a restored folder) in their environment. Reports each check,
    the RTO (restore start until every database answers) and each database's recovery
    time. The sandbox is removed afterwards unless --keep. Exit code 0 only when every
    check passed, 1 otherwise, 11 when another run of the application is in progress
    (--wait waits for it).
    """
    loaded = load(config)
    _access, mover = open_repository(loaded)
    catalog = open_catalog(loaded)
    say = (lambda _text: None) if json_output else (lambda text: err.print(text, markup=False))
    with (
        tracked(loaded, "verify", catalog) as run,
        AppLock(loaded.config.name, action="verify", wait=wait, on_wait=say),
    ):
        entry = catalog.get(loaded.config.name, rp)
        report = verify_rp(loaded, entry.manifest, mover, sandbox=sandbox, keep=keep, say=say)
        run.done("success" if report.ok else "failure", verify_summary(report))
    if json_output:
        emit_json("verify", report.as_dict())
    else:
        render(report)
    if not report.ok:
        raise CleancutError(
            "the restore drill failed: " + ", ".join(c.name for c in report.checks if not c.ok)
            if report.checks
            else "the restore drill ran no check"
        )


def render(report: VerifyReport) -> None:
    """Each check with its outcome, then the databases and the RTO."""
    table = Table(title=f"restore drill of {report.app} {report.rp_id}")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for check in report.checks:
        detail = check.detail.strip().splitlines()[-1:] or [""]
        table.add_row(check.name, "pass" if check.ok else "FAIL", detail[0][:120])
    print_table(table)
    for db in report.databases:
        started = "-" if db.start_seconds is None else f"{db.start_seconds:.2f}s"
        recovery = "none" if db.recovery_seconds is None else f"{db.recovery_seconds:.2f}s"
        out.print(
            f"{db.host}/{db.name} ({db.kind}): answering after {started}, recovery {recovery}"
            + (f", FAILED: {db.error}" if db.error else ""),
            markup=False,
        )
    rto = "-" if report.rto_seconds is None else f"{report.rto_seconds:.2f}s"
    restore = "-" if report.restore_seconds is None else f"{report.restore_seconds:.2f}s"
    out.print(f"restore {restore}; RTO (restore start until every database answers) {rto}")
    if report.kept:
        out.print(f"sandbox kept: {report.sandbox}", markup=False)
