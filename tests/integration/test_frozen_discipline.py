"""While anything is frozen the guest imports nothing and opens no file on a frozen mount."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from cleancut.config.load import load_guest
from cleancut.demo.disks import Datastore
from cleancut.guest.session import GuestSession
from cleancut.protocol import HelloArgs
from tests.integration.cutlib import image_volume, make_db, sqlite_db, write_private

pytestmark = pytest.mark.root

_OPENED: list[str] = []
_RECORDING = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _RECORDING and event == "open" and isinstance(args[0], str | bytes | Path):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


def test_frozen_section_imports_and_opens_nothing(datastore: Datastore, trusted_dir: Path) -> None:
    global _RECORDING
    disk = datastore.add_disk("vm1", datastore.root / "vm1").mountpoint
    make_db(disk / "a.db", 100)
    guest = write_private(
        trusted_dir / "guest.toml",
        image_volume("data", disk) + sqlite_db("a", disk / "a.db", "data"),
    )
    session = GuestSession(load_guest(guest), guest)
    session.hello(HelloArgs(protocol=1, rp_id="rp-frozen", freeze_timeout=10.0))
    session.prepare()
    modules_before = set(sys.modules)
    _OPENED.clear()
    try:
        _RECORDING = True
        frozen = session.freeze()
        snapshot = session.snapshot()
        _RECORDING = False
        new_modules = set(sys.modules) - modules_before
        thawed = session.thaw()
    finally:
        _RECORDING = False
        session.release()

    assert frozen["mounts"] == [str(disk)] and frozen["freeze_error"] is None
    assert snapshot["snapshots"]["data"]["layout"] == "file"
    assert thawed["self_thawed"] is None
    assert new_modules == set(), f"imported while frozen: {sorted(new_modules)}"
    on_frozen = [path for path in _OPENED if Path(path).is_relative_to(disk)]
    assert on_frozen == [], f"opened on the frozen file system: {on_frozen}"
