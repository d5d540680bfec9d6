"""Permission checks for everything the guest runs or trusts as root (DESIGN.md §4).

An attacker who can change a hook, its config or any folder above them runs code as
root. So a hook is only run from a file descriptor that passed every check *itself*:
the path is walked from ``/`` one component at a time, each directory opened relative
to the one before (``openat`` with ``O_PATH``) and checked with ``fstat`` on that open
descriptor, and the script is finally opened with ``O_NOFOLLOW`` inside the last checked
directory. Nothing is looked up by name twice, so there is no check-then-run race.

Rules (each refusal is a :class:`~cleancut.errors.HookSecurityError` naming the file, the
rule and the fix):

* every directory on the way and the file itself are owned by root or the agent's user;
* none of them has the group or other write bit;
* symlinks in the folders above are followed (``/bin`` → ``usr/bin``) only through
  checked directories; a symlink *as the file itself* must stay in its own directory;
* a hook is a regular, executable file; its SHA-256 matches the pin when there is one.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType

from cleancut.config.guest import GuestConfig
from cleancut.config.load import parse_guest
from cleancut.errors import HookSecurityError

_MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_CHUNK = 1 << 20


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


def check_config_file(path: Path) -> None:
    """Refuse a config file (guest.toml, Azure's json) that someone other than root could change.

    Raises:
        HookSecurityError: naming the file, the broken rule and the fix.
    """
    _open_checked(path, executable=False, sha256=None).close()


def open_config(path: Path) -> TrustedFile:
    """``path`` opened after the config-file checks, so its content can be read without a race."""
    return _open_checked(path, executable=False, sha256=None)


def load_trusted_guest(path: Path) -> GuestConfig:
    """The guest config at ``path``, checked and then parsed from the same descriptor."""
    with open_config(path) as trusted:
        return parse_guest(trusted.read_bytes(), str(path))


def open_trusted(path: Path, *, sha256: str | None = None) -> TrustedFile:
    """``path`` opened read-only after every hook check, to be executed through its descriptor.

    Use it as a context manager; the descriptor is closed on exit.

    Raises:
        HookSecurityError: naming the file, the broken rule and the fix.
    """
    return _open_checked(path, executable=True, sha256=sha256)


def _open_checked(path: Path, *, executable: bool, sha256: str | None) -> TrustedFile:
    if not path.is_absolute():
        raise HookSecurityError(
            str(path), "not an absolute path", "give the full path starting with /"
        )
    dir_fd, here, name = _open_parent(path)
    try:
        dir_fd, here, name = _resolve_final(dir_fd, here, name, path)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            raise HookSecurityError(
                str(here / name), f"cannot open: {exc.strerror}", "check that the file exists"
            ) from exc
    finally:
        os.close(dir_fd)
    real = here / name
    try:
        _check_file(fd, real, executable=executable)
        digest = _sha256(fd)
        if sha256 is not None and digest != sha256.lower():
            raise HookSecurityError(
                str(real),
                f"its SHA-256 {digest} differs from the pinned {sha256.lower()}",
                "find out who changed the script; if the change is intended, "
                f"update the pin to {digest}",
            )
    except BaseException:
        os.close(fd)
        raise
    return TrustedFile(fd=fd, path=real, sha256=digest)


def _open_parent(path: Path) -> tuple[int, Path, str]:
    """The checked directory holding ``path``'s last component (fd, its path, the name)."""
    todo = list(reversed(PurePosixPath(path).parts[1:]))
    if not todo:
        raise HookSecurityError(str(path), "is a directory", "name a file, not /")
    fd, here = os.open("/", _DIR_FLAGS), Path("/")
    hops = 0
    try:
        _check_dir(fd, here)
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
            _check_dir(fd, here)
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
        raise HookSecurityError(
            str(here / name), f"cannot open: {exc.strerror}", "check the path"
        ) from exc
    mode = os.fstat(new_fd).st_mode
    if stat.S_ISDIR(mode):
        return new_fd, here / name
    os.close(new_fd)
    if stat.S_ISLNK(mode):
        return PurePosixPath(os.readlink(name, dir_fd=fd))
    raise HookSecurityError(str(here / name), "is not a directory", "correct the path")


def _resolve_final(dir_fd: int, here: Path, name: str, asked: Path) -> tuple[int, Path, str]:
    """Follow symlinks of the last component, each of which must stay inside ``here``."""
    hops = 0
    while True:
        if name in ("", ".", ".."):
            raise HookSecurityError(str(asked), "is a directory", "name a file")
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            raise HookSecurityError(
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
                f"replace the link by the file itself (cp --remove-destination {resolved} "
                f"{here / name}) or point it at a file in {here}",
            )
        name = resolved.name


def _count_hop(hops: int, path: Path) -> int:
    if hops >= _MAX_SYMLINKS:
        raise HookSecurityError(str(path), "too many symlinks", "remove the symlink loop")
    return hops + 1


def _check_owner_and_mode(st: os.stat_result, path: Path, what: str) -> None:
    euid = os.geteuid()
    if st.st_uid not in (0, euid):
        users = "root" if euid == 0 else f"root or the agent's user (uid {euid})"
        raise HookSecurityError(
            str(path),
            f"{what} is owned by uid {st.st_uid}, not by {users}",
            f"chown root:root {path}",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise HookSecurityError(
            str(path),
            f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})",
            f"chmod go-w {path}",
        )


def _check_dir(fd: int, path: Path) -> None:
    _check_owner_and_mode(os.fstat(fd), path, "parent directory" if path != Path("/") else "/")


def _check_file(fd: int, path: Path, *, executable: bool) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise HookSecurityError(str(path), "is not a regular file", "point at a regular file")
    _check_owner_and_mode(st, path, "the file")
    if executable and not st.st_mode & stat.S_IXUSR:
        raise HookSecurityError(str(path), "is not executable", f"chmod u+x {path}")


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
