"""A freeze someone else ended is noticed, never taken for our own quiet window."""

from __future__ import annotations

import subprocess

import pytest

from cleancut.demo.disks import Datastore
from cleancut.guest.freezer import Freezer

pytestmark = pytest.mark.root


def test_a_thaw_from_outside_is_reported(datastore: Datastore) -> None:
    mount = datastore.add_disk("vm1", datastore.root / "vm1").mountpoint
    with Freezer([mount]) as freezer:
        freezer.freeze()
        subprocess.run(["fsfreeze", "-u", str(mount)], check=True)  # the "sentinel"

        freezer.thaw()

        assert freezer.thawed_by_other is True
        assert not freezer.frozen


def test_our_own_thaw_is_not_reported_as_outside(datastore: Datastore) -> None:
    mount = datastore.add_disk("vm1", datastore.root / "vm1").mountpoint
    with Freezer([mount]) as freezer:
        freezer.freeze()
        freezer.thaw()
        freezer.thaw()  # idempotent: nothing left to thaw, nothing to report

        assert freezer.thawed_by_other is False
