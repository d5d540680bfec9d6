"""The cut protocol, driven across every host of an application (DESIGN.md §3).

Each phase goes to all hosts in parallel and the coordinator waits for every answer (a
barrier) before the next. Whatever happens — an error, a policy abort, Ctrl-C — every
host gets ``release`` (thaw, post-scripts, end holds, delete local snapshots) before the
coordinator returns, and the manifest is written to the repository only after every
upload succeeded, so an interrupted cut never looks like a recovery point.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cleancut import __version__, protocol
from cleancut.catalog import Catalog
from cleancut.config.load import LoadedApp
from cleancut.coordinator.manifest import build_manifest
from cleancut.coordinator.policy import (
    HostReport,
    blocking_hook_failures,
    group_consistent,
    judge_member,
    rp_level,
)
from cleancut.errors import CleancutError, HostFailed, PolicyAbort
from cleancut.manifest import MANIFEST_FILENAME, MANIFEST_TAG, Manifest, new_rp_id
from cleancut.mover.base import Mover, RepositoryAccess
from cleancut.transport import Channel, open_channel

#: Receives what the cut is doing: ("phase", {...}), ("progress", {...}), ("note", {...}).
EventSink = Callable[[str, dict[str, Any]], None]

_HELLO_TIMEOUT = 120.0
_SLACK = 30.0


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
    ) -> None:
        self.app = app
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
        timeout: float | None,
        on_event: Callable[[str], Any] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """``op`` on every host in parallel; returns when all answered (the barrier)."""
        started = time.time()
        self.on_event("phase", {"phase": op, "state": "start", "rp": self.rp_id})

        def one(name: str) -> dict[str, Any]:
            sink = on_event(name) if on_event else None
            sent = time.time()
            answer = self.channels[name].call(
                op, args(name) if args else {}, timeout=timeout, on_event=sink
            )
            self._round_trip[name] = (sent, time.time())
            return answer

        with ThreadPoolExecutor(max_workers=max(1, len(self.channels))) as pool:
            futures = {name: pool.submit(one, name) for name in self.channels}
        errors = [f.exception() for f in futures.values() if f.exception() is not None]
        if errors:
            error = errors[0]
            assert error is not None
            raise error
        results = {name: f.result() for name, f in futures.items()}
        self.on_event(
            "phase", {"phase": op, "state": "done", "seconds": round(time.time() - started, 4)}
        )
        return results

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
            report = self.reports[name]
            report.hello = answer
            # NTP's estimate from this host's own round trip: the guest stamps when the
            # request arrived and when it answered, so its hello's work does not count
            sent, received = self._round_trip[name]
            arrived, answered = float(answer["received_at"]), float(answer["time"])
            report.clock_offset = ((arrived - sent) + (answered - received)) / 2

    def _release_all(self) -> None:
        """Best effort on every host at once: thaw, end holds, post-scripts, delete snapshots."""

        def release(name: str, channel: Channel) -> None:
            try:
                result = channel.call("release", timeout=120)
                for run in result.get("hooks", []):
                    self.reports[name].thaw.setdefault("hooks", []).append(run)
                channel.call("bye", timeout=10)
            except CleancutError:
                pass
            finally:
                channel.close()

        with ThreadPoolExecutor(max_workers=max(1, len(self.channels))) as pool:
            for name, channel in self.channels.items():
                pool.submit(release, name, channel)

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
        finally:
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
        """One recovery point: hello → prepare → freeze → snapshot → thaw → upload → commit."""
        created = datetime.now(UTC)
        timeout = self.config.freeze_timeout
        # the repository check (a restic start, key derivation included) overlaps the
        # guests' start-up instead of adding to it; it must pass before anything is touched
        try:
            with ThreadPoolExecutor(max_workers=1) as background:
                repository = background.submit(self.mover.ensure_repository)
                self._open()
                self._hello()
                repository.result()
            for name, answer in self._all("prepare", timeout=None).items():
                self.reports[name].prepare = answer
            self._abort_before_freeze()
            # each guest snapshots inside its own freeze: one round trip less of write stall;
            # a lone host's hold is the whole quiet window, so it thaws without waiting
            alone = len(self.channels) == 1
            frozen = self._all(
                "freeze", lambda _n: {"snapshot": True, "thaw": alone}, timeout=timeout + _SLACK
            )
            for name, answer in frozen.items():
                self.reports[name].snapshot = answer.pop("snapshot")
                self.reports[name].freeze = answer
            for name, answer in self._all("thaw", timeout=None).items():
                self.reports[name].thaw = answer
            manifest = self._judge(created)
            self._upload(manifest)
        finally:
            self._release_all()
        return self._commit(manifest)

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
        for member in manifest.members:
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
