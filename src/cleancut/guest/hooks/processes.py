"""The processes of a hook script: its bounded output, its process group, what it leaves behind.

qemu's ``fsfreeze-hook.d/mysql-flush.sh`` sample is the model of a *holder*: on ``freeze``
it starts a background client that takes ``FLUSH TABLES WITH READ LOCK`` and waits on a
FIFO, and exits 0 while that client holds the lock; on ``thaw`` it writes to the FIFO and
the client unlocks. The holder is part of the hold, so it ends with the holds: after its
hook's thaw script ran it gets :data:`LEFTOVER_GRACE` seconds to go by itself, then
SIGTERM, then SIGKILL (:func:`end_leftovers`).

Scripts run in their own session, so a holder shares the script's process group unless
it left it on purpose (``setsid``, a daemon), and is then its own business. Leftovers are
signalled through pidfds, so a pid that was reused meanwhile is never hit.

A holder's stdout and stderr are usually the script's pipes. They are drained in a thread
until they close: a holder that writes after its script exited must neither block on a
full pipe nor die of SIGPIPE (qemu-ga hands its hooks a log file, where writes never
fail), and what it wrote is reported with its hook's thaw run.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

#: How long a killed script's group has after SIGTERM before SIGKILL.
KILL_GRACE = 2.0
#: How long a freeze script's leftovers may take to exit by themselves after its thaw script.
LEFTOVER_GRACE = 2.0
#: How long a holder's pipes are still read once it is gone (another process may keep them).
CLOSE_GRACE = 0.2
#: The most :func:`end_leftovers` takes for one hook: grace, SIGTERM, SIGKILL, last output.
LEFTOVER_BOUND = LEFTOVER_GRACE + 2 * KILL_GRACE + CLOSE_GRACE
#: How much of what a holder writes after its script exited is kept, per stream.
LEFTOVER_OUTPUT = 4096
_POLL = 0.01


class Tail:
    """The last ``limit`` bytes of a stream, and how many came before them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        body = self.data.decode("utf-8", errors="replace")
        dropped = self.total - len(self.data)
        if dropped:
            return f"[cleancut: output truncated, first {dropped} bytes dropped]\n{body}"
        return body


def live_members(pgid: int) -> list[int]:
    """Pids in group ``pgid`` that are not zombies (an unreaped zombie cannot be killed)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _group_of(int(entry)) == pgid:
            members.append(int(entry))
    return members


def _group_of(pid: int) -> int | None:
    """The process group of ``pid``, or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return None if fields[0] == b"Z" else int(fields[2])


def _command_of(pid: int) -> str:
    """The program ``pid`` runs (its executable; never its arguments, which may hold a
    password such as ``mysql -pSECRET``)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/comm", "rb") as handle:
            return handle.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return "?"


@dataclass(frozen=True)
class EndedProcess:
    """A leftover that had to be signalled: its pid, command name and the last signal sent.

    ``survived`` is True when it was still there after SIGKILL (stuck in the kernel)."""

    pid: int
    command: str
    signal: str
    survived: bool = False


@dataclass(frozen=True)
class LeftoverEnd:
    """What became of one script run's leftovers when the holds ended.

    ``exited``: the pids that went by themselves within ``grace`` seconds (not killed);
    ``ended``: those signalled; ``stdout``/``stderr``: what the leftovers wrote after the
    script exited (a tail of :data:`LEFTOVER_OUTPUT` bytes each).
    """

    pgid: int
    grace: float
    exited: tuple[int, ...]
    ended: tuple[EndedProcess, ...]
    stdout: str
    stderr: str

    def note(self) -> str:
        """Lines for the record of the run that ended them (empty when nothing is worth it)."""
        lines = []
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text:
                lines.append(f"[cleancut: its freeze script's leftover processes wrote on {name}:]")
                lines.append(text.rstrip("\n"))
        if self.ended:
            how = ", ".join(
                f"{p.pid} ({p.command}) by {p.signal}{', still running' if p.survived else ''}"
                for p in self.ended
            )
            lines.append(
                f"[cleancut: its freeze script's leftover processes (group {self.pgid}) "
                f"were still running {self.grace:g}s after this script; ended: {how}]"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pgid": self.pgid,
            "grace": self.grace,
            "exited": list(self.exited),
            "ended": [p.__dict__ for p in self.ended],
        }


class Leftovers:
    """The processes one script run left in its process group, and the pipes they still hold.

    ``streams`` maps "stdout"/"stderr" to the script's pipes that had not reached
    end-of-file when it exited. A thread drains them (into a bounded tail) and watches the
    members through pidfds: the moment the last one exits, :attr:`empty` is set and the
    group is never signalled again — its number may then be reused by an unrelated group.
    """

    def __init__(self, pgid: int, pids: Sequence[int], streams: dict[str, IO[bytes]]) -> None:
        self.pgid = pgid
        self.pids = tuple(pids)
        self.commands = {pid: _command_of(pid) for pid in pids}
        self.empty = threading.Event()
        self.result: LeftoverEnd | None = None
        self._streams = streams
        self._tails = {name: Tail(LEFTOVER_OUTPUT) for name in streams}
        self._watched: dict[int, int] = {}  # pidfd -> pid
        self._pidfds = True
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name=f"cleancut-leftovers-{pgid}", daemon=True
        )
        self._thread.start()

    def describe(self) -> str:
        """``pid (program)`` of each process left, for the record of the run that left them."""
        return ", ".join(f"{pid} ({command})" for pid, command in self.commands.items())

    def close(self) -> tuple[str, str]:
        """Stop watching (after :data:`CLOSE_GRACE` for the pipes to close by themselves)
        and close the pipes; the processes are left alone. Returns what they wrote."""
        self._thread.join(CLOSE_GRACE)
        self._stop.set()
        self._thread.join()
        for stream in self._streams.values():
            stream.close()
        self._streams = {}
        return (
            self._tails["stdout"].text() if "stdout" in self._tails else "",
            self._tails["stderr"].text() if "stderr" in self._tails else "",
        )

    def _watch(self) -> None:
        with selectors.DefaultSelector() as selector:
            for name, stream in self._streams.items():
                selector.register(stream, selectors.EVENT_READ, self._tails[name])
            try:
                self._follow(selector)
                while not self._stop.is_set() and (selector.get_map() or not self.empty.is_set()):
                    for key, _ in selector.select(0.05):
                        if key.data is None:  # a member exited
                            selector.unregister(key.fd)
                            os.close(key.fd)
                            del self._watched[key.fd]
                        else:
                            _read_into(selector, key)
                    if not self._watched and not self.empty.is_set():
                        self._follow(selector)  # what the group forked meanwhile, if anything
            finally:
                for fd in self._watched:
                    os.close(fd)
                self._watched = {}

    def _follow(self, selector: selectors.BaseSelector) -> None:
        """Watch the group's live members not watched yet; :attr:`empty` when none is left."""
        members = live_members(self.pgid)
        if not members:
            self.empty.set()
            return
        if not self._pidfds:
            return  # no pidfds here: the loop looks again at its next turn
        known = set(self._watched.values())
        for pid in members:
            if pid in known:
                continue
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError:
                self._pidfds = False
                return
            if _group_of(pid) != self.pgid:
                os.close(fd)
                continue
            self._watched[fd] = pid
            selector.register(fd, selectors.EVENT_READ, None)


def _read_into(selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    try:
        chunk = os.read(key.fd, 65536)
    except BlockingIOError:
        return
    if chunk:
        key.data.add(chunk)
    else:
        selector.unregister(key.fileobj)


def end_leftovers(
    groups: Sequence[Leftovers], *, grace: float | None = None, kill_grace: float | None = None
) -> list[LeftoverEnd]:
    """End what ``groups`` left running, once each: ``grace`` seconds (default
    :data:`LEFTOVER_GRACE`) to exit by themselves — the thaw script has just told them to —
    then SIGTERM, then SIGKILL after ``kill_grace`` (default :data:`KILL_GRACE`).

    A process that exits by itself within the grace is reported as exited, not as ended.
    Called again, a group returns what it returned the first time.
    """
    grace = LEFTOVER_GRACE if grace is None else grace
    kill_grace = KILL_GRACE if kill_grace is None else kill_grace
    pending = [group for group in groups if group.result is None]
    until = time.monotonic() + grace
    for group in pending:
        group.empty.wait(max(0.0, until - time.monotonic()))
    members: dict[int, _Member] = {}
    for group in pending:
        if not group.empty.is_set():  # an emptied group's number may belong to another now
            members.update(_open_members(group.pgid))
    ended = _terminate(members, pending, kill_grace)  # adds what the groups forked meanwhile
    group_of = {pid: member.pgid for pid, member in members.items()}
    for group in pending:
        stdout, stderr = group.close()
        killed = tuple(e for e in ended if group_of.get(e.pid) == group.pgid)
        gone = tuple(pid for pid in group.pids if pid not in {e.pid for e in killed})
        group.result = LeftoverEnd(group.pgid, grace, gone, killed, stdout, stderr)
    return [group.result for group in groups if group.result is not None]


class _Member:
    """One live process of a group, held by a pidfd so that a reused pid is never signalled."""

    def __init__(self, pid: int, pgid: int, fd: int | None) -> None:
        self.pid = pid
        self.pgid = pgid
        self.fd = fd
        self.command = _command_of(pid)
        self.sent = ""

    @classmethod
    def open(cls, pid: int, pgid: int) -> _Member | None:
        """The member ``pid`` if it still is one once its pidfd is open (checked after the
        open, so a descriptor of another process that took the pid is refused)."""
        try:
            fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError:  # no pidfds here (old kernel, seccomp): signal by pid
            fd = None
        if _group_of(pid) != pgid:
            if fd is not None:
                os.close(fd)
            return None
        return cls(pid, pgid, fd)

    def send(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, sig)
            else:
                os.kill(self.pid, sig)
        self.sent = sig.name

    def gone(self) -> bool:
        if self.fd is None:
            return _group_of(self.pid) != self.pgid
        readable, _, _ = select.select([self.fd], [], [], 0)
        return bool(readable)  # a pidfd turns readable when its process exits

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _open_members(pgid: int, known: dict[int, _Member] | None = None) -> dict[int, _Member]:
    """The live members of ``pgid`` not in ``known`` yet, by pid."""
    known = known or {}
    found = {}
    for pid in live_members(pgid):
        if pid not in known and (member := _Member.open(pid, pgid)) is not None:
            found[pid] = member
    return found


def _terminate(
    members: dict[int, _Member], groups: Sequence[Leftovers], kill_grace: float
) -> list[EndedProcess]:
    """SIGTERM every member, SIGKILL those still there after ``kill_grace``; a process a
    group forks meanwhile (a shell's trap) gets the same, until that group is empty."""
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            until = time.monotonic() + kill_grace
            while True:
                for group in groups:
                    if not group.empty.is_set():
                        members.update(_open_members(group.pgid, members))
                alive = [m for m in members.values() if not m.gone()]
                for member in alive:
                    if member.sent != sig.name:
                        member.send(sig)
                if not alive or time.monotonic() >= until:
                    break
                time.sleep(_POLL)
        return [
            EndedProcess(m.pid, m.command, m.sent, survived=not m.gone())
            for m in members.values()
            if m.sent
        ]
    finally:
        for member in members.values():
            member.close()
