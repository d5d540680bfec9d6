"""Walking a path from ``/`` on open descriptors and checking every step (DESIGN.md §4).

The path is walked one component at a time, each directory opened relative to the one
before (``openat`` with ``O_PATH``) and checked with ``fstat`` on that open descriptor,
and the file is finally opened with ``O_NOFOLLOW`` inside the last checked directory.
Nothing is looked up by name twice, so there is no check-then-run race. The rules and
the public entry points are in :mod:`cleancut.guest.security`; this is their machinery.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType

from cleancut.errors import HookSecurityError

_MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_CHUNK = 1 << 20
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG})
#: Shared folders every user may write to; telling anyone to chmod them breaks the machine.
_SHARED_DIRS = frozenset({"/tmp", "/var/tmp", "/dev/shm", "/run/shm", "/run/lock", "/var/lock"})


class Missing(HookSecurityError):
    """The path names nothing (or cannot: a file stands where a folder would be)."""


@dataclass(frozen=True)
class PrivateMode:
    """A platform's own rule for its files: no group or other permission bit at all.

    Azure Backup refuses ``VMSnapshotScriptPluginConfig.json`` unless it is mode 0600 (or
    stricter) and owned by root, and its scripts unless 0700; ``mode`` is what it asks for.
    """

    platform: str
    mode: int


@dataclass
class TrustedFile:
    """A file opened read-only that passed the checks; run or read it through ``fd`` only."""

    fd: int
    path: Path
    sha256: str
    _closed: bool = field(default=False, repr=False)

    def read_bytes(self) -> bytes:
        """The whole content, read from the checked descriptor (not by name)."""
        parts = []
        offset = 0
        while chunk := os.pread(self.fd, _CHUNK, offset):
            parts.append(chunk)
            offset += len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def __enter__(self) -> TrustedFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def probe(path: Path, *, executable: bool) -> TrustedFile | None:
    """``path`` checked and opened when it is a regular file, else None.

    None also for a missing path, a folder or a device: the walk that found out has
    checked every folder on the way, so nobody untrusted can put a file there later.
    """
    if path == Path("/"):
        return None
    try:
        dir_fd, here, name = _open_parent(path)
    except Missing:
        return None
    try:
        if name in ("", ".", ".."):
            return None  # a directory
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd).st_mode):
                return None
        dir_fd, here, name = _resolve_final(dir_fd, here, name, path)
        fd = _open_file(dir_fd, here, name)
    except Missing:
        return None
    finally:
        os.close(dir_fd)
    return _checked(fd, here / name, executable=executable, sha256=None, digest=False)


def open_checked(
    path: Path,
    *,
    executable: bool,
    sha256: str | None,
    private: PrivateMode | None = None,
    digest: bool = True,
) -> TrustedFile:
    """``path`` opened after the checks; ``digest=False`` skips hashing (big data files)."""
    if not path.is_absolute():
        raise HookSecurityError(
            str(path), "not an absolute path", "give the full path starting with /"
        )
    dir_fd, here, name = _open_parent(path)
    try:
        dir_fd, here, name = _resolve_final(dir_fd, here, name, path)
        fd = _open_file(dir_fd, here, name)
    finally:
        os.close(dir_fd)
    return _checked(
        fd, here / name, executable=executable, sha256=sha256, private=private, digest=digest
    )


def _open_file(dir_fd: int, here: Path, name: str) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise HookSecurityError(
            str(here / name), f"cannot open: {exc.strerror}", "check that the file exists"
        ) from exc


def _checked(
    fd: int,
    real: Path,
    *,
    executable: bool,
    sha256: str | None,
    private: PrivateMode | None = None,
    digest: bool = True,
) -> TrustedFile:
    """The open ``fd`` of ``real`` after the file checks (closed if one fails)."""
    try:
        _check_file(fd, real, executable=executable, private=private)
        actual = _sha256(fd) if digest or sha256 is not None else ""
        if sha256 is not None and actual != sha256.lower():
            raise HookSecurityError(
                str(real),
                f"its SHA-256 {actual} differs from the pinned {sha256.lower()}",
                "find out who changed the script; if the change is intended, "
                f"update the pin to {actual}",
            )
    except BaseException:
        os.close(fd)
        raise
    return TrustedFile(fd=fd, path=real, sha256=actual)


def _open_parent(path: Path) -> tuple[int, Path, str]:
    """The checked directory holding ``path``'s last component (fd, its path, the name)."""
    todo = list(reversed(PurePosixPath(path).parts[1:]))
    if not todo:
        raise HookSecurityError(str(path), "is a directory", "name a file, not /")
    fd, here = os.open("/", _DIR_FLAGS), Path("/")
    hops = 0
    try:
        _check_dir(fd, here, path)
        while len(todo) > 1:
            name = todo.pop()
            if name in ("", "."):
                continue
            entered = _enter(fd, here, name)
            if isinstance(entered, PurePosixPath):
                # The link lives in a checked directory, so only a trusted user made it.
                hops = _count_hop(hops, path)
                if entered.is_absolute():
                    os.close(fd)
                    fd, here = os.open("/", _DIR_FLAGS), Path("/")
                todo.extend(reversed([p for p in entered.parts if p != "/"]))
                continue
            os.close(fd)
            fd, here = entered
            _check_dir(fd, here, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, here, todo[0]


def _enter(fd: int, here: Path, name: str) -> tuple[int, Path] | PurePosixPath:
    """The directory ``name`` inside ``fd`` opened (not yet checked), or the symlink's target."""
    if name == "..":
        return os.open("..", _DIR_FLAGS, dir_fd=fd), here.parent
    try:
        new_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError as exc:
        error = Missing if _is_absent(exc) else HookSecurityError
        raise error(str(here / name), f"cannot open: {exc.strerror}", "check the path") from exc
    mode = os.fstat(new_fd).st_mode
    if stat.S_ISDIR(mode):
        return new_fd, here / name
    os.close(new_fd)
    if stat.S_ISLNK(mode):
        return PurePosixPath(os.readlink(name, dir_fd=fd))
    raise Missing(str(here / name), "is not a directory", "correct the path")


def _resolve_final(dir_fd: int, here: Path, name: str, asked: Path) -> tuple[int, Path, str]:
    """Follow symlinks of the last component, each of which must stay inside ``here``."""
    hops = 0
    while True:
        if name in ("", ".", ".."):
            raise HookSecurityError(str(asked), "is a directory", "name a file")
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError as exc:
            if not _is_absent(exc):
                raise HookSecurityError(
                    str(here / name), f"cannot inspect: {exc.strerror}", "check the path"
                ) from exc
            raise Missing(
                str(here / name), "does not exist", "create it or correct the path"
            ) from None
        if not stat.S_ISLNK(mode):
            return dir_fd, here, name
        hops = _count_hop(hops, asked)
        target = os.readlink(name, dir_fd=dir_fd)
        resolved = Path(os.path.normpath(here / target))
        if resolved.parent != here:
            raise HookSecurityError(
                str(here / name),
                f"is a symlink to {resolved}, which leads out of its directory {here}",
                # Not "replace the link": it may be the system's (/etc/alternatives).
                f"name the file itself ({os.path.realpath(here / name)}) in the hook's "
                f"command or #! line, or point the link at a file in {here}",
            )
        name = resolved.name


def _is_absent(exc: OSError) -> bool:
    """An error that means no such file is there (nor can be, under that name)."""
    return exc.errno in _ABSENT


def _count_hop(hops: int, path: Path) -> int:
    if hops >= _MAX_SYMLINKS:
        raise HookSecurityError(str(path), "too many symlinks", "remove the symlink loop")
    return hops + 1


def _trusted_users() -> str:
    euid = os.geteuid()
    return "root" if euid == 0 else f"root or the agent's user (uid {euid})"


def _check_owner_and_mode(
    st: os.stat_result, path: Path, what: str, write_fix: str | None = None
) -> None:
    if st.st_uid not in (0, os.geteuid()):
        raise HookSecurityError(
            str(path),
            f"{what} is owned by uid {st.st_uid}, not by {_trusted_users()}",
            f"chown root:root {path}",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise HookSecurityError(
            str(path),
            f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})",
            write_fix or f"chmod go-w {path}",
        )


def _check_dir(fd: int, path: Path, target: Path) -> None:
    st = os.fstat(fd)
    what = "parent directory" if path != Path("/") else "/"
    _check_owner_and_mode(st, path, what, _dir_write_fix(st, path, target))


def _dir_write_fix(st: os.stat_result, path: Path, target: Path) -> str:
    """``chmod go-w`` for a private folder; for a shared one (sticky, /tmp): move the file."""
    if not st.st_mode & stat.S_ISVTX and str(path) not in _SHARED_DIRS:
        return f"chmod go-w {path}"
    return (
        f"move {target} into a folder only {_trusted_users()} can write, such as "
        f"/etc/cleancut/; do not chmod {path}: it is a shared folder other users need"
    )


def _check_file(fd: int, path: Path, *, executable: bool, private: PrivateMode | None) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise HookSecurityError(str(path), "is not a regular file", "point at a regular file")
    _check_owner_and_mode(st, path, "the file")
    if executable and not st.st_mode & stat.S_IXUSR:
        raise HookSecurityError(str(path), "is not executable", f"chmod u+x {path}")
    if private is not None and st.st_mode & 0o077:
        raise HookSecurityError(
            str(path),
            f"{private.platform} accepts only mode {private.mode:04o} or stricter, owned by "
            f"root: the file has group or other permission bits (mode "
            f"{stat.S_IMODE(st.st_mode):04o})",
            f"chmod {private.mode:o} {path}",
        )


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
