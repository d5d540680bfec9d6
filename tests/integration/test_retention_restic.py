"""cleancut's per-RP retention means what restic's ``forget --keep-*`` means.

For one host and one path restic's grouping cannot split anything, so the two must keep
exactly the same points in time. The test makes real restic snapshots at chosen times and
compares ``restic forget --dry-run --json`` with :func:`cleancut.retention.decide`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cleancut.retention import Point, Policy, decide

TIMES = [
    datetime(2025, 11, 28, 23, 50, tzinfo=UTC) + timedelta(hours=h)
    for h in (0, 0.5, 1, 5, 9, 20, 26, 27, 49, 80, 120, 121, 200, 300, 301, 302, 500, 800, 1200)
]
POLICIES = [
    Policy(keep_last=3),
    Policy(keep_hourly=4),
    Policy(keep_daily=5),
    Policy(keep_weekly=3, keep_monthly=2),
    Policy(keep_yearly=2, keep_last=1),
    Policy(keep_within=30 * 86400),
    Policy(keep_last=2, keep_daily=3, keep_weekly=2, keep_within=86400),
]


def _restic(repo: Path, *args: str) -> str:
    env = {**os.environ, "RESTIC_PASSWORD": "test", "RESTIC_REPOSITORY": str(repo), "TZ": "UTC"}
    done = subprocess.run(
        ["restic", "--no-cache", *args], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _flags(policy: Policy) -> list[str]:
    flags = []
    for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        count = getattr(policy, f"keep_{rule}")
        if count:
            flags += [f"--keep-{rule}", str(count)]
    if policy.keep_within:
        flags += ["--keep-within", f"{int(policy.keep_within // 3600)}h"]
    return flags


@pytest.mark.restic
@pytest.mark.skipif(shutil.which("restic") is None, reason="needs restic")
def test_the_same_points_are_kept_as_restic_keeps(tmp_path: Path) -> None:
    repo, data = tmp_path / "repo", tmp_path / "data"
    data.mkdir()
    (data / "file").write_text("x")
    _restic(repo, "init")
    for at in TIMES:
        _restic(repo, "backup", "--host", "h", "--time", f"{at:%Y-%m-%d %H:%M:%S}", str(data))
    points = [Point(f"{at:%Y%m%d%H%M}", at, "application") for at in TIMES]
    for policy in POLICIES:
        out = _restic(repo, "forget", "--dry-run", "--json", *_flags(policy))
        (group,) = json.loads(out)
        theirs = sorted(
            datetime.fromisoformat(s["time"]).astimezone(UTC).strftime("%Y%m%d%H%M")
            for s in group["keep"]
        )
        ours = sorted(d.point.rp_id for d in decide(points, policy) if d.keep)
        assert ours == theirs, policy
