"""One cut as the guest sees it: the phases over the volumes, databases and hooks it declared.

The coordinator can only ask for the next phase; everything that runs comes from the
host's own guest config. Every hold — a quiesce pre-script that ended, a writer's lock, a
frozen file system — ends within one deadline counted from the first of them
(:class:`~cleancut.guest.watchdog.Watchdog`), whatever the coordinator does.
``release()`` is the one way out and runs on every path: it thaws what is frozen, ends the
writers' holds, runs the post-scripts whose pre-script ran and deletes local snapshots.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cleancut.config.guest import GuestConfig
from cleancut.errors import (
    CleancutError,
    FreezeError,
    ProtocolError,
)
from cleancut.guest.freezer import Freezer
from cleancut.guest.hooks import collect_hooks
from cleancut.guest.hooks_phase import HookPhases
from cleancut.guest.host_checks import check_snapshot_targets, freeze_paths
from cleancut.guest.upload import Emit, Uploads
from cleancut.guest.watchdog import Watchdog
from cleancut.guest.writer_set import WriterSet
from cleancut.protocol import FreezeArgs, HelloArgs, PlanArgs, SnapshotDisksArgs, UploadArgs
from cleancut.providers import disk_providers, snapshot_all, volume_providers
from cleancut.providers.base import Provider, Snapshot
from cleancut.system.mounts import mount_of

#: How long the watchdog's thaw waits for hanging ioctls before it ends the other holds.
_QUICK_THAW = 0.5

#: The most a coordinator may ask a guest to hold when its guest.toml does not say.
DEFAULT_MAX_FREEZE_TIMEOUT = 60.0

# The phase each operation may follow; release and bye are allowed from anywhere.
_AFTER = {
    "prepare": {"hello"},
    "freeze": {"prepare"},
    "snapshot": {"freeze"},
    "snapshot_disks": {"snapshot", "freeze"},
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
        self.hooks = HookPhases([])
        self.providers: dict[str, Provider] = {}
        #: the disk images this host holds for other hosts' external volumes
        self.disks: dict[str, Provider] = {}
        self.disk_snapshots: dict[str, Snapshot] = {}
        self.writers = WriterSet({})
        self.freezer: Freezer | None = None
        self.watchdog: Watchdog | None = None
        self.snapshots: dict[str, Snapshot] = {}
        self.frozen_at: float | None = None
        self.freeze_error: str | None = None
        self.input_closed = input_closed or threading.Event()
        self._end_lock = threading.Lock()
        self._ended: dict[str, Any] | None = None
        self._stall_from: float | None = None  # monotonic, the first writer hold or FIFREEZE
        self._stall_until: float | None = None
        self._disks_taken = False
        self.uploads = Uploads("", collections.ChainMap(self.providers, self.disks))

    # -- phase bookkeeping -------------------------------------------------------------

    def enter(self, op: str) -> None:
        """Refuse an operation out of order, so a confused coordinator cannot skip the thaw."""
        allowed = _AFTER.get(op)
        if allowed is not None and self.phase not in allowed:
            raise ProtocolError(f"operation {op!r} is not allowed after {self.phase!r}")

    @property
    def freeze_enabled(self) -> bool:
        return all(spec.freeze for spec in self.hooks.specs)

    def _freeze_paths(self) -> list[Path]:
        return freeze_paths(self.config, self.hooks.specs)

    # -- hello -------------------------------------------------------------------------

    def hello(self, args: HelloArgs) -> dict[str, Any]:
        """Check everything that can be checked without touching anything; report inventory."""
        limit = float(getattr(self.config, "max_freeze_timeout", DEFAULT_MAX_FREEZE_TIMEOUT))
        if args.freeze_timeout > limit:
            raise ProtocolError(
                f"freeze_timeout {args.freeze_timeout:g}s is more than this host allows "
                f"(max_freeze_timeout = {limit:g}s in {self.config_path}); lower freeze_timeout "
                "in the application config, or raise max_freeze_timeout on this host"
            )
        self.rp_id = args.rp_id
        self.uploads.rp_id = args.rp_id
        self.freeze_timeout = args.freeze_timeout
        self.hooks = HookPhases(collect_hooks(self.config), self.rp_id, list(self.config.volumes))
        self.hooks.check()
        self.providers.update(volume_providers(self.config))
        self.disks.update(disk_providers(self.config))
        for provider in [*self.providers.values(), *self.disks.values()]:
            provider.check()
        self.freezer = Freezer(self._freeze_paths(), allow_root=self.config.allow_root_freeze)
        check_snapshot_targets({**self.providers, **self.disks}, self.freezer.mounts)
        self.writers = WriterSet(dict(self.config.databases), cut_id=self.rp_id)
        databases = self.writers.check({n: v.path for n, v in self.config.volumes.items()})
        self.watchdog = Watchdog(self.freeze_timeout, self._expire)
        if self.input_closed.is_set():
            self.watchdog.input_closed()
        self.phase = "hello"
        return {
            "volumes": self._volume_inventory(),
            "databases": databases,
            "hooks": self.hooks.inventory(),
            "freeze_enabled": self.freeze_enabled,
            "disks": {name: disk.describe() for name, disk in self.disks.items()},
        }

    def _volume_inventory(self) -> dict[str, Any]:
        inventory = {}
        for name, volume in self.config.volumes.items():
            provider = self.providers.get(name)
            mount: str | None = None
            fstype: str | None = None
            try:
                fs = mount_of(volume.path)
                mount, fstype = str(fs.mount_point), fs.fstype
            except CleancutError:
                pass
            inventory[name] = {
                "path": str(volume.path),
                "provider": volume.snapshot,
                "freeze": volume.frozen and self.freeze_enabled,
                # an external snapshot is an image clone: without a hold, crash-consistent
                "unheld_level": provider.unheld_level if provider else "crash",
                "mount": mount,
                **(provider.describe() if provider else {"fstype": fstype}),
            }
        return inventory

    # -- prepare -----------------------------------------------------------------------

    def prepare(self) -> dict[str, Any]:
        """Pre-scripts, then the writers' slow preparation, then the providers' set-up."""
        self.enter("prepare")
        self.phase = "preparing"  # a failed prepare is not tried again: release, then bye
        watchdog = self._watchdog()
        runs = self.hooks.run_pres(on_quiesced=watchdog.hold_started, expired=self._expired)
        if self._expired():  # a pre-script that returned after the deadline
            self.hooks.run_owed()  # resumes its application now; release reports it
        self._raise_if_expired("during the pre-scripts")
        self.writers.prepare()
        for provider in [*self.providers.values(), *self.disks.values()]:
            provider.prepare(self.rp_id)
        assert self.freezer is not None
        if self.freezer.mounts:
            # the freeze locks, the mount points' descriptors and the thaw sentinel
            self.freezer.open()
        self._raise_if_expired("during prepare")
        self.phase = "prepare"
        return {"hooks": runs, "writers": self.writers.report()}

    def _watchdog(self) -> Watchdog:
        if self.watchdog is None:
            raise ProtocolError("no cut in progress: hello first")
        return self.watchdog

    def _expired(self) -> bool:
        return self.watchdog is not None and self.watchdog.fired is not None

    def _raise_if_expired(self, when: str) -> None:
        watchdog = self.watchdog
        if watchdog is not None and watchdog.fired is not None:
            raise FreezeError(
                f"the holds ended by themselves {when} ({watchdog.fired}: freeze_timeout "
                f"{self.freeze_timeout:g}s counts from the first hold, here a quiesce or "
                "lock); the post-scripts ran; raise freeze_timeout if the cut needs longer"
            )

    # -- freeze / snapshot / thaw ------------------------------------------------------

    def freeze(self, args: FreezeArgs | None = None) -> dict[str, Any]:
        """Writers take their holds, then the file systems freeze, within the deadline.

        With ``snapshot`` the snapshots are taken right away, inside this host's hold: the
        image is the same whenever it is taken while frozen, and the coordinator saves a
        round trip of write stall (see :func:`cleancut.coordinator.policy.group_consistent`).
        With ``thaw`` as well (a cut of one host: its own hold is the whole quiet window) the
        holds end right after the snapshots; ``thaw`` then only runs the post-scripts.
        """
        args = args or FreezeArgs()
        self.enter("freeze")
        self._raise_if_expired("before the freeze")
        assert self.freezer is not None
        freezer = self.freezer
        mounts = [str(m.mount_point) for m in freezer.mounts]
        hold_started_at = time.time()
        self.writers.hold(self._seconds_left, on_first=self._hold_started)
        try:
            if mounts:
                self._hold_started()
                self.frozen_at = freezer.freeze(deadline_seconds=self._seconds_left())
            else:
                self.frozen_at = time.time()
        except FreezeError as exc:
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
        if args.snapshot:
            reply["snapshot"] = self.snapshot()
            if args.thaw:  # a lone host: its hold is the whole window; resume at once
                self._end_holds()
                self.hooks.run_owed()  # reported by the thaw that follows
        return reply

    def _hold_started(self, blocks_writes: bool = True) -> None:
        """A hold begins: the deadline starts at the first one, the write stall at the
        first that stops writes (a lock or FIFREEZE, not PostgreSQL's backup mode)."""
        if blocks_writes and self._stall_from is None:
            self._stall_from = time.monotonic()
        self._watchdog().hold_started()

    def _unblocked(self) -> None:
        """The file systems are thawed and no hold stops writes any more."""
        if self._stall_from is not None and self._stall_until is None:
            self._stall_until = time.monotonic()

    def _seconds_left(self) -> float:
        left = self._watchdog().remaining()
        return self.freeze_timeout if left is None else max(0.0, left)

    def snapshot(self) -> dict[str, Any]:
        """Every provider makes its point-in-time image (inside the freeze: no disk I/O here)."""
        self.enter("snapshot")
        # taken even when the holds already ended by themselves: the policy then judges it
        # (an image clone of a thawed disk is still crash-consistent, for "degrade")
        self.snapshots, errors = snapshot_all(self.providers)
        self.phase = "snapshot"
        return {
            "snapshots": _describe(self.snapshots),
            "errors": errors,
            **self._self_thaw(),
        }

    def snapshot_disks(self, args: SnapshotDisksArgs) -> dict[str, Any]:
        """Clone the disk images of other hosts' volumes, while those hosts hold them.

        The coordinator sends this once, after every host answered its freeze and before
        any thaw; each named disk is cloned at once, in parallel, and errors are reported
        per disk (the coordinator judges them).
        """
        self.enter("snapshot_disks")
        if self.disk_snapshots or self._disks_taken:
            raise ProtocolError("snapshot_disks: the disks of this cut were already cloned")
        unknown = [name for name in args.disks if name not in self.disks]
        if unknown:
            known = ", ".join(sorted(self.disks)) or "none"
            raise ProtocolError(
                f"snapshot_disks: no disk named {unknown[0]!r} in {self.config_path} "
                f"(disks: {known})"
            )
        self._disks_taken = True
        chosen = {name: self.disks[name] for name in args.disks}
        self.disk_snapshots, errors = snapshot_all(chosen)
        return {"snapshots": _describe(self.disk_snapshots), "errors": errors}

    def thaw(self) -> dict[str, Any]:
        """Thaw in reverse order, end the writers' holds, run the post-scripts."""
        self.enter("thaw")
        times = self._end_holds()
        runs = self.hooks.run_posts()
        self.phase = "thaw"
        return {**times, **self._figures(), "writers": self.writers.report(), "hooks": runs}

    def _self_thaw(self) -> dict[str, Any]:
        """Whether the holds ended before the coordinator's thaw, why and when."""
        watchdog = self.watchdog
        fired = watchdog.fired if watchdog else None
        freezer = self.freezer
        if fired is None and freezer is not None and freezer.thawed_by_other:
            fired = "thawed from outside"  # the sentinel or an operator: not our window
        at = watchdog.fired_at if watchdog and watchdog.fired else None
        if fired is not None and at is None and freezer is not None:
            at = freezer.thawed_at
        return {"self_thawed": fired, "self_thawed_at": at}

    def _figures(self) -> dict[str, Any]:
        """The write stall and the application's pause, on this host's monotonic clock."""
        stall = None
        if self._stall_from is not None and self._stall_until is not None:
            stall = self._stall_until - self._stall_from
        freezer = self.freezer
        return {
            "write_stall": stall,
            "pause": self.hooks.pause(),
            "thawed_from_outside": freezer.thawed_from_outside if freezer else [],
        }

    def _end_holds(self, reason: str | None = None) -> dict[str, Any]:
        """Thaw the file systems and end the writers' holds, once; returns when it happened.

        ``reason`` is given by the watchdog (deadline, coordinator gone, stop): the holds are
        then ended without waiting for busy databases.
        """
        with self._end_lock:
            if self._ended is not None:
                return self._ended
            if reason is None and self.watchdog is not None:
                self.watchdog.settle()  # from here on it never fires
            thaw_started_at = time.time()
            errors: list[str] = []
            # a hanging ioctl must not keep the databases held nor the post-scripts waiting:
            # thaw what thaws at once and end the holds; release() waits for the rest
            if reason is None:
                _attempt_thaw(errors, self.freezer, lambda f: f.thaw(wait=_QUICK_THAW))
                self.writers.release(on_unblocked=self._unblocked)
            else:
                _attempt_thaw(errors, self.freezer, lambda f: f.cancel(wait=_QUICK_THAW))
                self.writers.abort(f"the holds ended by themselves ({reason})")
            thawed_at = (self.freezer.thawed_at if self.freezer else None) or time.time()
            hold_ended_at = time.time()
            self._unblocked()  # after an abort: only now
            self._ended = {
                "thaw_started_at": thaw_started_at,
                "thawed_at": thawed_at,
                "hold_ended_at": hold_ended_at,
                "thaw_errors": errors,
                **self._self_thaw(),
            }
            return self._ended

    def _expire(self, reason: str) -> None:
        """The watchdog's way out: end every hold now, then run the post-scripts."""
        try:
            self._end_holds(reason)
        finally:
            self.hooks.run_owed(only_finished=True)

    # -- upload / release --------------------------------------------------------------

    def upload(self, args: UploadArgs, emit: Emit) -> dict[str, Any]:
        """Each snapshot into the repository (see :class:`~cleancut.guest.upload.Uploads`)."""
        self.enter("upload")
        # a disk's upload is labelled with the host and volume it backs, like that volume's
        labels = {name: self.config.disks[name].backs for name in self.disk_snapshots}
        snapshots = {**self.snapshots, **self.disk_snapshots}
        uploads = self.uploads.run(snapshots, args, emit, labels=labels)
        self.phase = "upload"
        return {"uploads": uploads}

    def cancel_upload(self) -> None:
        """Stop an upload in progress at restic's next progress report (any thread)."""
        self.uploads.cancel()

    def plan(self, args: PlanArgs) -> dict[str, Any]:
        """The steps a cut would run here, including every restic command; touches nothing."""
        steps = self.hooks.plan()
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
        for name, volume in self.config.volumes.items():
            if volume.snapshot == "external":
                steps.append(f"snapshot: volume {name} is cloned by the host holding its disk")
        for name, disk in self.config.disks.items():
            steps.append(f"snapshot: FICLONE of disk {name} ({disk.image}), volume {disk.backs}")
        steps.append("thaw: FITHAW in reverse order; writers release; post-scripts")
        volumes = {name: volume.path for name, volume in self.config.volumes.items()}
        steps += self.uploads.plan(args.repository, args.app, args.host, volumes)
        return {"steps": steps}

    def release(self) -> dict[str, Any]:
        """Thaw, end holds, run pending post-scripts, delete local snapshots. Never raises:
        each step runs whatever the one before it did, and errors are reported. A stop
        signal arriving meanwhile waits for it."""
        errors: list[str] = []
        watchdog = self.watchdog
        if watchdog is not None and watchdog.fired is not None:
            watchdog.wait_fired(self.hooks.post_bound() + 30)  # its post-scripts first
        ended = _attempt(errors, self._end_holds) or {}
        errors += list(ended.get("thaw_errors", []))
        # holds end before the post-scripts, which may write to the held databases
        _attempt(errors, self.writers.close)
        runs = _attempt(errors, self.hooks.run_posts) or []
        for provider in [*self.providers.values(), *self.disks.values()]:
            _attempt(errors, provider.release)
        if self.freezer is not None:
            _attempt(errors, self.freezer.close)
            stuck = self.freezer.stuck()
            if stuck:
                errors.append(f"still frozen, the thaw ioctl hangs: {', '.join(stuck)}")
        if watchdog is not None:
            if watchdog.error is not None:
                errors.append(f"watchdog: {watchdog.error}")
            _attempt(errors, watchdog.close)
        self.phase = "released"
        return {
            "self_thawed": ended.get("self_thawed"),
            **self._figures(),
            "hooks": runs,
            "not_run": self.hooks.not_run(),
            "errors": errors,
        }


def _describe(snapshots: dict[str, Snapshot]) -> dict[str, Any]:
    return {
        name: {
            "taken_at": s.taken_at,
            "seconds": s.seconds,
            "layout": s.layout,
            "details": s.details,
        }
        for name, s in snapshots.items()
    }


def _attempt_thaw(
    errors: list[str], freezer: Freezer | None, thaw: Callable[[Freezer], object]
) -> None:
    if freezer is None:
        return
    try:
        thaw(freezer)
    except FreezeError as exc:
        errors.append(exc.message)


def _attempt(errors: list[str], step: Callable[[], Any]) -> Any:
    """``step()``, or None with its error noted: one failure must not skip the next step."""
    try:
        return step()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        return None
