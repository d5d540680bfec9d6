"""``--log-json``, ``-v`` and ``-q``: what reaches stderr, and in which form.

Everything cleancut says on stderr — progress lines, warnings, errors, and the
``cleancut`` logger's records — passes through one :class:`LogStream`. It sorts each
line into a level (``error:`` and ``warning:`` prefixes say which; a logger record
carries its own), drops what ``-q`` silences (everything below warnings), and with
``--log-json`` writes one JSON object per line instead of the text::

    {"time": "2026-12-03T07:41:02.118Z", "level": "warning", "message": "…"}

``-v`` lets the logger's debug records through (every restic command line, every
connection). The options may be given anywhere on the command line; :func:`split`
takes them out before the command's own options are parsed.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO, cast

from cleancut.cli import output
from cleancut.cli.output import err

LOGGER = "cleancut"
_FLAGS = {"--log-json": "json", "-v": "verbose", "--verbose": "verbose", "-q": "quiet"}
_FLAGS["--quiet"] = "quiet"


@dataclass
class LogOptions:
    json_lines: bool = False
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0


#: What this process was asked for (read by the progress bars: none with -q or JSON).
current = LogOptions()


def split(argv: list[str]) -> tuple[list[str], LogOptions]:
    """Take the logging options out of ``argv`` (up to a ``--``); the rest and the options.

    ``-vv`` counts twice; ``-q`` and ``-v`` together leave the last one standing.
    """
    options = LogOptions()
    rest: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            rest.extend(argv[index:])
            break
        kind = _FLAGS.get(arg) or ("verbose" if _is_vs(arg) else None)
        if kind == "json":
            options.json_lines = True
        elif kind == "verbose":
            options.verbosity = max(options.verbosity, 0) + (len(arg) - 1 if _is_vs(arg) else 1)
        elif kind == "quiet":
            options.verbosity = -1
        else:
            rest.append(arg)
    return rest, options


def _is_vs(arg: str) -> bool:
    return len(arg) > 1 and arg[0] == "-" and set(arg[1:]) == {"v"}


def configure(options: LogOptions, stream: TextIO | None = None) -> None:
    """Route stderr output (the ``err`` console and the ``cleancut`` logger) through a
    :class:`LogStream` for ``options``."""
    current.json_lines = options.json_lines
    current.verbosity = options.verbosity
    target = LogStream(stream or sys.stderr, options)
    output.progress_allowed = not (options.json_lines or options.quiet)
    if options.json_lines or options.quiet:
        err.file = cast(TextIO, target)
        if options.json_lines:
            err.no_color = True
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [_Handler(target)]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if options.verbosity > 0 else logging.WARNING)


class LogStream(io.TextIOBase):
    """A text stream that writes each complete line as the options want it."""

    def __init__(self, target: TextIO, options: LogOptions) -> None:
        self.target = target
        self.options = options
        self._partial = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # no escape codes, no live progress display

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self.line(line)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            line, self._partial = self._partial, ""
            self.line(line)
        self.target.flush()

    def line(self, message: str, level: str | None = None) -> None:
        if not message.strip():
            return
        level = level or _level_of(message)
        if self.options.quiet and level in ("info", "debug"):
            return
        if self.options.json_lines:
            record = {"time": _now(), "level": level, "message": message}
            self.target.write(json.dumps(record) + "\n")
        else:
            self.target.write(message + "\n")
        self.target.flush()


class _Handler(logging.Handler):
    def __init__(self, stream: LogStream) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower().replace("critical", "error")
        text = record.getMessage()
        if not self.stream.options.json_lines and level == "debug":
            text = f"debug: {text}"
        self.stream.line(text, level)


def _level_of(message: str) -> str:
    head = message.lstrip().lower()
    if head.startswith("error"):
        return "error"
    if head.startswith("warning"):
        return "warning"
    if head.startswith("debug:"):
        return "debug"
    return "info"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
