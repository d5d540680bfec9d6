"""Pairing external volumes with the disks that back them, and filing the clones."""

from __future__ import annotations

from typing import Any

import pytest

from cleancut.coordinator.disks import DiskPair, file_clones, pair_disks
from cleancut.coordinator.policy import HostReport
from cleancut.errors import ConfigError


def report(host: str, volumes: dict[str, str], disks: dict[str, str] | None = None) -> HostReport:
    inventory: dict[str, Any] = {
        "volumes": {n: {"provider": p, "fstype": "xfs"} for n, p in volumes.items()},
        "disks": {n: {"image": f"/ds/{n}.img", "backs": b} for n, b in (disks or {}).items()},
    }
    return HostReport(host=host, hello={"inventory": inventory})


def test_each_external_volume_pairs_with_its_disk() -> None:
    reports = {
        "vm1": report("vm1", {"data": "external", "logs": "image"}),
        "ds": report("ds", {}, {"vm1-data": "vm1/data"}),
    }
    assert pair_disks(reports) == [DiskPair("vm1", "data", "ds", "vm1-data")]


@pytest.mark.parametrize(
    ("vm_volumes", "disks", "words"),
    [
        ({"data": "external"}, {}, 'volume data has snapshot = "external", but no host'),
        ({"data": "image"}, {"d": "vm1/data"}, "is snapshotted by its own host"),
        ({"data": "external"}, {"d": "vm9/data"}, "no host named 'vm9'"),
        ({"data": "external"}, {"d": "vm1/other"}, "no volume 'other'"),
    ],
)
def test_unpaired_volumes_and_disks_are_config_errors(
    vm_volumes: dict[str, str], disks: dict[str, str], words: str
) -> None:
    reports = {"vm1": report("vm1", vm_volumes), "ds": report("ds", {}, disks)}
    with pytest.raises(ConfigError, match=words):
        pair_disks(reports)


def test_two_datastores_cannot_back_one_volume() -> None:
    reports = {
        "vm1": report("vm1", {"data": "external"}),
        "ds1": report("ds1", {}, {"a": "vm1/data"}),
        "ds2": report("ds2", {}, {"b": "vm1/data"}),
    }
    with pytest.raises(ConfigError, match="already backed by a disk of host ds1"):
        pair_disks(reports)


def test_a_clone_is_filed_under_its_volume_on_the_vms_clock() -> None:
    vm, ds = report("vm1", {"data": "external"}), report("ds", {}, {"d": "vm1/data"})
    vm.clock_offset, ds.clock_offset = 2.0, -1.0  # vm1's clock is 3 s ahead of ds's
    clone_made = {"taken_at": 100.0, "seconds": 0.01, "layout": "file", "details": {}}
    answers = {"ds": {"snapshots": {"d": clone_made}, "errors": {}}}
    file_clones([DiskPair("vm1", "data", "ds", "d")], {"vm1": vm, "ds": ds}, answers)
    clone = vm.snapshot["snapshots"]["data"]
    assert clone["taken_at"] == 103.0  # on vm1's clock
    assert vm.local(clone["taken_at"]) == ds.local(100.0)  # the same instant for the policy
    assert clone["details"]["datastore"] == "ds" and clone["details"]["fstype"] == "xfs"

    failed = report("vm1", {"data": "external"})
    file_clones([DiskPair("vm1", "data", "ds", "d")], {"vm1": failed, "ds": ds},
                {"ds": {"snapshots": {}, "errors": {"d": "FICLONE: no space"}}})  # fmt: skip
    assert failed.snapshot["errors"]["data"] == "disk d on host ds: FICLONE: no space"
