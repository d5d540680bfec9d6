"""qemu-guest-agent's hook folder: every executable in ``/etc/qemu/fsfreeze-hook.d/``.

qemu-ga's ``fsfreeze-hook`` calls each script with ``freeze`` before freezing and with
``thaw`` after thawing, in name order, skipping backup and package-manager leftovers; a
failing script fails the freeze. There is no timeout there; we give each script one.
"""

from __future__ import annotations

import os
from pathlib import Path

from cleancut.errors import ConfigError
from cleancut.guest.hooks.spec import HookSpec

QEMU_GA_TIMEOUT = 60.0

#: The suffixes qemu's fsfreeze-hook ignores (its ``is_ignored_file``).
IGNORED_SUFFIXES = (
    "~",
    ".bak",
    ".orig",
    ".rpmnew",
    ".rpmorig",
    ".rpmsave",
    ".sample",
    ".dpkg-old",
    ".dpkg-new",
    ".dpkg-tmp",
    ".dpkg-dist",
    ".dpkg-bak",
    ".dpkg-backup",
    ".dpkg-remove",
)


def qemu_ga_specs(folder: Path) -> list[HookSpec]:
    """One spec per executable regular file in ``folder``, sorted by name."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        raise ConfigError(
            f"cannot list: {exc.strerror}",
            file=str(folder),
            key="hooks_import.qemu_ga",
            hint="point it at qemu-ga's hook folder (/etc/qemu/fsfreeze-hook.d)",
        ) from exc
    specs = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name.endswith(IGNORED_SUFFIXES):
            continue
        if not entry.is_file() or not os.access(entry.path, os.X_OK):
            continue
        script = str(folder / entry.name)
        specs.append(
            HookSpec(
                name=f"qemu_ga/{entry.name}",
                source="qemu_ga",
                pre=[script, "freeze"],
                post=[script, "thaw"],
                timeout=QEMU_GA_TIMEOUT,
                details={"folder": str(folder)},
            )
        )
    return specs
