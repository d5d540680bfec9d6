"""A hold that holds: while a cut holds a database, another process cannot write to it —
for every provider, including those whose snapshot opens and closes the database file in
the guest (a POSIX record lock dies with any close of the file by its holding process, so
the guest holds its locks from a helper process that never touches the file otherwise).

And every hold ends by the guest's own deadline: a coordinator stopped with SIGSTOP
mid-cut cannot keep a database locked or an application quiesced.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cleancut.demo.disks import Datastore
from tests.integration.cutlib import hook, make_db, sqlite_db, write_private, write_script

pytestmark = pytest.mark.root

#: a coordinator that stops after the freeze (with its snapshot) until told to go on
DRIVER = """
import json, sys
from pathlib import Path
from cleancut.transport.local import LocalChannel
channel = LocalChannel("vm1", Path(sys.argv[1]))
hello = {"protocol": 1, "rp_id": "20260101T000000Z-hold", "freeze_timeout": float(sys.argv[2])}
channel.call("hello", hello, timeout=60)
channel.call("prepare", timeout=60)
frozen = channel.call("freeze", {"snapshot": True, "thaw": sys.argv[3] == "alone"}, timeout=60)
print(json.dumps(frozen), flush=True)
sys.stdin.readline()
thawed = channel.call("thaw", timeout=60)
print(json.dumps(thawed), flush=True)
channel.call("release", timeout=60)
channel.call("bye", timeout=10)
channel.close()
"""

PROBE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=float(sys.argv[2]), isolation_level=None)
try:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (v) VALUES ('written by the probe')")
    conn.execute("COMMIT")
    print("written", flush=True)
except sqlite3.OperationalError as exc:
    print("locked" if "locked" in str(exc) else f"error {exc}", flush=True)
"""


def write_attempt(db: Path, busy: float = 0.3, within: float = 3.0) -> str:
    """Another process tries one write: "written", "locked", or "blocked" (still waiting)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE, str(db), str(busy)], stdout=subprocess.PIPE, text=True
    )
    try:
        out, _ = proc.communicate(timeout=within)
        return out.strip()
    except subprocess.TimeoutExpired:
        return "blocked"  # e.g. waiting for a frozen file system; reaped by the fixture
    finally:
        if proc.poll() is None:
            PENDING.append(proc)


PENDING: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _reap_probes() -> Iterator[None]:
    yield
    while PENDING:
        proc = PENDING.pop()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Setup:
    guest: str
    db: Path


def volume_for(provider: str, ds: Datastore, base: Path) -> Setup:
    if provider == "image":
        mount = ds.add_disk("img", base / "img").mountpoint
        volume = f'[volumes.data]\npath = "{mount}"\nsnapshot = "image"\n'
        db = mount / "app.db"
    elif provider == "copy":
        mount = ds.add_disk("cp", base / "cp").mountpoint
        staging = ds.path / "staging"
        volume = (
            f'[volumes.data]\npath = "{mount}"\nsnapshot = "copy"\nfreeze = false\n'
            f'staging = "{staging}"\n'
        )
        db = mount / "app.db"
    elif provider == "btrfs":
        mount = ds.add_disk("bt", base / "bt", 200, "btrfs").mountpoint
        subvolume = mount / "data"
        subprocess.run(
            ["btrfs", "subvolume", "create", str(subvolume)], check=True, capture_output=True
        )
        volume = f'[volumes.data]\npath = "{subvolume}"\nsnapshot = "btrfs"\n'
        db = subvolume / "app.db"
    else:
        mount = ds.add_disk("xf", base / "xf", 300, "xfs").mountpoint
        (mount / "tree").mkdir()
        volume = f'[volumes.data]\npath = "{mount / "tree"}"\nsnapshot = "reflink"\n'
        db = mount / "tree" / "app.db"
    make_db(db, 10)
    return Setup(volume + sqlite_db("app", db, "data"), db)


def start_driver(
    guest: Path, freeze_timeout: float, mode: str = "barrier"
) -> subprocess.Popen[str]:
    """The driver; ``mode`` "alone" cuts a lone host (its freeze ends its holds itself)."""
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(guest), str(freeze_timeout), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("provider", ["image", "copy", "btrfs", "reflink"])
def test_a_held_database_refuses_other_writers_until_the_thaw(
    datastore: Datastore, trusted_dir: Path, provider: str
) -> None:
    setup = volume_for(provider, datastore, datastore.root)
    guest = write_private(trusted_dir / "guest.toml", setup.guest)
    assert write_attempt(setup.db) == "written"  # the probe works when nothing holds
    driver = start_driver(guest, 30.0)
    try:
        assert driver.stdout is not None and driver.stdin is not None
        frozen = driver.stdout.readline()
        assert '"snapshot"' in frozen, frozen
        # the snapshot has been taken (it opened and closed the file for copy and reflink)
        attempt = write_attempt(setup.db)
        assert attempt in ("locked", "blocked"), f"{provider}: a write got through the hold"
        driver.stdin.write("go\n")
        driver.stdin.flush()
        assert '"write_stall"' in driver.stdout.readline()
        assert write_attempt(setup.db) == "written", "the hold outlived the thaw"
        assert driver.wait(timeout=30) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)


@pytest.mark.parametrize("mode", ["barrier", "alone"])
def test_a_stopped_coordinator_cannot_keep_anything_held(
    datastore: Datastore, trusted_dir: Path, mode: str
) -> None:
    """SIGSTOP of the coordinator after the freeze: the guest's one deadline (counted from
    the first hold: here the quiesce pre-script's end) thaws, ends the database hold and
    runs the post-script — on a host where nothing is frozen, too (a reflink volume)."""
    setup = volume_for("reflink", datastore, datastore.root)
    trace = trusted_dir / "trace"
    pre = write_script(trusted_dir / "hooks" / "pre.sh", f"echo pre >> {trace}\n")
    post = write_script(trusted_dir / "hooks" / "post.sh", f"echo post >> {trace}\n")
    guest = write_private(trusted_dir / "guest.toml", setup.guest + hook("quiesce", pre, post))
    freeze_timeout = 2.0
    driver = start_driver(guest, freeze_timeout, mode)
    try:
        assert driver.stdout is not None and driver.stdin is not None
        assert '"snapshot"' in driver.stdout.readline()
        os.kill(driver.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        if mode == "barrier":  # a lone host ended its holds inside the freeze already
            assert write_attempt(setup.db, busy=0.2, within=2) == "locked"
            assert trace.read_text().split() == ["pre"]
        deadline = stopped_at + freeze_timeout + 1.0
        while write_attempt(setup.db, busy=0.05, within=2) != "written":
            assert time.monotonic() < deadline, "the database stayed locked past the deadline"
            time.sleep(0.1)
        while trace.read_text().split() != ["pre", "post"]:
            assert time.monotonic() < deadline + 1, "the post-script did not run by itself"
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGCONT)
        driver.stdin.write("go\n")
        driver.stdin.flush()
        thawed = driver.stdout.readline()
        if mode == "barrier":
            assert '"self_thawed": "deadline"' in thawed, thawed
        assert '"phase": "post"' in thawed, "the thaw reply must report the post-script"
        assert driver.wait(timeout=30) == 0
        assert trace.read_text().split() == ["pre", "post"], "the post-script ran twice"
    finally:
        os.kill(driver.pid, signal.SIGCONT) if driver.poll() is None else None
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)


def test_sqlite_rows_written_by_the_probe_are_real(trusted_dir: Path) -> None:
    """The probe's "written" means a committed row (so "locked" is not a broken probe)."""
    db = trusted_dir / "t.db"
    make_db(db, 1)
    assert write_attempt(db) == "written"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count(*) FROM t WHERE v = 'written by the probe'").fetchone()
    assert rows[0] == 1
