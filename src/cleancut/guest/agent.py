"""The guest agent: serves the cut protocol as JSON lines on stdin/stdout.

A reader thread owns stdin. When it reaches end-of-file (the coordinator died, the SSH
connection was cut) it tells the watchdog at once, which ends every hold without waiting
for the main thread, and the main loop then releases everything. A ``release`` request is
acted on the same way the moment it arrives, even while the main thread is busy.

Signals: SIGTERM (``systemctl stop``), SIGINT and SIGHUP end the holds at once (through the
watchdog, from any point) and stop an upload; the main loop then releases and exits, with
a status that says which signal it was (128 + number). A hook that is running finishes
first; a second signal changes nothing.

Stderr carries diagnostics only; nothing is logged to disk. Nothing a request carried is
ever echoed back: a request may hold the repository password.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from cleancut import __version__, protocol
from cleancut.errors import CleancutError, ProtocolError
from cleancut.guest.security import load_trusted_guest
from cleancut.guest.session import GuestSession

_EOF = object()
_POLL = 0.2
#: The longest line a request may be; anything longer is refused unread.
MAX_LINE = 1 << 20
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class GuestAgent:
    """Answers one coordinator's requests for one recovery point, then exits."""

    def __init__(self, config_path: Path, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self.config_path = config_path
        self._stdin = stdin
        self._stdout = stdout
        self._write_lock = threading.Lock()
        self._inbox: queue.Queue[object] = queue.Queue()
        self.session: GuestSession | None = None
        self._input_closed = threading.Event()
        #: the stop signal received, if any (its exit status is 128 + it)
        self.signalled: int | None = None

    def send(self, message: dict[str, Any]) -> None:
        data = protocol.encode(message)
        with self._write_lock:
            try:
                self._stdout.write(data)
                self._stdout.flush()
            except (OSError, ValueError):
                pass  # the coordinator is gone: the reader sees EOF and the holds end

    def emit(self, name: str, data: dict[str, Any]) -> None:
        self.send(protocol.event(name, data))

    # -- input -------------------------------------------------------------------------

    def _read_stdin(self) -> None:
        try:
            for line in _lines(self._stdin):
                if line.strip():
                    if _is_release(line):
                        self._stop_holds("release asked by the coordinator")
                        if self.session is not None:
                            self.session.cancel_upload()
                    self._inbox.put(line)
        except (OSError, ValueError):
            pass
        self._input_closed.set()
        session = self.session
        if session is not None and session.watchdog is not None:
            session.watchdog.input_closed()
        if session is not None:
            session.cancel_upload()  # nobody will commit it
        self._inbox.put(_EOF)

    def _stop_holds(self, reason: str) -> None:
        session = self.session
        if session is not None and session.watchdog is not None:
            session.watchdog.stop(reason)

    # -- signals -----------------------------------------------------------------------

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """End the holds now and stop any upload; the main loop then releases and exits.

        It raises nothing and takes no lock: an exception raised at an arbitrary line (a
        lock's internals, a ``finally`` that would release) is how releases get lost, and a
        second signal must not undo the first one's work. Only the first signal counts.
        """
        if self.signalled is not None:
            return
        self.signalled = signum
        self._stop_holds(f"stopped by {signal.Signals(signum).name}")
        session = self.session
        if session is not None:
            session.cancel_upload()

    # -- serving -----------------------------------------------------------------------

    def serve(self) -> int:
        """Answer requests until ``bye`` or end of input; always releases on the way out."""
        threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
        try:
            while self.signalled is None:
                try:  # timed: the main thread wakes to run signal handlers
                    item = self._inbox.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if item is _EOF:
                    break
                assert isinstance(item, bytes)
                if not self._handle(item):
                    break
        finally:
            if self.session is not None:
                self.session.release()
        return 0 if self.signalled is None else 128 + self.signalled

    def _handle(self, line: bytes) -> bool:
        ident: int | None = None
        try:
            if len(line) > MAX_LINE:
                raise ProtocolError(f"request of {len(line)} bytes refused (at most {MAX_LINE})")
            message = protocol.decode(line)
            raw = message.get("id")
            ident = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
            ident, op, args = protocol.parse_request(message)
            if self._input_closed.is_set() and op not in ("release", "bye"):
                # requests queued before the coordinator vanished: start no new phase
                raise ProtocolError(f"{op!r} not started: the coordinator is gone")
            result = self._dispatch(op, args)
        except CleancutError as exc:
            self.send(protocol.failure(ident, type(exc).__name__, exc.message))
            return True
        except Exception as exc:  # a bug must not leave a freeze behind: report it, go on
            print(f"cleancut guest: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            where = _where(exc)
            self.send(protocol.failure(ident, "InternalError", f"{type(exc).__name__} at {where}"))
            return True
        self.send(protocol.reply(ident, result))
        return op != "bye"

    def _dispatch(self, op: str, args: protocol.Arguments) -> dict[str, Any]:
        if op == "hello":
            assert isinstance(args, protocol.HelloArgs)
            return self._hello(args)
        if op == "bye":
            return {}
        if op == "clock":
            return {"time": time.time()}
        session = self.session
        if session is None:
            raise ProtocolError(f"{op!r} before hello")
        if op == "plan":
            assert isinstance(args, protocol.PlanArgs)
            return session.plan(args)
        if op == "freeze":
            assert isinstance(args, protocol.FreezeArgs)
            return session.freeze(args)
        if op == "upload":
            assert isinstance(args, protocol.UploadArgs)
            return session.upload(args, self.emit)
        if op == "snapshot_disks":
            assert isinstance(args, protocol.SnapshotDisksArgs)
            return session.snapshot_disks(args)
        steps = {"prepare": session.prepare, "snapshot": session.snapshot, "thaw": session.thaw}
        return steps.get(op, session.release)()

    def _hello(self, args: protocol.HelloArgs) -> dict[str, Any]:
        received_at = time.time()
        if args.protocol != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                f"coordinator speaks protocol {args.protocol}, this guest "
                f"{protocol.PROTOCOL_VERSION}; install the same cleancut version everywhere"
            )
        if self.session is not None:
            raise ProtocolError("hello sent twice")
        config = load_trusted_guest(self.config_path)
        session = GuestSession(config, self.config_path, self._input_closed)
        inventory = session.hello(args)
        self.session = session
        if self.signalled is not None:
            self._stop_holds("stopped by a signal")
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "received_at": received_at,
            "time": time.time(),
            "inventory": inventory,
        }


def _where(exc: BaseException) -> str:
    """Where in cleancut's code ``exc`` was raised (file:line), for a bug report; the
    message itself is not sent, since it might repeat part of a request."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "cleancut" in f.filename] or frames
    if not ours:
        return "unknown"
    frame = ours[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} ({frame.name})"


def _is_release(line: bytes) -> bool:
    """Whether ``line`` asks for ``release`` (a cheap look, before the main thread's parse)."""
    if b'"release"' not in line:
        return False
    try:
        return protocol.decode(line).get("op") == "release"
    except ProtocolError:
        return False


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    """Lines from ``stream``, read from its file descriptor when it has one.

    Reading the descriptor directly keeps the buffered reader's lock free: a daemon thread
    blocked in ``readline`` would make the interpreter wait at exit for a second. A line
    longer than :data:`MAX_LINE` is cut there (and refused by the parser).
    """
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        yield from iter(stream.readline, b"")
        return
    pending = b""
    while chunk := os.read(fd, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
        if len(pending) > MAX_LINE:
            yield pending
            pending = b""
    if pending:
        yield pending


def run_agent(config_path: Path) -> int:
    """Serve the protocol on this process's stdin/stdout; a stop signal still releases."""
    agent = GuestAgent(config_path, sys.stdin.buffer, sys.stdout.buffer)
    for signum in STOP_SIGNALS:
        signal.signal(signum, agent.on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return agent.serve()
