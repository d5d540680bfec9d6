"""``cleancut demo``: the seed problem in one screen (see cleancut.demo)."""

from __future__ import annotations

import json
import sys

import typer
from rich.table import Table

from cleancut.cli.output import err, fmt_ms, out, print_table
from cleancut.demo.run import DemoResult, run_demo

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


def demo(
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    backups: int = typer.Option(4, "--backups", min=1, max=50, help="Backups per method."),
) -> None:
    """Build a sample shop under load and back it up three ways; prove which way is consistent.

    Per-resource jobs (one after another), a cleancut cut without application hooks, and a
    cleancut cut with the shop's quiesce hooks; every backup is restored and its
    cross-resource invariants checked. Exits 1 unless the results are as expected.
    """
    result = run_demo(backups=backups, say=lambda text: err.print(text, markup=False))
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
