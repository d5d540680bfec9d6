"""A writer's helper process: the one process that holds a database's lock, and does nothing else.

POSIX record locks (SQLite's among them) belong to a process, and ``close()`` of *any*
descriptor of the file drops every lock that process holds on it. The guest opens and
closes database files all the time (a ``copy`` or ``reflink`` snapshot reads them), so a
lock taken by the guest itself would silently vanish. A writer therefore holds its lock in
a small helper child that never touches the file otherwise.

The helper is spawned (``python -I -S``; no inherited handlers or threads) and speaks JSON
lines on its stdin/stdout. It ends its hold by itself when its own deadline passes (the
guest is stopped or stuck), when its stdin closes (the guest is gone) and when it is
killed: every way out releases the lock, and the guest learns at release time whether the
hold lasted.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

from cleancut.errors import WriterError


class HelperProcess:
    """A spawned helper running ``code`` with ``args``; :meth:`call` sends one request."""

    def __init__(self, what: str, code: str, args: list[str]) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._pending = b""
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd="/",
                env={"LANG": "C.UTF-8"},
            )
        except OSError as exc:
            raise WriterError(f"{what}: cannot start its helper process: {exc}") from exc

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def call(self, op: str, timeout: float, **args: Any) -> dict[str, Any]:
        """Send ``op`` and wait up to ``timeout`` seconds for the answer."""
        with self._lock:
            return self._call_locked(op, timeout, args)

    def try_call(self, op: str, timeout: float, wait: float, **args: Any) -> dict[str, Any] | None:
        """:meth:`call`, unless another call keeps the helper busy for ``wait`` seconds."""
        if not self._lock.acquire(timeout=wait):
            return None
        try:
            return self._call_locked(op, timeout, args)
        finally:
            self._lock.release()

    def _call_locked(self, op: str, timeout: float, args: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
            stdin.flush()
        except (OSError, ValueError) as exc:
            raise WriterError(
                f"{self.what}: its helper process is gone ({self._status()})"
            ) from exc
        line = self._read_line(stdout.fileno(), timeout, op)
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise WriterError(f"{self.what}: its helper answered {line[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise WriterError(f"{self.what}: its helper answered {line[:200]!r}")
        if not answer.get("ok"):
            raise WriterError(f"{self.what}: {op}: {answer.get('error')}")
        return answer

    def _read_line(self, fd: int, timeout: float, op: str) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                self.kill()  # a late answer must not be read as the next one's
                raise WriterError(f"{self.what}: no answer to {op} within {timeout:.1f}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise WriterError(f"{self.what}: its helper process exited ({self._status()})")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line

    def _status(self) -> str:
        code = self._proc.poll()
        if code is None:
            return "still running"
        stderr = b""
        if self._proc.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                os.set_blocking(self._proc.stderr.fileno(), False)
                stderr = self._proc.stderr.read() or b""
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return f"exit status {code}{': ' + tail[0] if tail[0] else ''}"

    def kill(self) -> None:
        """End the helper at once: the kernel drops its locks. Lock-free, never raises."""
        with contextlib.suppress(OSError):
            self._proc.kill()

    def close(self) -> None:
        """Close its input (it releases and exits) and reap it; kill it if it lingers."""
        with contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            self._proc.wait()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
