"""When a systemd calendar expression (``OnCalendar=``) next elapses, asked of systemd.

``systemd-analyze calendar`` is systemd's own parser, so the answer is the one the
timer will follow; it works without systemd running (in a container, say).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime

from cleancut.errors import ConfigError

_ELAPSE = re.compile(r"(?:Next elapse|Iter\. #\d+):\s+\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def next_runs(expression: str, after: datetime, count: int = 1) -> list[datetime]:
    """The next ``count`` moments ``expression`` elapses after ``after`` (UTC)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        raise ConfigError(
            f"cannot compute when {expression!r} next runs: systemd-analyze is not installed",
            hint="install systemd, or remove [schedule]",
        )
    base = after.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    done = subprocess.run(
        [tool, "calendar", f"--iterations={count}", f"--base-time={base}", expression],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(
            f"{expression!r} is not a calendar expression systemd accepts: "
            f"{done.stderr.strip() or done.stdout.strip()}",
            hint='see `man systemd.time`; e.g. "*-*-* 02:00" or daily',
        )
    return [
        datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        for text in _ELAPSE.findall(done.stdout)
    ]


def next_run(expression: str, after: datetime | None = None) -> datetime | None:
    """The next moment ``expression`` elapses after ``after`` (now), or None if never."""
    found = next_runs(expression, after or datetime.now(UTC), 1)
    return found[0] if found else None
