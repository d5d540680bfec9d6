"""Freeze and thaw file systems (FIFREEZE/FITHAW) in a safe order, fast, and always thaw.

A frozen file system blocks every writer on the host — including, if it is the wrong one,
the process that should thaw it. So:

* the plan is computed, the mount points opened, the locks taken and the thaw sentinel
  started in ``open()``, before anything is frozen; ``freeze()`` and ``thaw()`` then only
  issue ioctls on open descriptors: no path lookups, file opens, logging or imports;
* a file system is recorded as *freezing* before its FIFREEZE is issued, so whatever
  interrupts the caller (a signal, an exception) leaves a record that it may be frozen:
  every way out thaws it, and a thaw of something not frozen is harmless;
* every ioctl runs in a thread of its own while the caller waits, interruptibly, without
  holding the freezer's lock: one stuck FIFREEZE or FITHAW cannot keep the other file
  systems frozen nor block the watchdog's thaw, and a freeze that completes after a thaw
  was asked for thaws itself at once;
* file systems stacked on others (a loop device's backing file, a device-mapper or md
  device, a partition — found through the kernel's own sysfs links) are frozen before
  the file systems beneath them, in waves; ``/`` is frozen last and only when allowed;
  the other way round, the upper freeze would write its journal through a device whose
  file system is already frozen, and hang;
* one freeze at a time per file system (an exclusive ``flock`` per device), as Azure's
  safefreeze does per host: a second freezer's thaw would end the first one's freeze.
  Per device rather than per host, because two guests of one group cut may share a
  machine (a hypervisor, or local test hosts) and must be frozen at the same time.

Words used here: a file system *should be frozen* while it is in the plan and the cut is
between ``freeze()`` and ``thaw()``; it *is frozen* (:attr:`Freezer.frozen`) while a FIFREEZE
of ours may be in effect; it *was frozen* (``FsState.was_frozen``) when a FIFREEZE of ours
succeeded during this cut.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from cleancut.errors import ConfigError, FreezeError
from cleancut.guest.sentinel import ThawSentinel
from cleancut.system.ioctls import FIFREEZE, FITHAW
from cleancut.system.mounts import (
    MountInfo,
    devices_below,
    loop_backing_file,
    mount_of,
    read_mountinfo,
)

#: Block-device file systems whose kernel driver implements freezing.
FREEZABLE_FSTYPES = frozenset(
    ("ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "nilfs2", "gfs2", "ocfs2")
)

#: How long ``thaw()`` waits for stuck ioctls before it reports them and returns.
THAW_WAIT = 10.0
#: How long a thaw on the way out of a failure waits before it lets the caller go on.
QUICK_THAW = 0.5
_MAX_STACK_STEPS = 256

_FIXES = {
    errno.EBUSY: "it is already frozen by someone else; find who froze it, or thaw it with "
    "`fsfreeze -u {mount}` once you are sure nobody needs it frozen",
    errno.EOPNOTSUPP: "this file system does not support freezing; "
    "set freeze = false for the volume",
    errno.EPERM: "freezing needs root (CAP_SYS_ADMIN); run the guest agent as root",
    errno.EACCES: "freezing needs root (CAP_SYS_ADMIN); run the guest agent as root",
}

State = Literal["thawed", "freezing", "frozen", "thawing"]


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
    through a chain of devices and backing files (even via mounts not selected). ``/`` is
    last, alone.
    """
    by_device = {m.major_minor: m for m in selected}
    lowers = {m.major_minor: lower_file_systems(m, mounts) for m in selected}
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


def lower_file_systems(
    mount: MountInfo, mounts: list[MountInfo], sys_root: Path = Path("/sys")
) -> set[str]:
    """Devices of the mounted file systems beneath ``mount``.

    Walks down from the mount's device: through the devices a stacked device is built on
    (``slaves`` in sysfs: device-mapper, md, ...), from a partition to its disk, and from a
    loop device to the mount holding its backing file, and on from there.
    """
    found: set[str] = set()
    start = {mount.major_minor, *_source_device(mount)}
    seen, todo = set(start), list(start)
    for _ in range(_MAX_STACK_STEPS):
        if not todo:
            break
        device = todo.pop()
        below = devices_below(device, sys_root)
        holder = _backing_mount(device, mounts, sys_root)
        if holder is not None:
            found.add(holder.major_minor)
            below |= {holder.major_minor, *_source_device(holder)}
        for lower in below - seen:
            seen.add(lower)
            todo.append(lower)
    found.discard(mount.major_minor)
    return found


def _source_device(mount: MountInfo) -> set[str]:
    """The block device a mount's source names (btrfs shows an anonymous device in
    mountinfo, but its source is the real one)."""
    if not mount.source.startswith("/dev/"):
        return set()
    try:
        rdev = os.stat(mount.source).st_rdev
    except OSError:
        return set()
    return {f"{os.major(rdev)}:{os.minor(rdev)}"} if rdev else set()


def _backing_mount(device: str, mounts: list[MountInfo], sys_root: Path) -> MountInfo | None:
    """The mount holding the backing file of loop device ``device``, if it is one."""
    backing = loop_backing_file("", device, sys_root)
    if backing is None:
        return None
    try:
        return mount_of(backing, mounts)
    except ConfigError:
        return None  # backing file deleted or outside our mount namespace: nothing to order


@dataclass
class FsState:
    """One file system of the plan and what this freezer did to it."""

    mount: MountInfo
    fd: int = -1
    state: State = "thawed"
    #: a FIFREEZE of ours succeeded during this cut
    was_frozen: bool = False
    #: our FITHAW found it thawed already: someone else (the sentinel, an operator) did it
    thawed_from_outside: bool = False
    error: OSError | None = None


class Freezer:
    """Freezes the file systems holding ``paths`` and thaws them again.

    Use as a context manager (``open`` on enter; ``close`` — which thaws — on exit, also
    after errors). ``thaw()`` is idempotent and thread-safe, so the watchdog may race the
    caller; ``cancel()`` also refuses every later freeze.
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
        self._states = {m.major_minor: FsState(m) for m in self.mounts}
        self._cond = threading.Condition()
        self._stop = False
        self._cancelled = False
        self._lock_fds: list[int] | None = None
        self.sentinel: ThawSentinel | None = None

    # -- what is known -------------------------------------------------------------------

    @property
    def mounts(self) -> list[MountInfo]:
        """The file systems in freeze order."""
        return [mount for wave in self.plan for mount in wave]

    @property
    def frozen(self) -> bool:
        """Whether a FIFREEZE of ours may be in effect on any file system right now."""
        with self._cond:
            return self._unsettled()

    @property
    def thawed_by_other(self) -> bool:
        """Whether a file system we froze was found thawed by someone else."""
        return bool(self.thawed_from_outside)

    @property
    def thawed_from_outside(self) -> list[str]:
        """Mount points we froze that someone else thawed before our thaw."""
        return [str(s.mount.mount_point) for s in self._states.values() if s.thawed_from_outside]

    def stuck(self) -> list[str]:
        """Mount points still frozen (or being frozen) after a thaw: their ioctls hang."""
        with self._cond:
            return [str(s.mount.mount_point) for s in self._states.values() if s.state != "thawed"]

    def fds_in_thaw_order(self) -> list[int]:
        """The open mount-point descriptors, in thaw order."""
        return [s.fd for s in reversed(list(self._states.values())) if s.fd >= 0]

    def _unsettled(self) -> bool:
        return any(s.state != "thawed" for s in self._states.values())

    def _in_flight(self) -> bool:
        return any(s.state in ("freezing", "thawing") for s in self._states.values())

    # -- open / close --------------------------------------------------------------------

    def open(self, *, sentinel: bool = True) -> None:
        """Take each file system's freeze lock, open every mount point and start the thaw
        sentinel (which holds the mount points and the locks too). Idempotent."""
        if self._lock_fds is not None:
            return
        self._lock_fds = []
        try:
            # one lock per file system, taken in a fixed order so two freezers cannot deadlock
            for mount in sorted(self.mounts, key=lambda m: m.major_minor):
                path = mount_lock_path(self.lock_path, mount)
                self._lock_fds.append(_acquire_lock(path, mount, self.lock_timeout))
            for fs in self._states.values():
                fs.fd = _open_mount_point(fs.mount)
            if sentinel and self._states:
                self.sentinel = ThawSentinel(self.fds_in_thaw_order(), hold=self._lock_fds)
                self.sentinel.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Thaw if still frozen, close the mount points, end the sentinel, drop the locks."""
        try:
            self.thaw()
        finally:
            if self.sentinel is not None:
                if not self.frozen:
                    self.sentinel.finish()
                self.sentinel.close()  # without "done" the sentinel thaws on its way out
                self.sentinel = None
            with self._cond:
                stuck = self._unsettled()
            if not stuck:  # a stuck ioctl still uses its descriptor: leave it open
                for fs in self._states.values():
                    if fs.fd >= 0:
                        os.close(fs.fd)
                        fs.fd = -1
            for fd in self._lock_fds or []:
                os.close(fd)  # the sentinel's copies keep the lock until it exits
            self._lock_fds = None

    # -- freeze --------------------------------------------------------------------------

    def freeze(self, deadline_seconds: float | None = None) -> float:
        """Freeze every file system, wave after wave; return ``time.time()`` when all are
        frozen. On any failure or interruption, thaw what may be frozen and raise.

        ``deadline_seconds`` arms the sentinel: it thaws by itself that long (plus a grace)
        from now unless every file system is thawed before.
        """
        self.open()
        with self._cond:
            if self._cancelled:
                raise FreezeError("the freeze was cancelled (deadline passed or release asked)")
            if self._unsettled():
                raise FreezeError("freeze() called while already frozen; thaw() first")
            self._stop = False
            self.thawed_at = None
        sentinel = self.sentinel
        if (
            sentinel is not None
            and deadline_seconds is not None
            and not sentinel.arm(deadline_seconds)
        ):
            raise FreezeError(
                "the thaw sentinel is gone (killed?), so nothing could thaw this host if "
                "the guest died while frozen: refusing to freeze; nothing was frozen"
            )
        try:
            for wave in self.plan:
                self._freeze_wave([self._states[m.major_minor] for m in wave])
        except BaseException:
            # the original error goes on; a freeze still in flight thaws itself when it returns
            with contextlib.suppress(FreezeError):
                self.thaw(wait=QUICK_THAW)
            raise
        self.frozen_at = time.time()
        return self.frozen_at

    def _freeze_wave(self, wave: list[FsState]) -> None:
        with self._cond:
            if self._stop:
                raise FreezeError("thawed while freezing: a thaw was asked for meanwhile")
            for fs in wave:
                fs.state, fs.error = "freezing", None  # recorded before the ioctl
        for fs in wave:
            threading.Thread(
                target=self._freeze_one, args=(fs,), daemon=True, name="fifreeze"
            ).start()
        with self._cond:  # a thaw asked for meanwhile ends the wait: a hung FIFREEZE
            while any(fs.state == "freezing" for fs in wave) and not self._stop:
                self._cond.wait(0.2)  # must not pin the caller (it thaws itself on return)
        failed = [fs for fs in wave if fs.error is not None]
        if failed:
            error = failed[0].error
            assert error is not None
            raise _freeze_error("freeze", failed[0].mount, error) from error
        with self._cond:
            if self._stop:
                raise FreezeError("thawed while freezing: a thaw was asked for meanwhile")

    def _freeze_one(self, fs: FsState) -> None:
        try:
            fcntl.ioctl(fs.fd, FIFREEZE, 0)
        except OSError as exc:
            with self._cond:
                fs.state, fs.error = "thawed", exc  # EBUSY: frozen by someone else, not ours
                self._cond.notify_all()
            return
        with self._cond:
            fs.was_frozen = True
            if not self._stop:
                fs.state = "frozen"
                self._cond.notify_all()
                return
            fs.state = "thawing"  # a thaw was asked for while we froze: undo at once
        self._thaw_one(fs)

    # -- thaw ----------------------------------------------------------------------------

    def thaw(self, wait: float = THAW_WAIT) -> float:
        """Thaw everything we may have frozen, each file system independently; return
        ``time.time()`` when all are thawed.

        Idempotent and thread-safe: a second caller waits for the first one's thaw. A file
        system somebody else already thawed is fine (noted in :attr:`thawed_from_outside`).
        Raises FreezeError naming what could not be thawed within ``wait`` seconds or
        refused the thaw (it is tried again by the next call).
        """
        with self._cond:
            self._stop = True
            targets = [fs for fs in reversed(list(self._states.values())) if fs.state == "frozen"]
            for fs in targets:
                fs.state = "thawing"
        for fs in targets:  # lower file systems first (reverse order), none waits for another
            threading.Thread(target=self._thaw_one, args=(fs,), daemon=True, name="fithaw").start()
        end = time.monotonic() + wait
        with self._cond:
            while self._in_flight() and (left := end - time.monotonic()) > 0:
                self._cond.wait(left)
            unsettled = [fs for fs in self._states.values() if fs.state != "thawed"]
            failed = [fs for fs in unsettled if fs.state == "frozen"]
            if not unsettled and self.thawed_at is None:
                self.thawed_at = time.time()
        if not unsettled and self.sentinel is not None:
            self.sentinel.finish()  # disarmed at once: a later freeze by others is not ours
        if failed:
            error = failed[0].error
            assert error is not None
            raise _freeze_error("thaw", failed[0].mount, error) from error
        if unsettled:
            names = ", ".join(str(fs.mount.mount_point) for fs in unsettled)
            raise FreezeError(
                f"{names}: the freeze or thaw ioctl has not returned after {wait:.0f}s; it may "
                "still be frozen: check the kernel log (dmesg) and `fsfreeze -u` it"
            )
        return self.thawed_at if self.thawed_at is not None else time.time()

    def _thaw_one(self, fs: FsState) -> None:
        try:
            fcntl.ioctl(fs.fd, FITHAW, 0)
        except OSError as exc:
            with self._cond:
                if exc.errno == errno.EINVAL:  # not frozen: somebody else thawed it
                    fs.state, fs.thawed_from_outside = "thawed", True
                else:
                    fs.state, fs.error = "frozen", exc  # still frozen: the next thaw retries
                self._cond.notify_all()
            return
        with self._cond:
            fs.state = "thawed"
            self._cond.notify_all()

    def cancel(self, wait: float = THAW_WAIT) -> None:
        """Thaw, and refuse every later freeze of this freezer (the deadline passed)."""
        with self._cond:
            self._cancelled = True
        self.thaw(wait)

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
