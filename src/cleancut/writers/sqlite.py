"""SQLite writer: checkpoint in prepare, ``BEGIN IMMEDIATE`` held through the snapshot.

The lock is held by a helper process (:mod:`cleancut.writers.helper`) that opens the
database once and never otherwise touches it: SQLite's locks are POSIX record locks, which
the guest would lose the moment any of its own descriptors of the file (a snapshot's read)
was closed.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from cleancut.config.guest import SqliteDatabase
from cleancut.errors import WriterError
from cleancut.writers.base import Writer
from cleancut.writers.helper import HelperProcess

#: How long ``BEGIN IMMEDIATE`` waits for another writer's lock at most.
BUSY_TIMEOUT = 5.0
_CALL_TIMEOUT = 60.0
_RELEASE_TIMEOUT = 5.0

# Runs as `python -I -S -c HOLDER_CODE PATH`. Every way out (EOF, deadline, signal, death)
# ends the transaction, so the lock never outlives what the guest asked for.
HOLDER_CODE = r"""
import json, os, select, sqlite3, sys, time

conn = sqlite3.connect("file:" + sys.argv[1] + "?mode=rw", uri=True, isolation_level=None)
held = False
lost = False
deadline = None


def one(sql):
    return conn.execute(sql).fetchone()


def end_hold():
    global held
    if held:
        held = False
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def handle(request):
    global held, lost, deadline
    op = request["op"]
    if op == "check":
        mode = one("PRAGMA journal_mode")[0]
        return {"sqlite_version": sqlite3.sqlite_version, "journal_mode": mode}
    if op == "prepare":
        details = {"journal_mode": one("PRAGMA journal_mode")[0]}
        if details["journal_mode"] == "wal":
            busy, log, done = one("PRAGMA wal_checkpoint(TRUNCATE)")
            details["wal_checkpoint"] = {"busy": busy, "log": log, "checkpointed": done}
        return details
    if op == "hold":
        conn.execute("PRAGMA busy_timeout = %d" % int(request["busy_ms"]))
        conn.execute("BEGIN IMMEDIATE")
        held, lost = True, False
        deadline = float(request["until"])  # CLOCK_MONOTONIC is one clock for all processes
        return {}
    if op == "release":
        details = {"held_until_release": held and not lost}
        if held:
            details["page_count"] = one("PRAGMA page_count")[0]
            details["page_size"] = one("PRAGMA page_size")[0]
            details["journal_mode"] = one("PRAGMA journal_mode")[0]
        end_hold()
        deadline = None
        return details
    raise ValueError("unknown operation %r" % op)


pending = b""
try:
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([0], [], [], timeout)
        if not ready:  # our own deadline: the guest is stopped or stuck
            end_hold()
            lost, deadline = True, None
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                answer = {"ok": True, **handle(json.loads(line))}
            except (sqlite3.Error, ValueError, KeyError) as exc:
                answer = {"ok": False, "error": str(exc)}
            os.write(1, (json.dumps(answer) + "\n").encode())
finally:
    end_hold()
    os._exit(0)
"""


class SqliteWriter(Writer[SqliteDatabase]):
    """Holds a SQLite database's write lock while its volume is snapshotted.

    ``BEGIN IMMEDIATE`` takes the RESERVED lock: readers go on, writers wait (or get
    SQLITE_BUSY), so the files on disk stay a committed state from the hold to the release.
    The lock is taken before the freeze and released after the thaw, so no SQLite I/O
    happens while the file system is frozen.
    """

    def __init__(self, name: str, database: SqliteDatabase) -> None:
        super().__init__(name, database)
        self._helper: HelperProcess | None = None

    def _started(self) -> HelperProcess:
        if self._helper is None:
            path = self.database.path
            if not path.is_file():
                raise WriterError(f"sqlite database {self.name}: {path} does not exist")
            helper = HelperProcess(
                f"sqlite database {self.name} ({path})", HOLDER_CODE, [str(path)]
            )
            self._helper = helper
        return self._helper

    def check(self) -> dict[str, Any]:
        answer = self._started().call("check", _CALL_TIMEOUT)
        return {
            "sqlite_version": answer.get("sqlite_version", sqlite3.sqlite_version),
            "journal_mode": answer.get("journal_mode"),
            "holder_pid": self._started().pid,
        }

    def locations(self) -> dict[str, Path]:
        return {"database file": self.database.path}

    def prepare(self) -> dict[str, Any]:
        answer = self._started().call("prepare", _CALL_TIMEOUT)
        return {k: v for k, v in answer.items() if k != "ok"}

    def hold(self, seconds: float) -> None:
        # the deadline counts from now, not from when another writer let go of the lock
        until = time.monotonic() + seconds
        wait = max(0.0, min(BUSY_TIMEOUT, seconds))
        self._started().call("hold", wait + _RELEASE_TIMEOUT, until=until, busy_ms=wait * 1000)

    def release(self) -> dict[str, Any]:
        answer = self._started().call("release", _RELEASE_TIMEOUT)
        if not answer.get("held_until_release"):
            raise WriterError(
                f"sqlite database {self.name}: the hold ended before the release (its holder "
                "passed its deadline or was killed); the database was not held to the end"
            )
        return {k: v for k, v in answer.items() if k not in ("ok", "held_until_release")}

    def abort(self) -> None:
        helper = self._helper
        if helper is None:
            return
        try:
            answer = helper.try_call("release", _RELEASE_TIMEOUT, wait=0.2)
        except WriterError:
            answer = None
        if answer is None:
            helper.kill()  # busy (waiting for a lock) or stuck: its death drops the lock

    def close(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None
