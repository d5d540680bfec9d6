"""The hooks of one cut: which pre-scripts ran, which post-scripts are owed, and the pause.

Azure's rule, which cleancut keeps: a post-script runs whenever its pre-script ran — even
after failures, even when the pre-script itself failed (it may have quiesced half the
application). Post-scripts may be run from two threads: the session's (at ``thaw`` or
``release``) and the watchdog's (at the deadline), so the bookkeeping is locked and each
post-script runs once. The application's *pause* runs from the first pre-script's start
to the last post-script's end, on the monotonic clock.

A pre-script may leave processes behind that hold the application (qemu's
``mysql-flush.sh`` keeps a client holding ``FLUSH TABLES WITH READ LOCK`` until its thaw
call). They are part of the hold: when the holds end — the thaw, the watchdog's deadline,
the guest's release — the hook's post-script runs first (it tells them to let go), then
whatever is still left in the pre-script's process group is ended
(:func:`~cleancut.guest.hooks.processes.end_leftovers`). The pre-script's record names
what it left; the post-script's record says what had to be killed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cleancut.guest.hooks import HookSpec, run_hook
from cleancut.guest.hooks.processes import KILL_GRACE, LEFTOVER_BOUND, Leftovers, end_leftovers
from cleancut.guest.hooks.runner import run_hook_tracked
from cleancut.guest.security import check_hook_command
from cleancut.manifest import HookRun


class HookPhases:
    """The pre- and post-scripts of one host for one recovery point."""

    def __init__(
        self, specs: list[HookSpec], rp_id: str = "", all_volumes: list[str] | None = None
    ) -> None:
        self.specs = specs
        self.rp_id = rp_id
        self.all_volumes = list(all_volumes or [])
        self._lock = threading.Lock()
        self._post_lock = threading.Lock()
        self._pre_started: set[str] = set()
        self._pre_finished: set[str] = set()
        self._post_ran: set[str] = set()
        #: what each hook's pre-script left running, until the holds end
        self._leftovers: dict[str, list[Leftovers]] = {}
        self._runs: list[dict[str, Any]] = []
        self._reported = 0
        self._pause_from: float | None = None
        self._pause_until: float | None = None

    def check(self) -> None:
        """Every script passes the security checks before anything runs (HookSecurityError)."""
        for spec in self.specs:
            for argv, pin in ((spec.pre, spec.pre_sha256), (spec.post, spec.post_sha256)):
                if argv is not None:
                    with check_hook_command(argv, pin):
                        pass

    def inventory(self) -> list[dict[str, Any]]:
        """What hello reports per hook: its scripts, time bounds and the volumes it quiesces."""
        return [
            {
                "name": s.name,
                "source": s.source,
                "pre": s.pre,
                "post": s.post,
                "timeout": s.timeout,
                "pre_retries": s.pre_retries,
                "post_retries": s.post_retries,
                "volumes": self.volumes_of(s),
            }
            for s in self.specs
        ]

    def volumes_of(self, spec: HookSpec) -> list[str]:
        """The volumes ``spec`` quiesces: those it names, else all of its host's."""
        named = getattr(spec, "volumes", None)
        return list(self.all_volumes) if named is None else list(named)

    def plan(self) -> list[str]:
        return [
            f"prepare: run pre-script {s.name} ({s.source}): {s.pre}" for s in self.specs if s.pre
        ]

    # -- running -------------------------------------------------------------------------

    def run_pres(
        self, *, on_quiesced: Callable[[], object], expired: Callable[[], bool]
    ) -> list[dict[str, Any]]:
        """Each pre-script in order, until one fails that forbids going on or the holds
        expired; ``on_quiesced`` runs after each (the deadline counts from the first)."""
        runs = []
        for spec in self.specs:
            if spec.pre is None:
                continue
            if expired():
                break
            with self._lock:
                self._pre_started.add(spec.name)
                if self._pause_from is None:
                    self._pause_from = time.monotonic()
            run = self._run_pre(spec)
            on_quiesced()
            runs.append(run)
            if not run["ok"] and not spec.continue_on_failure:
                break
        return runs

    def run_posts(self, *, only_finished: bool = False) -> list[dict[str, Any]]:
        """The post-scripts owed (in reverse order), each once; the runs not reported yet
        (which a reply then carries: see :meth:`run_owed` for a run no reply carries).

        ``only_finished`` (the watchdog's call) skips a hook whose pre-script is still
        running: the session runs that one's post-script when the pre-script returns.
        """
        self.run_owed(only_finished=only_finished)
        return self.take_unreported()

    def run_owed(self, *, only_finished: bool = False) -> None:
        """Run the post-scripts owed now, each followed by the end of what its pre-script
        left running; their runs wait for the next reply to carry them."""
        with self._post_lock:
            for spec in reversed(self.specs):
                run = self._run_post(spec) if self._claim_post(spec, only_finished) else None
                ended = self._end_leftovers(spec.name)
                if run is not None:
                    run["stderr"] = _noted(run["stderr"], ended)
                    with self._lock:
                        self._runs.append(run)
                if run is not None or ended:
                    with self._lock:
                        self._pause_until = time.monotonic()

    def _claim_post(self, spec: HookSpec, only_finished: bool) -> bool:
        """Whether ``spec``'s post-script is owed now; if so it counts as run from here on."""
        with self._lock:
            if spec.post is None or spec.name in self._post_ran:
                return False
            ran = self._pre_finished if only_finished else self._pre_started
            if spec.pre is not None and spec.name not in ran:
                return False
            self._post_ran.add(spec.name)
            return True

    def _end_leftovers(self, name: str) -> str:
        """End what hook ``name``'s pre-script left running; a note of what had to be killed.

        A hook without a post-script has its leftovers ended too: the holds end for it as
        well (its pre-script's record said so)."""
        with self._lock:
            groups = self._leftovers.pop(name, [])
        try:
            notes = [end.note() for end in end_leftovers(groups)]
        except Exception as exc:  # the other hooks' post-scripts must still run
            return f"[cleancut: could not end its freeze script's leftovers: {exc}]"
        return "\n".join(note for note in notes if note)

    def _run_pre(self, spec: HookSpec) -> dict[str, Any]:
        run, leftovers = run_hook_tracked(spec, "pre", env_extra=self._env())
        record = self._record(run, spec, continue_on_failure=spec.continue_on_failure)
        if leftovers:
            left = "; ".join(f"group {g.pgid}: {g.describe()}" for g in leftovers)
            when = "after its post-script" if spec.post is not None else "(it has no post-script)"
            record["stderr"] = _noted(
                record["stderr"],
                f"[cleancut: left running in its process group ({left}); ended {when} "
                "when the holds end, unless they exit by themselves]",
            )
        with self._lock:
            self._leftovers.setdefault(spec.name, []).extend(leftovers)
            self._pre_finished.add(spec.name)
        return record

    def _run_post(self, spec: HookSpec) -> dict[str, Any]:
        return self._record(run_hook(spec, "post", env_extra=self._env()), spec)

    def _env(self) -> dict[str, str]:
        return {"CLEANCUT_RP": self.rp_id}

    def _record(self, run: HookRun, spec: HookSpec, **extra: Any) -> dict[str, Any]:
        record = {**run.model_dump(mode="json"), **extra}
        record["volumes"] = self.volumes_of(spec)
        return record

    def take_unreported(self) -> list[dict[str, Any]]:
        """The post-script runs no reply has carried yet."""
        with self._lock:
            runs = self._runs[self._reported :]
            self._reported = len(self._runs)
        return runs

    # -- what is known ---------------------------------------------------------------------

    def pause(self) -> float | None:
        """First pre-script start → last post-script end, in seconds; None if none ran."""
        with self._lock:
            if self._pause_from is None or self._pause_until is None:
                return None
            return max(0.0, self._pause_until - self._pause_from)

    def not_run(self) -> list[dict[str, str]]:
        """Post-scripts owed (their pre-script ran) that have not run, and why."""
        with self._lock:
            return [
                {"hook": s.name, "why": "its post-script has not run"}
                for s in self.specs
                if s.post is not None
                and s.name in self._pre_started
                and s.name not in self._post_ran
            ]

    def release_bound(self) -> float:
        """The longest a release may wait on the hooks: the pre-scripts run to their end
        (one that is running finishes first), then every post-script."""
        pres = sum((s.timeout + KILL_GRACE) * (s.pre_retries + 1) for s in self.specs if s.pre)
        return pres + self.post_bound()

    def post_bound(self) -> float:
        """The longest all post-scripts may take, retries, kill grace and the end of the
        pre-scripts' leftovers included."""
        posts = sum((s.timeout + KILL_GRACE) * (s.post_retries + 1) for s in self.specs if s.post)
        return posts + LEFTOVER_BOUND * sum(1 for s in self.specs if s.pre)


def _noted(text: str, note: str) -> str:
    """``text`` (a script's captured stderr) with cleancut's ``note`` on lines of its own."""
    if not note:
        return text
    return f"{text}\n{note}\n" if text and not text.endswith("\n") else f"{text}{note}\n"
