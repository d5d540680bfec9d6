"""Running one phase of one hook: from its checked descriptor, bounded in time and output.

Before each run the whole command passes :func:`~cleancut.guest.security.check_hook_command`
(the script, its ``#!`` interpreters, what ``env`` runs, every file an argument names);
the script is then executed through ``/proc/self/fd/N`` of the descriptor that check
opened, so the file that runs is the file that was checked (a rename or swap after the
check changes nothing). It runs as an argv list without a shell, in a
clean environment, from ``/``, in its own session so a timeout can kill everything it
started. Refusals and start failures come back as a failed :class:`HookRun` rather than an
exception, so the caller still runs the post-scripts (Azure semantics, DESIGN.md §3a).

Because the script is executed through its descriptor, an interpreted script sees ``$0``
as ``/proc/self/fd/N``; its real path is in ``CLEANCUT_SCRIPT``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import IO

from cleancut.errors import CleancutError
from cleancut.guest.hooks.spec import HookSpec, Phase
from cleancut.guest.security import HOOK_PATH, TrustedFile, check_hook_command
from cleancut.manifest import HookRun

CLEAN_PATH = HOOK_PATH
KILL_GRACE = 2.0
#: How long output is still read after the script exited, for children that keep its pipes.
DRAIN_GRACE = 0.2
_POLL = 0.05


@dataclass
class _Attempt:
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str


class _Tail:
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


def run_hook(
    spec: HookSpec,
    phase: Phase,
    *,
    env_extra: dict[str, str] | None = None,
    output_limit: int = 65536,
) -> HookRun:
    """Run ``phase``'s script of ``spec`` (re-running it up to its retries) and record the run.

    ``host`` in the returned record is empty: the agent fills it in.

    Raises:
        ValueError: ``spec`` has no script for ``phase`` (the caller should skip it).
    """
    argv = spec.argv(phase)
    if argv is None:
        raise ValueError(f"hook {spec.name} has no {phase} script")
    started = time.monotonic()
    record = HookRun(
        host="",
        hook=spec.name,
        source=spec.source,
        phase=phase,
        argv=list(argv),
        ok=False,
        returncode=None,
        attempts=0,
        duration=0.0,
    )
    try:
        with check_hook_command(argv, spec.sha256(phase)) as script:
            env = _environment(spec, phase, script, env_extra)
            record = _run_attempts(spec, phase, script, env, output_limit, record)
    except CleancutError as exc:
        record = record.model_copy(update={"error": exc.message})
    return record.model_copy(update={"duration": time.monotonic() - started})


def _run_attempts(
    spec: HookSpec,
    phase: Phase,
    script: TrustedFile,
    env: dict[str, str],
    output_limit: int,
    record: HookRun,
) -> HookRun:
    argv = record.argv
    for attempt in range(1, spec.retries(phase) + 2):
        try:
            result = _attempt(script.fd, argv, env, spec.timeout, output_limit)
        except OSError as exc:
            return record.model_copy(
                update={"attempts": attempt, "error": f"{argv[0]}: cannot start: {exc.strerror}"}
            )
        ok = result.returncode == 0 and not result.timed_out
        error: str | None
        if result.timed_out:
            error = f"timed out after {spec.timeout:g}s; its process group was killed"
        else:
            error = None if ok else f"exited with status {result.returncode}"
        record = record.model_copy(
            update={
                "ok": ok,
                "returncode": result.returncode,
                "attempts": attempt,
                "timed_out": result.timed_out,
                "stdout": result.stdout,
                "stderr": result.stderr,
                "error": error,
            }
        )
        if ok:
            break
    return record


def _environment(
    spec: HookSpec, phase: Phase, script: TrustedFile, extra: dict[str, str] | None
) -> dict[str, str]:
    """A clean environment: nothing of the agent's own leaks into a root script."""
    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        home = "/"
    env = {
        "PATH": CLEAN_PATH,
        "LANG": "C.UTF-8",
        "HOME": home,
        "CLEANCUT_PHASE": phase,
        "CLEANCUT_HOOK": spec.name,
        "CLEANCUT_SCRIPT": str(script.path),
    }
    env.update(extra or {})
    return env


def _attempt(fd: int, argv: list[str], env: dict[str, str], timeout: float, limit: int) -> _Attempt:
    """One run of the script behind ``fd``; kills its whole process group on timeout."""
    proc = subprocess.Popen(
        argv,
        executable=f"/proc/self/fd/{fd}",
        pass_fds=(fd,),
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    out, err = _Tail(limit), _Tail(limit)
    timed_out = False
    try:
        assert proc.stdout is not None and proc.stderr is not None
        _collect(proc, {proc.stdout: out, proc.stderr: err}, deadline)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        if timed_out or proc.poll() is None:
            _kill_group(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return _Attempt(proc.returncode, timed_out, out.text(), err.text())


def _collect(proc: subprocess.Popen[bytes], tails: dict[IO[bytes], _Tail], deadline: float) -> None:
    """Read both pipes until they close, the deadline passes, or shortly after the exit."""
    with selectors.DefaultSelector() as selector:
        for stream, tail in tails.items():
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ, tail)
        exited_at: float | None = None
        while selector.get_map():
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            stop = deadline if exited_at is None else min(deadline, exited_at + DRAIN_GRACE)
            if now >= stop:
                return
            for key, _ in selector.select(min(stop - now, _POLL)):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.add(chunk)
                else:
                    selector.unregister(key.fileobj)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the script's process group, SIGKILL whatever is left after KILL_GRACE."""
    pgid = proc.pid  # start_new_session: the script leads its own group
    _signal_group(pgid, signal.SIGTERM)
    end = time.monotonic() + KILL_GRACE
    while time.monotonic() < end:
        proc.poll()
        if not _live_members(pgid):
            break
        time.sleep(_POLL)
    else:
        _signal_group(pgid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _live_members(pgid: int) -> list[int]:
    """Pids in group ``pgid`` that are not zombies (an unreaped zombie cannot be killed)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members
