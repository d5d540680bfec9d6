"""The demo's workspace: the shop's volumes (disk images on a datastore as root), its hooks,
the guest and application configs for the two cleancut methods, and the repository.

As root every resource gets its own ext4 disk image on an XFS datastore, loop-mounted, and
cleancut takes ``image`` snapshots under fsfreeze, as a hypervisor would. Without root it
works on plain folders with ``copy`` snapshots and no freeze, and says what that costs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from cleancut.demo.disks import Datastore
from cleancut.demo.shop import RESOURCES, ShopPaths, create_shop, write_hook_scripts

DISK_MIB = 64
#: The receipts share gets one small file per order: ext4 gives a 64 MiB disk only 16,384
#: inodes, which the shop's load fills in about two minutes, so the share gets more room.
SHARE_MIB = 256


def workspace_base() -> Path:
    """A folder only its owner can write to: hooks and guest configs must live in one.

    Mode 0711: others may pass through it (database servers run as their own users and
    reach their data directories below it) but not list it.
    """
    base = Path("/var/lib/cleancut/demo") if os.geteuid() == 0 else _user_cache() / "demo"
    base.mkdir(mode=0o711, parents=True, exist_ok=True)
    base.chmod(0o711)
    return base


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cleancut"


@dataclass
class Workspace:
    """Everything the demo made, and the two application configs it backs up with."""

    root: Path
    as_root: bool
    shop: ShopPaths
    socket: Path
    app_hooks: Path
    app_plain: Path
    why_level: str


def _write_private(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)


def _guest_toml(ws: Path, volumes: dict[str, Path], as_root: bool, *, hooks: bool) -> str:
    lines = [f'staging = "{ws / "staging"}"', ""]
    for name, path in volumes.items():
        lines.append(f"[volumes.{name}]")
        lines.append(f'path = "{path}"')
        if as_root:
            lines += ['snapshot = "image"', "freeze = true"]
        else:
            lines += ['snapshot = "copy"', "freeze = false"]
        lines.append("")
    if hooks:
        for name in ("orders", "invoices"):
            lines += [
                f"[databases.{name}]",
                'kind = "sqlite"',
                f'path = "{volumes[name] / (name + ".db")}"',
                f'volume = "{name}"',
                "",
            ]
        lines += [
            "[[hooks]]",
            'name = "shop-quiesce"',
            f'pre = ["{ws / "hooks" / "pre.sh"}"]',
            f'post = ["{ws / "hooks" / "post.sh"}"]',
            'timeout = "30s"',
            "",
        ]
    return "\n".join(lines)


def _app_toml(name: str, ws: Path, guest: Path) -> str:
    return "\n".join(
        [
            f'name = "{name}"',
            'freeze_timeout = "10s"',
            'on_failure = "degrade"',
            f'catalog = "{ws / (name + ".catalog.sqlite")}"',
            "",
            "[repository]",
            f'url = "{ws / "repository"}"',
            f'password_file = "{ws / "repository.pass"}"',
            "",
            "[hosts.app1]",
            'connect = "local"',
            f'guest_config = "{guest}"',
            "",
        ]
    )


def build(stack: ExitStack, *, share_mib: int = SHARE_MIB) -> Workspace:
    """Create the workspace; everything it mounts is undone when ``stack`` closes."""
    as_root = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="shop-", dir=workspace_base()))
    root.chmod(0o755)
    stack.callback(shutil.rmtree, root, True)
    volumes = {name: root / "vm" / "srv" / name for name in RESOURCES}
    if as_root:
        datastore = stack.enter_context(Datastore(root / "hypervisor", remove_images=True))
        for name, mountpoint in volumes.items():
            size = share_mib if name == "receipts" else DISK_MIB
            datastore.add_disk(name, mountpoint, size_mib=size, fstype="ext4")
        why = "root: each volume is an ext4 disk image on an XFS datastore, frozen and cloned"
    else:
        why = (
            "not root: plain folders, copy snapshots without fsfreeze (freezing needs root); "
            "run as root for file-system-level cuts"
        )
    shop = create_shop(volumes["orders"], volumes["invoices"], volumes["receipts"])
    socket = root / "run" / "shop.sock"
    socket.parent.mkdir(mode=0o700)
    write_hook_scripts(root / "hooks", sys.executable, socket)
    _write_private(root / "repository.pass", secrets.token_hex(16) + "\n")
    (root / "staging").mkdir(mode=0o700)
    configs = root / "etc"
    configs.mkdir(mode=0o755)
    for flavour, hooks in (("hooks", True), ("plain", False)):
        guest = configs / f"guest-{flavour}.toml"
        _write_private(guest, _guest_toml(root, volumes, as_root, hooks=hooks))
        _write_private(configs / f"shop-{flavour}.toml", _app_toml(f"shop-{flavour}", root, guest))
    return Workspace(
        root=root,
        as_root=as_root,
        shop=shop,
        socket=socket,
        app_hooks=configs / "shop-hooks.toml",
        app_plain=configs / "shop-plain.toml",
        why_level=why,
    )
