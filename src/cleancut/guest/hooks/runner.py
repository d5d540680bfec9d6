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

A script may leave processes running in its group when it exits (a freeze script's lock
holder, as in qemu's ``mysql-flush.sh``). Its run is over when the script exits — its
duration and exit code are the script's own, and its output is what it wrote until then
(plus :data:`DRAIN_GRACE`) — and :func:`run_hook_tracked` hands what is left, with the
pipes it still holds, to the caller as :class:`~cleancut.guest.hooks.processes.Leftovers`
to end when the holds end.
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
from cleancut.guest.hooks.processes import KILL_GRACE, Leftovers, Tail, live_members
from cleancut.guest.hooks.spec import HookSpec, Phase
from cleancut.guest.security import HOOK_PATH, TrustedFile, check_hook_command
from cleancut.manifest import HookRun

__all__ = ["CLEAN_PATH", "DRAIN_GRACE", "KILL_GRACE", "run_hook", "run_hook_tracked"]

CLEAN_PATH = HOOK_PATH
#: How long output is still read after the script exited, for children that keep its pipes.
DRAIN_GRACE = 0.2
_POLL = 0.05


@dataclass
class _Attempt:
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    #: ``time.monotonic()`` when the script exited (or its group was killed)
    ended: float
    leftovers: Leftovers | None = None


def run_hook(
    spec: HookSpec,
    phase: Phase,
    *,
    env_extra: dict[str, str] | None = None,
    output_limit: int = 65536,
) -> HookRun:
    """Run ``phase``'s script of ``spec`` (re-running it up to its retries) and record the run.

    ``host`` in the returned record is empty: the agent fills it in. Processes the script
    leaves running are left alone (their pipes are closed); see :func:`run_hook_tracked`.

    Raises:
        ValueError: ``spec`` has no script for ``phase`` (the caller should skip it).
    """
    return _run_hook(spec, phase, env_extra, output_limit, track=False)[0]


def run_hook_tracked(
    spec: HookSpec,
    phase: Phase,
    *,
    env_extra: dict[str, str] | None = None,
    output_limit: int = 65536,
) -> tuple[HookRun, list[Leftovers]]:
    """:func:`run_hook`, and what each attempt left running in its process group.

    The leftovers' pipes keep being drained; the caller ends them with
    :func:`~cleancut.guest.hooks.processes.end_leftovers` (a freeze script's holder, when
    the holds end) or lets them be with :meth:`Leftovers.close`.

    Raises:
        ValueError: ``spec`` has no script for ``phase`` (the caller should skip it).
    """
    return _run_hook(spec, phase, env_extra, output_limit, track=True)


def _run_hook(
    spec: HookSpec,
    phase: Phase,
    env_extra: dict[str, str] | None,
    output_limit: int,
    *,
    track: bool,
) -> tuple[HookRun, list[Leftovers]]:
    argv = spec.argv(phase)
    if argv is None:
        raise ValueError(f"hook {spec.name} has no {phase} script")
    started = time.monotonic()
    ended: float | None = None
    leftovers: list[Leftovers] = []
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
            record, ended = _run_attempts(
                spec, phase, script, env, output_limit, record, leftovers if track else None
            )
    except CleancutError as exc:
        record = record.model_copy(update={"error": exc.message})
    # the script's own time: not the drain after it exited, nor the checks' closing
    duration = (ended if ended is not None else time.monotonic()) - started
    return record.model_copy(update={"duration": duration}), leftovers


def _run_attempts(
    spec: HookSpec,
    phase: Phase,
    script: TrustedFile,
    env: dict[str, str],
    output_limit: int,
    record: HookRun,
    leftovers: list[Leftovers] | None,
) -> tuple[HookRun, float | None]:
    """Each attempt until one succeeds; the record, and when the last attempt ended.

    With ``leftovers`` (a list), what each attempt left running is appended to it."""
    argv = record.argv
    ended: float | None = None
    track = leftovers is not None
    for attempt in range(1, spec.retries(phase) + 2):
        try:
            result = _attempt(script.fd, argv, env, spec.timeout, output_limit, track)
        except OSError as exc:
            failed = f"{argv[0]}: cannot start: {exc.strerror}"
            return record.model_copy(update={"attempts": attempt, "error": failed}), ended
        ended = result.ended
        if result.leftovers is not None and leftovers is not None:
            leftovers.append(result.leftovers)
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
    return record, ended


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


def _attempt(
    fd: int, argv: list[str], env: dict[str, str], timeout: float, limit: int, track: bool
) -> _Attempt:
    """One run of the script behind ``fd``; kills its whole process group on timeout.

    With ``track``, processes it left running in its group come back as leftovers, with
    the pipes they still hold; otherwise those pipes are closed and they are left alone.
    """
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
    assert proc.stdout is not None and proc.stderr is not None
    streams = {"stdout": proc.stdout, "stderr": proc.stderr}
    deadline = time.monotonic() + timeout
    out, err = Tail(limit), Tail(limit)
    timed_out = False
    exited_at: float | None = None
    still_open: list[str] | None = None  # set once the pipes were read to the end
    leftovers = None
    try:
        exited_at, still_open = _collect(proc, streams, {"stdout": out, "stderr": err}, deadline)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        if timed_out or proc.poll() is None:
            _kill_group(proc)
        elif track and still_open is not None:
            leftovers = _left_behind(proc.pid, {name: streams[name] for name in still_open})
        for name, stream in streams.items():
            if leftovers is None or name not in (still_open or ()):
                stream.close()
    ended = time.monotonic() if exited_at is None or timed_out else exited_at
    return _Attempt(proc.returncode, timed_out, out.text(), err.text(), ended, leftovers)


def _left_behind(pgid: int, streams: dict[str, IO[bytes]]) -> Leftovers | None:
    """What the exited script left running in its group (it led the group), if anything."""
    members = live_members(pgid)
    return Leftovers(pgid, members, streams) if members else None


def _collect(
    proc: subprocess.Popen[bytes],
    streams: dict[str, IO[bytes]],
    tails: dict[str, Tail],
    deadline: float,
) -> tuple[float | None, list[str]]:
    """Read both pipes until they close, the deadline passes, or shortly after the exit.

    Returns when the script exited (None: not seen yet) and the streams still open.
    """
    with contextlib.ExitStack() as stack:
        selector = stack.enter_context(selectors.DefaultSelector())
        for name, stream in streams.items():
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ, tails[name])
        exit_fd = _pidfd(proc.pid)
        if exit_fd is not None:  # wakes the loop at the exit: the duration is exact
            stack.callback(os.close, exit_fd)
            selector.register(exit_fd, selectors.EVENT_READ, None)
        exited_at: float | None = None
        while _registered(selector) - {exit_fd}:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                if exit_fd is not None:
                    selector.unregister(exit_fd)
            stop = deadline if exited_at is None else min(deadline, exited_at + DRAIN_GRACE)
            if now >= stop:
                break
            for key, _ in selector.select(min(stop - now, _POLL)):
                if key.data is None:
                    continue  # the exit: noticed by poll() at the top of the loop
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.add(chunk)
                else:
                    selector.unregister(key.fileobj)
        still_open = [name for name, stream in streams.items() if stream in _registered(selector)]
    return exited_at, still_open


def _registered(selector: selectors.BaseSelector) -> set[object]:
    return {key.fileobj for key in selector.get_map().values()}


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the script's process group, SIGKILL whatever is left after KILL_GRACE."""
    pgid = proc.pid  # start_new_session: the script leads its own group
    _signal_group(pgid, signal.SIGTERM)
    end = time.monotonic() + KILL_GRACE
    while time.monotonic() < end:
        proc.poll()
        if not live_members(pgid):
            break
        time.sleep(_POLL)
    else:
        _signal_group(pgid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
