"""The guest agent: serves the cut protocol as JSON lines on stdin/stdout.

A reader thread owns stdin. When it reaches end-of-file (the coordinator died, the SSH
connection was cut) it tells the watchdog at once, which thaws any frozen file system
without waiting for the main thread, and the main loop then releases everything. Stderr
carries diagnostics only; nothing is logged to disk.
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
from typing import Any, BinaryIO

from cleancut import __version__, protocol
from cleancut.errors import CleancutError, ProtocolError
from cleancut.guest.security import load_trusted_guest
from cleancut.guest.session import GuestSession
from cleancut.mover.base import RepositoryAccess

_EOF = object()


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

    def send(self, message: dict[str, Any]) -> None:
        data = protocol.encode(message)
        with self._write_lock:
            self._stdout.write(data)
            self._stdout.flush()

    def emit(self, name: str, data: dict[str, Any]) -> None:
        self.send(protocol.event(name, data))

    def _read_stdin(self) -> None:
        try:
            for line in _lines(self._stdin):
                if line.strip():
                    self._inbox.put(line)
        except (OSError, ValueError):
            pass
        self._input_closed.set()
        session = self.session
        if session is not None and session.watchdog is not None:
            session.watchdog.input_closed()
        self._inbox.put(_EOF)

    def serve(self) -> int:
        """Answer requests until ``bye`` or end of input; always releases on the way out."""
        threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
        try:
            while True:
                item = self._inbox.get()
                if item is _EOF:
                    return 0
                assert isinstance(item, bytes)
                if not self._handle(item):
                    return 0
        finally:
            if self.session is not None:
                self.session.release()

    def _handle(self, line: bytes) -> bool:
        ident: int | None = None
        try:
            message = protocol.decode(line)
            ident = message.get("id")
            op = message.get("op")
            if not isinstance(ident, int) or op not in protocol.OPERATIONS:
                raise ProtocolError(f"unknown operation {op!r}")
            if self._input_closed.is_set() and op not in ("release", "bye"):
                # requests queued before the coordinator vanished: start no new phase
                raise ProtocolError(f"{op!r} not started: the coordinator is gone")
            result = self._dispatch(op, message.get("args") or {})
        except CleancutError as exc:
            self.send(protocol.failure(ident, type(exc).__name__, exc.message))
            return True
        except Exception as exc:  # a bug must not leave a freeze behind: report it, go on
            traceback.print_exc(file=sys.stderr)
            self.send(protocol.failure(ident, "InternalError", f"{type(exc).__name__}: {exc}"))
            return True
        self.send(protocol.reply(ident, result))
        return bool(op != "bye")

    def _dispatch(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "hello":
            return self._hello(args)
        if op == "bye":
            return {}
        session = self.session
        if session is None:
            raise ProtocolError(f"{op!r} before hello")
        if op == "plan":
            return session.plan(args["repository"], args["app"], args["host"])
        if op == "prepare":
            return session.prepare()
        if op == "freeze":
            return session.freeze(snapshot=bool(args.get("snapshot")), thaw=bool(args.get("thaw")))
        if op == "snapshot":
            return session.snapshot()
        if op == "thaw":
            return session.thaw()
        if op == "upload":
            repo = args["repository"]
            access = RepositoryAccess(repo["url"], repo["password"])
            parents = dict(args.get("parents") or {})
            return session.upload(access, args["app"], args["host"], self.emit, parents)
        return session.release()

    def _hello(self, args: dict[str, Any]) -> dict[str, Any]:
        received_at = time.time()
        if args.get("protocol") != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                f"coordinator speaks protocol {args.get('protocol')!r}, this guest "
                f"{protocol.PROTOCOL_VERSION}; install the same cleancut version everywhere"
            )
        if self.session is not None:
            raise ProtocolError("hello sent twice")
        config = load_trusted_guest(self.config_path)
        self.session = GuestSession(config, self.config_path, self._input_closed)
        inventory = self.session.hello(str(args["rp_id"]), float(args["freeze_timeout"]))
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "received_at": received_at,
            "time": time.time(),
            "inventory": inventory,
        }


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    """Lines from ``stream``, read from its file descriptor when it has one.

    Reading the descriptor directly keeps the buffered reader's lock free: a daemon thread
    blocked in ``readline`` would make the interpreter wait at exit for a second.
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
    if pending:
        yield pending


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through serve()'s finally: release runs


def run_agent(config_path: Path) -> int:
    """Serve the protocol on this process's stdin/stdout; SIGTERM still releases."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return GuestAgent(config_path, sys.stdin.buffer, sys.stdout.buffer).serve()
