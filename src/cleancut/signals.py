"""Stop signals for the coordinator: SIGTERM/SIGHUP unwind like Ctrl-C, and a release in
progress is never cut short by one.

``systemctl stop`` sends SIGTERM to every process of the unit and a terminal's Ctrl-C
sends SIGINT to its whole process group. Both must end a backup promptly, but only after
every host was released (thawed, holds ended, post-scripts run): :func:`deferred` holds
such signals back while the release runs, for the caller to act on afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignal(BaseException):
    """SIGTERM or SIGHUP arrived (SIGINT stays KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise StopSignal(signum)


def install() -> None:
    """SIGTERM and SIGHUP raise :class:`StopSignal` in the main thread, so ``finally``
    blocks (the release of every host) run as they do for Ctrl-C."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)


def signal_number(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt or StopSignal."""
    return exc.signum if isinstance(exc, StopSignal) else int(signal.SIGINT)


@contextlib.contextmanager
def deferred() -> Iterator[list[int]]:
    """Hold stop signals back inside the block; the ones that came are in the yielded list,
    for the caller to act on once the block is done.

    Outside the main thread (where Python delivers signals) it does nothing.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def note(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, note) for signum in STOP_SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
