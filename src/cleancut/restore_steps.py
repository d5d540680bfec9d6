"""The writers' restore steps: restored database files made ready to start with no manual step.

A PostgreSQL data directory gets back the ``backup_label`` its writer recorded at the cut
(recovery then starts from the backup's checkpoint) and loses the copied pid file; a
MariaDB one loses stale pid and socket files (InnoDB recovers by itself). The step runs
on the restored files wherever they are: a restored tree, or inside a restored disk image,
which is attached read-write for it (the image is our copy, and the VM would boot into
exactly these files), so the image, not only an extracted copy, starts clean.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cleancut.errors import CleancutError
from cleancut.manifest import Manifest, WriterRecord
from cleancut.writers.server import SERVER_KINDS, data_directory, server_class

_RW_MOUNT_OPTIONS = {"xfs": "nouuid"}


def records_for(manifest: Manifest, host: str, volume: str) -> list[WriterRecord]:
    """The writers of ``host`` whose data directory lies in ``volume`` and need a step."""
    found = []
    for record in manifest.writers:
        place = data_directory(record.details)
        if record.host == host and record.kind in SERVER_KINDS and place and place[0] == volume:
            found.append(record)
    return found


def prepare_tree(files: Path, records: list[WriterRecord]) -> dict[str, list[str]]:
    """Run each writer's restore step on the database files under ``files``."""
    steps: dict[str, list[str]] = {}
    for record in records:
        place = data_directory(record.details)
        assert place is not None
        datadir = files / place[1]
        if not datadir.is_dir():
            raise CleancutError(
                f"{record.host}/{record.database}: the restored volume has no data directory "
                f"{place[1]!r} (expected {datadir}); the recovery point is incomplete"
            )
        server = server_class(record.kind)(datadir, datadir.parent / f".{record.database}-run")
        steps[record.database] = server.prepare_restored(record.details)
    return steps


def prepare_image(
    image: Path, fstype: str | None, records: list[WriterRecord]
) -> dict[str, list[str]]:
    """Run the restore steps inside a restored disk image (attached read-write; root)."""
    if not records:
        return {}
    with attached_read_write(image, fstype) as mounted:
        return prepare_tree(mounted, records)


@contextmanager
def attached_read_write(image: Path, fstype: str | None) -> Iterator[Path]:
    """``image`` on a loop device, mounted read-write in a private folder, undone after."""
    if os.geteuid() != 0:
        raise CleancutError(
            f"{image} holds databases whose restore step must write into the image: run the "
            "restore as root"
        )
    with attached(image, _RW_MOUNT_OPTIONS.get(fstype or ""), read_only=False) as mounted:
        yield mounted


@contextmanager
def attached(image: Path, options: str | None, *, read_only: bool) -> Iterator[Path]:
    """``image`` on a loop device (read-only or not), mounted with ``options`` in a private
    folder; unmounted, detached and the folder removed afterwards, on every path."""
    mount_dir = Path(tempfile.mkdtemp(prefix="cleancut-attach-"))
    try:
        ro = ["--read-only"] if read_only else []
        device = run_tool(["losetup", "--find", "--show", *ro, str(image)]).strip()
        try:
            run_tool(["mount", *(["-o", options] if options else []), device, str(mount_dir)])
            try:
                yield mount_dir
            finally:
                run_tool(["umount", str(mount_dir)])
        finally:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
    finally:
        mount_dir.rmdir()


def run_tool(argv: list[str]) -> str:
    """Run a system tool (losetup, mount, ...); its stdout, or an error with its message."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CleancutError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout
