"""Reading a MariaDB/MySQL error log: how long the server's own crash recovery took.

A data directory captured while the server ran (inside ``FLUSH TABLES WITH READ LOCK``,
or crash-consistent) starts with InnoDB's crash recovery: it applies the redo log from the
last checkpoint and rolls back what was not committed. The log says when recovery began
(``Starting crash recovery`` or ``Starting final batch to recover``) and when the server
was ``ready for connections``; the time between them is the recovery the restore drill
reports. The log is appended to by every start, so only the last start counts.

MariaDB stamps its lines in whole seconds (``2026-12-02 14:25:28``, older servers
``261202 14:25:28``), MySQL 8 in microseconds (``2026-12-02T14:25:28.123456Z``);
:class:`LogWatch` times the same lines as they appear, for figures finer than a second.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

#: A line that starts a new run of the server.
_STARTING = re.compile(r"Starting MariaDB |starting as process \d+")
#: InnoDB begins to recover (the first of these in a run).
_RECOVERY = re.compile(r"Starting crash recovery|Starting final batch to recover")
_READY = re.compile(r"ready for connections")
_STAMPS = (
    (re.compile(r"^(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:\d\d)?"), None),
    (re.compile(r"^(\d{6}) +(\d?\d:\d\d:\d\d)"), "%y%m%d %H:%M:%S"),
)


def line_time(line: str) -> float | None:
    """The time a log line was written, in seconds since the epoch (None: no stamp)."""
    for pattern, form in _STAMPS:
        found = pattern.match(line)
        if found is None:
            continue
        if form is not None:
            return datetime.strptime(f"{found.group(1)} {found.group(2)}", form).timestamp()
        stamp = found.group(1).replace(" ", "T")
        zone = found.group(2) or ""
        return datetime.fromisoformat(stamp + ("+00:00" if zone == "Z" else zone)).timestamp()
    return None


def last_run(text: str) -> list[str]:
    """The lines of the last start of the server in an error log."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _STARTING.search(line)]
    return lines[starts[-1] :] if starts else lines


@dataclass
class Recovery:
    """Crash recovery in one run: when it began and when the server was ready (epoch
    seconds from the log's stamps); ``ready`` is None while the server is not ready yet."""

    began: float
    ready: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.ready is None else max(0.0, self.ready - self.began)


def recovery(text: str) -> Recovery | None:
    """The last run's crash recovery, from an error log's text; None when none ran."""
    began: float | None = None
    for line in last_run(text):
        if began is None and _RECOVERY.search(line):
            began = line_time(line)
            if began is None:
                return None
        elif began is not None and _READY.search(line):
            return Recovery(began, line_time(line))
    return None if began is None else Recovery(began, None)


class LogWatch:
    """Follows a growing error log from the current end and times, on the monotonic clock,
    when this run's recovery began and when the server was ready."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = path.stat().st_size if path.exists() else 0
        self._pending = ""
        self.recovery_seen: float | None = None
        self.ready_seen: float | None = None
        self.text = ""

    def poll(self) -> None:
        """Read what was appended since the last poll."""
        try:
            with self.path.open("rb") as log:
                log.seek(self._offset)
                chunk = log.read()
        except OSError:
            return
        self._offset += len(chunk)
        now = time.monotonic()
        self._pending += chunk.decode("utf-8", errors="replace")
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.text += line + "\n"
            if self.recovery_seen is None and _RECOVERY.search(line):
                self.recovery_seen = now
            elif self.ready_seen is None and _READY.search(line):
                self.ready_seen = now

    @property
    def recovery_seconds(self) -> float | None:
        """Seen recovery time, or None when no recovery ran (or it was not seen to end)."""
        if self.recovery_seen is None or self.ready_seen is None:
            return None
        return max(0.0, self.ready_seen - self.recovery_seen)
