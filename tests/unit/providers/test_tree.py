"""The tree copy keeps what the file system holds: extended attributes, ACLs, hard links and
holes (tmp_path on one file system copied to /dev/shm, a tmpfs, as the copy provider does)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleancut.config.guest import Volume
from cleancut.providers import make_provider
from cleancut.providers.ficlone import filesystem_of
from cleancut.providers.tree import copy_sparse, data_extents

SHM = Path("/dev/shm")
MIB = 1024 * 1024


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


def _xattrs(path: Path) -> dict[str, bytes]:
    return {
        name: os.getxattr(path, name, follow_symlinks=False)
        for name in os.listxattr(path, follow_symlinks=False)
    }


def _copy(volume_dir: Path, staging: Path) -> Path:
    provider = make_provider("files", Volume(path=volume_dir, snapshot="copy"), staging)
    provider.check()
    provider.prepare("rp-1")
    return provider.snapshot().path


def _sparse_file(path: Path, size: int, data_at: list[int]) -> bytes:
    """A file of ``size`` bytes with 4 KiB of data at each offset of ``data_at``, holes around."""
    chunk = os.urandom(4096)
    with path.open("wb") as handle:
        for offset in data_at:
            handle.seek(offset)
            handle.write(chunk)
        handle.truncate(size)
    return chunk


def test_user_xattrs_are_kept_on_files_and_folders(tmp_path: Path, other_fs: Path) -> None:
    volume_dir = tmp_path / "vol"
    (volume_dir / "sub").mkdir(parents=True)
    (volume_dir / "f.txt").write_text("x")
    os.setxattr(volume_dir / "f.txt", "user.color", b"blue")
    os.setxattr(volume_dir / "f.txt", "user.empty", b"")
    os.setxattr(volume_dir / "sub", "user.origin", b"\x00\xffbinary")
    os.setxattr(volume_dir, "user.root", b"r")

    copied = _copy(volume_dir, other_fs)

    assert _xattrs(copied / "f.txt") == {"user.color": b"blue", "user.empty": b""}
    assert _xattrs(copied / "sub") == {"user.origin": b"\x00\xffbinary"}
    assert _xattrs(copied)["user.root"] == b"r"


@pytest.mark.skipif(shutil.which("setfacl") is None, reason="needs setfacl (make setup: acl)")
def test_acls_are_kept_access_and_default(tmp_path: Path, other_fs: Path) -> None:
    volume_dir = tmp_path / "vol"
    (volume_dir / "shared").mkdir(parents=True)
    (volume_dir / "shared" / "old.txt").write_text("before the default ACL")
    subprocess.run(["setfacl", "-m", "u:1234:rw,g:2345:r", str(volume_dir / "shared" / "old.txt")])
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(volume_dir / "shared")], check=True)

    copied = _copy(volume_dir, other_fs)

    for rel in ("shared", "shared/old.txt"):
        assert _xattrs(copied / rel) == _xattrs(volume_dir / rel), rel
    listed = subprocess.run(
        ["getfacl", "-cp", str(copied / "shared" / "old.txt")], capture_output=True, text=True
    ).stdout
    assert "user:1234:rw-" in listed and "group:2345:r--" in listed
    default = subprocess.run(
        ["getfacl", "-cdp", str(copied / "shared")], capture_output=True, text=True
    ).stdout
    assert "user:1234:rwx" in default
    assert (
        os.stat(copied / "shared" / "old.txt").st_mode
        == os.stat(volume_dir / "shared" / "old.txt").st_mode
    )


def test_hard_links_stay_one_inode(tmp_path: Path, other_fs: Path) -> None:
    volume_dir = tmp_path / "vol"
    (volume_dir / "a").mkdir(parents=True)
    (volume_dir / "b").mkdir()
    (volume_dir / "a" / "one").write_bytes(b"shared content")
    os.link(volume_dir / "a" / "one", volume_dir / "b" / "two")
    os.link(volume_dir / "a" / "one", volume_dir / "three")
    (volume_dir / "lonely").write_bytes(b"x")
    os.link(volume_dir / "lonely", tmp_path / "outside")  # its other name is not copied

    provider = make_provider("files", Volume(path=volume_dir, snapshot="copy"), other_fs)
    provider.prepare("rp-1")
    snap = provider.snapshot()

    names = [snap.path / "a" / "one", snap.path / "b" / "two", snap.path / "three"]
    inodes = {os.stat(name).st_ino for name in names}
    assert len(inodes) == 1
    assert os.stat(names[0]).st_nlink == 3
    assert names[1].read_bytes() == b"shared content"
    assert os.stat(snap.path / "lonely").st_nlink == 1
    assert snap.details["files"] == 2 and snap.details["hardlinks"] == 2


def test_sparse_files_keep_their_holes(tmp_path: Path, other_fs: Path) -> None:
    volume_dir = tmp_path / "vol"
    volume_dir.mkdir()
    size = 64 * MIB
    chunk = _sparse_file(volume_dir / "disk.img", size, [0, 20 * MIB])
    tail = _sparse_file(volume_dir / "tail", 8 * MIB, [8 * MIB - 4096])
    (volume_dir / "empty-hole").open("wb").truncate(MIB)  # all hole, no data

    copied = _copy(volume_dir, other_fs)

    image = copied / "disk.img"
    st = os.stat(image)
    assert st.st_size == size
    assert st.st_blocks * 512 <= 1 * MIB, f"{st.st_blocks * 512} bytes allocated for 8 KiB data"
    with image.open("rb") as handle:
        assert handle.read(4096) == chunk
        handle.seek(20 * MIB)
        assert handle.read(4096) == chunk
        handle.seek(30 * MIB)
        assert handle.read(4096) == b"\0" * 4096
    assert (copied / "tail").read_bytes() == b"\0" * (8 * MIB - 4096) + tail
    assert os.stat(copied / "empty-hole").st_size == MIB
    assert os.stat(copied / "empty-hole").st_blocks == 0


def test_data_extents_and_copy_sparse_of_a_dense_file(tmp_path: Path) -> None:
    dense = tmp_path / "dense"
    dense.write_bytes(os.urandom(3 * MIB + 17))
    fd = os.open(dense, os.O_RDONLY)
    try:
        assert data_extents(fd, 3 * MIB + 17) == [(0, 3 * MIB + 17)]
    finally:
        os.close(fd)
    copy_sparse(dense, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == dense.read_bytes()
    with pytest.raises(FileExistsError):
        copy_sparse(dense, tmp_path / "copy")  # never overwrites
