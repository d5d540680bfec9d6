"""Consistency levels, group consistency and the failure policy, from what the guests reported.

Pure functions over the guests' replies, so every rule here is unit-tested without a host.
All times are already on the coordinator's clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cleancut.levels import Level, weakest


@dataclass
class HostReport:
    """Everything one host answered during a cut (times converted to the coordinator's clock)."""

    host: str
    clock_offset: float = 0.0
    hello: dict[str, Any] = field(default_factory=dict)
    prepare: dict[str, Any] = field(default_factory=dict)
    freeze: dict[str, Any] = field(default_factory=dict)
    snapshot: dict[str, Any] = field(default_factory=dict)
    thaw: dict[str, Any] = field(default_factory=dict)
    upload: dict[str, Any] = field(default_factory=dict)

    def local(self, guest_time: float | None) -> float | None:
        """A guest timestamp on the coordinator's clock."""
        return None if guest_time is None else guest_time - self.clock_offset

    @property
    def volumes(self) -> dict[str, Any]:
        return dict(self.hello.get("inventory", {}).get("volumes", {}))

    @property
    def pre_hooks(self) -> list[dict[str, Any]]:
        return list(self.prepare.get("hooks", []))

    @property
    def post_hooks(self) -> list[dict[str, Any]]:
        """The post-script runs reported by thaw, and by release after a failure."""
        return [run for run in self.thaw.get("hooks", []) if run.get("phase") == "post"]

    @property
    def thawed_from_outside(self) -> set[str]:
        """Mount points we froze that someone else thawed before our thaw (when is unknown)."""
        return set(self.thaw.get("thawed_from_outside") or [])

    def hook_volumes(self, run: dict[str, Any]) -> set[str]:
        """The volumes a hook run quiesces: those it names, or every volume of the host.

        An empty list is what a guest older than the field sends: it meant the whole host.
        """
        named = run.get("volumes") or self._declared_volumes(str(run.get("hook")))
        return set(named) if named else set(self.volumes)

    def _declared_volumes(self, hook: str) -> list[str]:
        declared = self.hello.get("inventory", {}).get("hooks", [])
        return next((list(h.get("volumes") or []) for h in declared if h.get("name") == hook), [])

    def thawed_outside(self, resource: str) -> bool:
        """Whether the file system of ``resource`` was thawed from outside before our thaw."""
        mount = self.volumes.get(resource, {}).get("mount")
        return mount is not None and mount in self.thawed_from_outside

    def writers(self) -> dict[str, Any]:
        """The latest writer report (thaw's, else freeze's, else prepare's)."""
        for phase in (self.thaw, self.freeze, self.prepare):
            if "writers" in phase:
                return dict(phase["writers"])
        return {}

    @property
    def self_thawed_at(self) -> float | None:
        return self.local(self.snapshot.get("self_thawed_at") or self.thaw.get("self_thawed_at"))

    @property
    def self_thawed(self) -> str | None:
        return self.snapshot.get("self_thawed") or self.thaw.get("self_thawed")


@dataclass(frozen=True)
class MemberVerdict:
    """The level one volume reached, and why."""

    host: str
    resource: str
    level: Level
    frozen: bool
    held: bool  # writes held by application steps (hooks, writers) for the whole snapshot
    reason: str


def blocking_hook_failures(reports: list[HostReport]) -> list[str]:
    """Pre-scripts that failed and forbid going on (Azure's continueBackupOnFailure false)."""
    return [
        f"host {r.host}: pre-script {run['hook']} failed: {_hook_failure(run)}"
        for r in reports
        for run in r.pre_hooks
        if not run["ok"] and not run.get("continue_on_failure", False)
    ]


def _hook_failure(run: dict[str, Any]) -> str:
    if run.get("error"):
        return str(run["error"])
    if run.get("timed_out"):
        return "timed out"
    return f"exit code {run.get('returncode')}"


def judge_member(report: HostReport, resource: str) -> MemberVerdict:
    """The consistency level of one volume (DESIGN.md §1, §3a)."""
    volume = report.volumes[resource]
    snapshot = report.snapshot.get("snapshots", {}).get(resource)
    if snapshot is None:
        error = report.snapshot.get("errors", {}).get(resource, "no snapshot was made")
        return MemberVerdict(report.host, resource, "none", False, False, error)
    reasons: list[str] = []
    frozen = bool(volume.get("freeze")) and not report.freeze.get("freeze_error")
    if volume.get("freeze") and report.freeze.get("freeze_error"):
        reasons.append(f"freeze failed: {report.freeze['freeze_error']}")
    if frozen and report.thawed_outside(resource):
        # we cannot know when: the snapshot may have been taken after the thaw
        frozen = False
        reasons.append(
            f"file system {volume.get('mount')} thawed from outside before cleancut's thaw"
        )
    finished = report.local(snapshot["taken_at"] + snapshot["seconds"])
    thawed_early = report.self_thawed_at
    if frozen and thawed_early is not None and finished is not None and thawed_early < finished:
        frozen = False
        reasons.append(f"thawed by itself ({report.self_thawed}) before the snapshot finished")
    held, by_hooks, hold_reason = _held(report, resource)
    reasons.append(hold_reason)
    base: Level = "filesystem" if frozen else volume.get("unheld_level", "none")
    provider = volume.get("provider")
    if frozen or (provider == "btrfs" and held):
        # a frozen or atomic snapshot: the held databases and quiesced hooks make it whole
        consistent = held
    elif provider in ("image", "external"):
        # An image clone sees only what reached the disk image: without a freeze, quiesced
        # data may still sit in the guest's page cache, so hooks alone do not make it whole.
        consistent = False
    else:
        # copy / reflink read the tree file by file: only a quiesced application holds it all
        consistent = by_hooks
        if held and not by_hooks:
            reasons.append("writers hold only their databases while the tree is read")
    level: Level = "application" if consistent else base
    if frozen:
        reasons.insert(0, "file system frozen")
    return MemberVerdict(report.host, resource, level, frozen, consistent, "; ".join(reasons))


def _held(report: HostReport, resource: str) -> tuple[bool, bool, str]:
    """Whether application steps held this volume's writes, whether hooks did, and why.

    Only the pre-scripts that quiesce this volume count, failed or not: an unrelated
    hook's success holds nothing here, and its failure weakens nothing here.
    """
    runs = [run for run in report.pre_hooks if resource in report.hook_volumes(run)]
    failed = [run for run in runs if not run["ok"]]
    if failed:
        return False, False, f"pre-script {failed[0]['hook']} failed: {_hook_failure(failed[0])}"
    writers = {n: w for n, w in report.writers().items() if w["volume"] == resource}
    bad = [n for n, w in writers.items() if not w["ok"]]
    if bad:
        return False, False, f"writer {bad[0]} failed: {writers[bad[0]]['error']}"
    steps = [f"pre-script {run['hook']} ok" for run in runs]
    steps += [f"{w['kind']} writer {n} held" for n, w in writers.items()]
    if not steps:
        return False, False, _no_step(report, resource)
    return True, bool(runs), ", ".join(steps)


def _no_step(report: HostReport, resource: str) -> str:
    others = [run for run in report.pre_hooks if resource not in report.hook_volumes(run)]
    if not others:
        return "no application step (hook or writer) declared"
    quiesced = ", ".join(sorted(report.hook_volumes(others[0])))
    return (
        f"no application step (hook or writer) for this volume: pre-script "
        f"{others[0]['hook']} quiesces only {quiesced}"
    )


def quiet_window(reports: list[HostReport]) -> tuple[float, float] | None:
    """``[max frozen_at, min thaw_started_at]`` on the coordinator's clock, or None if empty.

    A host that thawed by itself (deadline, lost input) let writes through from that moment,
    so its window ends there, not when ``thaw`` was sent.
    """
    starts = [r.local(r.freeze.get("frozen_at")) for r in reports]
    ends = [_writes_resumed(r) for r in reports]
    if any(t is None for t in starts + ends):
        return None
    start = max(t for t in starts if t is not None)
    end = min(t for t in ends if t is not None)
    return (start, end) if end >= start else None


def _writes_resumed(report: HostReport) -> float | None:
    """When the host's writes could start again: the thaw, or its own earlier thaw."""
    thaw = report.local(report.thaw.get("thaw_started_at"))
    early = report.self_thawed_at
    if thaw is None or early is None:
        return thaw
    return min(thaw, early)


def group_consistent(
    reports: list[HostReport], verdicts: list[MemberVerdict]
) -> tuple[bool, list[str]]:
    """Whether all members show one common instant, with the reasons when they do not.

    A host's snapshot taken while its writes were held shows the state that held during
    its whole hold ``[frozen_at, writes resumed]``; so every snapshot must lie inside its
    own host's hold, and the holds must share an instant (the quiet window). That is why a
    guest may snapshot right after its own freeze instead of waiting for every host's.
    """
    problems = [
        f"host {r.host} thawed by itself ({r.self_thawed}) before thaw was sent"
        for r in reports
        if r.self_thawed
    ]
    by_host = {r.host: r for r in reports}
    problems += [
        f"{v.host}/{v.resource} was neither frozen nor held by application steps"
        + _outside_note(by_host.get(v.host), v.resource)
        for v in verdicts
        if not (v.frozen or v.held)
    ]
    if quiet_window(reports) is None:
        problems.append("the hosts had no common quiet window")
    for report in reports:
        held_from = report.local(report.freeze.get("frozen_at"))
        held_until = _writes_resumed(report)
        for name, snap in report.snapshot.get("snapshots", {}).items():
            start = report.local(snap["taken_at"])
            end = report.local(snap["taken_at"] + snap["seconds"])
            if not _within(start, end, held_from, held_until):
                problems.append(f"{report.host}/{name} was snapshotted outside its hold")
    return not problems, problems


def _outside_note(report: HostReport | None, resource: str) -> str:
    if report is None or not report.thawed_outside(resource):
        return ""
    return " (its file system was thawed from outside before cleancut's thaw)"


def _within(start: float | None, end: float | None, low: float | None, high: float | None) -> bool:
    if start is None or end is None or low is None or high is None:
        return False
    return low <= start and end <= high


def rp_level(verdicts: list[MemberVerdict]) -> Level:
    return weakest([v.level for v in verdicts])


def post_script_failures(reports: Iterable[HostReport]) -> list[str]:
    """Every post-script that failed or whose result never arrived, one warning each.

    A post-script resumes what its pre-script quiesced: when it fails, the application may
    still be paused, so this is never silent (the CLI prints each and exits with
    :data:`~cleancut.errors.EXIT_POST_FAILED`). A hook whose pre-script ran (or that has
    only a post-script) but that has no post-script result was either not run or its
    result was lost with its host's thaw and release replies. It reads the replies
    defensively: it runs while an error propagates and must not replace it.
    """
    warnings: list[str] = []
    for report in reports:
        posts = report.post_hooks
        warnings += [
            f"host {report.host}: post-script {run.get('hook')} failed: {_hook_failure(run)}; "
            "the application may still be quiesced"
            for run in posts
            if not run.get("ok")
        ]
        reported = {run.get("hook") for run in posts}
        for missing in report.thaw.get("not_run", []):
            name = missing.get("hook")
            if name not in reported:
                reported.add(name)
                warnings.append(
                    f"host {report.host}: post-script {name} {missing.get('why')}; "
                    "the application may still be quiesced"
                )
        warnings += [
            f"host {report.host}: post-script {name}: no result reached the coordinator "
            "(not run, or its host's thaw and release replies were lost); "
            "the application may still be quiesced"
            for name in _posts_due(report)
            if name not in reported
        ]
    return warnings


def _posts_due(report: HostReport) -> list[str]:
    """Hooks whose post-script the guest must have run: its pre-script ran, or it has none."""
    if not report.prepare:
        return []  # no prepare reply: which pre-scripts ran is unknown
    ran = {run.get("hook") for run in report.pre_hooks}
    declared = report.hello.get("inventory", {}).get("hooks", [])
    return [
        str(h.get("name"))
        for h in declared
        if h.get("post") and (h.get("name") in ran or not h.get("pre"))
    ]
