"""The restic mover: snapshots into an encrypted, deduplicated restic repository and back.

Written against restic 0.14 (Debian 12), so it uses no flag newer than that: ``backup``
reports JSON progress, ``restore`` does not (0.14 prints plain text for it), and restic
fails at once on a locked repository (``--retry-lock`` came later).

Secrets stay off command lines, which every user of the machine can read (``ps``,
``/proc/PID/cmdline``): the repository — whose URL may hold credentials, as in
``rest:https://user:pass@host/`` — and the password reach restic only through the child's
environment (``RESTIC_REPOSITORY``, ``RESTIC_PASSWORD``), readable by its owner alone. The
child's environment is built from scratch, so a ``RESTIC_PASSWORD_FILE`` or
``RESTIC_REPOSITORY`` of the caller cannot redirect it. The commands shown for
``--dry-run`` and in errors say so: ``RESTIC_REPOSITORY=<masked url> restic ...``.
restic never inherits our stdin or stdout: the guest agent speaks its protocol on them.

Snapshot ids are restic's short ids (8 hex digits), the form restic's own backup summary
reports; every restic command accepts them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, NoReturn

from cleancut.errors import MoverError, ResticInterrupted
from cleancut.mover.base import (
    Mover,
    ProgressCallback,
    RepositoryAccess,
    RepositoryCheck,
    StoredSnapshot,
    Upload,
)
from cleancut.mover.restic_json import BackupOutput, FindSizes

_log = logging.getLogger("cleancut.restic")
_STDERR_LINES = 200
#: restic's exit status after SIGINT (its cleanup handler exits 130, as a shell would)
_RESTIC_INTERRUPTED = 130
_MESSAGE_LINES = 6
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NO_REPOSITORY = ("does not exist", "no such file or directory", "is there a repository")
_INSTALL_HINT = "run `make setup`, or `apt-get install restic`"
_CHECK_TAIL_LINES = 20
#: restic check's verdict when it found damage (the other failures are about access)
_CHECK_FOUND = ("repository contains errors", "loadindex returned errors")
_CHECK_ACCESS = ("already locked", "wrong password", "is there a repository", "does not exist")
#: snapshots per ``restic find`` call, which takes them as ``--snapshot ID`` arguments
_FIND_BATCH = 500


def render_tags(tags: Mapping[str, str]) -> str:
    """``{"app": "shop", "cleancut-manifest": ""}`` as restic's ``app=shop,cleancut-manifest``.

    An empty value renders as the bare key. Keys must be non-empty and free of ``=``;
    neither keys nor values may hold a comma (restic's tag separator).
    """
    rendered = []
    for key, value in tags.items():
        if not key or "=" in key or "," in key or key != key.strip():
            raise ValueError(
                f"restic tag key {key!r} is invalid: use a non-empty name without '=' or ','"
            )
        if "," in value:
            raise ValueError(f"restic tag {key}={value!r} is invalid: a value cannot contain ','")
        rendered.append(f"{key}={value}" if value else key)
    return ",".join(rendered)


def parse_tags(tags: Iterable[str]) -> dict[str, str]:
    """restic's tag list back into a dict; a tag without ``=`` maps to ``""``."""
    parsed: dict[str, str] = {}
    for tag in tags:
        key, _, value = tag.partition("=")
        parsed[key] = value
    return parsed


def redact_url(url: str) -> str:
    """The repository URL with any ``user:password@`` password masked, for messages."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


class ResticMover(Mover):
    """Moves snapshots into a restic repository and back, by running the restic binary."""

    def __init__(
        self,
        access: RepositoryAccess,
        *,
        restic: str = "restic",
        cache_dir: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        """``extra_env`` carries a backend's own credentials (``AWS_*``, ``AZURE_*``, ...)."""
        self.access = access
        self.restic = restic
        self.cache_dir = cache_dir
        self.extra_env = dict(extra_env or {})

    # -- commands -------------------------------------------------------------------

    def describe_backup(self, source: Path, host: str, tags: Mapping[str, str]) -> list[str]:
        """The command :meth:`backup` would run (for ``--dry-run``), in :meth:`backup_cwd`.

        Its first word is the environment it gets, ``RESTIC_REPOSITORY=<url>`` with any
        password in the URL masked; restic's argv follows, which holds no secret.
        """
        argv, _ = self._backup_argv(source, host, tags)
        return [self._repository_word(), *argv]

    def describe_backup_bytes(self, filename: str, host: str, tags: Mapping[str, str]) -> list[str]:
        """The command :meth:`backup_bytes` would run (for ``--dry-run``), URL masked."""
        return [self._repository_word(), *self._backup_bytes_argv(filename, host, tags)]

    def describe_init(self) -> list[str]:
        """The command that initialises the repository (for ``--dry-run``), URL masked."""
        return [self._repository_word(), *self._base(), "init"]

    def preview_backup(self, source: Path, host: str, tags: Mapping[str, str]) -> str:
        """:meth:`describe_backup` as one shell line that includes the working directory."""
        cwd = shlex.quote(str(self.backup_cwd(source)))
        argv, _ = self._backup_argv(source, host, tags)
        return f"cd {cwd} && {self._show(argv)}"

    @staticmethod
    def backup_cwd(source: Path) -> Path:
        """Where restic runs: in the tree itself, or beside a single file (a disk image)."""
        return source if source.is_dir() else source.parent

    def ensure_repository(self) -> bool:
        """Initialise the repository unless it exists; True if it was created.

        A wrong password is an error, never a reason to initialise.
        """
        argv = [*self._base(), "cat", "config"]
        returncode, _, stderr = self._call(argv)
        if returncode == 0:
            return False
        message = _restic_message(stderr).lower()
        if "wrong password" in message or not any(s in message for s in _NO_REPOSITORY):
            self._raise(argv, returncode, stderr)
        self._run([*self._base(), "init"])
        return True

    def backup(
        self,
        source: Path,
        *,
        host: str,
        tags: dict[str, str],
        progress: ProgressCallback | None = None,
        parent: str | None = None,
        ignore_inode: bool = False,
        ignore_ctime: bool = False,
    ) -> Upload:
        """Back up a tree (stored from its root) or one file (stored under its name).

        With ``parent`` (the same resource's previous snapshot) restic takes a file from
        it unread when size, mtime, inode and ctime match; ``ignore_inode`` and
        ``ignore_ctime`` leave those out of the comparison, for a snapshot whose provider
        vouches that size and mtime tell every change (a copy's inode and ctime are new
        each time). Without a parent the ignore flags mean nothing and are not passed.
        """
        argv, cwd = self._backup_argv(source, host, tags)
        if parent is not None:
            flags = ["--parent", parent]
            flags += ["--ignore-inode"] if ignore_inode else []
            flags += ["--ignore-ctime"] if ignore_ctime else []
            argv[-1:-1] = flags
        reader = BackupOutput(progress)
        returncode, stderr = self._stream(argv, cwd, reader.line)
        if returncode != 0:
            self._raise(argv, returncode, stderr, reader.summary)
        return reader.upload(self._show(argv))

    def backup_bytes(
        self, data: bytes, filename: str, *, host: str, tags: dict[str, str]
    ) -> Upload:
        """Store ``data`` as the one file ``/filename`` of a new snapshot."""
        argv = self._backup_bytes_argv(filename, host, tags)
        reader = BackupOutput(None)
        for line in self._run(argv, data=data).splitlines():
            reader.line(line)
        return reader.upload(self._show(argv))

    def find(self, tags: dict[str, str]) -> list[StoredSnapshot]:
        """The snapshots carrying all of ``tags`` (all snapshots for ``{}``), oldest first."""
        argv = [*self._base(), "snapshots", "--json", *self._tag_args(tags)]
        output = self._run(argv)
        try:
            records = json.loads(output) or []
            found = [_stored_snapshot(record) for record in records]
        except (ValueError, KeyError, TypeError) as exc:
            raise MoverError(
                f"could not read restic's snapshot list ({exc}); command: {self._show(argv)}"
            ) from exc
        return sorted(found, key=lambda snapshot: snapshot.time)

    def read_file(self, snapshot_id: str, filename: str) -> bytes:
        """The contents of ``filename`` (relative to the snapshot's root) in one snapshot."""
        path = filename if filename.startswith("/") else f"/{filename}"
        return self._run([*self._base(), "dump", snapshot_id, path])

    def restore(
        self, snapshot_id: str, target: Path, *, progress: ProgressCallback | None = None
    ) -> None:
        """Restore a snapshot into ``target``, which must be empty or not exist yet.

        restic 0.14 reports no progress for a restore, so ``progress`` is never called.
        """
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise MoverError(
                f"restore target {target} is not an empty directory: "
                "choose a new or empty directory to restore snapshot "
                f"{snapshot_id} into"
            )
        self._run([*self._base(), "restore", snapshot_id, "--target", str(target)])

    def forget(self, snapshot_ids: Sequence[str]) -> None:
        """``restic forget ID...``: one call for all of them (restic takes its exclusive
        lock once; a backup running meanwhile makes restic wait or fail, never half-do)."""
        if snapshot_ids:
            self._run([*self._base(), "forget", *snapshot_ids])

    def prune(self) -> None:
        """``restic prune``: reclaim the space of forgotten snapshots."""
        self._run([*self._base(), "prune"])

    def repository_size(self) -> int:
        """``restic stats --mode raw-data``: what the repository's packs hold."""
        output = self._run([*self._base(), "stats", "--mode", "raw-data", "--json"])
        try:
            return int(json.loads(output)["total_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MoverError(f"restic stats printed no total_size: {output[:200]!r}") from exc

    def check(self, read_data_subset: str | None = None) -> RepositoryCheck:
        """``restic check [--read-data-subset X]``, which takes restic's exclusive lock.

        restic exits 1 both when it found damage and when it could not open or lock the
        repository; the second is raised (like every other command's failure), anything
        else that stopped the check is reported as the check's failure.
        """
        argv = [*self._base(), "check"]
        if read_data_subset is not None:
            argv += ["--read-data-subset", read_data_subset]
        started = time.monotonic()
        returncode, stdout, stderr = self._call(argv)
        seconds = time.monotonic() - started
        lowered = stderr.decode(errors="replace").lower()
        found = any(text in lowered for text in _CHECK_FOUND)
        if returncode != 0 and not found and any(text in lowered for text in _CHECK_ACCESS):
            self._raise(argv, returncode, stderr)
        lines = (stdout + b"\n" + stderr).decode(errors="replace").splitlines()
        kept = [line.rstrip() for line in lines if line.strip()]
        return RepositoryCheck(
            ok=returncode == 0,
            seconds=seconds,
            output=kept[-_CHECK_TAIL_LINES:],
            read_data_subset=read_data_subset,
        )

    def snapshot_sizes(self, snapshot_ids: Sequence[str]) -> dict[str, int]:
        """The sum of the file sizes in each snapshot, from ``restic find '*'``: every node
        of every snapshot in one call per :data:`_FIND_BATCH` snapshots.

        That sum is what ``restic backup`` reports as ``total_bytes_processed``: each
        regular file's size, a hard link counted each time it appears. ``restic stats
        --mode restore-size`` counts an inode once, so it falls short for a tree with hard
        links; ``restic ls`` gives the right sum but takes one call per snapshot.
        """
        sizes: dict[str, int] = {}
        unique = list(dict.fromkeys(snapshot_ids))
        for start in range(0, len(unique), _FIND_BATCH):
            batch = unique[start : start + _FIND_BATCH]
            argv = [*self._base(), "find", "--json"]
            for snapshot_id in batch:
                argv += ["--snapshot", snapshot_id]
            argv.append("*")  # every node: a name pattern that matches any name
            reader = FindSizes()
            returncode, stderr = self._pipe(argv, None, reader.read)
            if returncode != 0:
                self._raise(argv, returncode, stderr)
            try:
                found = reader.sizes()
            except ValueError as exc:
                raise MoverError(
                    f"could not read the file sizes restic find reported: {exc}; "
                    f"run `restic check` (command: {self._show(argv)})"
                ) from exc
            for snapshot_id in batch:
                matches = [size for full, size in found.items() if full.startswith(snapshot_id)]
                if matches:
                    sizes[snapshot_id] = matches[0]
        return sizes

    # -- plumbing -------------------------------------------------------------------

    def _base(self) -> list[str]:
        # no repository here: it goes in RESTIC_REPOSITORY (see _env), never on argv
        argv = [self.restic]
        if self.cache_dir is not None:
            argv += ["--cache-dir", str(self.cache_dir)]
        return argv

    def _tag_args(self, tags: Mapping[str, str]) -> list[str]:
        return ["--tag", render_tags(tags)] if tags else []

    def _backup_argv(
        self, source: Path, host: str, tags: Mapping[str, str]
    ) -> tuple[list[str], Path]:
        argv = [*self._base(), "backup", "--json", "--host", host, *self._tag_args(tags)]
        argv.append("." if source.is_dir() else source.name)
        return argv, self.backup_cwd(source)

    def _backup_bytes_argv(self, filename: str, host: str, tags: Mapping[str, str]) -> list[str]:
        argv = [*self._base(), "backup", "--json", "--host", host]
        return [*argv, *self._tag_args(tags), "--stdin", "--stdin-filename", filename]

    def _env(self) -> dict[str, str]:
        if not self.access.password:
            raise MoverError(f"the repository {self._url()} has an empty password: set one")
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": os.environ.get("HOME", "/root"),
        }
        if "TMPDIR" in os.environ:
            env["TMPDIR"] = os.environ["TMPDIR"]
        env.update(self.extra_env)
        env["RESTIC_REPOSITORY"] = self.access.url
        env["RESTIC_PASSWORD"] = self.access.password
        return env

    def _spawn(self, argv: list[str], cwd: Path | None, stdin: int) -> subprocess.Popen[bytes]:
        _log.debug(
            "restic: %s%s", f"cd {shlex.quote(str(cwd))} && " if cwd else "", self._show(argv)
        )
        try:
            return subprocess.Popen(
                argv,
                cwd=cwd,
                env=self._env(),
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            if cwd is not None and not cwd.is_dir():
                raise MoverError(f"cannot back up from {cwd}: no such directory") from exc
            raise MoverError(f"restic not found (tried {self.restic!r}): {_INSTALL_HINT}") from exc
        except OSError as exc:
            raise MoverError(f"cannot start restic ({self.restic!r}): {exc}") from exc

    def _call(
        self, argv: list[str], *, data: bytes | None = None, cwd: Path | None = None
    ) -> tuple[int, bytes, bytes]:
        stdin = subprocess.PIPE if data is not None else subprocess.DEVNULL
        started = time.monotonic()
        with self._spawn(argv, cwd, stdin) as proc:
            stdout, stderr = proc.communicate(data)
        _ended(argv, proc.returncode, started)
        return proc.returncode, stdout, stderr

    def _run(self, argv: list[str], *, data: bytes | None = None) -> bytes:
        returncode, stdout, stderr = self._call(argv, data=data)
        if returncode != 0:
            self._raise(argv, returncode, stderr)
        return stdout

    def _stream(
        self, argv: list[str], cwd: Path, on_line: Callable[[bytes], None]
    ) -> tuple[int, bytes]:
        """Run restic, handing each stdout line to ``on_line`` as it comes."""

        def lines(stdout: IO[bytes]) -> None:
            for line in stdout:
                on_line(line)

        return self._pipe(argv, cwd, lines)

    def _pipe(
        self, argv: list[str], cwd: Path | None, consume: Callable[[IO[bytes]], None]
    ) -> tuple[int, bytes]:
        """Run restic with ``consume`` reading its stdout; its exit status and stderr tail.

        Should ``consume`` raise, restic is interrupted first, so that it drops its lock.
        """
        tail: deque[bytes] = deque(maxlen=_STDERR_LINES)
        started = time.monotonic()
        with self._spawn(argv, cwd, subprocess.DEVNULL) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            drain = threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True)
            drain.start()
            try:
                consume(proc.stdout)
            except BaseException:
                _interrupt(proc)
                raise
            finally:
                proc.wait()
                drain.join()
        _ended(argv, proc.returncode, started)
        return proc.returncode, b"".join(tail)

    def _raise(
        self,
        argv: list[str],
        returncode: int,
        stderr: bytes,
        summary: Mapping[str, Any] | None = None,
    ) -> NoReturn:
        message = _restic_message(stderr) or f"exit status {returncode}, no message"
        command = self._show(argv)
        lowered = message.lower()
        if "repository is already locked" in lowered:
            raise MoverError(
                f"the repository {self._url()} is locked by another restic process: {message}. "
                "Wait for it to finish; if it is gone, remove the stale lock with "
                f"`{self._show([self.restic, 'unlock'])}` (command: {command})"
            )
        if "wrong password" in lowered:
            raise MoverError(
                f"wrong password for the repository {self._url()}: restic says {message!r}; "
                f"check the repository password in the configuration (command: {command})"
            )
        if returncode == _RESTIC_INTERRUPTED:
            raise ResticInterrupted(
                f"interrupted: restic was stopped by SIGINT (Ctrl-C) (command: {command})"
            )
        if returncode == 3 and summary is not None:
            message = (
                f"some source files could not be read, snapshot {summary.get('snapshot_id')} "
                f"is incomplete: {message}"
            )
        raise MoverError(f"restic failed (exit {returncode}): {message} (command: {command})")

    def _url(self) -> str:
        return redact_url(self.access.url)

    def _repository_word(self) -> str:
        return f"RESTIC_REPOSITORY={self._url()}"

    def _show(self, argv: list[str]) -> str:
        """``argv`` as the shell line that runs it: the repository (masked) in front."""
        return f"RESTIC_REPOSITORY={shlex.quote(self._url())} {shlex.join(argv)}"


def _stored_snapshot(record: Mapping[str, Any]) -> StoredSnapshot:
    return StoredSnapshot(
        snapshot_id=str(record.get("short_id") or str(record["id"])[:8]),
        time=datetime.fromisoformat(record["time"]),
        host=str(record.get("hostname", "")),
        tags=parse_tags(record.get("tags") or []),
        paths=list(record.get("paths") or []),
    )


def _ended(argv: list[str], returncode: int, started: float) -> None:
    command = next((arg for arg in argv[1:] if not arg.startswith("-")), argv[0])
    _log.debug("restic %s: exit %d after %.2f s", command, returncode, time.monotonic() - started)


def _drain(stream: IO[bytes], tail: deque[bytes]) -> None:
    for line in stream:
        tail.append(line)


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    """Stop restic so that it removes its lock (SIGINT), killing it if it does not stop."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _restic_message(stderr: bytes) -> str:
    """restic's own message: the last meaningful stderr lines, on one line."""
    text = _TERMINAL_CODES.sub("", stderr.decode(errors="replace"))  # "\x1b[2K" and kin
    lines = [line.strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line.startswith("reading repository password")]
    locked = [i for i, line in enumerate(kept) if "already locked" in line]
    start = locked[-1] if locked else max(0, len(kept) - _MESSAGE_LINES)
    return "; ".join(kept[start : start + _MESSAGE_LINES])
