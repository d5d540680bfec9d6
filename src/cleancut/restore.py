"""Restoring a recovery point: every resource under ``DIR/<host>/``, then checks.

An ``image`` volume comes back as its disk image ``DIR/<host>/<volume>.img``; with
``extract`` its files also come back in ``DIR/<host>/<volume>/`` (the image is attached
read-only and copied out), which is what file-level recovery and the database checks need.
A tree volume comes back as ``DIR/<host>/<volume>/``. The file system of every image is
checked (``e2fsck -fn`` / ``xfs_repair -n``) and every SQLite database found in the
restored files must pass ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleancut.errors import CleancutError, RestoreRefused
from cleancut.manifest import Manifest, Member, WriterRecord
from cleancut.mover.base import Mover, ProgressCallback
from cleancut.restore_steps import (
    attached,
    prepare_image,
    prepare_tree,
    records_for,
    run_tool,
)

_FSCK = {
    "ext4": ["e2fsck", "-f", "-n"],
    "ext3": ["e2fsck", "-f", "-n"],
    "ext2": ["e2fsck", "-f", "-n"],
    "xfs": ["xfs_repair", "-n", "-f"],
    "btrfs": ["btrfs", "check", "--readonly"],
}
# Read-only mounts of a clone: never replay a journal into it, and let XFS mount an image
# whose UUID equals the live file system's.
_MOUNT_OPTIONS = {"ext4": "ro,noload", "xfs": "ro,norecovery,nouuid", "btrfs": "ro"}


@dataclass
class RestoredMember:
    """Where one resource was restored and what the checks said."""

    host: str
    resource: str
    path: Path
    files: Path | None = None
    fsck_ok: bool | None = None
    fsck_output: str = ""
    databases: dict[str, bool] = field(default_factory=dict)
    #: each writer's restore step, per database: one line per thing it did
    writer_steps: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class RestoreReport:
    """The outcome of restoring one recovery point."""

    rp_id: str
    target: Path
    members: list[RestoredMember]

    @property
    def ok(self) -> bool:
        return all(m.fsck_ok is not False and all(m.databases.values()) for m in self.members)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rp": self.rp_id,
            "target": str(self.target),
            "ok": self.ok,
            "members": [
                {
                    "host": m.host,
                    "resource": m.resource,
                    "path": str(m.path),
                    "files": str(m.files) if m.files else None,
                    "fsck_ok": m.fsck_ok,
                    "databases": m.databases,
                    "writer_steps": m.writer_steps,
                }
                for m in self.members
            ],
        }


def check_target(manifest: Manifest, target: Path, *, in_place: bool) -> None:
    """Refuse a target that overlaps a live volume, unless ``--in-place`` says so."""
    target = target.resolve()
    for member in manifest.members:
        for live in filter(None, (member.source_path, member.image_path)):
            live_path = Path(live).resolve()
            overlaps = live_path == target or live_path.is_relative_to(target)
            if (overlaps or target.is_relative_to(live_path)) and not in_place:
                raise RestoreRefused(
                    f"--to {target} overlaps the live {member.host}/{member.resource} at "
                    f"{live_path}; restore elsewhere, or pass --in-place to overwrite it"
                )
    if target.exists() and any(target.iterdir()) and not in_place:
        raise RestoreRefused(f"--to {target} is not empty; choose an empty or new folder")


def restore_rp(
    manifest: Manifest,
    mover: Mover,
    target: Path,
    *,
    extract: bool = False,
    in_place: bool = False,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> RestoreReport:
    """Every resource of ``manifest`` under ``target``, checked."""
    check_target(manifest, target, in_place=in_place)
    _check_stored(manifest)
    target.mkdir(parents=True, exist_ok=True)
    restored = []
    for member in manifest.members:
        if member.repository_snapshot is None:
            raise CleancutError(f"{member.host}/{member.resource} has no stored snapshot")
        sink: ProgressCallback | None = None
        if progress is not None:
            label = f"{member.host}/{member.resource}"

            def sink(figures: dict[str, Any], label: str = label) -> None:
                progress(label, figures)

        records = records_for(manifest, member.host, member.resource)
        restored.append(
            _restore_member(member, mover, target, records, extract=extract, progress=sink)
        )
    return RestoreReport(manifest.rp_id, target, restored)


def _restore_member(
    member: Member,
    mover: Mover,
    target: Path,
    records: list[WriterRecord],
    *,
    extract: bool,
    progress: ProgressCallback | None,
) -> RestoredMember:
    host_dir = target / member.host
    host_dir.mkdir(parents=True, exist_ok=True)
    assert member.repository_snapshot is not None
    size = member.bytes_processed
    if progress is not None:  # restic 0.14 reports no restore progress: a pulsing bar
        progress({"bytes_done": 0, "total_bytes": 0})
    with tempfile.TemporaryDirectory(dir=host_dir, prefix=".restore-") as scratch:
        mover.restore(member.repository_snapshot, Path(scratch) / "data", progress=progress)
        if progress is not None:
            progress({"done": True, "bytes_done": size, "total_bytes": size})
        data = Path(scratch) / "data"
        if member.layout == "file":
            (image,) = [p for p in data.iterdir() if p.is_file()]
            destination = host_dir / f"{member.resource}.img"
            os.replace(image, destination)
        else:
            destination = host_dir / member.resource
            if destination.exists():
                shutil.rmtree(destination)
            os.replace(data, destination)
    result = RestoredMember(member.host, member.resource, destination)
    if member.layout == "file":
        result.writer_steps = prepare_image(destination, member.fstype, records)
        result.fsck_ok, result.fsck_output = fsck_image(destination, member.fstype)
        if extract:
            result.files = host_dir / member.resource
            extract_image(destination, member.fstype, result.files)
    else:
        result.files = destination
        result.writer_steps = prepare_tree(destination, records)
    if result.files is not None:
        result.databases = check_databases(result.files)
    return result


def restore_in_place(
    manifest: Manifest,
    mover: Mover,
    *,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> RestoreReport:
    """Every resource of ``manifest`` back where it came from (``restore --in-place``).

    A disk image is replaced atomically, and only while no loop device holds it (the VM is
    off); a tree's contents are replaced by the snapshot's, extra files removed. Stop the
    application first: cleancut cannot know who else writes there.
    """
    _check_stored(manifest)
    for member in manifest.members:
        if member.layout == "file":
            image = Path(member.image_path or "")
            attached = attached_loop_devices(image) if member.image_path else []
            if attached:
                raise RestoreRefused(
                    f"{member.host}/{member.resource}: disk image {image} is in use by "
                    f"{', '.join(attached)}; stop the VM (umount, losetup -d) before "
                    "restoring it in place"
                )
    restored = []
    for member in manifest.members:
        sink = _member_progress(progress, member)
        records = records_for(manifest, member.host, member.resource)
        if member.layout == "file":
            restored.append(_replace_image(member, mover, sink, records))
        else:
            restored.append(_replace_tree(member, mover, sink, records))
    return RestoreReport(manifest.rp_id, Path("/"), restored)


def _check_stored(manifest: Manifest) -> None:
    """Refuse, before anything is written, a recovery point with a member that has no data."""
    missing = [f"{m.host}/{m.resource}" for m in manifest.members if not m.repository_snapshot]
    if missing:
        raise CleancutError(
            f"recovery point {manifest.rp_id} has no stored snapshot of {', '.join(missing)}; "
            "restore another one (cleancut points)"
        )


def _member_progress(
    progress: Callable[[str, dict[str, Any]], None] | None, member: Member
) -> ProgressCallback | None:
    if progress is None:
        return None
    label = f"{member.host}/{member.resource}"
    return lambda figures: progress(label, figures)


def _replace_image(
    member: Member, mover: Mover, progress: ProgressCallback | None, records: list[WriterRecord]
) -> RestoredMember:
    if not member.image_path:
        raise RestoreRefused(f"{member.host}/{member.resource}: the manifest names no image path")
    image = Path(member.image_path)
    assert member.repository_snapshot is not None
    # scratch beside the image: the same file system, so the final rename is atomic
    with tempfile.TemporaryDirectory(dir=image.parent, prefix=".cleancut-restore-") as scratch:
        mover.restore(member.repository_snapshot, Path(scratch) / "data", progress=progress)
        (restored,) = [p for p in (Path(scratch) / "data").iterdir() if p.is_file()]
        steps = prepare_image(restored, member.fstype, records)
        ok, output = fsck_image(restored, member.fstype)
        if ok is False:
            raise CleancutError(f"{member.host}/{member.resource}: restored image fails fsck")
        os.replace(restored, image)
    result = RestoredMember(member.host, member.resource, image, fsck_ok=ok, fsck_output=output)
    result.writer_steps = steps
    return result


def _replace_tree(
    member: Member, mover: Mover, progress: ProgressCallback | None, records: list[WriterRecord]
) -> RestoredMember:
    target = Path(member.source_path)
    target.mkdir(parents=True, exist_ok=True)
    assert member.repository_snapshot is not None
    # scratch inside the volume: the same file system, so every move is a rename
    with tempfile.TemporaryDirectory(dir=target, prefix=".cleancut-restore-") as scratch:
        data = Path(scratch) / "data"
        mover.restore(member.repository_snapshot, data, progress=progress)
        for entry in target.iterdir():
            if entry != Path(scratch) and entry.name != "lost+found":
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        for entry in data.iterdir():
            os.replace(entry, target / entry.name)
    result = RestoredMember(member.host, member.resource, target, files=target)
    result.writer_steps = prepare_tree(target, records)
    result.databases = check_databases(target)
    return result


def attached_loop_devices(image: Path) -> list[str]:
    """The loop devices whose backing file is ``image``."""
    wanted = str(image.resolve())
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        name = backing.read_text().strip().removesuffix(" (deleted)")
        if name == wanted:
            found.append("/dev/" + backing.parent.parent.name)
    return found


def fsck_image(image: Path, fstype: str | None) -> tuple[bool | None, str]:
    """Check a restored disk image read-only; None when the file system type is unknown."""
    command = _FSCK.get(fstype or "")
    if command is None:
        return None, f"no checker for file system {fstype!r}"
    note = ""
    if fstype == "xfs" and os.geteuid() == 0:
        note = replay_xfs_log(image)
    try:
        done = subprocess.run(
            [*command, str(image)], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (note + done.stdout + done.stderr)[-4000:]


def replay_xfs_log(image: Path) -> str:
    """Replay the XFS log of a restored image, as the VM's next mount would.

    A frozen XFS keeps metadata in its log (ext4's freeze empties its journal, XFS's does
    not), and ``xfs_repair -n`` refuses to replay it and reports what the log would fix.
    The restored image is our own copy, so mounting it once (``nouuid``: the live file
    system may carry the same UUID) and unmounting it brings it to the state the VM boots
    into. Returns a line for the check's output.
    """
    mount_dir = Path(tempfile.mkdtemp(prefix="cleancut-replay-"))
    try:
        device = run_tool(["losetup", "--find", "--show", str(image)]).strip()
        try:
            run_tool(["mount", "-t", "xfs", "-o", "nouuid", device, str(mount_dir)])
            run_tool(["umount", str(mount_dir)])
        finally:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
    except CleancutError as exc:
        return f"log not replayed: {exc.message}\n"
    finally:
        mount_dir.rmdir()
    return "xfs log replayed by one mount and unmount of the restored image\n"


@contextmanager
def attached_read_only(image: Path, fstype: str | None) -> Iterator[Path]:
    """The image attached to a read-only loop device and mounted read-only (needs root)."""
    if os.geteuid() != 0:
        raise CleancutError("--extract mounts the restored disk image and needs root")
    with attached(image, _MOUNT_OPTIONS.get(fstype or "", "ro"), read_only=True) as mounted:
        yield mounted


def extract_image(image: Path, fstype: str | None, destination: Path) -> None:
    """Copy the files inside a restored disk image to ``destination``, keeping owners,
    modes, links, holes and xattrs (a database server refuses a data directory that is
    not its own user's)."""
    with attached_read_only(image, fstype) as mounted:
        destination.mkdir(parents=True, exist_ok=True)
        os.chmod(destination, os.stat(mounted).st_mode & 0o7777)
        entries = [str(p) for p in sorted(mounted.iterdir()) if p.name != "lost+found"]
        if entries:
            run_tool(["cp", "-a", "--sparse=always", *entries, str(destination)])
        stat = os.stat(mounted)
        os.chown(destination, stat.st_uid, stat.st_gid)


def check_databases(files: Path) -> dict[str, bool]:
    """``PRAGMA integrity_check`` on every SQLite database file in the restored tree."""
    results: dict[str, bool] = {}
    for path in sorted(files.rglob("*.db")):
        results[str(path.relative_to(files))] = sqlite_ok(path)
    return results


def sqlite_ok(path: Path) -> bool:
    """Whether SQLite opens the file (recovering a hot journal) and finds it intact."""
    try:
        conn = sqlite3.connect(path)
        try:
            return bool(conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")
        finally:
            conn.close()
    except sqlite3.Error:
        return False
