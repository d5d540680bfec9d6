"""Which mount holds a path, and what lies beneath it (from ``/proc/self/mountinfo``).

The freezer works per file system, not per path: it needs the mount that holds each
volume, its source device, its type, and — when the source is a loop device — the file
that backs it, because a file system stacked on a loop device must be frozen before the
file system that holds its backing file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cleancut.errors import ConfigError

MOUNTINFO = Path("/proc/self/mountinfo")

_OCTAL = re.compile(rb"\\([0-7]{3})")
_LOOP_NAME = re.compile(r"^loop\d+$")
_DELETED = " (deleted)"


@dataclass(frozen=True)
class MountInfo:
    """One line of mountinfo: a mount point and the file system mounted there."""

    mount_point: Path
    fstype: str
    source: str
    major_minor: str
    root: str = "/"
    mount_id: int = 0


def unescape(field: bytes) -> str:
    r"""Undo the kernel's octal escapes (``\040`` space, ``\011`` tab, ``\012`` newline,
    ``\134`` backslash) and decode the bytes as the file system would."""
    raw = _OCTAL.sub(lambda match: bytes([int(match.group(1), 8)]), field)
    return os.fsdecode(raw)


def parse_mountinfo(text: bytes) -> list[MountInfo]:
    """Parse the contents of a mountinfo file (see proc(5)); malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(b" ")
        try:
            separator = fields.index(b"-", 6)
            mounts.append(
                MountInfo(
                    mount_point=Path(unescape(fields[4])),
                    fstype=unescape(fields[separator + 1]),
                    source=unescape(fields[separator + 2]),
                    major_minor=fields[2].decode("ascii"),
                    root=unescape(fields[3]),
                    mount_id=int(fields[0]),
                )
            )
        except (ValueError, IndexError):
            continue
    return mounts


def read_mountinfo(path: Path = MOUNTINFO) -> list[MountInfo]:
    """The mounts this process sees, in mount order."""
    return parse_mountinfo(path.read_bytes())


def mount_of(path: Path, mounts: list[MountInfo] | None = None) -> MountInfo:
    """The mount that holds ``path``.

    Matched by the device of the path (``st_dev``) and, among mounts of that device (bind
    mounts), the longest mount point that is a prefix of the path. btrfs reports a
    per-subvolume device in ``st_dev``, so when no mount has that device the longest prefix
    alone decides.
    """
    try:
        real = Path(os.path.realpath(path, strict=True))
        st_dev = os.stat(real).st_dev
    except OSError as exc:
        raise ConfigError(
            f"cannot find the mount holding it: {exc.strerror}",
            file=str(path),
            hint="check that the path exists and is readable by the guest agent",
        ) from exc
    if mounts is None:
        mounts = read_mountinfo()
    holders = [m for m in mounts if _is_prefix(m.mount_point, real)]
    device = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    same_device = [m for m in holders if m.major_minor == device]
    candidates = same_device or holders
    if not candidates:
        raise ConfigError(f"no mount holds {real}", file=str(path))
    # Later mounts over the same point hide earlier ones, so prefer the last on ties.
    best = max(enumerate(candidates), key=lambda item: (len(item[1].mount_point.parts), item[0]))
    return best[1]


def _is_prefix(mount_point: Path, path: Path) -> bool:
    return path == mount_point or mount_point in path.parents


def loop_backing_file(
    source: str, major_minor: str | None = None, sys_root: Path = Path("/sys")
) -> Path | None:
    """The file behind a loop device (``/dev/loopN``), or None if ``source`` is not an
    attached loop device. ``major_minor`` is used when the source name is not telling."""
    candidates = []
    name = os.path.basename(os.path.realpath(source)) if source.startswith("/dev/") else ""
    if _LOOP_NAME.match(name):
        candidates.append(sys_root / "block" / name / "loop" / "backing_file")
    if major_minor:
        candidates.append(sys_root / "dev" / "block" / major_minor / "loop" / "backing_file")
    for candidate in candidates:
        try:
            text = candidate.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            continue
        text = text.rstrip("\n")
        if text.endswith(_DELETED):
            text = text[: -len(_DELETED)]
        if text:
            return Path(text)
    return None


def devices_below(major_minor: str, sys_root: Path = Path("/sys")) -> set[str]:
    """The block devices directly beneath device ``major_minor``, from the kernel's own links.

    A device-mapper, md or other stacked device lists the devices it is built on in
    ``/sys/dev/block/M:N/slaves``; a partition lies on its whole disk (the parent folder in
    sysfs). Loop devices are not covered here: what lies beneath them is a file, found with
    :func:`loop_backing_file`.
    """
    node = sys_root / "dev" / "block" / major_minor
    found: set[str] = set()
    try:
        real = node.resolve(strict=True)
    except OSError:
        return found
    try:
        slaves = list((real / "slaves").iterdir())
    except OSError:
        slaves = []
    for slave in slaves:
        device = _read_dev(slave / "dev")
        if device:
            found.add(device)
    if (real / "partition").exists():
        device = _read_dev(real.parent / "dev")
        if device:
            found.add(device)
    return found


def _read_dev(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip() or None
    except OSError:
        return None
