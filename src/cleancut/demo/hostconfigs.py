"""The guest and application configs of ``cleancut demo --hosts 3`` (pure text, no I/O).

Each shop resource lives on its own VM, on a volume marked ``snapshot = "external"``: the
VM only freezes it, and the datastore host ``ds``, which holds the three disk images,
clones them between the freeze barrier and the thaw, as a hypervisor does. Two flavours
of the VMs' guest configs, one per cleancut row of the demo's table:

* ``plain`` — volumes only: one cut at file-system level;
* ``hooks`` — the SQLite writers on vm1 and vm2, and the shop's quiesce hook on vm3.

The shop is one process, and its pause does not nest (the first ``resume`` ends every
``pause``), so exactly one host runs the quiesce hook: vm3, whose receipts share has no
database writer that could hold it. That one pause quiesces the whole shop between two
orders; the writers on vm1 and vm2 then hold their databases (``BEGIN IMMEDIATE``), so
every member reaches level ``application``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

HOSTS = {"orders": "vm1", "invoices": "vm2", "receipts": "vm3"}
"""Which VM holds which shop resource (its volume has the resource's name)."""
DATASTORE = "ds"
"""The host that holds the VMs' disk images (the hypervisor's view)."""
DATABASES = ("orders", "invoices")
"""The resources with a SQLite database ``<resource>.db`` in their volume."""
QUIESCED = "receipts"
"""The resource whose host runs the shop's quiesce hook (see the module docstring)."""
FLAVOURS = ("plain", "hooks")
SHOP_CHECK = "every order has its invoice and its receipt"
"""The name of the shop's own check (``[[checks]]``) for ``cleancut verify``."""


def vm_guest(
    resource: str, mountpoint: Path, staging: Path, *, hooks: bool, pre: Path, post: Path
) -> str:
    """The guest config of the VM that holds ``resource`` at ``mountpoint``."""
    lines = [
        f'staging = "{staging}"',
        "",
        f"[volumes.{resource}]",
        f'path = "{mountpoint}"',
        'snapshot = "external"',
        "freeze = true",
        "",
    ]
    if hooks and resource in DATABASES:
        lines += [
            f"[databases.{resource}]",
            'kind = "sqlite"',
            f'path = "{mountpoint / (resource + ".db")}"',
            f'volume = "{resource}"',
            "",
        ]
    if hooks and resource == QUIESCED:
        lines += [
            "[[hooks]]",
            'name = "shop-quiesce"',
            f'pre = ["{pre}"]',
            f'post = ["{post}"]',
            f'volumes = ["{resource}"]',
            'timeout = "30s"',
            "",
        ]
    return "\n".join(lines)


def server_guest(resource: str, mountpoint: Path, staging: Path, database: str) -> str:
    """The guest config of a VM whose ``resource`` volume holds a database server's data
    directory; ``database`` is the ``[databases.<resource>]`` table's body (kind, how to
    reach the server) for the cross-database shop (:mod:`cleancut.demo.crossdb`)."""
    return "\n".join(
        [
            f'staging = "{staging}"',
            "",
            f"[volumes.{resource}]",
            f'path = "{mountpoint}"',
            'snapshot = "external"',
            "freeze = true",
            "",
            f"[databases.{resource}]",
            database.rstrip("\n"),
            f'volume = "{resource}"',
            "",
        ]
    )


def datastore_guest(images: Mapping[str, Path], staging: Path) -> str:
    """The datastore host's guest config: the disk image behind each VM's volume."""
    lines = [f'staging = "{staging}"', ""]
    for resource, image in images.items():
        lines += [
            f"[disks.{HOSTS[resource]}-{resource}]",
            f'image = "{image}"',
            f'backs = "{HOSTS[resource]}/{resource}"',
            "",
        ]
    return "\n".join(lines)


def app_toml(
    name: str,
    folder: Path,
    host_tables: Mapping[str, str],
    *,
    freeze_timeout: str = "10s",
    checks: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The application config: the repository in ``folder``, each host over SSH.

    ``host_tables`` maps host names to their ``[hosts.NAME]`` tables (the testbed's
    ``app_config``); short timeouts, since every host is on this machine. ``checks`` are
    the application's own checks for ``cleancut verify`` (name -> argv).
    """
    lines = [
        f'name = "{name}"',
        f'freeze_timeout = "{freeze_timeout}"',
        'on_failure = "degrade"',
        f'catalog = "{folder / (name + ".catalog.sqlite")}"',
        "",
        "[repository]",
        f'url = "{folder / "repository"}"',
        f'password_file = "{folder / "repository.pass"}"',
        "",
    ]
    for table in host_tables.values():
        lines += [
            table.rstrip("\n"),
            'connect_timeout = "5s"',
            'keepalive_interval = "1s"',
            "keepalive_count = 3",
            "",
        ]
    for check, argv in (checks or {}).items():
        run = ", ".join(json.dumps(arg) for arg in argv)
        lines += ["[[checks]]", f"name = {json.dumps(check)}", f"run = [{run}]"]
        lines += ['timeout = "5m"', ""]
    return "\n".join(lines)
