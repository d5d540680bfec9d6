"""The catalog: the SQLite index of recovery points, and its rebuild from a real repository."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cleancut.catalog import Catalog, default_catalog_path
from cleancut.errors import CatalogError, NotFound
from cleancut.manifest import MANIFEST_FILENAME, MANIFEST_TAG, HostTimings, Manifest, Member
from cleancut.mover import RepositoryAccess, ResticMover

T0 = datetime(2026, 11, 27, 11, 0, tzinfo=UTC)


def manifest(app: str, rp_id: str, minutes: int, snapshot: str | None = None) -> Manifest:
    member = Member(
        host="vm1",
        resource="data",
        provider="copy",
        layout="tree",
        source_path="/srv/data",
        frozen=True,
        level="filesystem",
        reason="frozen, no writer declared",
        repository_snapshot=snapshot,
        bytes_processed=1000 + minutes,
        bytes_added=10 + minutes,
    )
    return Manifest(
        app=app,
        rp_id=rp_id,
        created_at=T0 + timedelta(minutes=minutes),
        on_failure="degrade",
        level="filesystem",
        group_consistent=True,
        quiet_window=(100.0, 100.25),
        hosts=[HostTimings(host="vm1", frozen_at=100.0, thawed_at=100.5, write_stall=0.5)],
        members=[member],
    )


def test_add_list_get(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cleancut" / "shop.catalog.sqlite"
    catalog = Catalog(path)
    catalog.add(manifest("shop", "20261127T1102Z-bbbb", 2), "snap2")
    catalog.add(manifest("shop", "20261127T1101Z-aaaa", 1), "snap1")
    catalog.add(manifest("other", "20261127T1103Z-cccc", 3), "snap3")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    entries = catalog.list("shop")
    assert [entry.rp_id for entry in entries] == ["20261127T1101Z-aaaa", "20261127T1102Z-bbbb"]
    first = entries[0]
    assert first.manifest_snapshot == "snap1"
    assert (first.size_bytes, first.added_bytes) == (1001, 11)
    assert first.max_write_stall == 0.5
    assert first.quiet_window_seconds == pytest.approx(0.25)
    assert first.group_consistent is True and first.level == "filesystem"
    assert first.manifest.members[0].resource == "data"

    assert catalog.get("shop", "latest").rp_id == "20261127T1102Z-bbbb"
    assert catalog.get("shop", "20261127T1101Z-a").rp_id == "20261127T1101Z-aaaa"
    assert catalog.get("shop", "20261127T1102Z-bbbb").manifest_snapshot == "snap2"


def test_get_names_known_ids_when_missing(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite")
    with pytest.raises(NotFound, match="no recovery points"):
        catalog.get("shop", "latest")
    catalog.add(manifest("shop", "20261127T1101Z-aaaa", 1), "s1")
    catalog.add(manifest("shop", "20261127T1102Z-bbbb", 2), "s2")
    with pytest.raises(NotFound, match="20261127T1101Z-aaaa, 20261127T1102Z-bbbb"):
        catalog.get("shop", "nope")
    with pytest.raises(NotFound, match="ambiguous"):
        catalog.get("shop", "20261127T110")
    with pytest.raises(NotFound):
        catalog.get("other", "20261127T1101Z-aaaa")  # another application's RP


def test_adding_again_replaces(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite")
    catalog.add(manifest("shop", "rp1", 1), "old")
    catalog.add(manifest("shop", "rp1", 1), "new")
    assert [entry.manifest_snapshot for entry in catalog.list("shop")] == ["new"]


def test_unreadable_catalog_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CatalogError, match="rebuild"):
        Catalog(path).list("shop")


def test_default_catalog_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_catalog_path("shop") == tmp_path / "cleancut" / "shop.catalog.sqlite"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "state" / "cleancut" / "shop.catalog.sqlite"
    assert default_catalog_path("shop") == expected


def commit_rp(mover: ResticMover, catalog: Catalog | None, data: Path, rp: Manifest) -> None:
    """What the coordinator does: upload the member, then the manifest, then the row."""
    upload = mover.backup(data, host="vm1", tags={"app": rp.app, "rp": rp.rp_id})
    rp.members[0].repository_snapshot = upload.snapshot_id
    if catalog is None:
        return  # interrupted before the commit record
    tags = {MANIFEST_TAG: "", "app": rp.app, "rp": rp.rp_id}
    stored = mover.backup_bytes(
        rp.model_dump_json().encode(), MANIFEST_FILENAME, host="cleancut", tags=tags
    )
    catalog.add(rp, stored.snapshot_id)


@pytest.fixture
def mover(tmp_path: Path) -> ResticMover:
    mover = ResticMover(
        RepositoryAccess(str(tmp_path / "repo"), "pw"), cache_dir=tmp_path / "cache"
    )
    mover.ensure_repository()
    return mover


@pytest.mark.restic
def test_rebuild_recreates_rows_from_the_repository(mover: ResticMover, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("payload")
    path = tmp_path / "catalog.sqlite"
    catalog = Catalog(path)
    commit_rp(mover, catalog, data, manifest("shop", "20261127T1101Z-aaaa", 1))
    commit_rp(mover, catalog, data, manifest("shop", "20261127T1102Z-bbbb", 2))
    commit_rp(mover, None, data, manifest("shop", "20261127T1103Z-dead", 3))
    commit_rp(mover, catalog, data, manifest("other", "20261127T1104Z-cccc", 4))
    before = catalog.list("shop")
    assert len(before) == 2

    path.unlink()
    assert Catalog(path).rebuild("shop", mover) == 2
    after = Catalog(path).list("shop")
    assert after == before
    assert "20261127T1103Z-dead" not in [entry.rp_id for entry in after]
    assert Catalog(path).list("other") == []  # only the app asked for was rebuilt


@pytest.mark.restic
def test_rebuild_refuses_a_broken_manifest_and_keeps_the_rows(
    mover: ResticMover, tmp_path: Path
) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    catalog.add(manifest("shop", "rp-kept", 1), "s1")
    tags = {MANIFEST_TAG: "", "app": "shop", "rp": "broken"}
    mover.backup_bytes(b"{not json", MANIFEST_FILENAME, host="cleancut", tags=tags)
    with pytest.raises(CatalogError, match="not a valid manifest"):
        catalog.rebuild("shop", mover)
    assert [entry.rp_id for entry in catalog.list("shop")] == ["rp-kept"]


def test_the_pause_survives_the_catalog(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite")
    paused = manifest("shop", "20261127T1101Z-aaaa", 1)
    paused.hosts.append(HostTimings(host="vm2", write_stall=0.1, pause=2.5))
    catalog.add(paused, "s1")
    stored = catalog.get("shop", "latest").manifest
    assert [h.pause for h in stored.hosts] == [None, 2.5]
    assert stored.max_pause == 2.5
    assert stored.max_write_stall == 0.5
