"""Snapshot providers: how a point-in-time image of one volume is made (DESIGN.md §3a).

A table maps the ``snapshot =`` value of a volume to its provider class:

* ``image``   : FICLONE of the disk image backing the volume, on its datastore (freezable)
* ``copy``    : the tree copied to another file system (freezable; the copy is write stall)
* ``btrfs``   : read-only subvolume snapshot in the same file system (never frozen)
* ``reflink`` : FICLONE of each file in the same file system (never frozen)
* ``external``: made by another host, which holds the disk image (:mod:`.disk`); this host
  only freezes the volume, so it has no provider here
"""

from __future__ import annotations

import threading
from pathlib import Path

from cleancut.config.guest import GuestConfig, Volume
from cleancut.errors import CleancutError, ConfigError
from cleancut.providers.base import Provider, Snapshot
from cleancut.providers.btrfs import BtrfsProvider
from cleancut.providers.copy import CopyProvider
from cleancut.providers.disk import DiskProvider
from cleancut.providers.image import ImageProvider
from cleancut.providers.reflink import ReflinkProvider

PROVIDERS: dict[str, type[Provider]] = {
    "image": ImageProvider,
    "copy": CopyProvider,
    "btrfs": BtrfsProvider,
    "reflink": ReflinkProvider,
}


def make_provider(name: str, volume: Volume, staging: Path) -> Provider:
    """The provider for volume ``name``, chosen by its ``snapshot`` kind.

    ``staging`` is the host's default staging root (``GuestConfig.staging``); a volume's own
    ``staging`` overrides it where the provider uses one.
    """
    try:
        cls = PROVIDERS[volume.snapshot]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise ConfigError(
            f"unknown snapshot provider {volume.snapshot!r}",
            key=f"volumes.{name}.snapshot",
            hint=f"valid: {known}",
        ) from None
    return cls(name, volume, staging)


def volume_providers(config: GuestConfig) -> dict[str, Provider]:
    """The provider of each volume this host snapshots itself (not the external ones)."""
    return {
        name: make_provider(name, volume, config.staging)
        for name, volume in config.volumes.items()
        if volume.snapshot != "external"
    }


def disk_providers(config: GuestConfig) -> dict[str, Provider]:
    """The clone of each disk image this host holds for another host's volume."""
    return {name: DiskProvider(name, disk, config.staging) for name, disk in config.disks.items()}


def snapshot_all(providers: dict[str, Provider]) -> tuple[dict[str, Snapshot], dict[str, str]]:
    """Every provider's snapshot at once, one thread each: the write stall is the slowest
    snapshot, not the sum. Failures are returned per volume, never raised (runs frozen)."""
    snapshots: dict[str, Snapshot] = {}
    errors: dict[str, str] = {}

    def take(name: str, provider: Provider) -> None:
        try:
            snapshots[name] = provider.snapshot()
        except CleancutError as exc:
            errors[name] = exc.message
        except Exception as exc:  # a bug in one provider must not leave the others untaken
            errors[name] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=take, args=item) for item in providers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return snapshots, errors


__all__ = [
    "PROVIDERS",
    "Provider",
    "Snapshot",
    "disk_providers",
    "make_provider",
    "snapshot_all",
    "volume_providers",
]
