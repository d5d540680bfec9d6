"""Snapshot providers without root: the registry, where snapshots go, what is refused and
why, and the copy provider on plain folders (DESIGN.md §3a)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest

from cleancut.config.guest import IN_PLACE_PROVIDERS, SnapshotKind, Volume
from cleancut.errors import ProviderError
from cleancut.providers import PROVIDERS, make_provider
from cleancut.providers.btrfs import BtrfsProvider
from cleancut.providers.copy import CopyProvider
from cleancut.providers.ficlone import clone_file, filesystem_of, supports_reflink
from cleancut.providers.image import ImageProvider
from cleancut.providers.reflink import ReflinkProvider
from cleancut.providers.staging import discard, rp_folder, snapshot_root

SHM = Path("/dev/shm")


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than ``tmp_path`` (tmpfs /dev/shm)."""
    if not SHM.is_dir() or filesystem_of(SHM).major_minor == filesystem_of(tmp_path).major_minor:
        pytest.skip("needs /dev/shm on its own file system")
    path = Path(tempfile.mkdtemp(dir=SHM))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def no_reflink_dir(tmp_path: Path) -> Path:
    if supports_reflink(tmp_path):
        pytest.skip(f"{tmp_path} supports reflink; this test needs a file system that does not")
    return tmp_path


def _tree(root: Path) -> dict[str, tuple[str, int, object]]:
    """Relative path -> (kind, mode, content or target), for comparing two trees."""
    out: dict[str, tuple[str, int, object]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), int(st.st_mtime))
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), (path.read_bytes(), int(st.st_mtime)))
    return out


# -- registry ------------------------------------------------------------------------


def test_registry_has_one_provider_per_snapshot_kind() -> None:
    # "external" volumes are snapshotted by another host (a DiskProvider there), not here
    assert set(PROVIDERS) == set(get_args(SnapshotKind)) - {"external"}
    for kind, cls in PROVIDERS.items():
        assert cls.kind == kind
        # the in-place providers are the ones that must never be frozen (§3a)
        assert cls.freezable == (kind not in IN_PLACE_PROVIDERS)
    assert PROVIDERS["image"].unheld_level == "crash"
    assert PROVIDERS["btrfs"].unheld_level == "crash"
    assert PROVIDERS["copy"].unheld_level == "none"
    assert PROVIDERS["reflink"].unheld_level == "none"


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("image", ImageProvider), ("copy", CopyProvider), ("btrfs", BtrfsProvider)],
)
def test_make_provider_picks_the_class_of_the_volume(kind: str, cls: type, tmp_path: Path) -> None:
    volume = Volume.model_validate({"path": str(tmp_path), "snapshot": kind})
    provider = make_provider("data", volume, tmp_path / "staging")
    assert type(provider) is cls
    assert (provider.name, provider.volume, provider.staging) == (
        "data",
        volume,
        tmp_path / "staging",
    )


@pytest.mark.parametrize("rp_id", ["../etc", "a/b", "", ".hidden", "-x"])
def test_recovery_point_id_cannot_escape_the_staging_folder(rp_id: str, tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="cannot name a staging folder"):
        rp_folder(tmp_path, rp_id)


# -- image: where the clone goes and what is refused ----------------------------------


def test_image_clone_goes_beside_the_image_by_default(tmp_path: Path) -> None:
    image = tmp_path / "ds" / "vm1.img"
    provider = ImageProvider("data", Volume(path=tmp_path, image=image), tmp_path / "unused")
    assert provider.destination(image, "rp-1") == (
        tmp_path / "ds" / ".cleancut-snapshots" / "rp-1" / "vm1.img"
    )
    staged = ImageProvider(
        "data", Volume(path=tmp_path, image=image, staging=tmp_path / "clones"), tmp_path
    )
    assert staged.destination(image, "rp-1") == tmp_path / "clones" / "rp-1" / "vm1.img"


def test_image_clone_inside_the_volume_file_system_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    provider = ImageProvider("data", Volume(path=tmp_path / "vol", image=image), tmp_path)
    with pytest.raises(ProviderError, match="inside the volume's own file system") as err:
        provider.check()
    assert "wait for the thaw forever" in err.value.message


def test_image_on_a_datastore_without_reflink_is_refused(
    no_reflink_dir: Path, other_fs: Path
) -> None:
    image = no_reflink_dir / "disk.img"
    image.write_bytes(b"\0" * 4096)
    provider = ImageProvider("data", Volume(path=other_fs, image=image), other_fs)
    fs = filesystem_of(no_reflink_dir)
    with pytest.raises(ProviderError) as err:
        provider.check()
    assert f"{fs.fstype} at {fs.mount_point} does not support reflink" in err.value.message
    assert "reflink=1" in err.value.message
    assert "btrfs" in err.value.message


def test_image_clone_folder_off_the_datastore_is_refused(tmp_path: Path, other_fs: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    volume = Volume(path=other_fs, image=image, staging=Path("/proc/cleancut-clones"))
    with pytest.raises(ProviderError, match="not on the image's datastore"):
        ImageProvider("data", volume, tmp_path).check()


def test_image_needs_a_loop_device_or_an_image_path(tmp_path: Path) -> None:
    provider = ImageProvider("data", Volume(path=tmp_path), tmp_path)
    with pytest.raises(ProviderError, match="not from a loop device") as err:
        provider.check()
    assert 'set image = "' in err.value.message
    assert "image" not in provider.describe() and "error" in provider.describe()


def test_image_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    volume = Volume(path=tmp_path, image=tmp_path / "missing.img")
    with pytest.raises(ProviderError, match=r"missing\.img does not exist"):
        ImageProvider("data", volume, tmp_path).check()


# -- reflink / ficlone refused without support ----------------------------------------


def test_clone_file_refuses_without_reflink_and_leaves_nothing(no_reflink_dir: Path) -> None:
    src = no_reflink_dir / "src"
    src.write_bytes(b"data")
    with pytest.raises(ProviderError, match="does not support reflinks") as err:
        clone_file(src, no_reflink_dir / "dst")
    assert "does not fall back to a full copy" in err.value.message
    assert not (no_reflink_dir / "dst").exists()
    assert sorted(p.name for p in no_reflink_dir.iterdir()) == ["src"]  # probe files gone


def test_reflink_provider_refused_on_a_file_system_without_reflink(no_reflink_dir: Path) -> None:
    volume_dir = no_reflink_dir / "vol"
    volume_dir.mkdir()
    volume = Volume(path=volume_dir, snapshot="reflink")
    provider = make_provider("files", volume, no_reflink_dir)
    fs = filesystem_of(volume_dir)
    with pytest.raises(ProviderError) as err:
        provider.check()
    assert f"{fs.fstype} at {fs.mount_point} does not support reflink" in err.value.message
    assert "XFS" in err.value.message


def test_in_place_snapshot_root_is_beside_the_volume_or_inside_a_mount_point(
    tmp_path: Path,
) -> None:
    assert snapshot_root(tmp_path / "vol", None) == tmp_path / ".cleancut-snapshots"
    assert snapshot_root(tmp_path / "vol", tmp_path / "x") == tmp_path / "x"
    # /dev/shm is a mount point: its parent is another file system
    assert snapshot_root(SHM, None) == SHM / ".cleancut-snapshots"
    provider = ReflinkProvider("files", Volume(path=tmp_path / "vol", snapshot="reflink"), tmp_path)
    assert provider.destination("rp-1") == tmp_path / ".cleancut-snapshots" / "rp-1" / "files"


def test_btrfs_provider_refuses_another_file_system(tmp_path: Path) -> None:
    if filesystem_of(tmp_path).fstype == "btrfs":
        pytest.skip("tmp_path is on btrfs")
    provider = make_provider("sub", Volume(path=tmp_path, snapshot="btrfs"), tmp_path)
    with pytest.raises(ProviderError, match="not btrfs"):
        provider.check()


# -- copy provider ---------------------------------------------------------------------


def _sample_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 64)
    (root / "sub" / "deeper" / "empty").write_bytes(b"")
    run = root / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o750)
    (root / "secret").write_text("s")
    (root / "secret").chmod(0o600)
    (root / "link").symlink_to("sub/b.bin")
    (root / "dangling").symlink_to("/nonexistent/target")
    (root / "sub" / "deeper").chmod(0o700)
    os.utime(root / "a.txt", (1_000_000_000, 1_000_000_000))
    os.utime(root / "sub", (1_100_000_000, 1_100_000_000))


def test_copy_provider_copies_content_links_modes_and_times(tmp_path: Path, other_fs: Path) -> None:
    volume_dir = tmp_path / "vol"
    volume_dir.mkdir()
    _sample_tree(volume_dir)
    provider = make_provider("files", Volume(path=volume_dir, snapshot="copy"), other_fs)
    provider.check()
    provider.prepare("rp-1")
    snap = provider.snapshot()

    assert snap.path == other_fs / "rp-1" / "files"
    assert snap.layout == "tree"
    assert snap.details["stall_includes_copy"] is True
    assert snap.details["files"] == 5
    assert _tree(snap.path) == _tree(volume_dir)
    assert os.readlink(snap.path / "link") == "sub/b.bin"
    assert stat.S_IMODE((snap.path / "run.sh").stat().st_mode) == 0o750
    assert int((snap.path / "sub").stat().st_mtime) == 1_100_000_000

    provider.release()
    assert not (other_fs / "rp-1").exists()
    provider.release()  # idempotent


def test_copy_release_keeps_other_volumes_of_the_same_recovery_point(
    tmp_path: Path, other_fs: Path
) -> None:
    providers = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
        providers.append(
            make_provider(name, Volume(path=tmp_path / name, snapshot="copy"), other_fs)
        )
    for provider in providers:
        provider.prepare("rp-2")
        provider.snapshot()
    providers[0].release()
    assert (other_fs / "rp-2" / "two" / "f").read_text() == "two"
    assert not (other_fs / "rp-2" / "one").exists()


def test_copy_staging_on_the_volume_file_system_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    provider = make_provider("files", Volume(path=tmp_path / "vol", snapshot="copy"), tmp_path)
    with pytest.raises(ProviderError, match="on the volume's own file system") as err:
        provider.check()
    assert "another file system" in err.value.message


def test_copy_volume_staging_overrides_the_host_default(tmp_path: Path, other_fs: Path) -> None:
    volume = Volume(path=tmp_path, snapshot="copy", staging=other_fs / "mine")
    provider = make_provider("files", volume, tmp_path / "host-default")
    provider.check()
    assert provider.describe()["staging"] == str(other_fs / "mine")


def test_snapshot_before_prepare_is_an_error(tmp_path: Path) -> None:
    for kind in PROVIDERS:
        provider = make_provider(
            "v", Volume.model_validate({"path": str(tmp_path), "snapshot": kind}), tmp_path
        )
        with pytest.raises(ProviderError, match="before prepare"):
            provider.snapshot()
        provider.release()  # nothing to release: no error


def test_discard_removes_a_clone_file_or_a_read_only_tree(tmp_path: Path) -> None:
    rp = tmp_path / "rp-1"
    (rp / "tree" / "ro").mkdir(parents=True)
    (rp / "tree" / "ro" / "f").write_text("x")
    (rp / "tree" / "ro").chmod(0o500)
    (rp / "clone.img").write_bytes(b"img")
    discard(rp / "clone.img")
    assert not (rp / "clone.img").exists() and rp.exists()  # the tree is still in it
    discard(rp / "tree")
    assert not rp.exists()
    discard(rp / "tree")  # already gone: no error
