"""How a command line turns into the files that run: the kernel's ``#!`` rule and env(1).

The security checks (:func:`~cleancut.guest.security.check_hook_command`) must check every
file a hook will execute, not only ``argv[0]``. Two programs decide which further files
run without their name being ``argv[0]``: the kernel, which runs a script's ``#!``
interpreter, and ``env``, which runs the program it names (searched in ``PATH``). This
module reads both the way they do; it opens nothing and checks nothing itself.
"""

from __future__ import annotations

import os
import re
import shlex
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

#: Linux reads the ``#!`` line from the first BINPRM_BUF_SIZE bytes of the file.
SHEBANG_BYTES = 256
#: What execvp searches when PATH is unset (glibc's ``_CS_PATH``).
DEFAULT_PATH = "/bin:/usr/bin"

_BLANKS = re.compile(rb"[ \t]+")
#: env's long options → whether they take a value (``None``: only with ``=``).
_LONG: dict[str, bool | None] = {
    "ignore-environment": False,
    "null": False,
    "debug": False,
    "unset": True,
    "chdir": True,
    "split-string": True,
    "default-signal": None,
    "ignore-signal": None,
    "block-signal": None,
    "list-signal-handling": False,
    "help": False,
    "version": False,
}
_SHORT_FLAGS = frozenset("i0v")
_SHORT_VALUED = frozenset("uCS")


def shebang(head: bytes) -> list[str] | None:
    """The ``#!`` interpreter and its optional single argument, as Linux splits the line.

    The kernel takes the first word after ``#!`` as the interpreter and the rest of the
    line, trimmed, as *one* argument; None when the file does not start with ``#!``.
    """
    if not head.startswith(b"#!"):
        return None
    line = head[2:SHEBANG_BYTES].split(b"\n", 1)[0].strip(b" \t\r")
    if not line:
        return None
    words = _BLANKS.split(line, maxsplit=1)
    return [os.fsdecode(word) for word in words if word]


@dataclass(frozen=True)
class EnvCall:
    """What ``env ARGS`` will run: the program (None: it runs nothing), its args, cwd, PATH."""

    program: str | None
    args: list[str]
    chdir: str | None
    search_path: str


def parse_env(args: Sequence[str], *, search_path: str) -> EnvCall:
    """Read ``env``'s arguments as GNU env does: options, ``NAME=VALUE``, then the program.

    ``search_path`` is the PATH env inherits; ``-i``, ``-u PATH`` and ``PATH=...`` change
    the one the program is searched in.

    Raises:
        ValueError: an option env would not take, or a ``-S`` string that cannot be read.
    """
    todo = deque(args)
    path: str | None = search_path
    chdir: str | None = None
    while todo and todo[0].startswith("-"):
        word = todo.popleft()
        if word == "--":
            break
        for name, value in _options(word, todo):
            clears = name in ("i", "ignore-environment", "-")
            if clears or (name in ("u", "unset") and value == "PATH"):
                path = None
            elif name in ("C", "chdir"):
                chdir = value
            elif name in ("S", "split-string"):
                todo.extendleft(reversed(_split_string(value or "")))
            elif name in ("help", "version", "list-signal-handling"):
                return EnvCall(None, [], chdir, path or DEFAULT_PATH)
    while todo and "=" in todo[0]:
        name, _, value = todo.popleft().partition("=")
        if name == "PATH":
            path = value
    program = todo.popleft() if todo else None
    return EnvCall(program, list(todo), chdir, path if path is not None else DEFAULT_PATH)


def _options(word: str, todo: deque[str]) -> list[tuple[str, str | None]]:
    """The options in one word (``-iu NAME``, ``--chdir=DIR``), taking values from ``todo``."""
    if word == "-":
        return [("-", None)]
    if word.startswith("--"):
        return [_long_option(word[2:], todo)]
    found: list[tuple[str, str | None]] = []
    rest = word[1:]
    while rest:
        letter, rest = rest[0], rest[1:]
        if letter in _SHORT_FLAGS:
            found.append((letter, None))
        elif letter in _SHORT_VALUED:
            found.append((letter, rest or _value(f"-{letter}", todo)))
            return found
        else:
            raise ValueError(f"env has no option -{letter}")
    return found


def _long_option(text: str, todo: deque[str]) -> tuple[str, str | None]:
    given, has_value, value = text.partition("=")
    # getopt_long takes any unambiguous prefix (--ign for --ignore-environment).
    matches = [name for name in _LONG if name.startswith(given)] if given else []
    if given in _LONG:
        matches = [given]
    if len(matches) != 1:
        raise ValueError(f"env has no option --{given}")
    name = matches[0]
    takes = _LONG[name]
    if has_value:
        if takes is False:
            raise ValueError(f"env's --{name} takes no value")
        return name, value
    return name, _value(f"--{name}", todo) if takes else None


def _value(option: str, todo: deque[str]) -> str:
    if not todo:
        raise ValueError(f"env's {option} needs a value")
    return todo.popleft()


def _split_string(text: str) -> list[str]:
    """``env -S``'s words; its ``${NAME}`` expansion is refused, since it hides the program."""
    if "${" in text:
        raise ValueError(f"env -S {text!r} expands variables")
    try:
        return shlex.split(text, comments=True)
    except ValueError as exc:
        raise ValueError(f"env -S {text!r}: {exc}") from None
