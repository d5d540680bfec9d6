"""The cross-database proof (``cleancut demo --hosts 3 --databases``, ``bench.consistency``).

PostgreSQL on vm1, MariaDB on vm2, the receipts share on vm3, their disks on ``ds``, the
shop and pgbench writing throughout: per-resource jobs (pg_basebackup, mariadb-backup,
tar) must show broken records, cleancut's cuts none, and every backup's restore drill
must start both databases with no manual step. Nothing may be left behind: testbed,
mounts, loop devices, namespaces, servers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cutlib import CLEANCUT, _env
from tests.integration.test_demo_hosts import _ours, _system

REPO = Path(__file__).resolve().parents[2]


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=_env(), check=False, cwd=REPO
    )


def _processes_using(paths: list[str]) -> list[str]:
    """Command lines of running processes that name one of ``paths`` (a server left)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(path in cmdline for path in paths):
            found.append(f"{proc.name}: {cmdline}")
    return found


def _assert_nothing_left(before: dict[str, set[str]], made: dict[str, Any]) -> None:
    assert not Path(made["workspace"]).exists()
    after = _system()
    for listing, lines in after.items():
        left = sorted(line for line in lines - before[listing] if _ours(line, made))
        assert left == [], f"{listing} still shows what the proof made: {left}"
    assert _processes_using([made["workspace"]]) == []


@pytest.mark.root
@pytest.mark.restic
def test_cleancut_keeps_the_databases_and_the_share_consistent_and_every_copy_starts() -> None:
    before = _system()

    done = _run([*CLEANCUT, "demo", "--hosts", "3", "--databases", "--backups", "3", "--json"], 900)

    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert result["ok"] is True and result["problems"] == [], result["problems"]
    per, ours = result["methods"]
    assert per["method"].startswith("per-resource") and ours["method"].startswith("cleancut")
    assert per["backups"] == ours["backups"] == 3
    # the baseline: each job consistent by itself, the shop's records not across them
    assert per["broken_backups"] > 0 and per["orphans"] + per["incomplete"] > 0
    assert per["started"] == 3, per["drills"]
    # one cut: nothing broken, every drill passed (pg_amcheck, CHECK TABLE, the shop's check)
    assert ours["level"] == "application"
    assert ours["broken_backups"] == 0 and ours["orphans"] == ours["incomplete"] == 0
    assert ours["started"] == ours["passed"] == 3, [d["failed"] for d in ours["drills"]]
    for drill in ours["drills"]:
        assert drill["invariants"]["orders"] > 0 and drill["invariants"]["clean"] is True
        assert drill["rto_seconds"] > drill["restore_seconds"] > 0
        # a freeze snapshot of a running server: PostgreSQL replays to the end of the
        # backup, InnoDB its redo log; both logs say how long that took
        assert drill["recovery_seconds"]["orders"] is not None, drill
        assert drill["recovery_seconds"]["invoices"] is not None, drill
    assert ours["write_stall_p50"] is not None and 0 < ours["write_stall_p50"] < 10
    assert "both databases started" in done.stderr  # the progress lines
    _assert_nothing_left(before, result["made"])


@pytest.mark.root
@pytest.mark.restic
def test_the_consistency_benchmark_prints_its_table() -> None:
    before = _system()

    done = _run([sys.executable, "-m", "bench.consistency", "--backups", "1"], 600)

    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    out = done.stdout
    for method in ("per-resource (pg_basebackup", "cleancut (hooks"):
        assert re.search(rf"^{re.escape(method)}.*\d+\.\d+ s", out, re.MULTILINE), out
    assert re.search(r"RTO p50 ratio cleancut / per-resource \(baseline\): \d+\.\d\d", out)
    workspace = re.search(r"workspace (/\S+):", done.stderr)
    assert workspace, done.stderr
    made = {"workspace": workspace.group(1), "namespaces": re.findall(r"cc\d+-vm\d", done.stderr)}
    _assert_nothing_left(before, made)


def test_databases_need_three_hosts() -> None:
    done = _run([*CLEANCUT, "demo", "--databases"], 60)

    assert done.returncode == 2, done.stderr
    assert "give --hosts 3 --databases" in done.stderr
    assert done.stdout == "" and "workspace" not in done.stderr
