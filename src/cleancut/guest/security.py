"""Permission checks for everything the guest runs or trusts as root (DESIGN.md §4).

An attacker who can change a hook, its config or any folder above them runs code as
root. So a hook is only run from a file descriptor that passed every check *itself*:
the path is walked from ``/`` one component at a time, each directory opened relative
to the one before (``openat`` with ``O_PATH``) and checked with ``fstat`` on that open
descriptor, and the script is finally opened with ``O_NOFOLLOW`` inside the last checked
directory. Nothing is looked up by name twice, so there is no check-then-run race.

Rules (each refusal is a :class:`~cleancut.errors.HookSecurityError` naming the file, the
rule and the fix):

* every directory on the way and the file itself are owned by root or the agent's user;
* none of them has the group or other write bit;
* symlinks in the folders above are followed (``/bin`` → ``usr/bin``) only through
  checked directories; a symlink *as the file itself* must stay in its own directory;
* a hook is a regular, executable file; its SHA-256 matches the pin when there is one;
* an imported format keeps its platform's stricter rules (:class:`PrivateMode`: Azure
  wants no group or other permission bit at all on its config and scripts).

:func:`check_hook_command` applies them to every file a hook command will execute or
interpret, not only ``argv[0]``: its ``#!`` interpreters, the program ``env`` runs and
every argument that names a file (``sh /srv/quiesce.sh``). A path that names no file yet
passes only if its folders pass, so nobody untrusted can put one there before it runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cleancut.config.guest import GuestConfig
from cleancut.config.load import parse_guest
from cleancut.errors import HookSecurityError
from cleancut.guest.filecheck import PrivateMode, TrustedFile, open_checked, probe
from cleancut.guest.launch import SHEBANG_BYTES, parse_env, shebang

__all__ = [
    "HOOK_PATH",
    "PrivateMode",
    "TrustedFile",
    "check_config_file",
    "check_hook_command",
    "check_private_file",
    "load_trusted_guest",
    "open_config",
    "open_trusted",
]

#: The PATH hooks run with (and the one ``env`` inside a hook searches).
HOOK_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: Nested ``#!`` interpreters and ``env`` calls followed before refusing (Linux stops at 4).
MAX_DEPTH = 8


def check_config_file(path: Path, *, private: PrivateMode | None = None) -> None:
    """Refuse a config file (guest.toml, Azure's json) that someone other than root could change.

    Raises:
        HookSecurityError: naming the file, the broken rule and the fix.
    """
    open_config(path, private=private).close()


def open_config(path: Path, *, private: PrivateMode | None = None) -> TrustedFile:
    """``path`` opened after the config-file checks, so its content can be read without a race."""
    return open_checked(path, executable=False, sha256=None, private=private)


def check_private_file(path: Path, private: PrivateMode, *, executable: bool) -> None:
    """Refuse ``path`` unless it passes the hook checks and ``private``'s mode rule.

    Raises:
        HookSecurityError: naming the file, the broken rule and the fix.
    """
    open_checked(path, executable=executable, sha256=None, private=private, digest=False).close()


def load_trusted_guest(path: Path) -> GuestConfig:
    """The guest config at ``path``, checked and then parsed from the same descriptor."""
    with open_config(path) as trusted:
        return parse_guest(trusted.read_bytes(), str(path))


def open_trusted(path: Path, *, sha256: str | None = None) -> TrustedFile:
    """``path`` opened read-only after every hook check, to be executed through its descriptor.

    Only ``path`` itself is checked; a hook command goes through :func:`check_hook_command`.
    Use it as a context manager; the descriptor is closed on exit.

    Raises:
        HookSecurityError: naming the file, the broken rule and the fix.
    """
    return open_checked(path, executable=True, sha256=sha256)


def check_hook_command(
    argv: Sequence[str],
    sha256: str | None = None,
    *,
    cwd: Path = Path("/"),
    search_path: str = HOOK_PATH,
) -> TrustedFile:
    """``argv[0]`` opened after the hook checks, once every file the command runs passed them.

    Checked besides ``argv[0]`` (and its ``sha256`` pin): its ``#!`` interpreter, that
    one's interpreter and so on (up to :data:`MAX_DEPTH`), the program ``env`` runs (found
    in ``search_path``, or the PATH the command gives env) and every argument naming a
    file — ``relative`` ones from ``cwd``, where the command runs — since an interpreter
    runs a script it is handed and a wrapper runs a program. An argument that is a data
    file need not be executable. Run the command through the returned descriptor
    (``/proc/self/fd/N``) and close it afterwards (it is a context manager).

    Raises:
        HookSecurityError: naming the offending file (argument or interpreter, not only
            ``argv[0]``), the rule and the fix.
    """
    if not argv:
        raise HookSecurityError("(empty)", "the hook command is empty", "give its full path")
    program = open_trusted(Path(argv[0]), sha256=sha256)
    try:
        head = os.pread(program.fd, SHEBANG_BYTES, 0)
        _Command(cwd, search_path).follow(program.path, argv[0], head, list(argv[1:]), 0)
    except BaseException:
        program.close()
        raise
    return program


@dataclass(frozen=True)
class _Command:
    """Where a command runs: its working directory and the PATH ``env`` searches."""

    cwd: Path
    search_path: str

    def follow(
        self, real: Path, word: str, head: bytes, args: list[str], depth: int, via: str = ""
    ) -> None:
        """Check what the checked file ``real`` goes on to run: interpreter, env's program, args."""
        if depth > MAX_DEPTH:
            raise HookSecurityError(
                str(real),
                f"the command goes through more than {MAX_DEPTH} #! interpreters or env calls",
                "call the final program directly",
            )
        line = shebang(head)
        if line is not None:
            role = f"the #! interpreter of {word}"
            self.executable(self.absolute(line[0]), line[1:], depth, role)
        if "env" in (real.name, PurePosixPath(word).name):
            self.env(word, args, depth, via)
        else:
            for index, arg in enumerate(args, 1):
                role = f"named by argument {index} of {word}, which runs or reads it"
                self.argument(arg, role, depth)

    def executable(self, path: Path, args: list[str], depth: int, role: str) -> None:
        """A file the command executes: checked (exec bit included) when it exists."""
        with _explained(path, role):
            found = probe(path, executable=True)
        if found is None:
            return  # nothing to run there (exec fails), and nobody untrusted can add it
        with found:
            head = os.pread(found.fd, SHEBANG_BYTES, 0)
        self.follow(found.path, str(path), head, args, depth + 1, role)

    def argument(self, arg: str, role: str, depth: int) -> None:
        """A file an argument names: checked as data; its interpreters too if it is executable."""
        words = [arg]
        if arg.startswith("-") and "=" in arg:
            words.append(arg.partition("=")[2])  # --config=/path
        for word in filter(None, words):
            path = self.absolute(word)
            if not word.startswith("/") and not os.path.lexists(path):
                continue  # a plain word ("show", "freeze"), not a file where the command runs
            with _explained(path, role):
                found = probe(path, executable=False)
            if found is None:
                continue
            with found:
                runnable = os.fstat(found.fd).st_mode & 0o111
                head = os.pread(found.fd, SHEBANG_BYTES, 0) if runnable else b""
            line = shebang(head)
            if line is not None:
                role = f"the #! interpreter of {path}"
                self.executable(self.absolute(line[0]), line[1:], depth + 1, role)

    def env(self, word: str, args: list[str], depth: int, via: str) -> None:
        """The program ``env ARGS`` runs, searched as env searches it, with its arguments."""
        try:
            call = parse_env(args, search_path=self.search_path)
        except ValueError as exc:
            raise HookSecurityError(
                word,
                f"cannot tell which program env runs: {exc}",
                "name the program by its full path instead of going through env",
            ) from None
        if call.program is None:
            return
        inner = _Command(self.absolute(call.chdir or "."), call.search_path)
        path = inner.locate(call.program, word)
        if path is not None:
            role = f"the program {word} runs" + (f" ({word} being {via})" if via else "")
            inner.executable(path, call.args, depth + 1, role)

    def locate(self, name: str, env: str) -> Path | None:
        """Where execvp finds ``name``; every folder it looks in on the way must pass too."""
        if "/" in name:
            return self.absolute(name)
        for folder in self.search_path.split(":"):
            candidate = self.absolute(folder or ".") / name
            with _explained(candidate, f"where {env} looks for {name!r}"):
                found = probe(candidate, executable=False)
            if found is not None:
                with found:
                    if os.fstat(found.fd).st_mode & 0o111:
                        return candidate
        return None

    def absolute(self, word: str) -> Path:
        """``word`` as a path from the command's cwd (``..`` left for the walk to resolve)."""
        return self.cwd / word


@contextlib.contextmanager
def _explained(path: Path, role: str) -> Iterator[None]:
    """Say why a file beyond ``argv[0]`` was checked: which file it is to the command."""
    try:
        yield
    except HookSecurityError as exc:
        who = "it" if exc.path == str(path) else str(path)
        raise HookSecurityError(exc.path, f"{exc.rule}, and {who} is {role}", exc.fix) from None
