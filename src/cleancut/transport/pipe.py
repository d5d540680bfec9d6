"""A guest agent reached through a child process's pipes: the base of both transports.

``local`` runs ``cleancut guest`` itself as the child; ``ssh`` runs OpenSSH's client,
whose remote end is the guest (the forced command of the backup key). Either way the
guest's stdin is this process's pipe, so its end-of-file means "coordinator gone".
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import shlex
import subprocess
import threading
import time
from typing import IO, Any

from cleancut import protocol
from cleancut.errors import CleancutError, GuestError, HostUnreachable, ProtocolError
from cleancut.transport.base import Channel, EventCallback

_log = logging.getLogger("cleancut.transport")
_STDERR_LINES = 200


class PipeChannel(Channel):
    """Talks the cut protocol over the stdin/stdout of the child process ``argv``."""

    def __init__(self, host: str, argv: list[str]) -> None:
        self.host = host
        self._send_lock = threading.Lock()
        _log.debug("host %s: starting the guest agent: %s", host, shlex.join(argv))
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "NO_COLOR": "1"},
                # its own session: a terminal's Ctrl-C reaches the coordinator only, which
                # then releases every host in order instead of each guest on its own
                start_new_session=True,
            )
        except OSError as exc:
            raise HostUnreachable(f"host {host}: cannot start {argv[0]}: {exc}") from exc
        self._waiting: dict[int, queue.Queue[dict[str, Any] | None]] = {}
        self._events: dict[int, EventCallback | None] = {}
        self._table_lock = threading.Lock()
        self._closed = False
        self.stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        threading.Thread(target=self._pump, args=(self._proc.stdout,), daemon=True).start()
        self._drainer = threading.Thread(target=self._drain, args=(self._proc.stderr,), daemon=True)
        self._drainer.start()
        self._next_id = 0

    def _pump(self, stream: IO[bytes]) -> None:
        """Route every message the guest sends to the call it answers (by id)."""
        for line in iter(stream.readline, b""):
            try:
                message = protocol.decode(line)
            except ProtocolError as exc:
                self.stderr.append(f"cleancut: {exc.message}")
                continue
            if "event" in message:
                self._deliver_event(message)
                continue
            ident = message.get("id")
            with self._table_lock:
                waiter = self._waiting.get(ident) if isinstance(ident, int) else None
            if waiter is not None:
                waiter.put(message)
        with self._table_lock:
            self._closed = True
            waiters = list(self._waiting.values())
        for waiter in waiters:
            waiter.put(None)

    def _deliver_event(self, message: dict[str, Any]) -> None:
        # events belong to the newest call still waiting (the one the guest is working on)
        with self._table_lock:
            sinks = [self._events[i] for i in sorted(self._events)]
        sink = sinks[-1] if sinks else None
        if sink is None:
            return
        try:
            sink(str(message["event"]), dict(message.get("data") or {}))
        except Exception as exc:  # a broken display must not stop the replies' routing
            self.stderr.append(f"cleancut: event {message.get('event')!r} not shown: {exc}")

    def _drain(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self.stderr.append(line.decode(errors="replace").rstrip())

    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
    ) -> dict[str, Any]:
        """Send one request and wait for its reply. Thread-safe: a ``release`` may be sent
        while another call still waits for its answer."""
        answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with self._table_lock:
            self._next_id += 1
            ident = self._next_id
            self._waiting[ident] = answers
            self._events[ident] = on_event
            closed = self._closed
        started = time.monotonic()
        try:
            if closed:
                raise self._gone(f"no answer to {op!r}")
            self._send(ident, op, args)
            try:
                message = answers.get(timeout=timeout)
            except queue.Empty:
                raise HostUnreachable(
                    f"host {self.host}: no answer to {op!r} within {timeout:.0f}s"
                ) from None
        finally:
            with self._table_lock:
                self._waiting.pop(ident, None)
                self._events.pop(ident, None)
        if message is None:
            raise self._gone(f"no answer to {op!r}")
        _log.debug(
            "host %s: %s %s in %.1f ms",
            self.host,
            op,
            "answered" if message.get("ok") else "failed",
            1000 * (time.monotonic() - started),
        )
        if message.get("ok"):
            return dict(message.get("result") or {})
        error = message.get("error") or {}
        raise GuestError(self.host, str(error.get("kind")), str(error.get("message")))

    def _send(self, ident: int, op: str, args: dict[str, Any] | None) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        data = protocol.encode(protocol.request(ident, op, args))
        try:
            with self._send_lock:
                stdin.write(data)
                stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise self._gone(f"cannot send {op!r}") from exc

    def _gone(self, what: str) -> CleancutError:
        """The error for a guest that went away: why, from its exit code and last words."""
        try:
            code: int | None = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        self._drainer.join(timeout=1)  # its last lines say why
        return self.went_away(what, code, list(self.stderr))

    def went_away(self, what: str, code: int | None, stderr: list[str]) -> CleancutError:
        """The error to raise when the guest is gone; transports say more (ssh's reasons)."""
        tail = "; ".join(stderr[-5:])
        detail = f" (exit code {code})" if code is not None else ""
        return HostUnreachable(f"host {self.host}: guest agent went away{detail}: {what}. {tail}")

    def close(self, wait: float = 30.0) -> None:
        """Close the guest's input (it releases everything and exits) and reap it; SIGTERM
        after ``wait`` seconds (it still releases), SIGKILL as long again later."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            # SIGTERM lets the guest release (thaw, post-scripts) on its way out
            self._proc.terminate()
            try:
                self._proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
