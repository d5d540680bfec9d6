"""Assembling the manifest of a recovery point from the hosts' reports and the verdicts."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from cleancut.coordinator.policy import (
    HostReport,
    MemberVerdict,
    post_script_failures,
    quiet_window,
)
from cleancut.errors import ProtocolError
from cleancut.levels import Level
from cleancut.manifest import HookRun, HostTimings, Manifest, Member, WriterRecord


def build_manifest(
    *,
    app: str,
    rp_id: str,
    created: datetime,
    on_failure: Literal["abort", "degrade"],
    reports: list[HostReport],
    verdicts: list[MemberVerdict],
    level: Level,
    consistent: bool,
    problems: list[str],
) -> Manifest:
    """The manifest of one cut; upload figures are filled in after the upload.

    ``notes`` are the group-consistency ``problems`` and every failed post-script (the
    application may have been left quiesced: the manifest says so too, not only the CLI).
    """
    by_key = {(v.host, v.resource): v for v in verdicts}
    members = [
        _member(report, name, by_key[(report.host, name)])
        for report in reports
        for name in report.volumes
    ]
    return Manifest(
        app=app,
        rp_id=rp_id,
        created_at=created,
        on_failure=on_failure,
        level=level,
        group_consistent=consistent,
        quiet_window=quiet_window(reports),
        hosts=[_timings(report) for report in reports],
        members=members,
        writers=[
            WriterRecord(host=report.host, database=name, **writer)
            for report in reports
            for name, writer in report.writers().items()
        ],
        hooks=[
            HookRun.model_validate({**run, "host": report.host})
            for report in reports
            for run in report.prepare.get("hooks", []) + report.thaw.get("hooks", [])
        ],
        notes=[*problems, *post_script_failures(reports)],
    )


def _member(report: HostReport, name: str, verdict: MemberVerdict) -> Member:
    volume = report.volumes[name]
    snapshot = report.snapshot.get("snapshots", {}).get(name, {})
    details: dict[str, Any] = snapshot.get("details", {})
    databases = report.hello.get("inventory", {}).get("databases", {})
    return Member(
        host=report.host,
        resource=name,
        provider=volume["provider"],
        layout=snapshot.get("layout", "tree"),
        source_path=volume["path"],
        image_path=volume.get("image") or details.get("image"),
        fstype=details.get("fstype") or volume.get("fstype"),
        frozen=verdict.frozen,
        level=verdict.level,
        reason=verdict.reason,
        snapshot_at=report.local(snapshot.get("taken_at")),
        snapshot_seconds=snapshot.get("seconds"),
        databases=sorted(n for n, db in databases.items() if db["volume"] == name),
    )


def _timings(report: HostReport) -> HostTimings:
    frozen_at = report.local(report.freeze.get("frozen_at"))
    thawed_at = report.local(report.thaw.get("thawed_at"))
    if report.self_thawed_at is not None and thawed_at is not None:
        thawed_at = min(thawed_at, report.self_thawed_at)  # the watchdog ended the freeze
    snapshots = report.snapshot.get("snapshots", {}).values()
    return HostTimings(
        host=report.host,
        clock_offset=report.clock_offset,
        frozen_at=frozen_at,
        thaw_started_at=report.local(report.thaw.get("thaw_started_at")),
        thawed_at=thawed_at,
        write_stall=_write_stall(report, frozen_at, thawed_at),
        pause=_seconds(report.thaw.get("pause")),
        self_thawed=report.self_thawed,
        stall_includes_copy=any(s.get("details", {}).get("stall_includes_copy") for s in snapshots),
    )


def _write_stall(
    report: HostReport, frozen_at: float | None, thawed_at: float | None
) -> float | None:
    """The stall writers saw: from the first hold (writer or FIFREEZE) to the last release.

    The guest measures it on its monotonic clock (a wall-clock step cannot bend it); a
    guest that does not send it gets it from its wall-clock instants, as before.
    """
    if "write_stall" in report.thaw:
        return _seconds(report.thaw["write_stall"])
    held = bool(report.freeze.get("mounts")) or bool(report.writers())
    started = report.local(report.freeze.get("hold_started_at")) or frozen_at
    ended = report.local(report.thaw.get("hold_ended_at")) or thawed_at
    if report.self_thawed_at is not None and ended is not None and not report.writers():
        ended = min(ended, report.self_thawed_at)
    return ended - started if held and started and ended else None


def _seconds(value: Any) -> float | None:
    """A duration from a reply: None stays None, anything else must be finite and >= 0."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value >= 0)
    ):
        raise ProtocolError(f"the guest sent {value!r} as a duration; expected seconds >= 0")
    return float(value)
