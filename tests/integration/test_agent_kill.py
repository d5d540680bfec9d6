"""Every freeze ends: the real guest agent, frozen, loses its coordinator or is killed itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleancut.demo.disks import Datastore
from tests.integration.conftest import finishes, start_probe
from tests.integration.cutlib import children, image_volume, wait_gone, write_private

pytestmark = pytest.mark.root

FREEZE_TIMEOUT = 5.0

COORDINATOR = """
import sys, time
from pathlib import Path
from cleancut.transport.local import LocalChannel
channel = LocalChannel("vm1", Path(sys.argv[1]))
channel.call("hello", {"protocol": 1, "rp_id": "kill-test", "freeze_timeout": float(sys.argv[2])})
channel.call("prepare")
channel.call("freeze")
print("frozen", flush=True)
time.sleep(600)
"""


@pytest.fixture
def frozen_by_agent(
    datastore: Datastore, trusted_dir: Path
) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """A coordinator process whose guest agent froze one ext4 disk; (coordinator, agent, mount)."""
    mount = datastore.add_disk("vm1", datastore.root / "vm1").mountpoint
    guest = write_private(trusted_dir / "guest.toml", image_volume("data", mount))
    proc = subprocess.Popen(
        [sys.executable, "-c", COORDINATOR, str(guest), str(FREEZE_TIMEOUT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "frozen"
        (agent,) = children(proc.pid)
        yield proc, agent, mount
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_sigkill_of_coordinator_thaws_at_once(
    frozen_by_agent: tuple[subprocess.Popen[str], int, Path], probes: list[subprocess.Popen[bytes]]
) -> None:
    coordinator, agent, mount = frozen_by_agent
    probe = start_probe(mount)
    probes.append(probe)
    assert not finishes(probe, 0.5), "the write should wait while the disk is frozen"

    killed_at = time.monotonic()
    coordinator.send_signal(signal.SIGKILL)

    assert finishes(probe, FREEZE_TIMEOUT + 1), "the agent must thaw when its input closes"
    assert time.monotonic() - killed_at < 2.0, "stdin EOF thaws at once, not at the deadline"
    wait_gone(agent, 10)  # the agent releases everything and exits


def test_sigkill_of_the_agent_itself_thaws(
    frozen_by_agent: tuple[subprocess.Popen[str], int, Path], probes: list[subprocess.Popen[bytes]]
) -> None:
    _coordinator, agent, mount = frozen_by_agent
    probe = start_probe(mount)
    probes.append(probe)
    assert not finishes(probe, 0.5)

    os.kill(agent, signal.SIGKILL)

    assert finishes(probe, FREEZE_TIMEOUT + 1), (
        "the thaw sentinel must thaw a killed agent's freeze"
    )


@pytest.mark.parametrize("second", [None, signal.SIGHUP, signal.SIGTERM])
def test_stop_signals_to_the_agent_thaw_release_and_exit(
    frozen_by_agent: tuple[subprocess.Popen[str], int, Path],
    probes: list[subprocess.Popen[bytes]],
    second: signal.Signals | None,
) -> None:
    """SIGTERM (``systemctl stop``), maybe followed at once by another stop signal: the
    agent thaws, releases and exits by itself with 128 + the first signal."""
    _coordinator, agent, mount = frozen_by_agent
    probe = start_probe(mount)
    probes.append(probe)
    assert not finishes(probe, 0.5)

    os.kill(agent, signal.SIGTERM)
    if second is not None:
        os.kill(agent, second)

    assert finishes(probe, 1.5), "a stop signal must thaw at once"
    wait_gone(agent, 10)  # it released and left, without waiting for its coordinator
