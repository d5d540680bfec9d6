"""The local transport: the guest agent as a child process of the coordinator."""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from cleancut import protocol
from cleancut.errors import GuestError, HostUnreachable
from cleancut.transport.base import Channel, EventCallback

_STDERR_LINES = 200


class LocalChannel(Channel):
    """Spawns ``cleancut guest --config PATH`` and talks to it over pipes."""

    def __init__(self, host: str, guest_config: Path, *, command: list[str] | None = None) -> None:
        self.host = host
        # -I: never import from the working directory or PYTHON* variables (the guest runs as root)
        argv = command or [
            sys.executable,
            "-I",
            "-m",
            "cleancut",
            "guest",
            "--config",
            str(guest_config),
        ]
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "NO_COLOR": "1"},
            )
        except OSError as exc:
            raise HostUnreachable(f"host {host}: cannot start the guest agent: {exc}") from exc
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self.stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        threading.Thread(target=self._pump, args=(self._proc.stdout,), daemon=True).start()
        threading.Thread(target=self._drain, args=(self._proc.stderr,), daemon=True).start()
        self._next_id = 0

    def _pump(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self._lines.put(line)
        self._lines.put(None)

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
        self._next_id += 1
        ident = self._next_id
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(protocol.encode(protocol.request(ident, op, args)))
            stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise self._gone(f"cannot send {op!r}") from exc
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise HostUnreachable(
                    f"host {self.host}: no answer to {op!r} within {timeout:.0f}s"
                ) from None
            if line is None:
                raise self._gone(f"no answer to {op!r}")
            message = protocol.decode(line)
            if "event" in message:
                if on_event is not None:
                    on_event(str(message["event"]), dict(message.get("data") or {}))
                continue
            if message.get("id") != ident:
                continue
            if message.get("ok"):
                return dict(message.get("result") or {})
            error = message.get("error") or {}
            raise GuestError(self.host, str(error.get("kind")), str(error.get("message")))

    def _gone(self, what: str) -> HostUnreachable:
        try:
            code = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        tail = "; ".join(list(self.stderr)[-5:])
        detail = f" (exit code {code})" if code is not None else ""
        return HostUnreachable(f"host {self.host}: guest agent went away{detail}: {what}. {tail}")

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # SIGTERM lets the guest release (thaw, post-scripts) on its way out
            self._proc.terminate()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
