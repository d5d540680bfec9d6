"""``cleancut demo --hosts 3``: the shop on three testbed VMs and a datastore host, over SSH.

The demo must prove the same point as the one-machine demo (per-resource backups break
records, one cut keeps them, with hooks at level ``application``), with every recovery
point naming all four hosts, and leave no testbed, mount, loop device or namespace behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cleancut.demo.workspace import workspace_base
from cleancut.testbed import read_state
from tests.integration.cutlib import CLEANCUT, _env

HOSTS = ["ds", "vm1", "vm2", "vm3"]
TESTBED = [sys.executable, "-m", "cleancut.testbed"]


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=_env(), check=False
    )


def _system() -> dict[str, set[str]]:
    """What a testbed leaves when it is not taken down: the lines of each listing."""
    listings = {
        "testbed status": [*TESTBED, "status"],
        "losetup -a": ["losetup", "-a"],
        "ip netns list": ["ip", "netns", "list"],
    }
    found = {name: set(_run(argv, 60).stdout.splitlines()) for name, argv in listings.items()}
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        found["mounts"] = {line.split()[1] for line in mounts}
    return found


def _ours(line: str, made: dict[str, Any]) -> bool:
    """Whether a listing's line names the demo's workspace (which holds its testbed folder,
    disk images and mounts) or one of its namespaces."""
    words = line.replace("(", " ").replace(")", " ").split()
    return made["workspace"] in line or any(ns in words for ns in made["namespaces"])


@pytest.mark.root
@pytest.mark.restic
def test_demo_on_three_vms_shows_the_same_table_and_removes_everything() -> None:
    before = _system()

    done = _run([*CLEANCUT, "demo", "--hosts", "3", "--backups", "2", "--json"], 300)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is True and result["problems"] == [], result["problems"]
    rows = {row["method"]: row for row in result["methods"]}
    assert list(rows) == ["per-resource", "cleancut, no application hook", "cleancut"]
    per_resource, plain, hooks = rows.values()
    assert per_resource["broken_backups"] > 0
    assert per_resource["orphans"] + per_resource["incomplete"] > 0
    assert plain["level"] == "filesystem" and plain["orphans"] == 0
    assert all(check["incomplete"] <= 1 for check in plain["checks"])
    assert hooks["level"] == "application"
    assert hooks["broken_backups"] == 0 and hooks["orphans"] == hooks["incomplete"] == 0
    assert all(check["orders"] > 0 for check in hooks["checks"])
    assert hooks["write_stall_p50"] is not None and hooks["write_stall_p50"] < 10
    assert result["hosts"] == {
        "vm1": "orders",
        "vm2": "invoices",
        "vm3": "receipts",
        "ds": "the disk images of vm1, vm2, vm3",
    }
    assert result["manifest_hosts"] == {"cleancut, no application hook": HOSTS, "cleancut": HOSTS}
    assert "hosts ds, vm1, vm2, vm3" in done.stderr  # the progress lines say it too

    made = result["made"]
    assert sorted(ns.split("-", 1)[1] for ns in made["namespaces"]) == HOSTS
    assert Path(made["testbed"]).is_relative_to(made["workspace"])
    assert not Path(made["workspace"]).exists()
    after = _system()
    for listing, lines in after.items():
        left = sorted(line for line in lines - before[listing] if _ours(line, made))
        assert left == [], f"{listing} still shows what the demo made: {left}"


def _wait_for_line(lines: list[str], prefix: str, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"the demo never printed {prefix!r}: {lines}")


@pytest.mark.root
@pytest.mark.restic
def test_ctrl_c_in_the_middle_of_the_demo_removes_everything() -> None:
    """Ctrl-C (SIGINT to the demo's whole process group, as a terminal sends it) during
    a cut: the hosts are released, the testbed, disks and workspace are gone."""
    before = _system()
    proc = subprocess.Popen(
        [*CLEANCUT, "demo", "--hosts", "3", "--backups", "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        workspace = Path(_wait_for_line(lines, "workspace ", proc).split()[1])
        state = read_state(workspace / "testbed")
        assert state is not None
        _wait_for_line(lines, "cleancut, no application hook backup 1/3", proc)
        time.sleep(0.5)  # into the second cut
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    # 130 as a rule; a child that died of the SIGINT first may be reported as its failure
    assert proc.returncode != 0 and "Traceback" not in "".join(lines), "".join(lines)
    assert not workspace.exists()
    made = {"workspace": str(workspace), "namespaces": state.namespaces}
    after = _system()
    for listing, found in after.items():
        left = sorted(line for line in found - before[listing] if _ours(line, made))
        assert left == [], f"{listing} still shows what the demo made: {left}"


def test_only_one_or_three_hosts_are_offered() -> None:
    base = workspace_base()
    before = sorted(base.glob("shop-hosts-*"))

    done = _run([*CLEANCUT, "demo", "--hosts", "2"], 60)

    assert done.returncode == 2, done.stderr
    assert "Invalid value for '--hosts'" in done.stderr
    assert "give --hosts 1 or --hosts 3" in done.stderr
    assert done.stdout == "" and "workspace" not in done.stderr  # nothing was built
    assert sorted(base.glob("shop-hosts-*")) == before


DROP_ROOT_AND_RUN = """
import contextlib, importlib, os, pkgutil, sys
import cleancut, rich, typer
# Import now, while the files are readable (a clone in a 0700 folder is not, to nobody):
# the CLI, typer and rich import some modules lazily, on first use.
for package in (cleancut, typer, rich):
    for found in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if found.name.endswith("__main__") or found.name == "typer.cli":  # those run a CLI
            continue
        with contextlib.suppress(Exception):  # e.g. Windows-only modules refuse to load
            importlib.import_module(found.name)
from cleancut.cli.main import main
os.setegid(65534)
os.seteuid(65534)
sys.argv = ["cleancut", "demo", "--hosts", "3", "--backups", "1"]
main()
"""


@pytest.mark.root
def test_three_hosts_need_root() -> None:
    """Imported as root (the venv may not be readable by others), then run as ``nobody``."""
    done = _run([sys.executable, "-c", DROP_ROOT_AND_RUN], 60)

    assert done.returncode == 2, done.stderr
    assert "--hosts 3 builds a testbed" in done.stderr and "needs root" in done.stderr
    assert "workspace" not in done.stderr
    assert os.geteuid() == 0
