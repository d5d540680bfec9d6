"""Checks of a host's guest config as a whole, which no single volume can make for itself.

A snapshot written into a frozen file system waits for the thaw forever, and the guest
waits for the snapshot: so no volume's snapshot may be written onto a file system that
the host freezes for *any* of its volumes (each provider already refuses its own).
The guest runs these at hello; ``cleancut config check`` runs them for local hosts.
"""

from __future__ import annotations

from pathlib import Path

from cleancut.config.guest import GuestConfig
from cleancut.errors import CleancutError, ProviderError
from cleancut.guest.hooks import HookSpec
from cleancut.providers.base import Provider
from cleancut.providers.ficlone import filesystem_of
from cleancut.system.mounts import MountInfo, mount_of


def freeze_paths(config: GuestConfig, hooks: list[HookSpec]) -> list[Path]:
    """The volumes whose file systems this host freezes (none if a hook forbids freezing,
    as Azure's ``fsFreezeEnabled = false`` does)."""
    if not all(spec.freeze for spec in hooks):
        return []
    return [volume.path for volume in config.volumes.values() if volume.frozen]


def check_snapshot_targets(providers: dict[str, Provider], frozen: list[MountInfo]) -> None:
    """Refuse a snapshot folder on a file system the host freezes (ProviderError)."""
    by_device = {mount.major_minor: mount for mount in frozen}
    owners = _frozen_for(providers, by_device)
    for name, provider in providers.items():
        target = provider.writes_to()
        fs = filesystem_of(target)
        if fs.major_minor in by_device:
            volume = owners.get(fs.major_minor, "another volume")
            raise ProviderError(
                f"volume {name}: its snapshots are written to {target}, on {fs.mount_point}, "
                f"which this host freezes for volume {volume}: the snapshot would wait for the "
                "thaw forever. Set staging (on the volume or in guest.toml) to a folder on a "
                "file system this host does not freeze"
            )


def _frozen_for(providers: dict[str, Provider], by_device: dict[str, MountInfo]) -> dict[str, str]:
    """Which volume each frozen file system is frozen for (the first that holds it)."""
    owners: dict[str, str] = {}
    for name, provider in providers.items():
        try:
            device = mount_of(provider.volume.path).major_minor
        except CleancutError:
            continue
        if device in by_device:
            owners.setdefault(device, name)
    return owners
