"""One cut as the guest sees it: the phases over the volumes, databases and hooks it declared.

The coordinator can only ask for the next phase; everything that runs comes from the
host's own guest config. ``release()`` is the one way out and runs on every path: it thaws
what is frozen, runs the post-scripts whose pre-script ran, ends the writers' holds and
deletes local snapshots.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cleancut.config.guest import GuestConfig
from cleancut.errors import CleancutError, MoverError, ProtocolError
from cleancut.guest.freezer import Freezer
from cleancut.guest.hooks import HookSpec, collect_hooks, run_hook
from cleancut.guest.security import open_trusted
from cleancut.guest.watchdog import ThawSentinel, Watchdog
from cleancut.guest.writer_set import WriterSet
from cleancut.manifest import HookRun
from cleancut.mover.base import RepositoryAccess
from cleancut.mover.restic import ResticMover
from cleancut.providers import make_provider, snapshot_all
from cleancut.providers.base import Provider, Snapshot

Emit = Callable[[str, dict[str, Any]], None]

#: Extra seconds the thaw sentinel waits beyond freeze_timeout: it starts before the
#: writers' holds (which may wait seconds for a database lock) and must not beat the watchdog.
SENTINEL_SLACK = 10.0

# The phase each operation may follow; release and bye are allowed from anywhere.
_AFTER = {
    "prepare": {"hello"},
    "freeze": {"prepare"},
    "snapshot": {"freeze"},
    "thaw": {"snapshot", "freeze"},
    "upload": {"thaw"},
}


class GuestSession:
    """The guest's side of one recovery point."""

    def __init__(
        self, config: GuestConfig, config_path: Path, input_closed: threading.Event | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.phase = "new"
        self.rp_id = ""
        self.freeze_timeout = 10.0
        self.hooks: list[HookSpec] = []
        self.providers: dict[str, Provider] = {}
        self.writers = WriterSet({})
        self.freezer: Freezer | None = None
        self.watchdog: Watchdog | None = None
        self.sentinel: ThawSentinel | None = None
        self.snapshots: dict[str, Snapshot] = {}
        self.pre_ran: set[str] = set()
        self.post_ran: set[str] = set()
        self.frozen_at: float | None = None
        self.freeze_error: str | None = None
        self._thaw_times: dict[str, Any] | None = None
        self.input_closed = input_closed or threading.Event()

    # -- phase bookkeeping -------------------------------------------------------------

    def enter(self, op: str) -> None:
        """Refuse an operation out of order, so a confused coordinator cannot skip the thaw."""
        allowed = _AFTER.get(op)
        if allowed is not None and self.phase not in allowed:
            raise ProtocolError(f"operation {op!r} is not allowed after {self.phase!r}")

    @property
    def freeze_enabled(self) -> bool:
        return all(spec.freeze for spec in self.hooks)

    def _freeze_paths(self) -> list[Path]:
        if not self.freeze_enabled:
            return []
        return [v.path for v in self.config.volumes.values() if v.frozen]

    # -- hello -------------------------------------------------------------------------

    def hello(self, rp_id: str, freeze_timeout: float) -> dict[str, Any]:
        """Check everything that can be checked without touching anything; report inventory."""
        self.rp_id = rp_id
        self.freeze_timeout = freeze_timeout
        self.hooks = collect_hooks(self.config)
        for spec in self.hooks:
            for argv, pin in ((spec.pre, spec.pre_sha256), (spec.post, spec.post_sha256)):
                if argv is not None:
                    with open_trusted(Path(argv[0]), sha256=pin):
                        pass
        staging = self.config.staging
        for name, volume in self.config.volumes.items():
            provider = make_provider(name, volume, staging)
            provider.check()
            self.providers[name] = provider
        self.writers = WriterSet(dict(self.config.databases))
        databases = self.writers.check()
        self.freezer = Freezer(self._freeze_paths(), allow_root=self.config.allow_root_freeze)
        self.phase = "hello"
        return {
            "volumes": {
                name: {
                    "path": str(volume.path),
                    "provider": volume.snapshot,
                    "freeze": volume.frozen and self.freeze_enabled,
                    "unheld_level": self.providers[name].unheld_level,
                    **self.providers[name].describe(),
                }
                for name, volume in self.config.volumes.items()
            },
            "databases": databases,
            "hooks": [
                {"name": s.name, "source": s.source, "pre": s.pre, "post": s.post}
                for s in self.hooks
            ],
            "freeze_enabled": self.freeze_enabled,
        }

    # -- prepare -----------------------------------------------------------------------

    def prepare(self) -> dict[str, Any]:
        """Pre-scripts, then the writers' slow preparation, then the providers' set-up."""
        self.enter("prepare")
        runs = []
        for spec in self.hooks:
            if spec.pre is None:
                continue
            self.pre_ran.add(spec.name)
            run = run_hook(spec, "pre", env_extra={"CLEANCUT_RP": self.rp_id})
            run = run.model_copy(update={"continue_on_failure": spec.continue_on_failure})
            runs.append(run)
            if not run.ok and not spec.continue_on_failure:
                break
        self.writers.prepare()
        for provider in self.providers.values():
            provider.prepare(self.rp_id)
        assert self.freezer is not None
        if self.freezer.mounts:
            # the host-wide freeze lock and the mount points' descriptors, before the freeze
            self.freezer.open()
        self.phase = "prepare"
        return {"hooks": [_dump(run) for run in runs], "writers": self.writers.report()}

    # -- freeze / snapshot / thaw ------------------------------------------------------

    def freeze(self, *, snapshot: bool = False, thaw: bool = False) -> dict[str, Any]:
        """Writers take their holds, then the file systems freeze; the watchdog is armed.

        With ``snapshot`` the snapshots are taken right away, inside this host's hold: the
        image is the same whenever it is taken while frozen, and the coordinator saves a
        round trip of write stall (see :func:`cleancut.coordinator.policy.group_consistent`).
        With ``thaw`` as well (a cut of one host: its own hold is the whole quiet window) the
        holds end right after the snapshots; ``thaw`` then only runs the post-scripts.
        """
        self.enter("freeze")
        assert self.freezer is not None
        freezer = self.freezer
        mounts = [str(m.mount_point) for m in freezer.mounts]
        hold_started_at = time.time()
        try:
            if mounts:  # the safety nets first: they are up before anything is held
                self.watchdog = Watchdog(lambda _reason: _thaw_quietly(freezer))
                if self.input_closed.is_set():  # the coordinator left while we got here
                    self.watchdog.input_closed()
                # the sentinel is the last resort for a guest that died: its deadline leaves
                # room for the holds before the freeze, so it never beats the watchdog
                self.sentinel = freezer.sentinel(self.freeze_timeout + SENTINEL_SLACK)
                self.sentinel.start()
            # the write stall starts here: writers' holds and the freeze both block writes
            hold_started_at = time.time()
            self.writers.hold()
            if mounts:
                self.frozen_at = freezer.freeze()
                assert self.watchdog is not None
                self.watchdog.arm(self.freeze_timeout)
            else:
                self.frozen_at = time.time()
        except CleancutError as exc:
            self.freeze_error = exc.message
            self.frozen_at = time.time()
            mounts = []
        self.phase = "freeze"
        reply: dict[str, Any] = {
            "hold_started_at": hold_started_at,
            "frozen_at": self.frozen_at,
            "mounts": mounts,
            "freeze_error": self.freeze_error,
            "writers": self.writers.report(),
        }
        if snapshot:
            reply["snapshot"] = self.snapshot()
            if thaw:
                self._end_holds()
        return reply

    def snapshot(self) -> dict[str, Any]:
        """Every provider makes its point-in-time image (inside the freeze: no disk I/O here)."""
        self.enter("snapshot")
        self.snapshots, errors = snapshot_all(self.providers)
        self.phase = "snapshot"
        fired = self.watchdog.fired if self.watchdog else None
        return {
            "snapshots": {
                name: {
                    "taken_at": s.taken_at,
                    "seconds": s.seconds,
                    "layout": s.layout,
                    "details": s.details,
                }
                for name, s in self.snapshots.items()
            },
            "errors": errors,
            "self_thawed": fired,
            "self_thawed_at": self._self_thawed_at(fired),
        }

    def thaw(self) -> dict[str, Any]:
        """Thaw in reverse order, end the writers' holds, run the post-scripts."""
        self.enter("thaw")
        times = self._end_holds()
        runs = self._run_posts()
        self.phase = "thaw"
        return {**times, "writers": self.writers.report(), "hooks": [_dump(r) for r in runs]}

    def _end_holds(self) -> dict[str, Any]:
        """Thaw the file systems and end the writers' holds, once; returns when it happened."""
        if self._thaw_times is None:
            thaw_started_at = time.time()
            fired = self._thaw(finish_sentinel=False)
            frozen_until = self.freezer.thawed_at if self.freezer else None
            thawed_at = frozen_until or time.time()
            self.writers.release()
            hold_ended_at = time.time()
            self._finish_sentinel()  # reaping the sentinel is no part of the stall
            if self.freezer is not None:
                self.freezer.close()  # the freeze locks are not held through the upload
            self._thaw_times = {
                "thaw_started_at": thaw_started_at,
                "thawed_at": thawed_at,
                "hold_ended_at": hold_ended_at,
                "self_thawed": fired,
                "self_thawed_at": self._self_thawed_at(fired),
            }
        return self._thaw_times

    def _self_thawed_at(self, fired: str | None) -> float | None:
        """When the watchdog thawed (the freezer's thaw time), if it did."""
        if fired is None or self.freezer is None:
            return None
        return self.freezer.thawed_at

    def _thaw(self, *, finish_sentinel: bool = True) -> str | None:
        fired = None
        if self.watchdog is not None:
            self.watchdog.disarm()
            fired = self.watchdog.fired
        if self.freezer is not None:
            self.freezer.thaw()
            if fired is None and self.freezer.thawed_by_other:
                fired = "thawed from outside"  # the sentinel or an operator: not our window
        if finish_sentinel:
            self._finish_sentinel()
        return fired

    def _finish_sentinel(self) -> None:
        # only once everything is thawed: "done" tells the sentinel it need not thaw
        if self.sentinel is not None and not (self.freezer and self.freezer.frozen):
            self.sentinel.finish()
            self.sentinel = None

    def _run_posts(self) -> list[HookRun]:
        """Post-scripts of every hook whose pre-script ran, and of post-only hooks."""
        runs = []
        for spec in reversed(self.hooks):
            if spec.post is None or spec.name in self.post_ran:
                continue
            if spec.pre is not None and spec.name not in self.pre_ran:
                continue
            self.post_ran.add(spec.name)
            runs.append(run_hook(spec, "post", env_extra={"CLEANCUT_RP": self.rp_id}))
        return runs

    # -- upload / release --------------------------------------------------------------

    def upload(
        self,
        access: RepositoryAccess,
        app: str,
        host: str,
        emit: Emit,
        parents: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Each snapshot into the repository, tagged with application, RP, host and resource.

        ``parents`` are the resources' previous snapshots: restic then skips unchanged files.
        A parent the repository no longer has only costs a full read, never the upload.
        """
        self.enter("upload")
        mover = ResticMover(access)
        uploads: dict[str, Any] = {}
        for name, snap in self.snapshots.items():
            source = snap.path

            def progress(figures: dict[str, Any], resource: str = name) -> None:
                emit("progress", {"resource": resource, **figures})

            tags = {"cleancut": "", "app": app, "rp": self.rp_id, "host": host, "resource": name}
            parent = (parents or {}).get(name)
            try:
                result = mover.backup(
                    source, host=host, tags=tags, progress=progress, parent=parent
                )
            except MoverError:
                if parent is None:
                    raise
                result = mover.backup(source, host=host, tags=tags, progress=progress)
            uploads[name] = {
                "snapshot_id": result.snapshot_id,
                "bytes_processed": result.bytes_processed,
                "bytes_added": result.bytes_added,
                "files": result.files,
                "seconds": result.seconds,
            }
        self.phase = "upload"
        return {"uploads": uploads}

    def plan(self, access_url: str, app: str, host: str) -> dict[str, Any]:
        """The steps a cut would run here, including every restic command; touches nothing."""
        steps: list[str] = []
        for spec in self.hooks:
            if spec.pre:
                steps.append(f"prepare: run pre-script {spec.name} ({spec.source}): {spec.pre}")
        for name, kind in self.writers.names():
            steps.append(f"prepare: {kind} writer {name}: checkpoint")
        for name, kind in self.writers.names():
            steps.append(f"freeze: {kind} writer {name}: hold writes")
        assert self.freezer is not None
        for wave in self.freezer.plan:
            names = ", ".join(str(m.mount_point) for m in wave)
            steps.append(f"freeze: FIFREEZE {names} (in parallel)")
        for name, provider in self.providers.items():
            steps.append(f"snapshot: {provider.kind} snapshot of volume {name}")
        steps.append("thaw: FITHAW in reverse order; writers release; post-scripts")
        mover = ResticMover(RepositoryAccess(access_url, ""))
        for name, volume in self.config.volumes.items():
            tags = {"cleancut": "", "app": app, "rp": self.rp_id, "host": host, "resource": name}
            steps.append(f"upload: volume {name}: {mover.preview_backup(volume.path, host, tags)}")
        return {"steps": steps}

    def release(self) -> dict[str, Any]:
        """Thaw, end holds, run pending post-scripts, delete local snapshots. Never raises:
        each step runs whatever the one before it did, and errors are reported."""
        errors: list[str] = []
        fired = _attempt(errors, self._thaw)
        # holds end before the post-scripts, which may write to the held databases
        _attempt(errors, self.writers.close)
        runs = _attempt(errors, self._run_posts) or []
        for provider in self.providers.values():
            _attempt(errors, provider.release)
        if self.freezer is not None:
            _attempt(errors, self.freezer.close)
        if self.watchdog is not None:
            _attempt(errors, self.watchdog.close)
        self.phase = "released"
        return {"self_thawed": fired, "hooks": [_dump(r) for r in runs], "errors": errors}


T = TypeVar("T")


def _attempt(errors: list[str], step: Callable[[], T]) -> T | None:
    """``step()``, or None with its error noted: one failure must not skip the next step."""
    try:
        return step()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        return None


def _thaw_quietly(freezer: Freezer) -> None:
    """The watchdog's thaw: a failure is reported by the later explicit thaw, not here."""
    with contextlib.suppress(CleancutError):
        freezer.thaw()


def _dump(run: HookRun) -> dict[str, Any]:
    return run.model_dump(mode="json")
