"""What it costs that a change between two backups is always in the second one.

``python -m bench.changes [--files N] [--mib M]`` (root, restic). A realistic tree (many
small files, some medium, a few large; deterministic from a seed) on an ext4 disk, on an
XFS datastore, is backed up by the ``copy`` provider (staging on the datastore) and, for
comparison, by the ``btrfs`` provider on a btrfs disk holding the same tree. Per backup it
prints the snapshot time, the provider's decision (``upload_options``: loading the record
and comparing every file), recording the upload (``uploaded``), the record's size and the
restic upload time:

1. first backup (no parent);
2. second backup after an ordinary change of 1 % of the files: the fast path (size and
   mtime trusted); then the same snapshot uploaded again with the provider's options and
   without the ignore flags (what every upload of a copy would cost if the provider could
   not vouch), from a warm and from a cold page cache;
3. third backup after one file was rewritten with its size and mtime kept (``touch -r``):
   the provider refuses the fast path, restic reads everything.

It prints figures and asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench.common import machine_report, require_root, say, table, workspace
from cleancut.config.guest import Volume
from cleancut.demo.disks import Datastore
from cleancut.mover import RepositoryAccess, ResticMover, Upload
from cleancut.providers import make_provider
from cleancut.providers.base import Provider, UploadOptions
from cleancut.providers.changes import RACY_NS

SEED = 20261202
ROUNDS = 3
MIB = 1024 * 1024
T = TypeVar("T")


def fill(root: Path, files: int, mib: int, seed: int = SEED) -> int:
    """``files`` files totalling about ``mib`` MiB: 90 % small (1-16 KiB), 9.5 % medium,
    0.5 % large, in folders of 100; returns the bytes written."""
    rng = random.Random(seed)
    large = max(1, files // 200)
    medium = files // 10 - large
    small = files - medium - large
    budget = mib * MIB - small * 8 * 1024
    sizes = [rng.randint(1024, 16 * 1024) for _ in range(small)]
    sizes += [max(16 * 1024, int(budget * 0.5 / max(1, medium))) for _ in range(medium)]
    sizes += [max(MIB, int(budget * 0.5 / large)) for _ in range(large)]
    rng.shuffle(sizes)
    written = 0
    for index, size in enumerate(sizes):
        folder = root / f"d{index // 100:04d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{index:06d}.bin").write_bytes(rng.randbytes(size))
        written += size
    return written


def timed(step: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    result = step()
    return result, time.monotonic() - started


def run_backup(
    provider: Provider, mover: ResticMover, rp_id: str, parent: str | None, *, compare: bool = False
) -> tuple[list[list[str]], str]:
    """One backup through ``provider``: rows of figures and the snapshot id the provider
    recorded. With ``compare`` the same snapshot is uploaded again, :data:`ROUNDS` times
    each, with the provider's options and without the ignore flags, from a warm page cache
    and from a cold one (the staged files evicted); the median is shown."""
    provider.check()
    provider.prepare(rp_id)
    rows = []
    try:
        snap, snap_s = timed(provider.snapshot)
        options, decide_s = timed(lambda: provider.upload_options(parent))
        upload, upload_s = timed(lambda: _upload(mover, snap.path, options))
        _, record_s = timed(lambda: provider.uploaded(upload.snapshot_id))
        rows.append(_row(rp_id, snap_s, decide_s, record_s, upload_s, options, upload, provider))
        if compare:
            full = UploadOptions(parent, reason="the same snapshot without the ignore flags")
            for label, opts in (("as decided", options), ("full compare", full)):
                for cache in ("warm", "cold"):
                    times = []
                    for _ in range(ROUNDS):
                        if cache == "cold":
                            evict(snap.path)
                        started = time.monotonic()
                        again = _upload(mover, snap.path, opts)
                        seconds = time.monotonic() - started
                        times.append(seconds)
                    name = f"  {rp_id} again, {label}, {cache} cache"
                    rows.append(_row(name, 0, 0, 0, statistics.median(times), opts, again, None))
    finally:
        provider.release()
    return rows, upload.snapshot_id


#: the disk images under the snapshots (loop devices stack: a file read from a mounted
#: image is cached again as the image's pages), evicted with them for a cold read
BACKING: list[Path] = []


def evict(tree: Path) -> None:
    """Drop the page cache of every file under ``tree`` and of :data:`BACKING` (these files
    only: nothing else on the machine is touched)."""
    os.sync()
    for path in [*tree.rglob("*"), *BACKING]:
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _upload(mover: ResticMover, path: Path, options: UploadOptions) -> Upload:
    return mover.backup(
        path,
        host="bench",
        tags={"app": "changes"},
        parent=options.parent,
        ignore_inode=options.ignore_inode,
        ignore_ctime=options.ignore_ctime,
    )


def _row(
    label: str,
    snap_s: float,
    decide_s: float,
    record_s: float,
    upload_s: float,
    options: UploadOptions,
    upload: Upload,
    provider: Provider | None,
) -> list[str]:
    state = getattr(getattr(provider, "changes", None), "path", None)
    size = f"{state.stat().st_size / 1024:.0f} KiB" if state and state.exists() else "-"
    flags = "ignore inode+ctime" if options.ignore_ctime else "full compare"
    if options.parent is None:
        flags = "no parent"
    return [
        label,
        f"{snap_s:.2f} s" if provider else "",
        f"{decide_s * 1000:.0f} ms" if provider else "",
        f"{record_s * 1000:.0f} ms" if provider else "",
        size,
        flags,
        f"{upload_s:.2f} s",
        f"{upload.files_unmodified}/{upload.files_changed}/{upload.files_new}",
    ]


def change_one_percent(root: Path) -> None:
    files = sorted(root.rglob("*.bin"))
    for path in files[:: max(1, len(files) // max(1, len(files) // 100))]:
        with path.open("ab") as handle:
            handle.write(b"appended\n")


def rewrite_keeping_mtime(path: Path) -> None:
    before = path.stat()
    path.write_bytes(os.urandom(before.st_size))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def series(
    provider_for: Callable[[], Provider], files: Path, mover: ResticMover
) -> list[list[str]]:
    rows, parent = run_backup(provider_for(), mover, "rp-1", None)
    change_one_percent(files)
    time.sleep(2 * RACY_NS / 1e9)
    more, parent = run_backup(provider_for(), mover, "rp-2", parent, compare=True)
    rows += more
    rewrite_keeping_mtime(sorted(files.rglob("*.bin"))[7])
    time.sleep(2 * RACY_NS / 1e9)
    more, _ = run_backup(provider_for(), mover, "rp-3", parent)
    return rows + more


HEADERS = [
    "backup",
    "snapshot",
    "decide",
    "record",
    "record size",
    "restic compares",
    "upload",
    "unmodified/changed/new",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.changes", description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--mib", type=int, default=600)
    args = parser.parse_args(argv)
    require_root("change detection")
    root = workspace("changes-")
    try:
        disk_mib = args.mib * 2 + 256
        with Datastore(root / "ds", 3 * disk_mib + 512, remove_images=True) as ds:
            ext4 = ds.add_disk("ext4", root / "ext4", disk_mib, "ext4")
            btrfs = ds.add_disk("btrfs", root / "btrfs", disk_mib, "btrfs")
            subprocess.run(["btrfs", "subvolume", "create", str(btrfs.mountpoint / "data")])
            BACKING.extend([ext4.image, btrfs.image, ds.image])
            written = fill(ext4.mountpoint, args.files, args.mib)
            fill(btrfs.mountpoint / "data", args.files, args.mib)
            say(f"tree: {args.files} files, {written / MIB:.0f} MiB")
            time.sleep(2 * RACY_NS / 1e9)
            for name, volume, files, staging in (
                ("copy", Volume(path=ext4.mountpoint, snapshot="copy"), ext4.mountpoint, ds.path),
                (
                    "btrfs",
                    Volume(path=btrfs.mountpoint / "data", snapshot="btrfs"),
                    btrfs.mountpoint / "data",
                    root,
                ),
            ):
                access = RepositoryAccess(str(root / f"repo-{name}"), "bench")
                mover = ResticMover(access, cache_dir=root / "cache")
                mover.ensure_repository()

                def provider_for(v: Volume = volume, s: Path = staging) -> Provider:
                    return make_provider("data", v, s)

                say(f"== {name} provider ==")
                rows = series(provider_for, files, mover)
                print(f"\n{name} provider, {args.files} files, {written / MIB:.0f} MiB")
                print(table(HEADERS, rows))
        print()
        print(machine_report({"workspace": root}))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
