"""A change between two backups is always in the second one, for every provider.

Each test backs a real volume up twice through its provider and the restic mover, the way
the guest does (``upload_options`` → ``Mover.backup`` → ``uploaded``), with a new provider
object per backup as a new guest process would have. Between the two, a file is rewritten
with the same size and its mtime put back (``touch -r``): restic's size-and-mtime check
cannot see that, so the second snapshot must hold the new content all the same. The fast
path — unchanged files taken from the parent unread — must still be taken when it is safe.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cleancut.config.guest import Volume
from cleancut.demo.disks import Datastore
from cleancut.mover import RepositoryAccess, ResticMover, Upload
from cleancut.providers import make_provider
from cleancut.providers.base import UploadOptions
from cleancut.providers.changes import RACY_NS

pytestmark = [pytest.mark.root, pytest.mark.restic]

MIB = 1024 * 1024
UNTOUCHED = 20  # files no backup changes


@dataclass
class Case:
    """One provider's volume: where its files are written and how to read them back."""

    kind: str
    volume: Volume
    files: Path  # the folder the test writes in (the volume, or its subvolume)
    staging: Path
    image: Path | None = None  # the disk image, for the image provider


@pytest.fixture
def mover(trusted_dir: Path) -> ResticMover:
    access = RepositoryAccess(str(trusted_dir / "repo"), "changes between backups")
    repository = ResticMover(access, cache_dir=trusted_dir / "cache")
    repository.ensure_repository()
    return repository


@pytest.fixture(params=["image", "copy", "btrfs", "reflink"])
def case(request: pytest.FixtureRequest, datastore: Datastore, trusted_dir: Path) -> Iterator[Case]:
    kind: str = request.param
    if kind == "image":
        disk = datastore.add_disk("vm1", trusted_dir / "vm1", 64, "ext4")
        yield Case(kind, Volume(path=disk.mountpoint), disk.mountpoint, trusted_dir, disk.image)
    elif kind == "copy":
        disk = datastore.add_disk("vm1", trusted_dir / "vm1", 64, "ext4")
        volume = Volume(path=disk.mountpoint, snapshot="copy")
        yield Case(kind, volume, disk.mountpoint, datastore.path / "staging")
    elif kind == "btrfs":
        disk = datastore.add_disk("bt", trusted_dir / "bt", 200, "btrfs")
        subvolume = disk.mountpoint / "data"
        made = subprocess.run(
            ["btrfs", "subvolume", "create", str(subvolume)], capture_output=True, text=True
        )
        assert made.returncode == 0, made.stderr
        yield Case(kind, Volume(path=subvolume, snapshot="btrfs"), subvolume, trusted_dir)
    else:
        disk = datastore.add_disk("xf", trusted_dir / "xf", 300, "xfs")
        volume = Volume(path=disk.mountpoint, snapshot="reflink")
        yield Case(kind, volume, disk.mountpoint, trusted_dir)


def backup(
    case: Case, mover: ResticMover, rp_id: str, parent: str | None
) -> tuple[Upload, UploadOptions]:
    """One backup of the case's volume as the guest runs it: snapshot, then upload."""
    if case.image is not None:
        os.sync()  # what the file system holds reaches its disk image
    provider = make_provider("data", case.volume, case.staging)
    provider.check()
    provider.prepare(rp_id)
    try:
        snap = provider.snapshot()
        options = provider.upload_options(parent)
        upload = mover.backup(
            snap.path,
            host="vm1",
            tags={"app": "changes", "rp": rp_id, "resource": case.kind},
            parent=options.parent,
            ignore_inode=options.ignore_inode,
            ignore_ctime=options.ignore_ctime,
        )
        provider.uploaded(upload.snapshot_id)
    finally:
        provider.release()
    return upload, options


def stored(case: Case, mover: ResticMover, upload: Upload, name: str, scratch: Path) -> bytes:
    """File ``name`` of the volume as the repository snapshot holds it."""
    if case.image is None:
        return mover.read_file(upload.snapshot_id, name)
    image = scratch / f"{upload.snapshot_id}.img"
    image.write_bytes(mover.read_file(upload.snapshot_id, case.image.name))
    done = subprocess.run(["debugfs", "-R", f"cat /{name}", str(image)], capture_output=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def settle() -> None:
    """Let the last change age past the racy window, so the test shows what it claims."""
    time.sleep(2 * RACY_NS / 1e9)


def rewrite_keeping_size_and_mtime(path: Path) -> bytes:
    """New content of the same size, then the old times put back, as ``touch -r`` does."""
    before = path.stat()
    data = os.urandom(before.st_size)
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    return data


def fill(files: Path) -> None:
    (files / "orders.db").write_bytes(os.urandom(MIB))
    (files / "log.txt").write_text("first line\n")
    (files / "static").mkdir()
    for i in range(UNTOUCHED):
        (files / "static" / f"page-{i}.html").write_bytes(os.urandom(20_000))


def test_a_rewrite_with_the_same_size_and_mtime_is_in_the_next_backup(
    case: Case, mover: ResticMover, trusted_dir: Path
) -> None:
    fill(case.files)
    settle()
    first, _ = backup(case, mover, "rp-1", None)
    image_mtime = case.image.stat().st_mtime_ns if case.image is not None else 0

    new = rewrite_keeping_size_and_mtime(case.files / "orders.db")
    if case.image is not None:
        os.sync()
        # the image too keeps its size, and its mtime is put back: only its content differs
        os.utime(case.image, ns=(image_mtime, image_mtime))
    settle()
    second, options = backup(case, mover, "rp-2", first.snapshot_id)

    assert options.parent == first.snapshot_id
    assert not options.ignore_ctime, options.reason
    assert stored(case, mover, second, "orders.db", trusted_dir) == new
    assert stored(case, mover, first, "orders.db", trusted_dir) != new


def test_unchanged_files_are_still_taken_from_the_parent(
    case: Case, mover: ResticMover, trusted_dir: Path
) -> None:
    if case.kind == "image":
        pytest.skip("an image is one file, and every freeze changes it: it is always read")
    fill(case.files)
    settle()
    first, _ = backup(case, mover, "rp-1", None)
    with (case.files / "log.txt").open("a") as log:  # an ordinary change: size and mtime move
        log.write("second line\n")
    settle()
    second, options = backup(case, mover, "rp-2", first.snapshot_id)

    assert stored(case, mover, second, "log.txt", trusted_dir) == b"first line\nsecond line\n"
    # copies and clones: the provider vouches for size and mtime; btrfs: restic's own
    # comparison works, its snapshots keep inodes and ctimes
    vouched = case.kind in ("copy", "reflink")
    assert (options.ignore_inode, options.ignore_ctime) == (vouched, vouched), options.reason
    assert second.files_unmodified >= UNTOUCHED, second


@pytest.fixture
def coarse_staging(trusted_dir: Path) -> Iterator[Path]:
    """A staging file system that keeps whole seconds only (ext4 with 128-byte inodes)."""
    image = trusted_dir / "coarse.img"
    with image.open("wb") as handle:
        handle.truncate(64 * MIB)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-I", "128", str(image)], capture_output=True)
    assert made.returncode == 0, made.stderr
    attached = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True
    )
    assert attached.returncode == 0, attached.stderr
    device, mount_point = attached.stdout.strip(), trusted_dir / "coarse"
    mount_point.mkdir()
    try:
        mounted = subprocess.run(["mount", device, str(mount_point)], capture_output=True)
        assert mounted.returncode == 0, mounted.stderr
        try:
            yield mount_point
        finally:
            subprocess.run(["umount", str(mount_point)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def test_a_staging_area_with_coarse_times_never_trusts_mtimes(
    datastore: Datastore, trusted_dir: Path, mover: ResticMover, coarse_staging: Path
) -> None:
    """restic compares the copies' mtimes: on a file system that keeps whole seconds, a
    rewrite whose mtime moved by less than a second would look unchanged."""
    disk = datastore.add_disk("vm1", trusted_dir / "vm1", 64, "ext4")
    case = Case(
        "copy", Volume(path=disk.mountpoint, snapshot="copy"), disk.mountpoint, coarse_staging
    )
    fill(case.files)
    settle()
    first, _ = backup(case, mover, "rp-1", None)

    path = case.files / "orders.db"
    before = path.stat()
    new = os.urandom(before.st_size)
    path.write_bytes(new)
    second_start = before.st_mtime_ns - before.st_mtime_ns % 10**9
    later = second_start + (999_999_000 if before.st_mtime_ns % 10**9 < 999_000_000 else 1000)
    os.utime(path, ns=(later, later))
    settle()
    second, options = backup(case, mover, "rp-2", first.snapshot_id)

    assert not options.ignore_ctime and "nanosecond" in options.reason
    assert stored(case, mover, second, "orders.db", trusted_dir) == new
