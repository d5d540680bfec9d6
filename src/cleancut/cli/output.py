"""Rendering for people and machines: rich tables and progress bars, or JSON lines.

No colour (nor any other escape code) when ``NO_COLOR`` is set or output is not a terminal.
Errors and progress go to stderr, results to stdout, so ``--json`` output stays parseable.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

# NO_COLOR (any non-empty value) turns off every escape code: rich alone would still send bold.
_COLOR_SYSTEM: Literal["auto"] | None = None if os.environ.get("NO_COLOR") else "auto"
out = Console(highlight=False, soft_wrap=True, color_system=_COLOR_SYSTEM)
err = Console(stderr=True, highlight=False, soft_wrap=True, color_system=_COLOR_SYSTEM)
#: False with -q or --log-json (see cleancut.cli.logs): stderr then carries lines only.
progress_allowed = True


def print_table(table: Table) -> None:
    """A table on stdout; a pipe gets 80 columns by default, too narrow for ids and figures."""
    if out.is_terminal:
        out.print(table)
        return
    width = out.width
    out.width = 160
    try:
        out.print(table)
    finally:
        out.width = width


def emit_json(kind: str, data: dict[str, Any]) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(json.dumps({"event": kind, **data}, default=str) + "\n")
    sys.stdout.flush()


def fmt_bytes(count: float | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


class ProgressView:
    """One progress bar per uploading or restoring resource, fed with the mover's figures,
    and, once two or more run at once (every host uploads in parallel), one for them all."""

    TOTAL = "all hosts"

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}
        self._figures: dict[str, tuple[float, float]] = {}  # label: (done, total)

    def update(self, label: str, figures: dict[str, Any]) -> None:
        self._update(label, figures)
        done, total = figures.get("bytes_done") or 0, figures.get("total_bytes") or 0
        if figures.get("done"):
            done = total = max(done, total)
        self._figures[label] = (float(done), float(total))
        if len(self._figures) > 1:
            self._update(
                self.TOTAL,
                {
                    "bytes_done": sum(d for d, _ in self._figures.values()),
                    "total_bytes": sum(t for _, t in self._figures.values()),
                },
            )

    def _update(self, label: str, figures: dict[str, Any]) -> None:
        total = figures.get("total_bytes")
        done = figures.get("bytes_done")
        if label not in self._tasks:
            self._tasks[label] = self._progress.add_task(label, total=total or None)
        task = self._tasks[label]
        if figures.get("done"):
            self._progress.update(task, total=total or done or 1, completed=total or done or 1)
        else:
            self._progress.update(task, total=total or None, completed=done or 0)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[ProgressView | None]:
    """Progress bars on stderr while the block runs (nothing when disabled)."""
    if not enabled or not progress_allowed:
        yield None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    with progress:
        yield ProgressView(progress)
