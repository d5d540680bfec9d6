"""One run of an application at a time, per machine: a backup or a forget.

Two backups of one application at once would fight over every host's freeze locks and
commit two recovery points of overlapping cuts, and a forget running beside a backup
would take that backup's uploaded members, which no manifest names yet, for leftovers;
the second run is refused before it touches anything, and told who holds the lock (pid,
action, start time). The lock is an ``flock`` on ``/run/lock/cleancut/APP.lock`` (a per-user folder
when not root): the kernel drops it when its process ends, however it ends, so a killed
coordinator never leaves a lock that blocks the next backup. This process opens the lock
file once and keeps that descriptor; it never opens the file otherwise.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from cleancut.errors import CleancutError


class AlreadyRunning(CleancutError):
    """Another run (backup, forget) of the same application is in progress."""

    exit_code = 11


def lock_folder() -> Path:
    """``/run/lock/cleancut`` for root, else a folder of this user's."""
    if os.geteuid() == 0:
        return Path("/run/lock/cleancut")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(runtime) / f"cleancut-{os.geteuid()}"


class AppLock:
    """Held while one run (``action``) of ``app`` goes on; a context manager."""

    def __init__(
        self,
        app: str,
        folder: Path | None = None,
        *,
        action: str = "backup",
        wait: bool = False,
        on_wait: Callable[[str], object] = lambda _text: None,
    ) -> None:
        """``wait``: when another run holds the lock, say so through ``on_wait`` and wait
        for it (Ctrl-C or SIGTERM still end the wait) instead of failing at once."""
        self.app = app
        self.action = action
        self.wait = wait
        self.on_wait = on_wait
        self.path = (folder or lock_folder()) / f"{app}.lock"
        self._fd = -1

    def acquire(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            if not self.wait:
                os.close(fd)
                raise AlreadyRunning(
                    f"application {self.app}: another cleancut run is in progress ({holder}); "
                    f"run this {self.action} again when it has finished, give --wait to wait "
                    "for it, or stop it (a backup releases every host first). Lock: "
                    f"{self.path}"
                ) from None
            self._wait_for(fd, holder)
        except BaseException:
            os.close(fd)
            raise
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {self.action}, since {stamp}\n".encode(), 0)
        self._fd = fd

    def _wait_for(self, fd: int, holder: str) -> None:
        """Block until the lock is free; the descriptor is closed if the wait is ended."""
        self.on_wait(
            f"application {self.app}: waiting for the run in progress ({holder}) to finish "
            f"before this {self.action} starts (lock {self.path})"
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1

    def __enter__(self) -> AppLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
