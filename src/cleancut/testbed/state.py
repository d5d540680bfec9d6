"""The testbed's state file, block claims, and teardown from the state alone.

``state.json`` in a testbed's folder lists every namespace, veth, sshd (pid and start
time), mount with its disk image, and loop device, and is written *before* each of them is
made: :func:`teardown` removes everything from that file alone, also after the process
that made the testbed was SIGKILLed. Each testbed claims a *block* (``198.18.<block>.0/24``)
by creating ``/run/cleancut-testbed/<block>`` exclusively; a testbed kept elsewhere
leaves a ``root`` file there pointing at its folder, so ``down`` with no argument finds
every testbed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cleancut.demo.disks import thaw_mount
from cleancut.testbed import netns, sshd
from cleancut.testbed.netns import TestbedError

BASE = Path("/run/cleancut-testbed")
STATE = "state.json"
POINTER = "root"  # in a block's claim folder when the testbed lives elsewhere


@dataclass
class State:
    """What a testbed made, recorded before each thing is made (``state.json``)."""

    block: int
    root: str
    claim: str
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)
    sshd: dict[str, list[int]] = field(default_factory=dict)  # host -> [pid, start time]
    mounts: list[dict[str, str]] = field(default_factory=list)  # {"path", "image"}
    loops: list[str] = field(default_factory=list)

    def save(self) -> None:
        sshd.write_file(Path(self.root) / STATE, json.dumps(asdict(self), indent=1), 0o644)


def read_state(root: Path) -> State | None:
    """The state of the testbed in ``root``; None when there is none (or it is unreadable)."""
    try:
        return State(**json.loads((root / STATE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def claim_block() -> tuple[int, Path]:
    """Take the lowest free block: its folder under BASE is created exclusively (mkdir)."""
    BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
    BASE.chmod(0o755)
    used = netns.used_blocks()
    for block in netns.BLOCKS:
        if block in used:
            continue
        claim = BASE / str(block)
        try:
            claim.mkdir(mode=0o755)
        except FileExistsError:
            continue
        return block, claim
    raise TestbedError(f"all 256 testbed blocks are in use: run `scripts/testbed down` ({BASE})")


def teardown(root: Path, state: State | None = None) -> list[str]:
    """Remove the testbed in ``root`` from its state file alone. Never raises.

    Order matters: processes first (they hold mounts and namespaces), then mounts and
    loop devices, then the network, then the folder. Returns what could not be removed.
    """
    state = state or read_state(root)
    if state is None:  # never got as far as its state: delete only what is surely ours
        if BASE in root.parents or (root.is_dir() and not any(root.iterdir())):
            return _remove_folder(root, None)
        return []
    problems: list[str] = []
    processes = {pid: start for pid, start in state.sshd.values() if start}
    for namespace in state.namespaces:  # guest agents, and whatever a test left running
        for pid in netns.pids_in(namespace):
            start = sshd.start_time(pid)
            if start is not None:
                processes[pid] = start
    problems += sshd.stop(processes)
    for mount in reversed(state.mounts):  # disks before the datastore that holds them
        problems += _unmount(Path(mount["path"]))
        problems += _detach(mount["image"])
    problems += netns.remove(state.veths, state.namespaces)
    return problems + _remove_folder(root, state)


def teardown_all() -> list[str]:
    """Remove every testbed under :data:`BASE` (``testbed down`` with no ``--root``)."""
    problems: list[str] = []
    for claim in _claims():
        problems += teardown(_root_of(claim))
        if claim.exists():
            problems += _remove_folder(claim, None)
    return problems


def list_roots() -> list[Path]:
    """The folders of every testbed registered under :data:`BASE`."""
    return [_root_of(claim) for claim in _claims()]


def _claims() -> list[Path]:
    """The block folders under BASE, in block order."""
    try:
        claims = [p for p in BASE.iterdir() if p.name.isdigit() and p.is_dir()]
    except OSError:
        return []
    return sorted(claims, key=lambda p: int(p.name))


def _root_of(claim: Path) -> Path:
    """The folder of the testbed that claimed ``claim``: itself, or where its pointer says."""
    try:
        return Path((claim / POINTER).read_text(encoding="utf-8").strip())
    except OSError:
        return claim


def _unmount(mount: Path) -> list[str]:
    """Thaw and unmount ``mount`` (retrying, lazily as a last resort)."""
    thaw_mount(mount)  # only acts on a mount point
    for attempt in range(5):
        if not os.path.ismount(mount):
            return []
        subprocess.run(["umount", str(mount)], **_QUIET)
        time.sleep(0.05 * attempt)
    subprocess.run(["umount", "--lazy", str(mount)], **_QUIET)
    return [f"could not unmount {mount}"] if os.path.ismount(mount) else []


def _detach(image: str) -> list[str]:
    """Detach every loop device backed by ``image``, recorded or not (a device attached
    just before a SIGKILL is not in the state yet); a reused device is left alone."""
    problems = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip() != image:
                continue
            device = f"/dev/{backing.parent.parent.name}"
            if subprocess.run(["losetup", "-d", device], **_QUIET).returncode != 0:
                problems.append(f"could not detach {device} ({image})")
    return problems


_QUIET: dict[str, Any] = {"capture_output": True, "text": True, "check": False, "timeout": 30}


def _remove_folder(root: Path, state: State | None) -> list[str]:
    """Delete ``root`` unless something is still mounted below it; then its claim folder."""
    mounted = [m for m in _mounts() if m == root or root in m.parents]
    if mounted:
        return [f"{root} not removed: {mounted[0]} is still mounted"]
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], **_QUIET)
    if state is not None and Path(state.claim) != root:
        subprocess.run(["rm", "-rf", "--one-file-system", state.claim], **_QUIET)
    return [f"could not remove {root}"] if root.exists() else []


def _mounts() -> list[Path]:
    with open("/proc/self/mounts", encoding="utf-8") as table:
        return [Path(line.split()[1].replace("\\040", " ")) for line in table]
