"""The cut protocol, driven across every host of an application (DESIGN.md §3).

Each phase goes to all hosts in parallel and the coordinator waits for every answer (a
barrier) before the next. Whatever happens — an error, a policy abort, Ctrl-C — every
host gets ``release`` (thaw, post-scripts, end holds, delete local snapshots) before the
coordinator returns, and the manifest is written to the repository only after every
upload succeeded, so an interrupted cut never looks like a recovery point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cleancut import __version__, protocol, signals
from cleancut.catalog import Catalog
from cleancut.config.load import LoadedApp
from cleancut.coordinator.assemble import build_manifest
from cleancut.coordinator.disks import (
    DiskPair,
    disks_by_datastore,
    file_clones,
    pair_disks,
    upload_of,
)
from cleancut.coordinator.policy import (
    HostReport,
    blocking_hook_failures,
    group_consistent,
    judge_member,
    rp_level,
)
from cleancut.coordinator.runlock import AppLock
from cleancut.errors import CleancutError, HostFailed, Interrupted, PolicyAbort
from cleancut.guest.hooks.processes import LEFTOVER_BOUND
from cleancut.manifest import MANIFEST_FILENAME, MANIFEST_TAG, Manifest, new_rp_id
from cleancut.mover.base import Mover, RepositoryAccess
from cleancut.protocol.replies import check_reply
from cleancut.transport import Channel, open_channel

#: Receives what the cut is doing: ("phase", {...}), ("progress", {...}), ("note", {...}).
EventSink = Callable[[str, dict[str, Any]], None]

_HELLO_TIMEOUT = 120.0
_CLOCK_ROUNDS = 3
_POLL = 0.2
#: What a phase may take beyond the bounds the guest's hooks and deadline give it.
_SLACK = 30.0
#: A writer's slow preparation (a checkpoint) and the providers' set-up, per host.
_PREPARE_WORK = 120.0
#: What a hook may take beyond its timeout: the kill of its process group.
_KILL_GRACE = 2.0

Timeout = float | None | Callable[[str], float | None]


def _ignore(_kind: str, _data: dict[str, Any]) -> None:
    return None


@dataclass
class CutOutcome:
    """A committed recovery point and where its manifest lives."""

    manifest: Manifest
    manifest_snapshot: str


class Coordinator:
    """Runs one cut of one application."""

    def __init__(
        self,
        app: LoadedApp,
        *,
        access: RepositoryAccess,
        mover: Mover,
        catalog: Catalog | None = None,
        on_event: EventSink = _ignore,
        connect: Callable[[str, Any], Channel] = open_channel,
        wait: bool = False,
    ) -> None:
        """``wait``: wait for another run of the application in progress (an ``lock_wait``
        event says so) instead of failing with :class:`AlreadyRunning`."""
        self.app = app
        self.wait = wait
        self.config = app.config
        self.access = access
        self.mover = mover
        self.catalog = catalog
        self.on_event = on_event
        self.connect = connect
        self.rp_id = new_rp_id()
        self.channels: dict[str, Channel] = {}
        self.reports: dict[str, HostReport] = {}
        self._round_trip: dict[str, tuple[float, float]] = {}
        #: what the release of the hosts reported or could not do
        self.release_problems: list[str] = []
        #: each host's answer to release
        self.releases: dict[str, dict[str, Any]] = {}
        #: the stop signal (Ctrl-C, SIGTERM) that ended the cut, if one did
        self.stopped_by: int | None = None
        self._sent: dict[str, set[str]] = {}
        #: external volumes and the disks (on other hosts) that back them
        self.pairs: list[DiskPair] = []

    # -- plumbing ----------------------------------------------------------------------

    def _open(self) -> None:
        for name, host in self.config.hosts.items():
            self.channels[name] = self.connect(name, host)
            self.reports[name] = HostReport(host=name)

    def _all(
        self,
        op: str,
        args: Callable[[str], dict[str, Any]] | None = None,
        *,
        timeout: Timeout,
        on_event: Callable[[str], Any] | None = None,
        keep: Callable[[str, dict[str, Any]], None] | None = None,
        announce: bool = True,
        hosts: list[str] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """``op`` on every host in parallel; returns when all answered (the barrier).

        ``keep`` receives each host's answer as it arrives, so the answers of the hosts
        that did answer are kept when another one fails.

        ``hosts`` limits the call to some hosts (all by default).

        ``timeout`` bounds each host's answer (a number, or a function of the host). The
        calls run in daemon threads and the wait is interruptible: Ctrl-C reaches the
        caller at once, and an abandoned call never keeps the process from exiting.
        """
        started = time.time()
        if announce:
            self.on_event("phase", {"phase": op, "state": "start", "rp": self.rp_id})
        results: dict[str, dict[str, Any]] = {}
        errors: dict[str, BaseException] = {}
        targets = list(self.channels) if hosts is None else hosts
        pending = [len(targets)]
        lock, done = threading.Lock(), threading.Event()

        def one(name: str) -> None:
            try:
                sink = on_event(name) if on_event else None
                bound = timeout(name) if callable(timeout) else timeout
                sent = time.time()
                self._sent.setdefault(name, set()).add(op)
                answer = self.channels[name].call(
                    op, args(name) if args else {}, timeout=bound, on_event=sink
                )
                results[name] = check_reply(name, op, answer)
                self._round_trip[name] = (sent, time.time())
                if keep is not None:
                    keep(name, results[name])
            except BaseException as exc:
                errors[name] = exc
            finally:
                with lock:
                    pending[0] -= 1
                    if pending[0] <= 0:
                        done.set()

        for name in targets:
            threading.Thread(target=one, args=(name,), daemon=True, name=f"{op}-{name}").start()
        while targets and not done.wait(_POLL):
            pass  # timed: the main thread wakes to run signal handlers (Ctrl-C)
        failed = [name for name in targets if name in errors]
        if len(failed) > 1:  # each host's own failure is told, not only the first's
            for name in failed:
                error = errors[name]
                message = error.message if isinstance(error, CleancutError) else repr(error)
                self.on_event("host_failed", {"host": name, "phase": op, "error": message})
        if failed:  # the first host in the config's order that failed
            raise errors[failed[0]]
        if announce:
            seconds = round(time.time() - started, 4)
            self.on_event("phase", {"phase": op, "state": "done", "seconds": seconds})
        return results

    def _keep(self, phase: str) -> Callable[[str, dict[str, Any]], None]:
        """Stores a host's answer to ``phase`` in its report as soon as it arrives."""

        def keep(name: str, answer: dict[str, Any]) -> None:
            setattr(self.reports[name], phase, answer)

        return keep

    def _hooks(self, name: str) -> list[dict[str, Any]]:
        return list(self.reports[name].hello.get("inventory", {}).get("hooks", []))

    def _hook_bound(self, name: str, phase: str) -> float:
        """The longest ``phase``'s scripts may run on host ``name``, retries included."""
        return sum(
            (float(hook.get("timeout", 30.0)) + _KILL_GRACE)
            * (int(hook.get(f"{phase}_retries", 0)) + 1)
            for hook in self._hooks(name)
            if hook.get(phase)
        )

    def _prepare_bound(self, name: str) -> float:
        return self._hook_bound(name, "pre") + _PREPARE_WORK + _SLACK

    def _post_bound(self, name: str) -> float:
        # after each post-script, what its pre-script left behind may take this to end
        leftovers = LEFTOVER_BOUND * sum(1 for hook in self._hooks(name) if hook.get("pre"))
        return self._hook_bound(name, "post") + leftovers + _SLACK

    def _hello(self) -> None:
        timeout = self.config.freeze_timeout
        answers = self._all(
            "hello",
            lambda _name: {
                "protocol": protocol.PROTOCOL_VERSION,
                "version": __version__,
                "rp_id": self.rp_id,
                "freeze_timeout": timeout,
            },
            timeout=_HELLO_TIMEOUT,
        )
        for name, answer in answers.items():
            self.reports[name].hello = answer
        self._measure_clocks()
        # before anything is held: an unpaired external volume or disk is a config error
        self.pairs = pair_disks(self.reports)

    def _measure_clocks(self, rounds: int = _CLOCK_ROUNDS) -> None:
        """Each host's clock offset, NTP's way, from the quickest of a few ``clock`` round
        trips made once every guest is up: hello's own round trip includes the guest's
        start-up on the way there but not on the way back, which skews it by half of that."""
        best: dict[str, tuple[float, float]] = {}
        for _ in range(rounds):
            answers = self._all("clock", timeout=_HELLO_TIMEOUT, announce=False)
            for name, answer in answers.items():
                sent, received = self._round_trip[name]
                offset = protocol.finite(float(answer["time"])) - (sent + received) / 2
                if name not in best or received - sent < best[name][0]:
                    best[name] = (received - sent, offset)
        for name, (_rtt, offset) in best.items():
            self.reports[name].clock_offset = offset

    def _release_all(self) -> None:
        """Every host at once: thaw, end holds, post-scripts, delete snapshots; then bye.

        Bounded by what each host's post-scripts may take. Stop signals wait until it is
        done. What went wrong is kept in :attr:`release_problems`, never dropped.
        """

        def release(name: str, channel: Channel) -> None:
            report = self.reports.get(name)
            try:
                result = check_reply(
                    name, "release", channel.call("release", timeout=self._release_bound(name))
                )
                if report is not None:
                    report.thaw.setdefault("hooks", []).extend(result.get("hooks", []))
                    report.thaw.setdefault("not_run", []).extend(result.get("not_run", []))
                    self.releases[name] = result
                for error in result.get("errors", []):
                    self.release_problems.append(f"host {name}: release: {error}")
                channel.call("bye", timeout=10)
            except CleancutError as exc:
                self.release_problems.append(f"host {name}: release: {exc.message}")
                if report is not None:
                    prepared = "prepare" in self._sent.get(name, set())
                    owed = _owed_posts(report, exc.message, prepare_sent=prepared)
                    report.thaw.setdefault("not_run", []).extend(owed)
            finally:
                channel.close(wait=self._release_bound(name))

        with signals.deferred() as received:
            threads = [
                threading.Thread(target=release, args=item, daemon=True, name=f"release-{item[0]}")
                for item in self.channels.items()
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(_POLL)
        self.stopped_by = self.stopped_by or (received[0] if received else None)
        self.on_event("released", {"hosts": list(self.channels), "problems": self.release_problems})

    def _release_bound(self, name: str) -> float:
        """How long a host's release may take: its post-scripts, and what it is still busy
        with (it answers once the phase in flight is over: its pre-scripts, its freeze)."""
        sent, report = self._sent.get(name, set()), self.reports.get(name)
        busy = 0.0
        if report is not None and "prepare" in sent and not report.prepare:
            busy = self._prepare_bound(name)
        elif report is not None and "freeze" in sent and not report.freeze:
            busy = self.config.freeze_timeout + _SLACK
        return self._post_bound(name) + busy

    # -- the cut -----------------------------------------------------------------------

    def dry_run(self) -> dict[str, list[str]]:
        """Every step each host would run, and the coordinator's own restic commands."""
        try:
            self._open()
            self._hello()
            plans = self._all(
                "plan",
                lambda name: {"repository": self.access.url, "app": self.config.name, "host": name},
                timeout=_HELLO_TIMEOUT,
            )
        except (KeyboardInterrupt, signals.StopSignal) as exc:
            self._release_all()
            raise Interrupted(signals.signal_number(exc), self.release_problems) from None
        except BaseException:
            self._release_all()
            raise
        self._release_all()
        steps = {name: list(plan["steps"]) for name, plan in plans.items()}
        tags = {MANIFEST_TAG: "", "app": self.config.name, "rp": self.rp_id}
        steps["coordinator"] = [
            "init the repository if it does not exist: " + " ".join(self.mover.describe_init()),
            "commit: "
            + " ".join(self.mover.describe_backup_bytes(MANIFEST_FILENAME, "cleancut", tags)),
            "catalog: add the recovery point to the local index",
        ]
        return steps

    def run(self) -> CutOutcome:
        """One recovery point: hello → prepare → freeze → snapshot → thaw → upload → commit.

        Whatever happens — an error, a policy abort, Ctrl-C, SIGTERM — every host is
        released before this returns; an interruption then raises :class:`Interrupted`.
        """
        lock = AppLock(
            self.config.name,
            wait=self.wait,
            on_wait=lambda text: self.on_event("lock_wait", {"message": text}),
        )
        with lock:  # refused (or waited for) here while another run of it goes on
            return self._run()

    def _run(self) -> CutOutcome:
        created = datetime.now(UTC)
        try:
            manifest = self._cut(created)
        except (KeyboardInterrupt, signals.StopSignal) as exc:
            self.stopped_by = signals.signal_number(exc)
            self._release_all()
            raise Interrupted(self.stopped_by, self.release_problems) from None
        except BaseException:
            self._release_all()
            if self.stopped_by is not None:  # a signal that came during the release
                raise Interrupted(self.stopped_by, self.release_problems) from None
            raise
        self._release_all()
        if self.stopped_by is not None:
            raise Interrupted(self.stopped_by, self.release_problems)
        return self._commit(manifest)

    def _cut(self, created: datetime) -> Manifest:
        timeout = self.config.freeze_timeout
        # the repository check (a restic start, key derivation included) overlaps the
        # guests' start-up instead of adding to it; it must pass before anything is touched
        repository = _Background(self.mover.ensure_repository)
        try:
            self._open()
            self._hello()
        except BaseException:
            # a restic init cut short by this process's exit leaves a broken repository
            repository.wait()
            raise
        repository.result()
        self._all("prepare", timeout=self._prepare_bound, keep=self._keep("prepare"))
        self._abort_before_freeze()
        # each guest snapshots inside its own freeze: one round trip less of write stall;
        # a lone host's hold is the whole quiet window, so it thaws without waiting (unless
        # it holds a volume whose disk it clones itself: that clone is its own step)
        alone = len(self.channels) == 1 and not self.pairs
        frozen = self._all(
            "freeze",
            lambda _n: {"snapshot": True, "thaw": alone},
            # a lone host runs its post-scripts right after its snapshots, in this call
            timeout=lambda name: timeout + _SLACK + (self._post_bound(name) if alone else 0.0),
        )
        for name, answer in frozen.items():
            self.reports[name].snapshot = answer.pop("snapshot")
            self.reports[name].freeze = answer
        if self.pairs:  # every host holds: the datastores clone the VMs' disks now
            chosen = disks_by_datastore(self.pairs)
            clones = self._all(
                "snapshot_disks",
                lambda name: {"disks": chosen[name]},
                timeout=timeout + _SLACK,
                hosts=[name for name in self.channels if name in chosen],
            )
            file_clones(self.pairs, self.reports, clones)
        self._all("thaw", timeout=self._post_bound, keep=self._keep("thaw"))
        manifest = self._judge(created)
        self._upload(manifest)
        return manifest

    def _abort_before_freeze(self) -> None:
        reports = list(self.reports.values())
        blockers = blocking_hook_failures(reports)
        if blockers:
            raise PolicyAbort("; ".join(blockers) + " (the hook does not allow going on)")
        if self.config.on_failure != "abort":
            return
        problems = [
            f"host {r.host}: pre-script {run['hook']} failed"
            for r in reports
            for run in r.pre_hooks
            if not run["ok"]
        ]
        problems += [
            f"host {r.host}: writer {n} failed: {w['error']}"
            for r in reports
            for n, w in r.writers().items()
            if not w["ok"]
        ]
        if problems:
            raise PolicyAbort(
                "; ".join(problems)
                + ' (on_failure = "abort"; "degrade" would go on at a lower level)'
            )

    def _judge(self, created: datetime) -> Manifest:
        reports = list(self.reports.values())
        missing = [
            f"host {r.host}: volume {name}: {error}"
            for r in reports
            for name, error in r.snapshot.get("errors", {}).items()
        ]
        if missing:  # a recovery point must be restorable whole, "degrade" or not
            raise HostFailed("no snapshot was made of " + "; ".join(missing))
        verdicts = [judge_member(r, name) for r in reports for name in r.volumes]
        consistent, problems = group_consistent(reports, verdicts)
        level = rp_level(verdicts)
        if self.config.on_failure == "abort" and (level != "application" or not consistent):
            weak = [f"{v.host}/{v.resource}: {v.level} ({v.reason})" for v in verdicts]
            raise PolicyAbort(
                f"the cut reached level {level}, group-consistent: {consistent} — "
                + "; ".join(weak + problems)
                + ' (on_failure = "abort" keeps only application-level, group-consistent cuts)'
            )
        return build_manifest(
            app=self.config.name,
            rp_id=self.rp_id,
            created=created,
            on_failure=self.config.on_failure,
            reports=reports,
            verdicts=verdicts,
            level=level,
            consistent=consistent,
            problems=problems,
        )

    def _upload(self, manifest: Manifest) -> None:
        def sink(host: str) -> Callable[[str, dict[str, Any]], None]:
            def forward(kind: str, data: dict[str, Any]) -> None:
                self.on_event(kind, {"host": host, **data})

            return forward

        parents = self._parents()
        answers = self._all(
            "upload",
            lambda name: {
                "repository": {"url": self.access.url, "password": self.access.password},
                "app": self.config.name,
                "host": name,
                "parents": parents.get(name, {}),
            },
            timeout=None,
            on_event=sink,
        )
        external = {(pair.host, pair.volume): pair for pair in self.pairs}
        for member in manifest.members:
            pair = external.get((member.host, member.resource))
            if pair is not None:
                upload = upload_of(pair, answers)
            else:
                upload = answers[member.host]["uploads"].get(member.resource)
            if upload is not None:
                member.repository_snapshot = upload["snapshot_id"]
                member.bytes_processed = upload["bytes_processed"]
                member.bytes_added = upload["bytes_added"]

    def _parents(self) -> dict[str, dict[str, str]]:
        """Per host and resource, the previous RP's snapshot, so restic skips unchanged files."""
        if self.catalog is None:
            return {}
        try:
            previous = self.catalog.list(self.config.name)
        except CleancutError:
            return {}  # an unreadable catalog costs a full read, not the backup
        parents: dict[str, dict[str, str]] = {}
        if previous:
            for member in previous[-1].manifest.members:
                if member.repository_snapshot:
                    parents.setdefault(member.host, {})[member.resource] = (
                        member.repository_snapshot
                    )
        for pair in self.pairs:  # a disk's parent is the previous snapshot of its volume
            parent = parents.get(pair.host, {}).get(pair.volume)
            if parent is not None:
                parents.setdefault(pair.datastore, {})[pair.disk] = parent
        return parents

    def _commit(self, manifest: Manifest) -> CutOutcome:
        """Write the manifest last: its presence in the repository makes the RP exist."""
        manifest.finished_at = datetime.now(UTC)
        tags = {MANIFEST_TAG: "", "app": self.config.name, "rp": self.rp_id}
        data = manifest.model_dump_json(indent=2).encode()
        stored = self.mover.backup_bytes(data, MANIFEST_FILENAME, host="cleancut", tags=tags)
        if self.catalog is not None:
            self.catalog.add(manifest, stored.snapshot_id)
        self.on_event("committed", {"rp": self.rp_id, "level": manifest.level})
        return CutOutcome(manifest, stored.snapshot_id)


class _Background:
    """``call()`` in a daemon thread; :meth:`result` waits (interruptibly) and re-raises."""

    def __init__(self, call: Callable[[], object]) -> None:
        self._value: object = None
        self._error: BaseException | None = None
        self._done = threading.Event()

        def run() -> None:
            try:
                self._value = call()
            except BaseException as exc:
                self._error = exc
            finally:
                self._done.set()

        threading.Thread(target=run, daemon=True, name="background").start()

    def wait(self) -> None:
        """Wait until the call ended, whatever it returned or raised."""
        while not self._done.wait(_POLL):
            pass

    def result(self) -> object:
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value


def _owed_posts(report: HostReport, why: str, *, prepare_sent: bool) -> list[dict[str, str]]:
    """Post-scripts whose pre-script ran (or may have: the host went away during prepare)
    on a host that can no longer run them, and why."""
    ran = {run.get("hook") for run in report.thaw.get("hooks", []) if run.get("phase") == "post"}
    hooks = report.hello.get("inventory", {}).get("hooks", [])
    if report.prepare:
        started = {run.get("hook") for run in report.pre_hooks}
    elif prepare_sent:
        started = {hook.get("name") for hook in hooks if hook.get("pre")}
    else:
        started = set()
    return [
        {"hook": str(hook["name"]), "why": f"was not run: {why}"}
        for hook in hooks
        if hook.get("post") and hook.get("name") in started and hook.get("name") not in ran
    ]
