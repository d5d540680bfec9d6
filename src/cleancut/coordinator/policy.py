"""Consistency levels, group consistency and the failure policy, from what the guests reported.

Pure functions over the guests' replies, so every rule here is unit-tested without a host.
All times are already on the coordinator's clock.
"""

from __future__ import annotations

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
    elif provider == "image":
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
    """Whether application steps held this volume's writes, whether hooks did, and why."""
    failed = [run for run in report.pre_hooks if not run["ok"]]
    if failed:
        return False, False, f"pre-script {failed[0]['hook']} failed: {_hook_failure(failed[0])}"
    writers = {n: w for n, w in report.writers().items() if w["volume"] == resource}
    bad = [n for n, w in writers.items() if not w["ok"]]
    if bad:
        return False, False, f"writer {bad[0]} failed: {writers[bad[0]]['error']}"
    steps = [f"pre-script {run['hook']} ok" for run in report.pre_hooks]
    steps += [f"{w['kind']} writer {n} held" for n, w in writers.items()]
    if not steps:
        return False, False, "no application step (hook or writer) declared"
    return True, bool(report.pre_hooks), ", ".join(steps)


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
    problems += [
        f"{v.host}/{v.resource} was neither frozen nor held by application steps"
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


def _within(start: float | None, end: float | None, low: float | None, high: float | None) -> bool:
    if start is None or end is None or low is None or high is None:
        return False
    return low <= start and end <= high


def rp_level(verdicts: list[MemberVerdict]) -> Level:
    return weakest([v.level for v in verdicts])
