"""Fixtures for integration tests on the real disk testbed (DESIGN.md §8 Disks).

Nothing may be left frozen, whatever a test does: every test gets a safety net that thaws
the mounts this process created after ``SAFETY_NET_SECONDS``, the ``datastore`` fixture
thaws and tears down its disks, and a session-wide finaliser runs ``fsfreeze -u`` on every
mount the tests created.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleancut.demo import disks
from cleancut.demo.disks import Datastore
from tests.integration.testbed_fixtures import _testbeds_down_at_session_end, testbed  # noqa: F401

SAFETY_NET_SECONDS = 60.0
TEST_BASE = Path("/run/cleancut-tests")

_CREATED_MOUNTS: set[Path] = set()

WRITER_CODE = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
n = 0
while True:
    n += 1
    os.pwrite(fd, b"%d\\n" % n, 0)
    os.fsync(fd)
    print(n, flush=True)
    time.sleep(0.005)
"""

PROBE_CODE = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"probe\\n")
os.fsync(fd)
"""


def thaw_all_created() -> None:
    """``fsfreeze -u`` every mount the tests created that is still mounted; ignore errors."""
    for mount_point in sorted(_CREATED_MOUNTS | set(disks.mounted_here()), reverse=True):
        if os.path.ismount(mount_point):
            subprocess.run(["fsfreeze", "-u", str(mount_point)], capture_output=True, check=False)


@pytest.fixture(scope="session", autouse=True)
def _thaw_at_session_end() -> Iterator[None]:
    yield
    thaw_all_created()


@pytest.fixture(autouse=True)
def _safety_net() -> Iterator[None]:
    """Thaw everything if a test is still running (hung on a freeze) after the net's time."""
    timer = threading.Timer(SAFETY_NET_SECONDS, thaw_all_created)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        thaw_all_created()


@pytest.fixture
def datastore() -> Iterator[Datastore]:
    """A fresh loop-mounted XFS datastore; every disk added to it is torn down afterwards."""
    TEST_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=TEST_BASE))
    root.chmod(0o755)
    store = Datastore(root, remove_images=True)
    try:
        store.open()
        yield store
    finally:
        mountpoints = [disk.mountpoint for disk in store.disks.values()]
        _CREATED_MOUNTS.update(mountpoints)
        _CREATED_MOUNTS.add(store.path)
        store.close()
        # --one-file-system: never delete into a file system that failed to unmount
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
        for mountpoint in mountpoints:  # disks mounted elsewhere (a test's trusted_dir)
            _remove_empty(mountpoint)


def _remove_empty(mountpoint: Path) -> None:
    """Remove a disk's mount point once it is unmounted, and its test folder if now empty."""
    for folder in (mountpoint, mountpoint.parent):
        if TEST_BASE not in folder.parents or os.path.ismount(folder):
            return
        try:
            folder.rmdir()
        except OSError:
            return


class CounterWriter:
    """A subprocess that writes and fsyncs a counter file in a loop, reporting each count
    on stdout; while its file system is frozen the count stops advancing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", WRITER_CODE, str(path)], stdout=subprocess.PIPE
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.count = int(line)

    def advances(self, within: float) -> bool:
        """Whether the counter moves on within ``within`` seconds."""
        start = self.count
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.count > start:
                return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        """Kill the writer (after thawing its file system if it is stuck there)."""
        self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            thaw_all_created()
            self.proc.wait(timeout=5)


@pytest.fixture
def writers() -> Iterator[list[CounterWriter]]:
    """Collects :class:`CounterWriter` instances; stops them all afterwards."""
    started: list[CounterWriter] = []
    try:
        yield started
    finally:
        for writer in started:
            writer.stop()


def start_probe(directory: Path) -> subprocess.Popen[bytes]:
    """Start one write+fsync in ``directory``; it blocks while the file system is frozen."""
    return subprocess.Popen([sys.executable, "-c", PROBE_CODE, str(directory / "probe")])


def finishes(proc: subprocess.Popen[bytes], within: float) -> bool:
    """Whether ``proc`` exits successfully within ``within`` seconds."""
    try:
        return proc.wait(timeout=within) == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture
def probes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Collects probe processes; reaps them afterwards (thawing first if one is stuck)."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if not finishes(proc, 5):
                thaw_all_created()
                proc.kill()
                proc.wait(timeout=5)
