"""`make demo` runs `cleancut demo`: it must pass on this machine, and prove its point."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.cutlib import CLEANCUT

pytestmark = [pytest.mark.root, pytest.mark.restic]


def test_demo_shows_per_resource_breakage_and_clean_cuts() -> None:
    done = subprocess.run(
        [*CLEANCUT, "demo", "--backups", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is True and result["problems"] == []
    assert result["as_root"] is True
    rows = {row["method"]: row for row in result["methods"]}
    per_resource = rows["per-resource"]
    plain = rows["cleancut, no application hook"]
    hooks = rows["cleancut"]
    assert per_resource["broken_backups"] >= 1
    assert per_resource["orphans"] + per_resource["incomplete"] > 0
    assert plain["level"] == "filesystem" and plain["orphans"] == 0
    assert all(check["incomplete"] <= 1 for check in plain["checks"])
    assert hooks["level"] == "application"
    assert hooks["broken_backups"] == 0 and hooks["orphans"] == hooks["incomplete"] == 0
    assert all(check["orders"] > 0 for check in hooks["checks"])
    assert hooks["write_stall_p50"] is not None and hooks["write_stall_p50"] < 10
