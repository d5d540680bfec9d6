"""The thaw sentinel: a minimal helper process that thaws what this guest froze if it cannot.

A thread cannot cover the guest process itself being killed (SIGKILL, the OOM killer) or
stopped (SIGSTOP) while a file system is frozen. The sentinel can: a separate process
that holds its own descriptors of the frozen mount points and the read end of a pipe
from the guest. It thaws them when

* the pipe reaches end-of-file (the guest is gone),
* the deadline it was armed with passes without the guest saying ``done`` (the guest is
  stopped or stuck), or
* it is told to stop by any signal it can catch (``systemctl stop`` sends SIGTERM to every
  process of the unit, the sentinel included): a sentinel that is asked to go thaws first.

It is *spawned* (``python -I -S``, only the descriptors it needs), not forked: a forked
child would inherit the guest's signal handlers (SIGTERM raising SystemExit without a
thaw), its threads' locks and its whole interpreter. The helper imports only what the
standard library's core holds, so nothing it does can block on a frozen file system: its
code and interpreter are loaded before anything is frozen. It thaws each file system in
a thread of its own, so one stuck FITHAW cannot keep the others frozen.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from cleancut.errors import FreezeError
from cleancut.system.ioctls import FITHAW

#: Seconds the sentinel waits beyond the guest's own deadline: the guest thaws first.
SENTINEL_GRACE = 0.5
_START_TIMEOUT = 15.0

# Runs as `python -I -S -c SENTINEL_CODE FITHAW FD...` with the command pipe on stdin and
# "ready" reported on stdout. Every way out that is not "done" thaws every descriptor.
SENTINEL_CODE = r"""
import fcntl, os, select, signal, sys, threading, time

FITHAW = int(sys.argv[1])
FDS = [int(arg) for arg in sys.argv[2:]]


class Stop(BaseException):
    pass


CATCH = [getattr(signal, name) for name in
         ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")]
stopping = [False]


def stop(signum, frame):
    if stopping[0]:
        return  # a second signal must not cut the thaw short
    stopping[0] = True
    signal.pthread_sigmask(signal.SIG_BLOCK, CATCH)
    raise Stop()


for number in CATCH:
    signal.signal(number, stop)
signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def thaw(fd):
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError:
        pass  # not frozen (EINVAL) or gone: nothing more this process can do


def thaw_all():
    stopping[0] = True  # from here on no signal raises: the thaw must run to its end
    signal.pthread_sigmask(signal.SIG_BLOCK, CATCH)
    threads = [threading.Thread(target=thaw, args=(fd,), daemon=True) for fd in FDS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


done = False
try:
    os.write(1, b"ready\n")
    deadline = None
    pending = b""
    while not done:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([0], [], [], timeout)
        if not ready:
            break  # armed and the deadline passed: the guest is stopped or stuck
        chunk = os.read(0, 256)
        if not chunk:
            break  # end of file: the guest is gone
        pending += chunk
        while b"\n" in pending and not done:
            line, pending = pending.split(b"\n", 1)
            word, _, argument = line.partition(b" ")
            if word == b"arm":
                deadline = time.monotonic() + float(argument)
            elif word == b"done":
                done = True
except BaseException:
    pass
finally:
    if not done:
        thaw_all()
    os._exit(0 if done else 1)
"""


class ThawSentinel:
    """A spawned helper that thaws ``fds`` (mount-point descriptors) unless told ``done``.

    ``start()`` before anything is frozen (it is slow: an interpreter starts), ``arm()``
    just before the first FIFREEZE with the seconds left of the guest's deadline,
    ``finish()`` once every file system is thawed. ``hold`` are further descriptors the
    helper keeps open until it exits — the freeze locks, so that no other freeze of these
    file systems can start before the helper has thawed them.
    """

    def __init__(self, fds: Sequence[int], *, hold: Sequence[int] = ()) -> None:
        self.fds = list(fds)
        self.hold = list(hold)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._finished = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> int:
        """Spawn the helper and wait until its signal handlers are in place; its pid."""
        if self._proc is not None:
            return self._proc.pid
        argv = [sys.executable, "-I", "-S", "-c", SENTINEL_CODE, str(FITHAW)]
        try:
            proc = subprocess.Popen(
                [*argv, *map(str, self.fds)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                pass_fds=(*self.fds, *self.hold),
                start_new_session=True,  # a terminal's Ctrl-C to our group does not reach it
                cwd="/",
                env={},
            )
        except OSError as exc:
            raise FreezeError(f"cannot start the thaw sentinel: {exc}; nothing was frozen") from exc
        self._proc = proc
        if not _read_ready(proc):
            self._kill()
            raise FreezeError(
                f"the thaw sentinel did not start within {_START_TIMEOUT:.0f}s; nothing was frozen"
            )
        return proc.pid

    def arm(self, seconds: float) -> bool:
        """Thaw after ``seconds`` (+ a grace) unless ``finish()`` comes first; whether the
        helper is alive and got the word (never freeze without it)."""
        return self.alive() and self._send(
            f"arm {max(0.0, seconds) + SENTINEL_GRACE:.3f}\n".encode()
        )

    def finish(self) -> None:
        """Everything is thawed: let the helper exit without touching anything (it must not
        thaw later: someone else may have frozen the file system by then). Idempotent."""
        with self._lock:
            proc = self._proc
            if proc is None or self._finished:
                return
            self._finished = True
            self._send(b"done\n")
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()

    def close(self) -> None:
        """Reap the helper; if it was never told ``done``, closing its pipe makes it thaw."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        # stuck in a FITHAW, it exits when that returns: never kill a thawer
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _send(self, data: bytes) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.closed:
            return False
        try:
            proc.stdin.write(data)
            proc.stdin.flush()
        except (OSError, ValueError):  # the helper is gone (its deadline, a kill)
            return False
        return True

    def _kill(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            self._proc = None


def _read_ready(proc: subprocess.Popen[bytes]) -> bool:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + _START_TIMEOUT
    received = b""
    while not received.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return False
        chunk = os.read(fd, 16)
        if not chunk:
            return False
        received += chunk
    return received == b"ready\n"
