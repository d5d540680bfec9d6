"""``cleancut demo``: the seed problem in one screen (see cleancut.demo)."""

from __future__ import annotations

import json
import sys

import typer
from rich.table import Table

from cleancut.cli.output import err, fmt_ms, out, print_table
from cleancut.demo.run import DemoResult, run_demo

HOST_CHOICES = (1, 3)
COLUMNS = (
    "method",
    "backups",
    "consistency level",
    "backups with broken records",
    "orphans",
    "incomplete orders",
    "write stall p50",
    "write stall p99",
)


def _one_or_three(value: int) -> int:
    """``--hosts``: 1 (this machine) or 3 (three testbed VMs and a datastore host)."""
    if value not in HOST_CHOICES:
        raise typer.BadParameter(
            f"{value}: the demo is built on 1 machine (the default) or on 3 testbed VMs "
            "(orders, invoices and receipts each on its own VM, their disks on a "
            "datastore host); give --hosts 1 or --hosts 3"
        )
    return value


def _say(text: str) -> None:
    """A progress line, on stderr (stdout is the table or the JSON)."""
    err.print(text, markup=False)


def demo(
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    backups: int = typer.Option(4, "--backups", min=1, max=50, help="Backups per method."),
    hosts: int = typer.Option(
        1,
        "--hosts",
        callback=_one_or_three,
        help="1: the shop on this machine (fast). 3: each resource on its own testbed VM "
        "over SSH, disks on a datastore host (needs root).",
    ),
    databases: bool = typer.Option(
        False,
        "--databases",
        help="With --hosts 3: the orders in PostgreSQL on vm1 and the invoices in MariaDB "
        "on vm2 (pgbench adding load), per-resource jobs (pg_basebackup, mariadb-backup, "
        "tar) against cleancut with its database writers; every backup gets the restore "
        "drill of cleancut verify (RTO, recovery time).",
    ),
) -> None:
    """Build a sample shop under load and back it up three ways; prove which way is consistent.

    Per-resource jobs (one after another), a cleancut cut without application hooks, and a
    cleancut cut with the shop's quiesce hooks; every backup is restored and its
    cross-resource invariants checked. With --hosts 3 the orders database, the invoices
    database and the receipts share each live on their own testbed VM (a network namespace
    with sshd), their disk images on a datastore host that clones them while the VMs are
    frozen. With --hosts 3 --databases the two databases are PostgreSQL and MariaDB servers
    and every backup is restored and started in a sandbox. Exits 1 unless the results are
    as expected.
    """
    if databases:
        _databases(hosts, backups, json_output)
        return
    if hosts == 1:
        result = run_demo(backups=backups, say=_say)
    else:
        # imported here: the testbed is not needed (nor loaded) by the one-machine demo
        from cleancut.demo.multihost import run_demo_hosts

        result = run_demo_hosts(backups=backups, say=_say)  # refuses non-root at once
    if json_output:
        sys.stdout.write(json.dumps(result.as_dict(), indent=2, default=str) + "\n")
    else:
        render(result)
    if result.problems:
        raise typer.Exit(1)


def render(result: DemoResult) -> None:
    """The results table, then what was expected and whether it held."""
    table = Table(title="the shop, backed up under load, restored and checked")
    for column in COLUMNS:
        table.add_column(column)
    for row in result.rows.values():
        table.add_row(
            row.method,
            str(len(row.checks)),
            row.level,
            str(row.broken_backups),
            str(row.orphans),
            str(row.incomplete),
            fmt_ms(row.stall(50)),
            fmt_ms(row.stall(99)),
        )
    print_table(table)
    for problem in result.problems:
        err.print(f"UNEXPECTED: {problem}", markup=False)
    if not result.problems:
        out.print(
            "as expected: per-resource jobs break cross-resource records; one cut keeps them, "
            "and with the shop's hooks no order is even half-written",
            markup=False,
        )


def _databases(hosts: int, backups: int, json_output: bool) -> None:
    """``--hosts 3 --databases``: the cross-database proof, as a table."""
    if hosts != 3:
        raise typer.BadParameter(
            "--databases runs the shop's databases on three testbed VMs; give --hosts 3 "
            "--databases",
            param_hint="--databases",
        )
    from cleancut.demo.crossdb import COLUMNS as DB_COLUMNS
    from cleancut.demo.crossdb import run_crossdb

    result = run_crossdb(backups=backups, say=_say)  # refuses non-root at once
    if json_output:
        sys.stdout.write(json.dumps(result.as_dict(), indent=2, default=str) + "\n")
    else:
        table = Table(title="the shop on PostgreSQL, MariaDB and a share: backed up, drilled")
        for column in DB_COLUMNS:
            table.add_column(column)
        for row in result.rows.values():
            table.add_row(*row.cells())
        print_table(table)
        for problem in result.problems:
            err.print(f"UNEXPECTED: {problem}", markup=False)
        if not result.problems:
            out.print(
                "as expected: separate database and file jobs break cross-resource records; "
                "one cut with the database writers keeps them, and every restored database "
                "starts with no manual step",
                markup=False,
            )
    if result.problems:
        raise typer.Exit(1)
