"""Every freeze ends: the in-process watchdog and the out-of-process thaw sentinel.

:class:`Watchdog` is a daemon thread that thaws when the freeze deadline passes or the
coordinator goes away (stdin EOF). It lives in memory only: while a file system is
frozen, a file read, a log line written to disk or an import could block on it forever.

:class:`ThawSentinel` covers what no thread can: the guest process itself being killed
(SIGKILL, OOM killer) while frozen. A tiny forked child holds its own descriptors of the
frozen mount points and a pipe from the parent; when the pipe reaches EOF (the parent is
gone) or the deadline plus a grace second passes without the parent saying "done", it
thaws them. The child only makes system calls on what it already holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

FITHAW = 0xC0045878
SENTINEL_GRACE = 1.0

REASON_DEADLINE = "deadline"
REASON_COORDINATOR_GONE = "coordinator gone"


class Watchdog:
    """Calls ``thaw(reason)`` once per arming: when the deadline passes (``"deadline"``)
    or when :meth:`input_closed` is signalled (``"coordinator gone"``).

    ``arm`` right after the freeze, ``disarm`` after a normal thaw. The thaw callable runs
    on the watchdog's thread; an exception from it is kept in :attr:`error`.
    """

    def __init__(self, thaw: Callable[[str], object]) -> None:
        self._thaw = thaw
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._input_closed = False
        self._stopped = False
        self.fired: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cleancut-watchdog", daemon=True)
        self._thread.start()

    def arm(self, deadline_seconds: float) -> None:
        """Start the countdown: thaw unless disarmed within ``deadline_seconds``."""
        with self._cond:
            self.fired = None
            self.error = None
            self._deadline = time.monotonic() + deadline_seconds
            self._cond.notify_all()

    def disarm(self) -> None:
        """The caller thawed normally: cancel the countdown."""
        with self._cond:
            self._deadline = None
            self._cond.notify_all()

    def input_closed(self) -> None:
        """The coordinator is gone (stdin EOF): thaw now if armed, or as soon as armed."""
        with self._cond:
            self._input_closed = True
            self._cond.notify_all()

    @property
    def armed(self) -> bool:
        """Whether a countdown is running."""
        return self._deadline is not None

    def close(self) -> None:
        """Stop the thread (without thawing)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            reason = self._wait_for_reason()
            if reason is None:
                return
            try:
                self._thaw(reason)
            except BaseException as exc:  # keep the thread alive; the caller reads .error
                self.error = exc

    def _wait_for_reason(self) -> str | None:
        with self._cond:
            while not self._stopped:
                if self._deadline is not None:
                    remaining = self._deadline - time.monotonic()
                    if self._input_closed or remaining <= 0:
                        self.fired = (
                            REASON_COORDINATOR_GONE if self._input_closed else REASON_DEADLINE
                        )
                        self._deadline = None
                        return self.fired
                    self._cond.wait(timeout=remaining)
                else:
                    self._cond.wait()
            return None

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class ThawSentinel:
    """A forked child that thaws ``fds`` (mount-point descriptors, in thaw order) if this
    process dies or stalls while frozen.

    ``start()`` before freezing; ``finish()`` after the normal thaw (the child then exits
    without touching anything). If this process is killed, the child sees EOF on its pipe
    and thaws at once; if ``deadline_seconds`` + 1 s pass with no "done", it thaws anyway.
    ``hold`` are further descriptors the child keeps open until it exits — the host freeze
    lock, so that no other freeze can start before the child has thawed.
    """

    def __init__(
        self, fds: Sequence[int], deadline_seconds: float, *, hold: Sequence[int] = ()
    ) -> None:
        self.fds = list(fds)
        self.hold = list(hold)
        self.deadline_seconds = deadline_seconds
        self.pid: int | None = None
        self._pipe: int | None = None

    def start(self) -> int:
        """Fork the child; return its pid."""
        if self.pid is not None:
            return self.pid
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _sentinel_main(read_end, self.fds, self.hold, self.deadline_seconds + SENTINEL_GRACE)
        os.close(read_end)
        self.pid, self._pipe = pid, write_end
        return pid

    def finish(self) -> None:
        """Tell the child the thaw happened; reap it. Idempotent."""
        if self._pipe is not None:
            with contextlib.suppress(OSError):  # the child may be gone after its deadline
                os.write(self._pipe, b"done")
            os.close(self._pipe)
            self._pipe = None
        if self.pid is not None:
            _reap(self.pid, timeout=2.0)
            self.pid = None

    def __enter__(self) -> ThawSentinel:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish()


def _sentinel_main(pipe: int, fds: list[int], hold: list[int], timeout: float) -> None:
    """The child's whole life: system calls on inherited descriptors, then ``_exit``."""
    status = 0
    try:
        os.setsid()  # survive a kill of the parent's process group
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _close_all_but(sorted({pipe, *fds, *hold}))
        ready, _, _ = select.select([pipe], [], [], timeout)
        message = os.read(pipe, 16) if ready else b""
        if message != b"done":  # EOF (parent gone), timeout, or anything unexpected
            for fd in fds:
                with contextlib.suppress(OSError):
                    fcntl.ioctl(fd, FITHAW, 0)
            status = 1
    except BaseException:
        status = 2
    finally:
        os._exit(status)


def _close_all_but(keep: list[int]) -> None:
    low = 0
    for fd in keep:
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _reap(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)
