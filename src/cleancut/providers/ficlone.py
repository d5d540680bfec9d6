"""FICLONE (reflink) of one file, and the file-system facts providers check before using it.

A reflink shares the source's blocks copy-on-write, so a clone of a 500 MiB disk image
takes milliseconds instead of the whole copy time. It only works inside one mount of a
file system that supports it (XFS with ``reflink=1``, btrfs); everything else fails with
:class:`~cleancut.errors.ProviderError`. There is deliberately **no fallback to a full
copy**: a copy made inside a freeze would stall the application's writes for the whole
copy, which is the failure these providers exist to avoid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path

from cleancut.errors import ConfigError, ProviderError
from cleancut.system.mounts import MountInfo, mount_of

#: ``_IOW(0x94, 9, int)`` from ``<linux/fs.h>``
FICLONE = 0x40049409

#: errnos that mean "this file system (or this pair of files) cannot share blocks"
_NO_REFLINK = frozenset({errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY})

_REFLINK_HINT = "use XFS formatted with reflink=1 (the mkfs.xfs default) or btrfs"


def filesystem_of(path: Path) -> MountInfo:
    """The mount holding ``path``, which may not exist yet (its nearest existing ancestor is
    used then: that is where a folder created at ``path`` would live)."""
    try:
        return mount_of(existing_ancestor(path))
    except (ConfigError, OSError) as exc:
        raise ProviderError(f"{path}: cannot find the mount holding it: {exc}") from exc


def existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def no_reflink_error(path: Path, exc: OSError | None = None) -> ProviderError:
    """The error for a FICLONE the file system holding ``path`` refused."""
    try:
        fs = filesystem_of(path)
        where = f"{fs.fstype} at {fs.mount_point}"
    except (OSError, ProviderError):
        where = "its file system"
    if exc is not None and exc.errno == errno.EXDEV:
        return ProviderError(
            f"{path}: cannot reflink across file systems (destination on {where}); the clone "
            "must be made on the same mount as its source"
        )
    return ProviderError(
        f"{path}: {where} does not support reflinks (FICLONE); {_REFLINK_HINT}. "
        "cleancut does not fall back to a full copy"
    )


def clone_fd(src_fd: int, dst_fd: int, dst_path: Path) -> None:
    """One FICLONE of the open file ``src_fd`` into the open, empty file ``dst_fd``.

    Makes no import, no allocation worth naming and no log write: it runs inside a freeze.
    """
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in _NO_REFLINK:
            raise no_reflink_error(dst_path, exc) from exc
        raise ProviderError(f"{dst_path}: FICLONE failed: {exc.strerror}") from exc


def clone_file(src: int | Path | str, dst_path: Path | str, mode: int = 0o600) -> None:
    """Reflink ``src`` (an open fd or a path) into a new file at ``dst_path``.

    ``dst_path`` must not exist; on failure nothing is left behind.
    """
    dst = Path(dst_path)
    src_fd = src if isinstance(src, int) else os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            clone_fd(src_fd, dst_fd, dst)
        except BaseException:
            os.close(dst_fd)
            dst_fd = -1
            dst.unlink(missing_ok=True)
            raise
        finally:
            if dst_fd >= 0:
                os.close(dst_fd)
    finally:
        if not isinstance(src, int):
            os.close(src_fd)


def supports_reflink(directory: Path) -> bool:
    """Whether FICLONE works inside ``directory``, probed with two temporary files there."""
    fd_a, name_a = tempfile.mkstemp(prefix=".cleancut-reflink-probe-", dir=directory)
    name_b = name_a + ".clone"
    try:
        os.write(fd_a, b"cleancut reflink probe\n")
        os.fsync(fd_a)
        try:
            clone_file(fd_a, name_b)
        except ProviderError:
            return False
        return True
    finally:
        os.close(fd_a)
        for name in (name_a, name_b):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def require_reflink(directory: Path, what: str) -> None:
    """Raise ProviderError unless FICLONE works in ``directory``; ``what`` says who needs it."""
    try:
        ok = supports_reflink(directory)
    except OSError as exc:
        raise ProviderError(f"{directory}: cannot probe reflink support: {exc.strerror}") from exc
    if not ok:
        fs = filesystem_of(directory)
        raise ProviderError(
            f"{what}: {fs.fstype} at {fs.mount_point} does not support reflink; {_REFLINK_HINT}"
        )
