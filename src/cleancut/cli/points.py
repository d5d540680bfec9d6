"""``cleancut points``: the recovery points of an application."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from cleancut.cli.common import APP_CONFIG, JSON, load, open_catalog
from cleancut.cli.output import emit_json, fmt_bytes, fmt_ms, out, print_table


def points(config: Path = APP_CONFIG, json_output: bool = JSON) -> None:
    """List the recovery points: id, time, level, group-consistent, write stall, size.

    Reads the local catalog; `cleancut catalog rebuild` recreates it from the repository.
    """
    loaded = load(config)
    entries = open_catalog(loaded).list(loaded.config.name)
    if json_output:
        for entry in entries:
            m = entry.manifest
            emit_json(
                "point",
                {
                    "rp": m.rp_id,
                    "time": m.created_at.isoformat(),
                    "level": m.level,
                    "group_consistent": m.group_consistent,
                    "write_stall": m.max_write_stall,
                    "quiet_window": m.quiet_window_seconds,
                    "size": m.size,
                    "added": m.added,
                },
            )
        return
    table = Table(title=f"recovery points of {loaded.config.name}")
    table.add_column("RP", no_wrap=True)
    for column in ("time (UTC)", "level", "group-consistent", "write stall", "size"):
        table.add_column(column, no_wrap=True)
    for entry in entries:
        m = entry.manifest
        table.add_row(
            m.rp_id,
            m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            m.level,
            "yes" if m.group_consistent else "no",
            fmt_ms(m.max_write_stall),
            fmt_bytes(m.size),
        )
    print_table(table)
    if not entries:
        out.print("no recovery points yet: run `cleancut backup` (or `cleancut catalog rebuild`)")
