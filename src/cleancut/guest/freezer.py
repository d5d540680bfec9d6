"""Freeze and thaw file systems (FIFREEZE/FITHAW) in a safe order, fast, and always thaw.

A frozen file system blocks every writer on the host — including, if it is the wrong one,
the process that should thaw it. So:

* the plan is computed, the mount points opened and the locks taken in ``open()``,
  before anything is frozen; ``freeze()`` and ``thaw()`` then only issue ioctls on open
  file descriptors: no path lookups, file opens, logging or imports while frozen;
* file systems stacked on a loop device are frozen before the file system holding their
  backing file (the other way round, the upper freeze would write its journal through a
  loop device whose file system is already frozen, and hang); ``/`` is frozen last and only
  when allowed; the thaw runs in exact reverse;
* independent file systems of one wave are frozen in parallel threads: the write stall is
  the slowest freeze rather than the sum of them;
* one freeze at a time per file system (an exclusive ``flock`` per device), as Azure's
  safefreeze does per host: a second freezer's thaw would end the first one's freeze.
  Per device rather than per host, because two guests of one group cut may share a
  machine (a hypervisor, or local test hosts) and must be frozen at the same time.

The watchdog (:mod:`cleancut.guest.watchdog`) covers the cases a ``finally`` cannot.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType

from cleancut.errors import ConfigError, FreezeError
from cleancut.guest.mounts import MountInfo, loop_backing_file, mount_of, read_mountinfo
from cleancut.guest.watchdog import ThawSentinel

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878

#: Block-device file systems whose kernel driver implements freezing.
FREEZABLE_FSTYPES = frozenset(
    ("ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "nilfs2", "gfs2", "ocfs2")
)

_MAX_STACK_DEPTH = 16

_FIXES = {
    errno.EBUSY: "it is already frozen by someone else; find who froze it, or thaw it with "
    "`fsfreeze -u {mount}` once you are sure nobody needs it frozen",
    errno.EOPNOTSUPP: "this file system does not support freezing; "
    "set freeze = false for the volume",
    errno.EPERM: "freezing needs root (CAP_SYS_ADMIN); run the guest agent as root",
    errno.EACCES: "freezing needs root (CAP_SYS_ADMIN); run the guest agent as root",
}


def default_lock_path() -> Path:
    """Where the freeze locks live (one per device, see :func:`mount_lock_path`):
    ``/run/cleancut`` for root, else a per-user
    runtime folder (a non-root lock could be pre-created by anyone in ``/run``)."""
    if os.geteuid() == 0:
        return Path("/run/cleancut/freeze.lock")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "cleancut" if runtime else Path(f"/tmp/cleancut-{os.getuid()}")
    return base / "freeze.lock"


def freeze_plan(selected: list[MountInfo], mounts: list[MountInfo]) -> list[list[MountInfo]]:
    """Group ``selected`` mounts into waves frozen one after another (thawed in reverse).

    A mount goes into a later wave than every selected mount stacked on it, directly or
    through a chain of loop devices (even via mounts not selected). ``/`` is last, alone.
    """
    by_device = {m.major_minor: m for m in selected}
    lowers = {m.major_minor: _lower_devices(m, mounts) for m in selected}
    levels: dict[str, int] = {}

    def level(device: str, seen: frozenset[str]) -> int:
        if device not in levels:
            uppers = [u for u, below in lowers.items() if device in below and u not in seen]
            levels[device] = 1 + max((level(u, seen | {device}) for u in uppers), default=-1)
        return levels[device]

    waves: dict[int, list[MountInfo]] = {}
    root = [m for m in selected if m.mount_point == Path("/")]
    for device, mount in by_device.items():
        if mount not in root:
            waves.setdefault(level(device, frozenset()), []).append(mount)
    plan = [sorted(waves[key], key=lambda m: str(m.mount_point)) for key in sorted(waves)]
    return plan + ([root] if root else [])


def _lower_devices(mount: MountInfo, mounts: list[MountInfo]) -> set[str]:
    """Devices of the file systems beneath ``mount`` through loop devices' backing files."""
    found: set[str] = set()
    current = mount
    for _ in range(_MAX_STACK_DEPTH):
        backing = loop_backing_file(current.source, current.major_minor)
        if backing is None:
            break
        try:
            current = mount_of(backing, mounts)
        except ConfigError:
            break  # backing file deleted or outside our mount namespace: nothing to order
        if current.major_minor in found or current.major_minor == mount.major_minor:
            break
        found.add(current.major_minor)
    return found


class Freezer:
    """Freezes the file systems holding ``paths`` and thaws them again.

    Use as a context manager (``open`` on enter; ``thaw`` and ``close`` on exit, also after
    errors). ``thaw()`` is idempotent and thread-safe so the watchdog may race the caller.
    """

    def __init__(
        self,
        paths: list[Path],
        *,
        allow_root: bool = False,
        lock_path: Path | None = None,
        lock_timeout: float = 5.0,
    ) -> None:
        mounts = read_mountinfo()
        selected: dict[str, MountInfo] = {}
        for path in paths:
            mount = _resolve(path, mounts)
            _check_freezable(path, mount, allow_root)
            selected.setdefault(mount.major_minor, mount)
        self.plan = freeze_plan(list(selected.values()), mounts)
        self.lock_path = lock_path or default_lock_path()
        self.lock_timeout = lock_timeout
        self.frozen_at: float | None = None
        self.thawed_at: float | None = None
        #: a file system we froze was found thawed: the sentinel or an operator did it
        self.thawed_by_other = False
        self._lock = threading.Lock()
        self._lock_fds: list[int] | None = None
        self._fds: dict[str, int] = {}
        self._frozen: list[tuple[MountInfo, int]] = []

    @property
    def mounts(self) -> list[MountInfo]:
        """The file systems in freeze order."""
        return [mount for wave in self.plan for mount in wave]

    @property
    def frozen(self) -> bool:
        """Whether any file system of this freezer is frozen right now (by us)."""
        return bool(self._frozen)

    def fds_in_thaw_order(self) -> list[int]:
        """The open mount-point descriptors, in thaw order (for :class:`ThawSentinel`)."""
        return [
            self._fds[m.major_minor] for m in reversed(self.mounts) if m.major_minor in self._fds
        ]

    def sentinel(self, deadline_seconds: float) -> ThawSentinel:
        """A :class:`ThawSentinel` over this freezer's mount points that also holds their
        freeze locks until it exits; ``start()`` it after ``open()`` and before ``freeze()``."""
        if self._lock_fds is None:
            raise FreezeError(
                "Freezer.sentinel() needs open() first: the mount points must be open"
            )
        return ThawSentinel(self.fds_in_thaw_order(), deadline_seconds, hold=self._lock_fds)

    def open(self) -> None:
        """Take each file system's freeze lock and open every mount point. Idempotent."""
        if self._lock_fds is not None:
            return
        self._lock_fds = []
        try:
            # one lock per file system, taken in a fixed order so two freezers cannot deadlock
            for mount in sorted(self.mounts, key=lambda m: m.major_minor):
                path = mount_lock_path(self.lock_path, mount)
                self._lock_fds.append(_acquire_lock(path, mount, self.lock_timeout))
            for mount in self.mounts:
                self._fds[mount.major_minor] = _open_mount_point(mount)
        except BaseException:
            self.close()
            raise

    def freeze(self) -> float:
        """Freeze every file system, wave after wave; return ``time.time()`` when all are
        frozen. On any failure, thaw what was frozen and raise :class:`FreezeError`."""
        self.open()
        with self._lock:
            if self._frozen:
                raise FreezeError("freeze() called while already frozen; thaw() first")
            self.thawed_at = None
            try:
                for wave in self.plan:
                    self._freeze_wave(wave)
            except BaseException:
                self._thaw_locked()
                raise
            self.frozen_at = time.time()
            return self.frozen_at

    def _freeze_wave(self, wave: list[MountInfo]) -> None:
        fds = [self._fds[m.major_minor] for m in wave]
        errors: list[OSError | None] = [None] * len(wave)

        def freeze_one(index: int) -> None:
            try:
                fcntl.ioctl(fds[index], FIFREEZE, 0)
            except OSError as exc:
                errors[index] = exc

        if len(wave) == 1:
            freeze_one(0)
        else:
            threads = [threading.Thread(target=freeze_one, args=(i,)) for i in range(len(wave))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        self._frozen.extend(
            (m, fd) for m, fd, err in zip(wave, fds, errors, strict=True) if not err
        )
        for mount, error in zip(wave, errors, strict=True):
            if error is not None:
                raise _freeze_error("freeze", mount, error) from error

    def thaw(self) -> float:
        """Thaw in exact reverse order; return ``time.time()`` when all are thawed.

        Idempotent and thread-safe. A file system somebody else already thawed is fine.
        """
        with self._lock:
            if self._frozen:
                self._thaw_locked()
            return self.thawed_at if self.thawed_at is not None else time.time()

    def _thaw_locked(self) -> None:
        failures: list[tuple[MountInfo, int, OSError]] = []
        while self._frozen:
            mount, fd = self._frozen[-1]
            try:
                fcntl.ioctl(fd, FITHAW, 0)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # not frozen: somebody else thawed it
                    self.thawed_by_other = True
                else:
                    failures.append((mount, fd, exc))
            self._frozen.pop()
        self.thawed_at = time.time()
        if failures:
            # still frozen: keep them, so that the next thaw (release, close) tries again
            self._frozen = [(mount, fd) for mount, fd, _ in reversed(failures)]
            mount, _, error = failures[0]
            raise _freeze_error("thaw", mount, error) from error

    def close(self) -> None:
        """Thaw if still frozen, close the mount points and release the freeze locks."""
        try:
            self.thaw()
        finally:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            for fd in self._lock_fds or []:
                os.close(fd)  # closing the only descriptor releases the flock
            self._lock_fds = None

    def __enter__(self) -> Freezer:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _resolve(path: Path, mounts: list[MountInfo]) -> MountInfo:
    try:
        return mount_of(path, mounts)
    except ConfigError as exc:
        raise FreezeError(f"cannot freeze {path}: {exc.message}") from exc


def _check_freezable(path: Path, mount: MountInfo, allow_root: bool) -> None:
    if mount.mount_point == Path("/") and not allow_root:
        raise FreezeError(
            f"refusing to freeze the root file system / (it holds {path}): that stalls every "
            "writer on the host, the tools you would thaw it with included; put the volume on "
            "its own file system, or allow freezing / explicitly (allow_root)"
        )
    if mount.fstype not in FREEZABLE_FSTYPES:
        raise FreezeError(
            f"cannot freeze {path}: it is on {mount.mount_point}, a {mount.fstype} file system, "
            f"which cannot be frozen (freezable: {', '.join(sorted(FREEZABLE_FSTYPES))}); "
            "set freeze = false for this volume or move it to a block-device file system"
        )


def _open_mount_point(mount: MountInfo) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        return os.open(mount.mount_point, flags)
    except OSError as exc:
        raise FreezeError(
            f"cannot open mount point {mount.mount_point} to freeze it: {exc.strerror}; "
            "check that it is still mounted"
        ) from exc


def _freeze_error(action: str, mount: MountInfo, error: OSError) -> FreezeError:
    code = error.errno or 0
    name = errno.errorcode.get(code, str(code))
    fix = _FIXES.get(code, "check the kernel log (dmesg)").format(mount=mount.mount_point)
    after = "nothing is left frozen" if action == "freeze" else "it may still be frozen"
    return FreezeError(
        f"cannot {action} {mount.mount_point} ({mount.fstype} on {mount.source}): "
        f"{name} {error.strerror}; {fix}; {after}"
    )


def mount_lock_path(base: Path, mount: MountInfo) -> Path:
    """The lock of one file system, beside ``base``: ``freeze-8_1.lock`` for device 8:1."""
    device = mount.major_minor.replace(":", "_")
    return base.with_name(f"{base.stem}-{device}{base.suffix}")


def _acquire_lock(path: Path, mount: MountInfo, timeout: float) -> int:
    """Take the exclusive freeze lock of one file system, waiting up to ``timeout`` seconds."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise FreezeError(f"cannot open the freeze lock {path}: {exc.strerror}") from exc
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise FreezeError(
                    f"another freeze of {mount.mount_point} is in progress (pid {holder}); wait "
                    f"for it to end and retry (lock: {path})"
                ) from None
            time.sleep(0.02)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
