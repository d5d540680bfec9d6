"""Volumes snapshotted by another host: pairing them with the disks that back them.

A VM's guest config marks a volume ``snapshot = "external"``; the datastore host's guest
config declares the disk image behind it (``[disks.NAME] backs = "vm1/data"``). From the
hosts' hello inventories the coordinator pairs each such volume with exactly one disk,
asks the datastore host to clone the disks between the freeze barrier and the thaw, and
files each clone under the volume it backs, so the policy judges it against that VM's
hold like any snapshot the VM made of itself (DESIGN.md §3, §3a).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cleancut.coordinator.policy import HostReport
from cleancut.errors import ConfigError


@dataclass(frozen=True)
class DiskPair:
    """Volume ``host/volume`` is cloned from disk ``disk`` on host ``datastore``."""

    host: str
    volume: str
    datastore: str
    disk: str


def pair_disks(reports: dict[str, HostReport]) -> list[DiskPair]:
    """Every external volume with the one disk that backs it; a ConfigError otherwise.

    Runs right after hello, before anything is held: an unpaired volume or disk would
    make a recovery point that silently lacks a disk, or clone a disk nobody freezes.
    """
    external = {
        (name, volume)
        for name, report in reports.items()
        for volume, info in report.volumes.items()
        if info.get("provider") == "external"
    }
    pairs: list[DiskPair] = []
    claimed: dict[tuple[str, str], str] = {}
    for datastore, report in reports.items():
        for disk, info in report.hello.get("inventory", {}).get("disks", {}).items():
            host, _, volume = str(info["backs"]).partition("/")
            where = f"host {datastore}: disks.{disk} (backs = {info['backs']!r})"
            target = reports.get(host)
            if target is None:
                known = ", ".join(sorted(reports))
                raise ConfigError(
                    f"{where}: the application has no host named {host!r} (hosts: {known})",
                    hint="backs names a host of the application config and one of its volumes",
                )
            if volume not in target.volumes:
                known = ", ".join(sorted(target.volumes)) or "none"
                raise ConfigError(
                    f"{where}: host {host} has no volume {volume!r} (volumes: {known})",
                    hint="fix backs, or declare the volume in that host's guest config",
                )
            if (host, volume) not in external:
                provider = target.volumes[volume].get("provider")
                raise ConfigError(
                    f"{where}: volume {host}/{volume} is snapshotted by its own host "
                    f'(snapshot = "{provider}"), so nobody would freeze it for this clone',
                    hint=f'set snapshot = "external" on volume {volume} of host {host}, '
                    "or remove the disk",
                )
            if (host, volume) in claimed:
                raise ConfigError(
                    f"{where}: volume {host}/{volume} is already backed by a disk of host "
                    f"{claimed[(host, volume)]}",
                    hint="a volume has one disk: remove one of the two",
                )
            claimed[(host, volume)] = datastore
            pairs.append(DiskPair(host, volume, datastore, disk))
    unpaired = sorted(external - set(claimed))
    if unpaired:
        host, volume = unpaired[0]
        raise ConfigError(
            f'host {host}: volume {volume} has snapshot = "external", but no host of the '
            "application declares the disk that backs it",
            hint=f'add [disks.NAME] with image = "…" and backs = "{host}/{volume}" to the '
            "guest config of the host that holds the disk image (the datastore)",
        )
    return pairs


def disks_by_datastore(pairs: list[DiskPair]) -> dict[str, list[str]]:
    """The disks each datastore host clones."""
    chosen: dict[str, list[str]] = {}
    for pair in pairs:
        chosen.setdefault(pair.datastore, []).append(pair.disk)
    return chosen


def file_clones(
    pairs: list[DiskPair], reports: dict[str, HostReport], answers: dict[str, dict[str, Any]]
) -> None:
    """File each clone (or its error) under the volume it backs, in that host's report.

    The clone's time is moved from the datastore's clock to the VM's, so the policy can
    check it against the VM's own hold (every report's times are in its guest's clock).
    """
    for pair in pairs:
        vm, store = reports[pair.host], reports[pair.datastore]
        answer = answers.get(pair.datastore, {})
        snapshot = vm.snapshot.setdefault("snapshots", {})
        errors = vm.snapshot.setdefault("errors", {})
        clone = answer.get("snapshots", {}).get(pair.disk)
        if clone is None:
            why = answer.get("errors", {}).get(pair.disk, "no clone was made")
            errors[pair.volume] = f"disk {pair.disk} on host {pair.datastore}: {why}"
            continue
        taken_at = float(clone["taken_at"]) - store.clock_offset + vm.clock_offset
        snapshot[pair.volume] = {
            **clone,
            "taken_at": taken_at,
            "details": {
                **clone.get("details", {}),
                "datastore": pair.datastore,
                "disk": pair.disk,
                "fstype": vm.volumes[pair.volume].get("fstype"),
            },
        }


def upload_of(pair: DiskPair, answers: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """What the datastore's upload reported for the disk of ``pair``."""
    uploads: dict[str, Any] = answers.get(pair.datastore, {}).get("uploads", {})
    return uploads.get(pair.disk)
