"""What a run's record says: a summary dict per action, and the words of a notification.

The summary is stored in the run log and read back by ``status`` and ``metrics``; its
keys are stable (``rp``, ``level``, ``group_consistent``, ``hosts``, ``bytes_added``,
``error``, ``host``, ``rto_seconds`` …) because alerts and scripts read them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cleancut.manifest import Manifest

if TYPE_CHECKING:
    from cleancut.check import CheckReport
    from cleancut.forget import ForgetResult
    from cleancut.verify import VerifyReport


def backup_summary(manifest: Manifest, post_script_failures: list[str]) -> dict[str, Any]:
    """The committed RP in figures: level, consistency, stall and pause per host."""
    return {
        "rp": manifest.rp_id,
        "level": manifest.level,
        "group_consistent": manifest.group_consistent,
        "quiet_window_seconds": manifest.quiet_window_seconds,
        "hosts": [
            {
                "host": host.host,
                "write_stall_seconds": host.write_stall,
                "pause_seconds": host.pause,
            }
            for host in manifest.hosts
        ],
        "bytes_added": manifest.added,
        "size_bytes": manifest.size,
        "weaker_members": [
            f"{member.host}/{member.resource}: {member.level} ({member.reason})"
            for member in manifest.members
            if member.level != "application"
        ],
        "post_script_failures": post_script_failures,
        "notes": manifest.notes,
    }


def forget_summary(result: ForgetResult) -> dict[str, Any]:
    plan = result.plan
    return {
        "kept": len(plan.kept),
        "forgotten": len(plan.forgotten),
        "forgotten_rps": [decision.point.rp_id for decision in plan.forgotten],
        "leftovers": len(plan.leftovers),
        "restic_calls": plan.restic_calls,
        "pruned": result.pruned,
    }


def check_summary(report: CheckReport) -> dict[str, Any]:
    """The check's counts and problems (the full report minus restic's output)."""
    figures = report.as_dict()
    return {
        key: figures[key]
        for key in ("rps", "members", "orphans", "missing", "size_mismatches", "problems")
        if key in figures
    } | {"unreadable_manifests": figures.get("unreadable_manifests", 0)}


def verify_summary(report: VerifyReport) -> dict[str, Any]:
    return {
        "rp": report.rp_id,
        "ok": report.ok,
        "rto_seconds": report.rto_seconds,
        "restore_seconds": report.restore_seconds,
        "checks": len(report.checks),
        "failed_checks": [check.name for check in report.checks if not check.ok],
        "databases": [
            {"host": db.host, "name": db.name, "recovery_seconds": db.recovery_seconds}
            for db in report.databases
        ],
    }


def describe(app: str, action: str, outcome: str, summary: dict[str, Any]) -> tuple[str, str]:
    """A notification's title and body: what ran, how it ended, and what matters most."""
    title = f"cleancut {action} of {app}: {outcome}"
    lines: list[str] = []
    if summary.get("error"):
        where = f" on host {summary['host']}" if summary.get("host") else ""
        lines.append(f"failed{where}: {summary['error']}")
    for failed in summary.get("failed_hosts", []):
        lines.append(f"host {failed['host']} failed {failed['phase']}: {failed['error']}")
    if action == "backup" and "rp" in summary:
        consistent = "yes" if summary.get("group_consistent") else "NO"
        lines.append(
            f"recovery point {summary['rp']}: level {summary.get('level')}, "
            f"group-consistent {consistent}"
        )
        for host in summary.get("hosts", []):
            stall = _ms(host.get("write_stall_seconds"))
            pause = host.get("pause_seconds")
            paused = f", application paused {_ms(pause)}" if pause is not None else ""
            lines.append(f"  {host['host']}: write stall {stall}{paused}")
        lines.extend(f"  weaker: {text}" for text in summary.get("weaker_members", []))
        lines.extend(
            f"  post-script failed: {text}" for text in summary.get("post_script_failures", [])
        )
        lines.append(f"  {summary.get('bytes_added', 0)} bytes added")
    if action == "forget" and "forgotten" in summary:
        lines.append(
            f"{summary['kept']} recovery points kept, {summary['forgotten']} forgotten, "
            f"{summary.get('leftovers', 0)} leftover snapshots removed"
        )
    if action == "check" and "problems" in summary:
        problems = summary["problems"]
        lines.append(f"{len(problems)} problems" if problems else "no problems")
        lines.extend(f"  {problem}" for problem in problems[:20])
    if action == "verify" and "rp" in summary:
        rto = summary.get("rto_seconds")
        lines.append(
            f"restore drill of {summary['rp']}: RTO " + ("-" if rto is None else f"{rto:.2f} s")
        )
        lines.extend(f"  check failed: {name}" for name in summary.get("failed_checks", []))
    if not lines:
        lines.append(f"{action} ended: {outcome}")
    return title, "\n".join(lines)


def _ms(seconds: object) -> str:
    return "-" if not isinstance(seconds, int | float) else f"{seconds * 1000:.1f} ms"
