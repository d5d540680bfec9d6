"""``cleancut points``: the recovery points of an application."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from cleancut.cli.common import APP_CONFIG, JSON, load, open_catalog
from cleancut.cli.output import fmt_bytes, fmt_ms, out, print_table
from cleancut.manifest import Manifest


def points(config: Path = APP_CONFIG, json_output: bool = JSON) -> None:
    """List the recovery points: id, time, level, group-consistent, write stall, pause, size.

    Reads the local catalog; `cleancut catalog rebuild` recreates it from the repository.
    With --json, one JSON document: a list of points, oldest first (as `restic snapshots
    --json` prints one list).
    """
    loaded = load(config)
    entries = open_catalog(loaded).list(loaded.config.name)
    if json_output:
        sys.stdout.write(json.dumps([_as_json(e.manifest) for e in entries], indent=2) + "\n")
        sys.stdout.flush()
        return
    table = Table(title=f"recovery points of {loaded.config.name}")
    table.add_column("RP", no_wrap=True)
    for column in ("time (UTC)", "level", "group-consistent", "write stall", "pause", "size"):
        table.add_column(column, no_wrap=True)
    for entry in entries:
        m = entry.manifest
        table.add_row(
            m.rp_id,
            m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            m.level,
            "yes" if m.group_consistent else "no",
            fmt_ms(m.max_write_stall),
            fmt_ms(m.max_pause),
            fmt_bytes(m.size),
        )
    print_table(table)
    if not entries:
        out.print("no recovery points yet: run `cleancut backup` (or `cleancut catalog rebuild`)")


def _as_json(m: Manifest) -> dict[str, Any]:
    """One point of ``points --json``; stalls and pauses in seconds (the longest host's)."""
    return {
        "rp": m.rp_id,
        "time": m.created_at.isoformat(),
        "level": m.level,
        "group_consistent": m.group_consistent,
        "write_stall": m.max_write_stall,
        "pause": m.max_pause,
        "quiet_window": m.quiet_window_seconds,
        "size": m.size,
        "added": m.added,
    }
