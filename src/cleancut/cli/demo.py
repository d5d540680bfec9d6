"""``cleancut demo``: the seed problem in one screen (see cleancut.demo)."""

from __future__ import annotations

import typer


def demo(
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    backups: int = typer.Option(4, "--backups", min=1, max=50, help="Backups per method."),
) -> None:
    """Build a sample shop under load and back it up three ways; prove which way is consistent.

    Per-resource jobs (one after another), a cleancut cut without application hooks, and a
    cleancut cut with the shop's quiesce hooks; every backup is restored and its
    cross-resource invariants checked. Exits non-zero unless the results are as expected.
    """
    from cleancut.demo.run import run_demo

    code = run_demo(json_output=json_output, backups=backups)
    if code:
        raise typer.Exit(code)
