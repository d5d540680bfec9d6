"""Reading restic's JSON output: ``backup --json`` progress and summary, and the sizes in
``find --json``, which can be far larger than memory should hold at once."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import IO, Any

from cleancut.errors import MoverError
from cleancut.mover.base import ProgressCallback, Upload

_CHUNK = 1 << 20


class BackupOutput:
    """Reads ``restic backup --json`` lines: status into progress calls, the summary kept."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.summary: dict[str, Any] | None = None

    def line(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            return  # restic prints the odd plain-text line even in JSON mode
        if not isinstance(message, dict):
            return
        kind = message.get("message_type")
        if kind == "summary":
            self.summary = message
            self._report(_final_progress(message))
        elif kind == "status":
            self._report(_status_progress(message))

    def _report(self, figures: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress(figures)

    def upload(self, command: str) -> Upload:
        summary = self.summary
        if summary is None or not summary.get("snapshot_id"):
            raise MoverError(f"restic backup reported no snapshot id (command: {command})")
        return Upload(
            snapshot_id=str(summary["snapshot_id"]),
            bytes_processed=int(summary.get("total_bytes_processed", 0)),
            bytes_added=int(summary.get("data_added", 0)),
            files=int(summary.get("total_files_processed", 0)),
            seconds=float(summary.get("total_duration", 0.0)),
            files_new=int(summary.get("files_new", 0)),
            files_changed=int(summary.get("files_changed", 0)),
            files_unmodified=int(summary.get("files_unmodified", 0)),
        )


class FindSizes:
    """Sums the file sizes per snapshot in the output of ``restic find --json '*'``.

    restic prints one JSON array holding every node of every snapshot, on one line: far
    too much to load at once for a large tree, so it is read in chunks and only two keys
    are taken from it, in order: each node's ``"size":N`` (files only; restic leaves it
    out when 0) and, closing each snapshot's list, ``"snapshot":"ID"``. Neither can be
    matched inside a string value, where JSON escapes every quote; neither holds a
    comma, so a chunk is cut after its last comma. A raw newline before the end means
    restic put a plain-text message (an unreadable tree) among the JSON: that is refused.
    """

    _TOKEN = re.compile(rb'"(size|snapshot)":(?:(\d+)|"([0-9a-f]+)")')

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}
        self._pending = 0
        self._rest = b""
        self._started = False
        self._ended = False
        self._error: str | None = None

    def read(self, stdout: IO[bytes]) -> None:
        """Consume restic's stdout to its end."""
        for chunk in iter(lambda: stdout.read(_CHUNK), b""):
            self.feed(chunk)
        self._scan(self._rest)
        self._rest = b""

    def feed(self, chunk: bytes) -> None:
        self._guard(chunk)
        data = self._rest + chunk
        cut = data.rfind(b",") + 1
        self._scan(data[:cut])
        self._rest = data[cut:]

    def sizes(self) -> dict[str, int]:
        """Full snapshot id -> bytes; ValueError when the output was not restic's JSON."""
        if self._error is None and not self._started:
            self._error = "restic printed nothing"
        if self._error is None and self._pending:
            self._error = "file sizes after the last snapshot id"
        if self._error is not None:
            raise ValueError(self._error)
        return dict(self._sizes)

    def _guard(self, chunk: bytes) -> None:
        if self._error is not None:
            return
        text = chunk if self._started else chunk.lstrip()
        if text and not self._started:
            self._started = True
            if not text.startswith(b"["):
                self._error = f"not JSON: {_first_line(text)!r}"
                return
        if self._ended and text.strip():
            self._error = f"text after the JSON: {_first_line(text.strip())!r}"
        newline = text.find(b"\n")
        if newline >= 0:
            self._ended = True
            if text[newline:].strip():
                self._error = f"text among the JSON: {_first_line(text[newline:].strip())!r}"

    def _scan(self, data: bytes) -> None:
        for match in self._TOKEN.finditer(data):
            if match.group(1) == b"size" and match.group(2) is not None:
                self._pending += int(match.group(2))
            elif match.group(1) == b"snapshot" and match.group(3) is not None:
                full = match.group(3).decode()
                self._sizes[full] = self._sizes.get(full, 0) + self._pending
                self._pending = 0


def _first_line(data: bytes) -> str:
    return data.decode(errors="replace").splitlines()[0][:200] if data else ""


def _status_progress(status: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "percent": 100.0 * float(status.get("percent_done", 0.0)),
        "bytes_done": int(status.get("bytes_done", 0)),
        "total_bytes": int(status.get("total_bytes", 0)),
        "files_done": int(status.get("files_done", 0)),
        "total_files": int(status.get("total_files", 0)),
        "seconds": float(status.get("seconds_elapsed", 0.0)),
        "done": False,
    }


def _final_progress(summary: Mapping[str, Any]) -> dict[str, Any]:
    processed = int(summary.get("total_bytes_processed", 0))
    files = int(summary.get("total_files_processed", 0))
    return {
        "percent": 100.0,
        "bytes_done": processed,
        "total_bytes": processed,
        "files_done": files,
        "total_files": files,
        "seconds": float(summary.get("total_duration", 0.0)),
        "bytes_added": int(summary.get("data_added", 0)),
        "snapshot_id": summary.get("snapshot_id"),
        "done": True,
    }
