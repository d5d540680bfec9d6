"""The upload display: a bar per resource, and one for all hosts once several upload."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from cleancut.cli.output import ProgressView


def test_parallel_uploads_add_up_in_one_bar() -> None:
    progress = Progress(console=Console(file=io.StringIO()))
    view = ProgressView(progress)
    view.update("vm1/data", {"bytes_done": 10, "total_bytes": 100})
    assert [t.description for t in progress.tasks] == ["vm1/data"]  # one upload: no total
    view.update("vm2/data", {"bytes_done": 30, "total_bytes": 50})
    view.update("vm1/data", {"bytes_done": 40, "total_bytes": 100})
    tasks = {t.description: t for t in progress.tasks}
    assert set(tasks) == {"vm1/data", "vm2/data", ProgressView.TOTAL}
    total = tasks[ProgressView.TOTAL]
    assert (total.completed, total.total) == (70, 150)
    view.update("vm2/data", {"done": True, "bytes_done": 50, "total_bytes": 50})
    view.update("vm1/data", {"done": True, "bytes_done": 100, "total_bytes": 100})
    total = {t.description: t for t in progress.tasks}[ProgressView.TOTAL]
    assert (total.completed, total.total) == (150, 150)
