"""A faithful copy of a directory tree, the walk the ``copy`` and ``reflink`` providers share.

A backup that loses what the file system holds restores a machine that does not work: a
binary without its file capability (``ping``), a share without its ACLs, a pair of hard
links turned into two files, a 50 GiB sparse VM image grown to 50 GiB on disk. So the
copy keeps, besides contents, modes, times and (as root) owners:

* every extended attribute: ``user.*``, and as root ``trusted.*`` and ``security.*`` —
  which includes POSIX ACLs (``system.posix_acl_access`` / ``_default``) and file
  capabilities (``security.capability``);
* hard links: two names of one inode in the source are two names of one inode in the copy;
* holes: :func:`copy_sparse` copies a file's data extents only (``SEEK_DATA`` /
  ``SEEK_HOLE``) and sets its size, so a hole stays a hole (FICLONE keeps them by itself).

The walk runs while the volume's file system may be frozen: it only reads from the source
and writes to the destination, makes no import and writes no log. While walking it notes
each regular file's stamp (inode, size, mtime, ctime), which tells the next upload whether
restic may trust size and mtime alone (:mod:`cleancut.providers.changes`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cleancut.errors import ProviderError

_IS_ROOT = os.geteuid() == 0

#: copies one regular file's content from the first path to the (new) second path
FileCopier = Callable[[Path, Path], None]

#: (inode, size, mtime_ns, ctime_ns) of one regular file of the source, as the walk saw it
FileStamp = tuple[int, int, int, int]

#: errnos after which copy_file_range cannot work for this pair of files (another file
#: system, an old kernel, a file system without it): the copy goes on with sendfile
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
#: the most one copy_file_range / sendfile call is asked to move
_CHUNK = 1 << 30
#: XFS shows root its ACLs a second time under these names (its on-disk form); the ACL is
#: copied as ``system.posix_acl_*``, and on another file system these would be junk
_XFS_ACL_ALIASES = frozenset({"trusted.SGI_ACL_FILE", "trusted.SGI_ACL_DEFAULT"})


@dataclass
class TreeStats:
    """What a tree copy did; ``files``, ``bytes``, ``hardlinks`` and ``skipped`` go into the
    snapshot's details, ``stamps`` (one entry per regular file, by relative path) stays with
    the provider."""

    files: int = 0
    bytes: int = 0
    hardlinks: int = 0
    skipped: list[str] = field(default_factory=list)
    stamps: dict[str, FileStamp] = field(default_factory=dict)


def stamp_of(st: os.stat_result) -> FileStamp:
    """The stamp of a file from its ``stat``."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def copy_tree(
    src: Path, dst: Path, copy_file: FileCopier, *, skip: frozenset[Path] = frozenset()
) -> TreeStats:
    """Recreate the tree ``src`` at ``dst`` (which must not exist).

    Directories and symlinks are recreated, regular files copied by ``copy_file`` (or
    linked, for a second name of an inode already copied); modes, times, extended
    attributes (ACLs and capabilities among them) and, as root, owners are kept. Like
    ``tar --one-file-system`` it stays on ``src``'s file system (a staging area mounted
    inside the volume is never copied into itself); paths in ``skip`` are left out too.
    Sockets, FIFOs and devices are skipped and listed, since a backup cannot hold their
    state.
    """
    walk = _TreeCopy(copy_file, skip)
    walk.directory(src, dst, os.lstat(src), "")
    return walk.stats


class _TreeCopy:
    """One run of :func:`copy_tree`: the walk, its statistics and the inodes copied so far."""

    def __init__(self, copy_file: FileCopier, skip: frozenset[Path]) -> None:
        self.copy_file = copy_file
        self.skip = skip
        self.stats = TreeStats()
        self.copied: dict[tuple[int, int], Path] = {}  # (dev, ino) of multi-link files

    def directory(self, src: Path, dst: Path, st: os.stat_result, rel: str) -> None:
        os.mkdir(dst, 0o700)
        with os.scandir(src) as entries:
            children = sorted(entries, key=lambda entry: entry.name)
        for entry in children:
            child = Path(entry.path)
            if child not in self.skip:
                name = f"{rel}/{entry.name}" if rel else entry.name
                self.entry(child, dst / entry.name, entry.stat(follow_symlinks=False), st, name)
        # the directory's own metadata last: creating the children changed its times, and
        # a default ACL set before them would be inherited by children that lack it
        copy_metadata(src, dst, st, self.stats)

    def entry(
        self, src: Path, dst: Path, st: os.stat_result, parent: os.stat_result, rel: str
    ) -> None:
        if stat.S_ISDIR(st.st_mode):
            if st.st_dev != parent.st_dev:
                self.stats.skipped.append(f"{src} (another file system)")
            else:
                self.directory(src, dst, st, rel)
            return
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(st.st_mode):
            # the stamp is taken before the content is read: a change during the copy then
            # shows as a newer ctime next time, never as an unchanged file
            self.stats.stamps[rel] = stamp_of(st)
            if self.link(st, dst):
                return
            self.copy_file(src, dst)
            self.stats.files += 1
            self.stats.bytes += st.st_size
        else:
            self.stats.skipped.append(f"{src} (not a file, directory or symlink)")
            return
        copy_metadata(src, dst, st, self.stats)

    def link(self, st: os.stat_result, dst: Path) -> bool:
        """Hard-link ``dst`` to the copy of an inode already copied; False if it is new."""
        if st.st_nlink < 2:
            return False
        key = (st.st_dev, st.st_ino)
        first = self.copied.get(key)
        if first is None:
            self.copied[key] = dst
            return False
        os.link(first, dst)  # shares the first copy's content and metadata
        self.stats.hardlinks += 1
        return True


def copy_metadata(src: Path, dst: Path, st: os.stat_result, stats: TreeStats) -> None:
    """Owner (when root), mode, extended attributes and times of ``src`` onto ``dst``,
    without following symlinks.

    The order matters: ``chown`` clears set-id bits and file capabilities, so the mode and
    the attributes come after it; setting attributes changes nothing a restore compares
    but ctime, and the times come last.
    """
    if _IS_ROOT:
        os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    copy_xattrs(src, dst, stats)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_xattrs(src: Path, dst: Path, stats: TreeStats) -> None:
    """Every extended attribute of ``src`` (ACLs and capabilities too) onto ``dst``.

    A source file system without extended attributes has none to copy. An attribute the
    destination refuses is an error (the copy would silently lose it), except, when not
    running as root, one only root may set: that is listed in ``stats.skipped``.
    """
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            return
        raise
    for name in names:
        if name in _XFS_ACL_ALIASES:
            continue
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed since it was listed
                continue
            raise
        try:
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as exc:
            if not _IS_ROOT and exc.errno in (errno.EPERM, errno.EACCES):
                stats.skipped.append(f"{src} (extended attribute {name}: only root can set it)")
                continue
            raise ProviderError(
                f"{src}: cannot keep its extended attribute {name} in the copy {dst}: "
                f"{exc.strerror}; put the staging area on a file system with extended "
                "attributes and ACLs (ext4, XFS, btrfs or tmpfs)"
            ) from exc


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy the regular file ``src`` into the new file ``dst``, holes kept as holes.

    Only the data extents are copied (``SEEK_DATA`` / ``SEEK_HOLE``), in the kernel
    (``copy_file_range``, else ``sendfile``); the size is set at the end, so a hole at the
    end stays one too. ``dst`` must not exist.
    """
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        dst_fd = os.open(dst, flags, 0o600)
        try:
            size = os.fstat(src_fd).st_size
            for start, end in data_extents(src_fd, size):
                copy_range(src_fd, dst_fd, start, end - start)
            if os.fstat(dst_fd).st_size != size:  # a hole at the end (a truncate is slow on XFS)
                os.ftruncate(dst_fd, size)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` byte ranges of the open file ``fd`` that hold data (not holes).

    A file system that cannot tell holes (``SEEK_DATA`` unsupported) is all data.
    """
    extents: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from offset to the end
                break
            if exc.errno == errno.EINVAL:
                return [(0, size)]
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end <= start:
            break
        extents.append((start, end))
        offset = end
    return extents


def copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Copy ``count`` bytes at ``offset`` of ``src_fd`` to the same offset of ``dst_fd``."""
    in_kernel = True
    done = 0
    while done < count:
        at, want = offset + done, min(count - done, _CHUNK)
        if in_kernel:
            try:
                moved = os.copy_file_range(src_fd, dst_fd, want, at, at)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                in_kernel = False
                continue
        else:
            os.lseek(dst_fd, at, os.SEEK_SET)
            moved = os.sendfile(dst_fd, src_fd, at, want)
        if moved == 0:  # end of file: the source shrank since its size was read
            return
        done += moved
