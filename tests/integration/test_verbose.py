"""``-v`` says every restic command and every guest connection; never the password."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.cutlib import copy_app

pytestmark = pytest.mark.restic
PASSWORD = "correct horse battery staple"  # what cutlib.make_app writes


def test_verbose_shows_restic_commands_and_connections(trusted_dir: Path) -> None:
    app = copy_app(trusted_dir)
    plain = app.run("backup")
    assert plain.returncode == 3, plain.stderr  # an unfrozen copy: crash level, degraded
    assert "debug:" not in plain.stderr

    loud = app.run("backup", "-v")
    assert loud.returncode == 3, loud.stderr
    debug = [line for line in loud.stderr.splitlines() if line.startswith("debug: ")]
    assert any("debug: host vm1: starting the guest agent: " in line for line in debug), debug
    assert any(line.startswith("debug: host vm1: freeze answered in ") for line in debug)
    assert any(
        f"RESTIC_REPOSITORY={app.repository}" in line and " cat config" in line for line in debug
    ), debug
    assert any(line.startswith("debug: restic backup: exit 0 after ") for line in debug), debug
    assert PASSWORD not in loud.stderr

    as_json = app.run("check", "-v", "--log-json")
    assert as_json.returncode == 0, as_json.stderr
    records = [json.loads(line) for line in as_json.stderr.splitlines()]
    assert records and {r["level"] for r in records} <= {"debug", "info"}, records
    assert any(r["message"].startswith("restic: ") for r in records), records
