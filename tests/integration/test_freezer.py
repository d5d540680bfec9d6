"""The freezer, its watchdog and thaw sentinel on real loop-mounted file systems."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cleancut.demo.disks import Datastore
from cleancut.errors import FreezeError
from cleancut.guest.freezer import Freezer
from cleancut.guest.watchdog import Watchdog

from .conftest import CounterWriter, finishes, start_probe

FROZEN_PROBE_WAIT = 0.4

GUEST_WITH_WATCHDOG = """
import sys, time
from pathlib import Path
from cleancut.guest.freezer import Freezer
from cleancut.guest.watchdog import Watchdog
freezer = Freezer([Path(sys.argv[1])])
freezer.open(sentinel=False)
watchdog = Watchdog(float(sys.argv[2]), lambda reason: freezer.thaw())
watchdog.hold_started()
freezer.freeze()
print("frozen", flush=True)
sys.stdin.buffer.read()
watchdog.input_closed()
while freezer.frozen:
    time.sleep(0.01)
"""

COORDINATOR = """
import subprocess, sys, time
guest = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]],
                         stdin=subprocess.PIPE)
print("guest", guest.pid, flush=True)
time.sleep(3600)
"""

GUEST_WITH_SENTINEL = """
import sys, time
from pathlib import Path
from cleancut.guest.freezer import Freezer
freezer = Freezer([Path(sys.argv[1])])
freezer.open()
freezer.freeze(deadline_seconds=float(sys.argv[2]))
print("frozen", freezer.sentinel.pid, flush=True)
time.sleep(3600)
"""


def read_line(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """One line of ``proc``'s stdout, or fail after ``timeout`` (never hang the run)."""
    assert proc.stdout is not None
    fd, line, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no line from pid {proc.pid} within {timeout} s (got {line!r})"
        byte = os.read(fd, 1)
        assert byte, f"pid {proc.pid} closed its output (got {line!r})"
        line += byte
    return line.decode().strip()


def assert_frozen(directory: Path, probes: list[subprocess.Popen[bytes]]) -> None:
    probe = start_probe(directory)
    probes.append(probe)
    assert not finishes(probe, FROZEN_PROBE_WAIT), f"{directory} accepted a write while frozen"


def assert_writable(directory: Path, within: float) -> None:
    probe = start_probe(directory)
    assert finishes(probe, within), f"{directory} still not writable after {within} s"


def is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_if_running(pid: int | None) -> None:
    if pid is not None and is_running(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.root
def test_writer_stalls_while_frozen_and_resumes_after_thaw(
    datastore: Datastore, writers: list[CounterWriter]
) -> None:
    disk = datastore.add_disk("vm1", datastore.root / "vm1")
    writer = CounterWriter(disk.mountpoint / "counter")
    writers.append(writer)
    assert writer.advances(within=5), "the writer never started"
    freezer = Freezer([disk.mountpoint / "counter"])
    try:
        frozen_at = freezer.freeze()
        time.sleep(0.2)  # a write that finished just before the freeze may still report
        stalled_at = writer.count
        time.sleep(0.5)
        assert writer.count == stalled_at, "the counter advanced while frozen"
        thawed_at = freezer.thaw()
        assert thawed_at >= frozen_at
        assert writer.advances(within=2), "the writer did not resume after the thaw"
    finally:
        freezer.close()


@pytest.mark.root
def test_stacked_disk_frozen_before_the_datastore_holding_its_image(
    datastore: Datastore, probes: list[subprocess.Popen[bytes]]
) -> None:
    disk = datastore.add_disk("vm1", datastore.root / "vm1")
    # dirty data makes the disk's freeze write through its loop device into the datastore:
    # in the wrong order it would wait forever for the datastore's thaw
    (disk.mountpoint / "dirty").write_bytes(os.urandom(1 << 20))
    freezer = Freezer([datastore.path, disk.mountpoint])
    assert [[m.mount_point for m in wave] for wave in freezer.plan] == [
        [disk.mountpoint],
        [datastore.path],
    ]
    try:
        freezer.freeze()
        assert_frozen(disk.mountpoint, probes)
        assert_frozen(datastore.path, probes)
        freezer.thaw()
        assert all(finishes(probe, 3) for probe in probes)
    finally:
        freezer.close()


@pytest.mark.root
def test_independent_disks_frozen_in_one_parallel_wave(
    datastore: Datastore,
    probes: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mounts = [datastore.add_disk(f"vm{i}", datastore.root / f"vm{i}").mountpoint for i in range(3)]
    started: list[str] = []
    original_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        original_start(thread)

    with Freezer(mounts) as freezer:
        assert [[m.mount_point for m in wave] for wave in freezer.plan] == [sorted(mounts)]
        try:
            monkeypatch.setattr(threading.Thread, "start", counting_start)
            try:
                freezer.freeze()
            finally:
                monkeypatch.undo()
            assert len(started) == 3, "the wave was not frozen by parallel threads"
            for mount in mounts:
                assert_frozen(mount, probes)
        finally:
            freezer.thaw()
    assert all(finishes(probe, 3) for probe in probes)


@pytest.mark.root
def test_failed_freeze_thaws_what_it_froze(
    datastore: Datastore, probes: list[subprocess.Popen[bytes]]
) -> None:
    busy = datastore.add_disk("busy", datastore.root / "busy").mountpoint
    other = datastore.add_disk("other", datastore.root / "other").mountpoint
    subprocess.run(["fsfreeze", "-f", str(busy)], check=True)  # someone else froze it
    try:
        with Freezer([busy, other]) as freezer, pytest.raises(FreezeError) as caught:
            freezer.freeze()
        assert str(busy) in caught.value.message
        assert "EBUSY" in caught.value.message
        assert_writable(other, within=3)
        assert not freezer.frozen
    finally:
        subprocess.run(["fsfreeze", "-u", str(busy)], check=False)


def test_refuses_the_root_file_system() -> None:
    with pytest.raises(FreezeError, match=r"root file system /"):
        Freezer([Path("/")])
    with pytest.raises(FreezeError, match=r"root file system /"):
        Freezer([Path(sys.prefix)])  # a path on / is refused too


@pytest.mark.root
def test_refuses_a_path_on_tmpfs(trusted_dir: Path) -> None:
    mount_point = trusted_dir / "tmpfs"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount_point)], check=True)
    try:
        with pytest.raises(FreezeError, match=r"tmpfs file system, which cannot be frozen"):
            Freezer([mount_point])
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@pytest.mark.root
def test_second_freezer_of_the_same_file_system_is_refused(datastore: Datastore) -> None:
    first_mount = datastore.add_disk("vm1", datastore.root / "vm1").mountpoint
    other_mount = datastore.add_disk("vm2", datastore.root / "vm2").mountpoint
    second = Freezer([first_mount / "lost+found"], lock_timeout=0.2)
    other = Freezer([other_mount], lock_timeout=0.2)
    with Freezer([first_mount]) as first:
        try:
            first.freeze()
            with pytest.raises(
                FreezeError,
                match=rf"another freeze of {first_mount} is in progress.*pid {os.getpid()}",
            ):
                second.open()
            other.open()  # another file system of the same host is free to freeze
            other.freeze()
            other.thaw()
        finally:
            first.thaw()
            other.close()
    second.open()  # free again once the first is closed
    second.close()


@pytest.mark.root
def test_watchdog_thaws_at_the_deadline(datastore: Datastore, writers: list[CounterWriter]) -> None:
    disk = datastore.add_disk("vm1", datastore.root / "vm1")
    writer = CounterWriter(disk.mountpoint / "counter")
    writers.append(writer)
    assert writer.advances(within=5)
    with (
        Freezer([disk.mountpoint]) as freezer,
        Watchdog(1.0, lambda reason: freezer.thaw()) as dog,
    ):
        try:
            dog.hold_started()
            freezer.freeze()
            time.sleep(0.3)
            assert dog.fired is None
            assert not writer.advances(within=0.3), "the counter advanced while frozen"
            assert writer.advances(within=2.0), "the watchdog did not thaw at its deadline"
            assert dog.fired == "deadline"
            assert not freezer.frozen
        finally:
            freezer.thaw()


@pytest.mark.root
def test_watchdog_thaws_when_the_coordinator_is_gone(
    datastore: Datastore, probes: list[subprocess.Popen[bytes]]
) -> None:
    disk = datastore.add_disk("vm1", datastore.root / "vm1")
    with (
        Freezer([disk.mountpoint]) as freezer,
        Watchdog(30.0, lambda reason: freezer.thaw()) as dog,
    ):
        try:
            dog.hold_started()
            freezer.freeze()
            assert_frozen(disk.mountpoint, probes)
            dog.input_closed()
            assert finishes(probes[0], 1.0), "input_closed did not thaw"
            assert dog.fired == "coordinator gone"
        finally:
            freezer.thaw()


def test_watchdog_fires_once_after_the_first_hold_and_never_after_settle() -> None:
    reasons: list[str] = []
    with Watchdog(0.2, reasons.append) as dog:
        time.sleep(0.4)
        assert reasons == [], "no hold yet: nothing to end"
        dog.hold_started()
        dog.settle()
        time.sleep(0.4)
        assert reasons == [] and dog.fired is None
    with Watchdog(0.1, reasons.append) as dog:
        dog.hold_started()
        time.sleep(0.4)
        dog.hold_started()  # a later hold does not restart the countdown
        assert reasons == ["deadline"]


def test_watchdog_stop_from_a_signal_handler_fires_within_its_poll() -> None:
    reasons: list[str] = []
    with Watchdog(60.0, reasons.append) as dog:
        dog.hold_started()
        dog.stop("stopped by SIGTERM")  # lock-free
        assert dog.wait_fired(1.0)
        assert reasons == ["stopped by SIGTERM"]


@pytest.mark.root
def test_killed_coordinator_leaves_nothing_frozen(
    datastore: Datastore, probes: list[subprocess.Popen[bytes]]
) -> None:
    disk = datastore.add_disk("vm1", datastore.root / "vm1")
    deadline = 2.0
    coordinator = subprocess.Popen(
        [sys.executable, "-c", COORDINATOR, GUEST_WITH_WATCHDOG, str(disk.mountpoint), "2"],
        stdout=subprocess.PIPE,
    )
    guest_pid = None
    try:
        guest_pid = int(read_line(coordinator).split()[1])
        assert read_line(coordinator) == "frozen"
        assert_frozen(disk.mountpoint, probes)
        coordinator.kill()
        killed_at = time.monotonic()
        assert finishes(probes[0], deadline + 1.0), "still frozen after the coordinator died"
        assert time.monotonic() - killed_at <= deadline + 1.0
    finally:
        subprocess.run(["fsfreeze", "-u", str(disk.mountpoint)], capture_output=True, check=False)
        coordinator.kill()
        coordinator.wait(timeout=5)
        kill_if_running(guest_pid)


@pytest.mark.root
@pytest.mark.parametrize(
    "how", ["SIGKILL of the guest", "SIGTERM of the sentinel", "SIGTERM+SIGHUP of the sentinel"]
)
def test_sentinel_thaws_when_the_guest_is_killed_or_it_is_told_to_stop(
    datastore: Datastore, probes: list[subprocess.Popen[bytes]], how: str
) -> None:
    """``systemctl stop`` sends SIGTERM to every process of the unit, the sentinel too: a
    sentinel told to stop thaws first (a forked one exited through the guest's handler)."""
    disk = datastore.add_disk("vm1", datastore.root / "vm1")
    deadline = 30.0
    guest = subprocess.Popen(
        [sys.executable, "-c", GUEST_WITH_SENTINEL, str(disk.mountpoint), str(deadline)],
        stdout=subprocess.PIPE,
    )
    sentinel_pid = None
    try:
        word, pid = read_line(guest).split()
        assert word == "frozen"
        sentinel_pid = int(pid)
        assert_frozen(disk.mountpoint, probes)
        if how == "SIGKILL of the guest":
            guest.kill()
        else:
            os.kill(sentinel_pid, signal.SIGTERM)
            if "SIGHUP" in how:  # systemd may send both: the second must not cut the thaw
                os.kill(sentinel_pid, signal.SIGHUP)
        assert finishes(probes[0], 1.5), f"still frozen after the {how}"
    finally:
        subprocess.run(["fsfreeze", "-u", str(disk.mountpoint)], capture_output=True, check=False)
        guest.kill()
        guest.wait(timeout=5)
        kill_if_running(sentinel_pid)


@pytest.mark.root
def test_sentinel_thaws_a_stalled_process_after_its_deadline(
    datastore: Datastore, probes: list[subprocess.Popen[bytes]]
) -> None:
    disk = datastore.add_disk("vm1", datastore.root / "vm1")
    deadline = 1.0
    guest = subprocess.Popen(
        [sys.executable, "-c", GUEST_WITH_SENTINEL, str(disk.mountpoint), str(deadline)],
        stdout=subprocess.PIPE,
    )
    sentinel_pid = None
    try:
        sentinel_pid = int(read_line(guest).split()[1])
        assert_frozen(disk.mountpoint, probes)
        assert finishes(probes[0], deadline + 1.5), "the sentinel did not thaw at its deadline"
        assert guest.poll() is None, "the guest died: the sentinel's deadline was not tested"
    finally:
        subprocess.run(["fsfreeze", "-u", str(disk.mountpoint)], capture_output=True, check=False)
        guest.kill()
        guest.wait(timeout=5)
        kill_if_running(sentinel_pid)


@pytest.mark.root
def test_sentinel_finishes_quietly_after_a_normal_thaw(datastore: Datastore) -> None:
    disk = datastore.add_disk("vm1", datastore.root / "vm1")
    with Freezer([disk.mountpoint]) as freezer:
        assert freezer.sentinel is not None
        pid = freezer.sentinel.pid
        assert pid is not None
        freezer.freeze(deadline_seconds=5.0)
        freezer.thaw()
    assert freezer.sentinel is None
    assert not is_running(pid)
    assert_writable(disk.mountpoint, within=2)


@pytest.mark.root
def test_sentinel_is_disarmed_by_the_thaw_and_never_thaws_someone_elses_freeze(
    datastore: Datastore, probes: list[subprocess.Popen[bytes]]
) -> None:
    disk = datastore.add_disk("vm1", datastore.root / "vm1")
    with Freezer([disk.mountpoint]) as freezer:
        freezer.freeze(deadline_seconds=0.5)
        freezer.thaw()
        subprocess.run(["fsfreeze", "-f", str(disk.mountpoint)], check=True)  # someone else
        try:
            time.sleep(1.5)  # past the sentinel's deadline and grace
            assert_frozen(disk.mountpoint, probes)  # their freeze is theirs to end
        finally:
            subprocess.run(["fsfreeze", "-u", str(disk.mountpoint)], check=False)
    assert all(finishes(probe, 3) for probe in probes)
