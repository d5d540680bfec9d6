"""A snapshot written onto a file system that the same host freezes (for another volume)
would wait for the thaw forever: `config check` and the guest's hello refuse it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleancut.demo.disks import Datastore
from tests.integration.cutlib import make_app

pytestmark = pytest.mark.root


def two_disks(ds: Datastore, staging_on_b: bool) -> str:
    a = ds.add_disk("a", ds.root / "a").mountpoint
    b = ds.add_disk("b", ds.root / "b").mountpoint
    staging = b / "staging" if staging_on_b else ds.path / "staging"
    return (
        f'[volumes.a]\npath = "{a}"\nsnapshot = "copy"\nstaging = "{staging}"\n'
        f'[volumes.b]\npath = "{b}"\nsnapshot = "copy"\nstaging = "{ds.path / "staging"}"\n'
    )


@pytest.mark.parametrize("staging_on_b", [True, False])
def test_staging_on_another_frozen_volume_is_refused(
    datastore: Datastore, trusted_dir: Path, staging_on_b: bool
) -> None:
    app = make_app(trusted_dir, {"vm1": two_disks(datastore, staging_on_b)})
    checked = app.run("config check")
    if not staging_on_b:
        assert checked.returncode == 0, checked.stderr
        return
    assert checked.returncode != 0
    message = " ".join(checked.stderr.split())
    assert "volume a: its snapshots are written to" in message
    assert "which this host freezes for volume b" in message
    done = app.run("backup", "--json")
    assert done.returncode == 6, done.stderr
    assert "which this host freezes for volume b" in " ".join(done.stderr.split())
