"""The multi-host testbed (DESIGN.md §8): real namespaces, veths, sshd and ssh."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cleancut.testbed import Testbed, read_state, teardown
from cleancut.testbed.netns import enter, list_links, list_namespaces, pids_in
from cleancut.testbed.sshd import start_time, stop
from tests.integration.testbed_fixtures import TestbedFactory

pytestmark = pytest.mark.root

TESTBED = [sys.executable, "-m", "cleancut.testbed"]


def ssh(bed: Testbed, host: str, *options: str, known_hosts: Path | None = None) -> str:
    """Run ssh (stdin closed) to ``host``; the exit status and stderr as ``"rc: stderr"``."""
    argv = bed.ssh_argv(host, "-T", "-o", "ConnectTimeout=2", *options, known_hosts=known_hosts)
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False
    )
    return f"{done.returncode}: {done.stderr.strip()}"


def hello(bed: Testbed, host: str) -> dict[str, Any]:
    """Send the guest agent on ``host`` a ``hello`` over ssh and return its reply."""
    request = {"v": 1, "id": 1, "op": "hello"}
    request["args"] = {"protocol": 1, "rp_id": "testbed", "freeze_timeout": 5}
    proc = subprocess.Popen(
        bed.ssh_argv(host, "-T"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.flush()
    reply: dict[str, Any] = json.loads(proc.stdout.readline())
    proc.stdin.close()
    assert proc.wait(timeout=20) == 0
    return reply


def leftovers(block: int, root: Path, pids: list[tuple[int, int]]) -> list[str]:
    """Whatever a testbed on ``block`` in ``root`` left behind."""
    left = [n for n in list_namespaces() if n.startswith(f"cc{block}-")]
    left += [n for n in list_links() if re.fullmatch(rf"cc{block}h\d+", n)]
    addresses = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    left += re.findall(rf"198\.18\.{block}\.\d+", addresses)
    left += [f"pid {pid}" for pid, start in pids if start_time(pid) == start]
    left += [str(root)] if root.exists() else []
    mounts = Path("/proc/self/mounts").read_text()
    left += [line for line in mounts.splitlines() if str(root) in line]
    return left


def recorded(root: Path) -> tuple[int, list[tuple[int, int]]]:
    """The block and sshd (pid, start time) pairs the state file of ``root`` lists."""
    state = read_state(root)
    assert state is not None, f"no state in {root}"
    return state.block, [(pid, start) for pid, start in state.sshd.values()]


def test_ssh_runs_only_the_guest_agent(testbed: TestbedFactory) -> None:
    bed = testbed(["h1", "h2"])
    guest = bed.root / "guest-empty.toml"
    guest.write_text("")
    guest.chmod(0o600)
    for name in bed.hosts:
        bed.set_guest_config(name, guest)
        assert ssh(bed, name).startswith("0:"), name  # the guest agent ran and ended at EOF
    # the forced command runs instead of whatever the client asks for: `id` never runs
    done = subprocess.run(
        [*bed.ssh_argv("h1"), "id"], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    assert "uid=" not in done.stdout
    assert "forced-command" in bed.hosts["h1"].log.read_text()
    broken = bed.root / "guest-broken.toml"
    broken.write_text("volumes = [\n")
    broken.chmod(0o600)
    assert hello(bed, "h2")["ok"] is True
    bed.set_guest_config("h2", broken)  # the line is rewritten: the agent reads the new file
    reply = hello(bed, "h2")
    assert reply["ok"] is False and str(broken) in reply["error"]["message"]


def test_wrong_host_key_is_refused(testbed: TestbedFactory) -> None:
    bed = testbed(["h1", "h2"])
    lines = bed.known_hosts.read_text().splitlines()
    h2_key = lines[1].split(" ", 1)[1]
    wrong = bed.root / "wrong_known_hosts"
    wrong.write_text(f"{bed.hosts['h1'].address} {h2_key}\n")  # h1's address, h2's key
    result = ssh(bed, "h1", known_hosts=wrong)
    assert result.startswith("255:") and "Host key verification failed" in result


def test_cut_and_mend(testbed: TestbedFactory) -> None:
    bed = testbed(["h1", "h2"])
    bed.hosts["h1"].cut()
    try:
        result = ssh(bed, "h1")
        assert result.startswith("255:") and "timed out" in result
        assert ssh(bed, "h2").startswith("0:")  # the other host is not affected
    finally:
        bed.hosts["h1"].mend()
    assert ssh(bed, "h1").startswith("0:")


def guest_agents(namespace: str) -> list[int]:
    """The guest agents running in ``namespace`` (started by its sshd)."""
    found = []
    for pid in pids_in(namespace):
        with contextlib.suppress(OSError):
            if b"cleancut\0guest" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def test_cut_network_ends_the_session_on_the_host(testbed: TestbedFactory) -> None:
    bed = testbed(["h1"])
    host = bed.hosts["h1"]
    proc = subprocess.Popen(bed.ssh_argv("h1", "-T"), stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not guest_agents(host.namespace) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert guest_agents(host.namespace), "the session did not start"
        host.cut()
        cut_at = time.monotonic()
        while guest_agents(host.namespace) and time.monotonic() - cut_at < 12:
            time.sleep(0.1)
        ended_after = time.monotonic() - cut_at
        assert not guest_agents(host.namespace), "the guest agent outlived the cut"
        assert ended_after < 10  # measured ~7 s: the sshd_config's ClientAlive settings
    finally:
        proc.kill()
        proc.wait(timeout=5)
        host.mend()


def test_two_testbeds_take_their_own_blocks(testbed: TestbedFactory) -> None:
    first, second = testbed(["h1"]), testbed(["h1"])
    assert first.block != second.block
    assert first.hosts["h1"].address != second.hosts["h1"].address
    assert ssh(first, "h1").startswith("0:") and ssh(second, "h1").startswith("0:")
    delay = first.set_delay("h1", 5)  # this kernel may lack netem: then it says so
    assert delay.applied or "qdisc" in delay.reason
    first.set_delay("h1", 0)


def test_down_removes_everything(testbed: TestbedFactory) -> None:
    bed = testbed(["h1", "h2"])
    block, root = bed.block, bed.root
    bed.add_disk("h1", "data", 32, "ext4")
    sshd_pid = bed.hosts["h1"].proc.pid  # type: ignore[union-attr]
    # a disk mounted after sshd started is visible to it (and so to its guest agents)
    assert f" {root}/h1/data " in Path(f"/proc/{sshd_pid}/mountinfo").read_text()
    stray = subprocess.Popen(enter(bed.hosts["h2"].namespace, ["sleep", "600"]))
    pids = [*recorded(root)[1], (stray.pid, start_time(stray.pid) or 0)]
    loops = [d.device for d in bed.datastore().disks.values()] + [bed.datastore().device]
    assert bed.down() == []
    stray.wait(timeout=5)
    assert leftovers(block, root, pids) == []
    backing = [Path(f"/sys/block/{Path(str(d)).name}/loop/backing_file") for d in loops]
    assert not any(b.exists() and str(root) in b.read_text() for b in backing)
    assert bed.down() == []  # idempotent


def test_cli_up_and_down(trusted_dir: Path) -> None:
    root = trusted_dir / "bed"
    up = subprocess.Popen(
        [*TESTBED, "up", "2", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, err = up.communicate(timeout=60)
    assert up.returncode == 0, err
    block, pids = recorded(root)
    try:
        assert "[hosts.h1]" in out and 'connect = "ssh://root@198.18.' in out
        with pytest.raises(ProcessLookupError):
            os.killpg(up.pid, signal.SIGTERM)  # as a closing terminal would: sshd is not there
        assert all(start_time(pid) == start for pid, start in pids)
        status = subprocess.run([*TESTBED, "status", "--root", str(root)], capture_output=True)
        assert f"sshd {pids[0][0]}".encode() in status.stdout
    finally:
        down = subprocess.run([*TESTBED, "down", "--root", str(root)], capture_output=True)
    assert down.returncode == 0, down.stderr
    assert leftovers(block, root, pids) == []


def test_down_after_the_foreground_up_was_killed(trusted_dir: Path) -> None:
    root = trusted_dir / "bed"
    proc = subprocess.Popen(
        [*TESTBED, "up", "2", "--root", str(root), "--foreground"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("remove it with"):
            break
    proc.kill()
    proc.wait(timeout=5)
    block, pids = recorded(root)
    assert all(start_time(pid) == start for pid, start in pids)  # the hosts outlive it
    assert teardown(root) == []
    assert leftovers(block, root, pids) == []


def test_down_after_up_was_killed_midway(trusted_dir: Path) -> None:
    root = trusted_dir / "bed"
    proc = subprocess.Popen([*TESTBED, "up", "8", "--root", str(root)])
    deadline = time.monotonic() + 20
    while not (root / "sshd").exists() and time.monotonic() < deadline:  # namespaces exist
        time.sleep(0.001)
    proc.kill()
    proc.wait(timeout=5)
    state = read_state(root)
    assert state is not None and state.namespaces, "the state names what exists before it exists"
    pids = [(pid, start) for pid, start in state.sshd.values()]
    assert teardown(root) == []
    assert leftovers(state.block, root, pids) == []


KEEP_DISK_AND_WAIT = """
import sys, time
from pathlib import Path
from typing import Any
from cleancut.testbed import Testbed
bed = Testbed(Path(sys.argv[1]), ["h1"]).up()
bed.add_disk("h1", "data", 32, "ext4")
print("ready", flush=True)
time.sleep(600)
"""


def test_down_after_kill_unmounts_and_detaches_disks(trusted_dir: Path) -> None:
    root = trusted_dir / "bed"
    proc = subprocess.Popen(
        [sys.executable, "-c", KEEP_DISK_AND_WAIT, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait(timeout=5)
    block, pids = recorded(root)
    assert os.path.ismount(root / "h1" / "data")
    assert teardown(root) == []
    assert leftovers(block, root, pids) == []
    backing = Path("/sys/block").glob("loop*/loop/backing_file")
    assert not any(str(root) in b.read_text() for b in backing)


def test_sixteen_hosts_come_up_in_seconds(testbed: TestbedFactory) -> None:
    started = time.monotonic()
    bed = testbed([f"h{i}" for i in range(1, 17)])
    assert time.monotonic() - started < 10
    block, root, pids = bed.block, bed.root, recorded(bed.root)[1]
    assert len({host.address for host in bed.hosts.values()}) == 16
    assert ssh(bed, "h16").startswith("0:")
    assert bed.down() == []
    assert leftovers(block, root, pids) == []


def test_a_reused_pid_is_never_signalled() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        start = start_time(proc.pid)
        assert start is not None
        assert stop({proc.pid: start + 1}, grace=0.2) == []  # another process's start time
        assert proc.poll() is None
        assert stop({proc.pid: start}, grace=2) == []
        assert proc.wait(timeout=5) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
