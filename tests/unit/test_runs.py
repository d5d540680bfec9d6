"""The run log: outcomes, last success, interrupted runs, counts and recorded figures."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from cleancut.runs import RunLog, runs_path


def test_a_failure_leaves_the_last_success_alone(tmp_path: Path) -> None:
    log = RunLog(runs_path(tmp_path / "catalog.sqlite", "shop"))
    assert log.last("shop", "backup") is None  # no file yet: nothing, and no file made
    assert not log.path.exists()
    first = log.start("shop", "backup", at=100.0)
    log.finish(first, "success", {"rp": "a", "repository_size_bytes": 10}, at=110.0)
    second = log.start("shop", "backup", at=200.0)
    log.finish(second, "failure", {"error": "host vm2 unreachable"}, at=205.0)
    last = log.last("shop", "backup")
    assert last is not None and last.outcome == "failure" and last.duration == 5.0
    success = log.last_success("shop", "backup")
    assert success is not None and success.ended_at == 110.0
    assert log.counts("shop") == {("backup", "success"): 1, ("backup", "failure"): 1}
    assert log.latest_value("shop", "repository_size_bytes") == 10
    assert log.last("other", "backup") is None
    assert oct(log.path.stat().st_mode & 0o777) == "0o600"


def test_a_run_whose_process_died_reads_back_interrupted(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "shop.runs.sqlite")
    code = (
        "import sys; from pathlib import Path; from cleancut.runs import RunLog; "
        "RunLog(Path(sys.argv[1])).start('shop', 'forget')"
    )
    subprocess.run([sys.executable, "-c", code, str(log.path)], check=True)
    last = log.last("shop", "forget")
    assert last is not None and last.outcome == "interrupted" and not last.finished
    mine = log.start("shop", "check")  # this process lives: still running
    running = log.last("shop", "check")
    assert running is not None and running.run_id == mine and running.outcome == "running"
    assert log.counts("shop") == {("forget", "interrupted"): 1, ("check", "running"): 1}


def test_a_pid_taken_by_a_later_process_is_not_the_run(tmp_path: Path) -> None:
    """After a power loss the pid of a run that was going may belong to anything."""
    log = RunLog(tmp_path / "shop.runs.sqlite")
    later = subprocess.Popen(["sleep", "60"])
    try:
        db = sqlite3.connect(_create(log))
        with db:
            db.execute(
                "INSERT INTO runs (app, action, started_at, outcome, pid) VALUES (?, ?, ?, ?, ?)",
                ("shop", "backup", time.time() - 600, "running", later.pid),
            )
        db.close()
        last = log.last("shop", "backup")
        assert last is not None and last.outcome == "interrupted"
        assert log.counts("shop")[("backup", "interrupted")] == 1
    finally:
        later.kill()
        later.wait()


def _create(log: RunLog) -> Path:
    log.finish(log.start("shop", "check"), "success", {})
    return log.path
