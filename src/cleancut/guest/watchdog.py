"""One deadline per guest: every hold ends within ``freeze_timeout``, whatever happens.

The guest holds its applications in three ways: a quiesce pre-script that ended (the
application is paused until its post-script), a writer's database lock, and a frozen file
system. :class:`Watchdog` is a thread that counts one deadline from the *first* of them and,
when it passes — or when the coordinator is gone (stdin EOF), or the guest is told to stop
(a signal) — calls ``end_holds(reason)`` once, on its own thread. The session's
``end_holds`` thaws, ends the writers' holds and runs the post-scripts, also on a host
where nothing is frozen, and also while the guest's main thread is busy or waiting for a
coordinator that was stopped.

It lives in memory: while a file system is frozen, a file read, a log line written to
disk or an import could block on it forever. :meth:`stop` takes no lock, so a signal
handler may call it (a lock taken in a handler can deadlock against the thread it
interrupted); the thread notices within :data:`POLL` seconds.

The guest process itself being killed or stopped is covered by the thaw sentinel
(:mod:`cleancut.guest.sentinel`) and each writer's own deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

REASON_DEADLINE = "deadline"
REASON_COORDINATOR_GONE = "coordinator gone"

#: How often the thread looks at a stop asked for by a signal handler.
POLL = 0.05


class Watchdog:
    """Calls ``end_holds(reason)`` at most once: at the deadline (``"deadline"``), when the
    coordinator is gone (``"coordinator gone"``) or when :meth:`stop` asks for it — but only
    once a hold has started, and never after :meth:`settle` (the holds ended normally).
    """

    def __init__(self, timeout: float, end_holds: Callable[[str], object]) -> None:
        self.timeout = timeout
        self._end_holds = end_holds
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._held_since: float | None = None
        self._input_closed = False
        self._stop_reason: str | None = None  # set without a lock, from signal handlers
        self._settled = False
        self._closed = False
        self.fired: str | None = None
        #: ``time.time()`` when it fired, for the manifest
        self.fired_at: float | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cleancut-watchdog", daemon=True)
        self._thread.start()

    # -- what the session tells it ---------------------------------------------------------

    def hold_started(self) -> None:
        """A hold began (a quiesce, a lock, a freeze): the countdown starts at the first one."""
        with self._cond:
            if self._deadline is None:
                self._held_since = time.monotonic()
                self._deadline = self._held_since + self.timeout
                self._cond.notify_all()

    def input_closed(self) -> None:
        """The coordinator is gone (stdin EOF): end the holds now, or as soon as one starts."""
        with self._cond:
            self._input_closed = True
            self._cond.notify_all()

    def stop(self, reason: str) -> None:
        """End the holds now (or as soon as one starts). Lock-free: safe in a signal handler."""
        if self._stop_reason is None:
            self._stop_reason = reason

    def settle(self) -> None:
        """The holds ended normally: never fire from now on."""
        with self._cond:
            self._settled = True
            self._cond.notify_all()

    # -- what the session asks it ----------------------------------------------------------

    def remaining(self) -> float | None:
        """Seconds left until the deadline (≤ 0 once passed), or None before the first hold."""
        deadline = self._deadline
        return None if deadline is None else deadline - time.monotonic()

    def wait_fired(self, timeout: float) -> bool:
        """Wait until ``end_holds`` has returned after firing; whether it did."""
        return self._done.wait(timeout)

    def close(self) -> None:
        """Stop the thread (without firing)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        reason = self._wait_for_reason()
        if reason is None:
            return
        try:
            self._end_holds(reason)
        except BaseException as exc:  # keep it for the session's report
            self.error = exc
        finally:
            self._done.set()

    def _wait_for_reason(self) -> str | None:
        with self._cond:
            while not (self._closed or self._settled):
                if self._deadline is not None:
                    reason = self._reason()
                    if reason is not None:
                        self.fired, self.fired_at = reason, time.time()
                        return reason
                    timeout = min(POLL, max(0.0, self._deadline - time.monotonic()))
                else:
                    timeout = POLL
                self._cond.wait(timeout)
            return None

    def _reason(self) -> str | None:
        assert self._deadline is not None
        if self._stop_reason is not None:
            return self._stop_reason
        if self._input_closed:
            return REASON_COORDINATOR_GONE
        if time.monotonic() >= self._deadline:
            return REASON_DEADLINE
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
