"""``cleancut demo --hosts 3``: the demo's shop with each resource on its own testbed VM.

The orders database lives on vm1, the invoices database on vm2 and the receipts share on
vm3; their disk images sit on one datastore host ``ds``. Every host is a testbed VM (a
network namespace with its own sshd, DESIGN.md §8) that the coordinator reaches over SSH,
and each VM's volume is ``snapshot = "external"``: the VMs freeze, ``ds`` clones the disk
images, the VMs thaw. The table is the default demo's (:mod:`cleancut.demo.run`): the
same three rows, the same expectations.

The load generator runs in this process's namespace and writes through the VMs' mounts
(the testbed enters only the network namespace, so every host sees the same mounts); the
quiesce hook on vm3 reaches it over a unix socket, which works across network namespaces.
Everything made here (testbed, disks, workspace) is removed at the end, also after an
error or Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleancut.demo import hostconfigs, workspace
from cleancut.demo.hostconfigs import DATASTORE, FLAVOURS, HOSTS
from cleancut.demo.run import (
    HOOKS,
    PER_RESOURCE,
    PLAIN,
    DemoResult,
    MethodResult,
    cleancut_row,
    expectations,
    per_resource_row,
)
from cleancut.demo.shop import LoadGenerator, ShopPaths, create_shop, write_hook_scripts
from cleancut.errors import ConfigError
from cleancut.testbed import Testbed

Say = Callable[[str], None]
_APP = {"plain": "shop-3hosts-plain", "hooks": "shop-3hosts-hooks"}
_METHOD = {"plain": PLAIN, "hooks": HOOKS}


@dataclass
class HostsWorkspace:
    """What :func:`build` made: the demo's folder and shop, and the testbed behind it."""

    ws: workspace.Workspace
    bed: Testbed
    #: flavour -> host -> its guest config (the testbed's forced command is switched per row)
    guests: dict[str, dict[str, Path]]
    #: flavour -> its application config
    apps: dict[str, Path]

    def record(self) -> dict[str, Any]:
        """What was made (and is removed at the end), for the JSON and the tests."""
        return {
            "workspace": str(self.ws.root),
            "testbed": str(self.bed.root),
            "namespaces": [host.namespace for host in self.bed.hosts.values()],
        }


@dataclass
class HostsDemoResult(DemoResult):
    """The demo's result, plus which host held what and which hosts each RP recorded."""

    hosts: dict[str, str] = field(default_factory=dict)
    manifest_hosts: dict[str, list[str]] = field(default_factory=dict)
    #: what the demo made and removed again: its workspace, testbed folder and namespaces
    made: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        data.update(hosts=self.hosts, manifest_hosts=self.manifest_hosts, made=self.made)
        return data


def require_root() -> None:
    """Refuse (before anything is built) to run without root: the testbed needs it."""
    if os.geteuid() != 0:
        raise ConfigError(
            "--hosts 3 builds a testbed of network namespaces with sshd and loop-mounted "
            "disks, which needs root",
            hint="run it as root (e.g. sudo), or leave out --hosts for the one-machine demo",
        )


def take_down(bed: Testbed, say: Say) -> None:
    for problem in bed.down():
        say(f"testbed: could not remove: {problem}")


def remove_workspace(root: Path, say: Say) -> None:
    """Delete the workspace, unless a mount is still below it (never delete into a disk)."""
    with open("/proc/self/mounts", encoding="utf-8") as table:
        mounts = [Path(line.split()[1]) for line in table]
    mounted = [mount for mount in mounts if root in mount.parents]
    if mounted:
        say(f"workspace {root} kept: {mounted[0]} is still mounted (scripts/testbed down)")
        return
    shutil.rmtree(root, ignore_errors=True)


def _bring_up(stack: ExitStack, root: Path, say: Say) -> Testbed:
    """The testbed's four hosts, and the VMs' disks on the datastore host's datastore.

    Its folder is inside the workspace (``root``), so every path it makes is this run's
    own, and ``scripts/testbed down`` finds it like any other testbed.
    """
    bed = Testbed(root, [*HOSTS.values(), DATASTORE])
    stack.callback(take_down, bed, say)  # first: up() may be interrupted half-way
    bed.up()
    for resource, host in HOSTS.items():
        size = workspace.SHARE_MIB if resource == "receipts" else workspace.DISK_MIB
        bed.add_disk(host, resource, size, "ext4")
    return bed


def _describe(bed: Testbed) -> str:
    """One progress line: which VM holds what, and where the disks are."""
    where = ", ".join(f"{r} on {h} ({bed.hosts[h].address})" for r, h in HOSTS.items())
    return (
        f"testbed {bed.root}: {where}; their disk images on {DATASTORE} "
        f"({bed.hosts[DATASTORE].address}, {bed.datastore().path}); every host over SSH"
    )


def write_private(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def _write_configs(
    root: Path, bed: Testbed, pre: Path, post: Path
) -> tuple[dict[str, dict[str, Path]], dict[str, Path]]:
    """Both flavours' guest configs (flavour -> host -> file) and application configs."""
    staging = {host: root / "staging" / host for host in bed.hosts}
    for folder in staging.values():
        folder.mkdir(mode=0o700, parents=True)
    images = {r: bed.datastore().disks[f"{h}-{r}"].image for r, h in HOSTS.items()}
    guests: dict[str, dict[str, Path]] = {}
    apps: dict[str, Path] = {}
    for flavour in FLAVOURS:
        folder = root / "etc" / flavour
        folder.mkdir(mode=0o755, parents=True)
        guests[flavour] = {
            host: write_private(
                folder / f"{host}.toml",
                hostconfigs.vm_guest(
                    resource,
                    bed.root / host / resource,
                    staging[host],
                    hooks=flavour == "hooks",
                    pre=pre,
                    post=post,
                ),
            )
            for resource, host in HOSTS.items()
        }
        guests[flavour][DATASTORE] = write_private(
            folder / f"{DATASTORE}.toml", hostconfigs.datastore_guest(images, staging[DATASTORE])
        )
        tables = {host: bed.app_config(host) for host in bed.hosts}
        app = hostconfigs.app_toml(_APP[flavour], root, tables)
        apps[flavour] = write_private(folder / f"{_APP[flavour]}.toml", app)
    return guests, apps


def build(stack: ExitStack, say: Say) -> HostsWorkspace:
    """The workspace, the testbed and the shop on its VMs; all undone when ``stack`` closes."""
    require_root()
    root = Path(tempfile.mkdtemp(prefix="shop-hosts-", dir=workspace.workspace_base()))
    root.chmod(0o755)
    stack.callback(remove_workspace, root, say)
    bed = _bring_up(stack, root / "testbed", say)
    mounts = {resource: bed.root / host / resource for resource, host in HOSTS.items()}
    shop = create_shop(mounts["orders"], mounts["invoices"], mounts["receipts"])
    socket = root / "run" / "shop.sock"
    socket.parent.mkdir(mode=0o700)
    pre, post = write_hook_scripts(root / "hooks", sys.executable, socket)
    write_private(root / "repository.pass", secrets.token_hex(16) + "\n")
    guests, apps = _write_configs(root, bed, pre, post)
    why = (
        f"root: each volume is an ext4 disk image on {DATASTORE}'s XFS datastore; its VM "
        f"freezes it (snapshot = external) and {DATASTORE} clones the image"
    )
    ws = workspace.Workspace(root, True, shop, socket, apps["hooks"], apps["plain"], why)
    return HostsWorkspace(ws, bed, guests, apps)


def _restored_shop(target: Path) -> ShopPaths:
    """Where :func:`~cleancut.restore.restore_rp` (``extract``) puts each VM's files."""
    files = {resource: target / host / resource for resource, host in HOSTS.items()}
    return ShopPaths(
        files["orders"] / "orders.db", files["invoices"] / "invoices.db", files["receipts"]
    )


def _cleancut(
    made: HostsWorkspace, flavour: str, count: int, say: Say
) -> tuple[MethodResult, list[str]]:
    """``count`` cuts across the hosts with the ``flavour`` guest configs, each restored
    and checked; the row and the hosts the recovery points recorded."""
    for host, guest in made.guests[flavour].items():
        made.bed.set_guest_config(host, guest)
    return cleancut_row(
        made.apps[flavour],
        _METHOD[flavour],
        count,
        made.ws.root / "restored",
        _restored_shop,
        say,
        extract=True,
        discard=True,  # the disk images: ~400 MiB per cut
        name_hosts=True,
    )


def _host_problems(manifest_hosts: dict[str, list[str]]) -> list[str]:
    """A recovery point that does not name every host is not the cut the demo shows."""
    wanted = sorted([*HOSTS.values(), DATASTORE])
    return [
        f"the {method} recovery points name hosts {found}, not {wanted}"
        for method, found in manifest_hosts.items()
        if found != wanted
    ]


def run_demo_hosts(*, backups: int = 4, say: Say = lambda _text: None) -> HostsDemoResult:
    """Build the shop on three testbed VMs and a datastore host, back it up three ways
    under load, restore and check every backup; everything is removed afterwards."""
    require_root()
    manifest_hosts: dict[str, list[str]] = {}
    with ExitStack() as stack:
        made = build(stack, say)
        ws = made.ws
        say(f"workspace {ws.root}\n{ws.why_level}\n{_describe(made.bed)}")
        made_here = made.record()
        load = stack.enter_context(LoadGenerator(ws.shop, ws.socket))
        rows = {PER_RESOURCE: per_resource_row(ws, backups, say)}
        for flavour in FLAVOURS:
            row, hosts = _cleancut(made, flavour, backups, say)
            rows[row.method] = row
            manifest_hosts[row.method] = hosts
        stats = load.stop()
        say(f"the shop wrote {stats.orders} orders during the demo")
    problems = expectations(rows, frozen=True) + _host_problems(manifest_hosts)
    holds = {host: resource for resource, host in HOSTS.items()}
    holds[DATASTORE] = "the disk images of " + ", ".join(HOSTS.values())
    return HostsDemoResult(
        True, ws.why_level, stats.orders, rows, problems, holds, manifest_hosts, made_here
    )
