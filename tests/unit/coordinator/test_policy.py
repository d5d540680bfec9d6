"""Consistency levels, quiet window and group consistency from the guests' replies.

The replies are built in the shape :class:`cleancut.guest.session.GuestSession` returns
them, so each rule of DESIGN.md §1/§3a is checked without a host.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cleancut.coordinator.manifest import build_manifest
from cleancut.coordinator.policy import (
    HostReport,
    MemberVerdict,
    blocking_hook_failures,
    group_consistent,
    judge_member,
    quiet_window,
    rp_level,
)

UNHELD = {"image": "crash", "btrfs": "crash", "copy": "none", "reflink": "none"}


def hook_run(name: str = "quiesce", *, ok: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "host": "",
        "hook": name,
        "source": "native",
        "phase": "pre",
        "argv": ["/etc/cleancut/hooks/pre.sh"],
        "ok": ok,
        "returncode": 0 if ok else 1,
        "attempts": 1,
        "duration": 0.01,
        **extra,
    }


def writer(volume: str = "orders", *, ok: bool = True, error: str | None = None) -> dict[str, Any]:
    return {"kind": "sqlite", "volume": volume, "ok": ok, "error": error, "details": {}}


def report(
    provider: str = "image",
    *,
    freeze: bool = True,
    hooks: list[dict[str, Any]] | None = None,
    writers: dict[str, dict[str, Any]] | None = None,
    host: str = "app1",
    offset: float = 0.0,
    frozen_at: float = 100.0,
    taken_at: float = 100.01,
    seconds: float = 0.005,
    thaw_started_at: float = 100.5,
    self_thawed_at: float | None = None,
    freeze_error: str | None = None,
) -> HostReport:
    """One host with one volume ``orders``; times are on the guest's clock."""
    writers = writers or {}
    return HostReport(
        host=host,
        clock_offset=offset,
        hello={
            "inventory": {
                "volumes": {
                    "orders": {
                        "path": "/srv/orders",
                        "provider": provider,
                        "freeze": freeze,
                        "unheld_level": UNHELD[provider],
                    }
                },
                "databases": {
                    n: {"kind": "sqlite", "volume": w["volume"]} for n, w in writers.items()
                },
            }
        },
        prepare={"hooks": hooks or [], "writers": writers},
        freeze={
            "frozen_at": frozen_at,
            "mounts": ["/srv/orders"] if freeze and not freeze_error else [],
            "freeze_error": freeze_error,
            "writers": writers,
        },
        snapshot={
            "snapshots": {
                "orders": {
                    "taken_at": taken_at,
                    "seconds": seconds,
                    "layout": "tree",
                    "details": {},
                }
            },
            "errors": {},
            "self_thawed": "deadline" if self_thawed_at is not None else None,
            "self_thawed_at": self_thawed_at,
        },
        thaw={
            "thaw_started_at": thaw_started_at,
            "thawed_at": thaw_started_at + 0.001,
            "self_thawed": "deadline" if self_thawed_at is not None else None,
            "self_thawed_at": self_thawed_at,
            "writers": writers,
            "hooks": [],
        },
    )


def judge(r: HostReport) -> MemberVerdict:
    return judge_member(r, "orders")


# -- judge_member ------------------------------------------------------------------------


def test_image_frozen_with_hooks_ok_is_application() -> None:
    verdict = judge(report("image", hooks=[hook_run()]))
    assert verdict.level == "application"
    assert verdict.frozen and verdict.held
    assert "file system frozen" in verdict.reason
    assert "pre-script quiesce ok" in verdict.reason


def test_image_frozen_with_writer_held_is_application() -> None:
    verdict = judge(report("image", writers={"orders": writer()}))
    assert verdict.level == "application"
    assert "sqlite writer orders held" in verdict.reason


def test_frozen_without_application_step_is_filesystem() -> None:
    verdict = judge(report("image"))
    assert verdict.level == "filesystem"
    assert verdict.frozen and not verdict.held
    assert "no application step" in verdict.reason


def test_failed_pre_hook_drops_to_filesystem_with_the_reason() -> None:
    verdict = judge(report("image", hooks=[hook_run(ok=False)], writers={"orders": writer()}))
    assert verdict.level == "filesystem"
    assert "pre-script quiesce failed: exit code 1" in verdict.reason


def test_timed_out_pre_hook_reason() -> None:
    run = hook_run(ok=False, timed_out=True, returncode=None)
    assert "quiesce failed: timed out" in judge(report("image", hooks=[run])).reason


def test_failed_writer_drops_to_filesystem() -> None:
    bad = writer(ok=False, error="database is locked")
    verdict = judge(report("copy", hooks=[hook_run()], writers={"orders": bad}))
    assert verdict.level == "filesystem"
    assert "writer orders failed: database is locked" in verdict.reason


def test_writer_of_another_volume_does_not_count() -> None:
    verdict = judge(report("image", writers={"invoices": writer("invoices")}))
    assert verdict.level == "filesystem"


def test_freeze_error_drops_the_frozen_level() -> None:
    verdict = judge(report("image", freeze_error="FIFREEZE refused"))
    assert not verdict.frozen
    assert verdict.level == "crash"
    assert "freeze failed: FIFREEZE refused" in verdict.reason


def test_self_thaw_before_the_snapshot_finished_drops_to_the_unheld_level() -> None:
    r = report("image", hooks=[hook_run()], taken_at=100.01, seconds=0.2, self_thawed_at=100.1)
    verdict = judge(r)
    assert not verdict.frozen
    assert verdict.level == "crash"
    assert "thawed by itself (deadline) before the snapshot finished" in verdict.reason
    consistent, problems = group_consistent([r], [verdict])
    assert not consistent
    assert any("thawed by itself" in p for p in problems)


def test_self_thaw_of_a_copy_volume_without_holds_is_none() -> None:
    r = report("copy", taken_at=100.01, seconds=0.2, self_thawed_at=100.1)
    assert judge(r).level == "none"


def test_self_thaw_after_the_snapshot_keeps_the_level_but_not_group_consistency() -> None:
    r = report("image", hooks=[hook_run()], taken_at=100.01, seconds=0.01, self_thawed_at=100.3)
    verdict = judge(r)
    assert verdict.level == "application"
    consistent, problems = group_consistent([r], [verdict])
    assert not consistent
    assert problems == ["host app1 thawed by itself (deadline) before thaw was sent"]


def test_copy_without_freeze_held_by_writers_only_is_none() -> None:
    verdict = judge(report("copy", freeze=False, writers={"orders": writer()}))
    assert verdict.level == "none"
    assert not verdict.held
    assert "writers hold only their databases while the tree is read" in verdict.reason


def test_copy_without_freeze_with_hooks_is_application() -> None:
    verdict = judge(report("copy", freeze=False, hooks=[hook_run()]))
    assert verdict.level == "application"
    assert verdict.held and not verdict.frozen


def test_btrfs_held_by_a_writer_is_application() -> None:
    verdict = judge(report("btrfs", freeze=False, writers={"orders": writer()}))
    assert verdict.level == "application"


def test_btrfs_unheld_is_crash() -> None:
    verdict = judge(report("btrfs", freeze=False))
    assert verdict.level == "crash"
    assert not (verdict.frozen or verdict.held)


def test_reflink_unheld_is_none() -> None:
    assert judge(report("reflink", freeze=False)).level == "none"


def test_reflink_with_hooks_is_application() -> None:
    assert judge(report("reflink", freeze=False, hooks=[hook_run()])).level == "application"


def test_image_unfrozen_with_hooks_is_crash() -> None:
    verdict = judge(report("image", freeze=False, hooks=[hook_run()]))
    assert verdict.level == "crash"
    assert not verdict.held


def test_missing_snapshot_is_none_with_the_providers_error() -> None:
    r = report("image")
    r.snapshot["snapshots"] = {}
    r.snapshot["errors"] = {"orders": "datastore has no reflink"}
    verdict = judge(r)
    assert verdict.level == "none"
    assert verdict.reason == "datastore has no reflink"


def test_rp_is_as_strong_as_its_weakest_member() -> None:
    strong = judge(report("image", hooks=[hook_run()]))
    weak = judge(report("btrfs", freeze=False))
    assert rp_level([strong, weak]) == "crash"
    assert rp_level([strong]) == "application"
    assert rp_level([]) == "none"


# -- blocking hook failures --------------------------------------------------------------


def test_blocking_hook_failures_respect_continue_on_failure() -> None:
    blocking = report(hooks=[hook_run("a", ok=False, returncode=3)])
    tolerated = report(host="app2", hooks=[hook_run("b", ok=False, continue_on_failure=True)])
    fine = report(host="app3", hooks=[hook_run("c")])
    assert blocking_hook_failures([blocking, tolerated, fine]) == [
        "host app1: pre-script a failed: exit code 3"
    ]
    assert blocking_hook_failures([tolerated, fine]) == []


def test_blocking_hook_failure_reports_the_start_error() -> None:
    run = hook_run(ok=False, returncode=None, error="cannot execute: Permission denied")
    assert blocking_hook_failures([report(hooks=[run])]) == [
        "host app1: pre-script quiesce failed: cannot execute: Permission denied"
    ]


# -- quiet window and group consistency --------------------------------------------------


def test_quiet_window_is_last_freeze_to_first_thaw() -> None:
    a = report(host="a", frozen_at=100.0, taken_at=100.2, thaw_started_at=101.0)
    b = report(host="b", frozen_at=100.1, taken_at=100.2, thaw_started_at=100.8)
    assert quiet_window([a, b]) == pytest.approx((100.1, 100.8))


def test_quiet_window_uses_the_coordinators_clock() -> None:
    # b's clock runs 50 s ahead: its 150.2 is the coordinator's 100.2
    a = report(host="a", frozen_at=100.0, taken_at=100.3, thaw_started_at=101.0)
    b = report(host="b", offset=50.0, frozen_at=150.2, taken_at=150.3, thaw_started_at=150.9)
    assert quiet_window([a, b]) == pytest.approx((100.2, 100.9))
    verdicts = [judge(a), judge(b)]
    assert group_consistent([a, b], verdicts) == (True, [])


def test_ignoring_the_offset_would_give_another_window() -> None:
    b = report(host="b", offset=50.0, frozen_at=150.2, thaw_started_at=150.9)
    b_raw = report(host="b", frozen_at=150.2, thaw_started_at=150.9)
    a = report(host="a", frozen_at=100.0, thaw_started_at=101.0)
    assert quiet_window([a, b_raw]) is None  # 150.2 > 101.0: no overlap
    assert quiet_window([a, b]) is not None


def test_no_overlap_means_no_window_and_not_consistent() -> None:
    a = report(host="a", frozen_at=100.0, taken_at=100.1, thaw_started_at=100.5)
    b = report(host="b", frozen_at=100.6, taken_at=100.7, thaw_started_at=101.0)
    assert quiet_window([a, b]) is None
    consistent, problems = group_consistent([a, b], [judge(a), judge(b)])
    assert not consistent
    assert "the hosts had no common quiet window" in problems


def test_snapshot_before_the_other_host_froze_is_still_consistent() -> None:
    # a's image, taken while a is frozen, is a's state during all of a's hold, which
    # overlaps b's: both show the instants of the common window
    a = report(host="a", frozen_at=100.0, taken_at=100.05, thaw_started_at=101.0)
    b = report(host="b", frozen_at=100.2, taken_at=100.3, thaw_started_at=101.0)
    assert group_consistent([a, b], [judge(a), judge(b)]) == (True, [])


def test_snapshot_before_its_own_freeze_is_not_group_consistent() -> None:
    a = report(host="a", frozen_at=100.0, taken_at=99.9, thaw_started_at=101.0)
    b = report(host="b", frozen_at=100.0, taken_at=100.3, thaw_started_at=101.0)
    consistent, problems = group_consistent([a, b], [judge(a), judge(b)])
    assert not consistent
    assert problems == ["a/orders was snapshotted outside its hold"]


def test_snapshot_running_past_its_own_self_thaw_is_outside() -> None:
    a = report(host="a", frozen_at=100.0, taken_at=100.1, seconds=0.1, thaw_started_at=100.9)
    b = report(
        host="b",
        frozen_at=100.0,
        taken_at=100.1,
        seconds=0.6,
        thaw_started_at=101.0,
        self_thawed_at=100.5,
    )
    consistent, problems = group_consistent([a, b], [judge(a), judge(b)])
    assert not consistent
    assert "b/orders was snapshotted outside its hold" in problems


def test_unfrozen_unheld_member_breaks_group_consistency() -> None:
    a = report(host="a", hooks=[hook_run()])
    b = report("btrfs", host="b", freeze=False)
    consistent, problems = group_consistent([a, b], [judge(a), judge(b)])
    assert not consistent
    assert problems == ["b/orders was neither frozen nor held by application steps"]


def test_two_frozen_hosts_inside_the_window_are_group_consistent() -> None:
    a = report(host="a", hooks=[hook_run()])
    b = report(host="b", writers={"orders": writer()})
    verdicts = [judge(a), judge(b)]
    assert group_consistent([a, b], verdicts) == (True, [])


def test_self_thaw_shortens_the_quiet_window() -> None:
    # a's writes resumed when it thawed by itself, not when thaw was sent
    a = report(
        host="a", frozen_at=100.0, taken_at=100.1, thaw_started_at=101.0, self_thawed_at=100.4
    )
    b = report(host="b", frozen_at=100.0, taken_at=100.1, thaw_started_at=101.0)
    assert quiet_window([a, b]) == pytest.approx((100.0, 100.4))


# -- manifest ----------------------------------------------------------------------------


def test_manifest_records_levels_stalls_and_window() -> None:
    a = report(
        host="a",
        hooks=[hook_run()],
        writers={"orders": writer()},
        frozen_at=100.0,
        thaw_started_at=100.5,
    )
    b = report(
        "btrfs",
        host="b",
        freeze=False,
        offset=10.0,
        frozen_at=110.1,
        taken_at=110.2,
        thaw_started_at=110.4,
    )
    verdicts = [judge(a), judge(b)]
    consistent, problems = group_consistent([a, b], verdicts)
    manifest = build_manifest(
        app="shop",
        rp_id="20260101T000000Z-abcd",
        created=datetime(2026, 1, 1, tzinfo=UTC),
        on_failure="degrade",
        reports=[a, b],
        verdicts=verdicts,
        level=rp_level(verdicts),
        consistent=consistent,
        problems=problems,
    )
    assert manifest.level == "crash"
    assert not manifest.group_consistent
    assert manifest.notes == problems
    assert manifest.quiet_window == pytest.approx((100.1, 100.4))
    by_host = {h.host: h for h in manifest.hosts}
    assert by_host["a"].write_stall == pytest.approx(0.501)
    assert by_host["b"].write_stall is None  # nothing frozen, no writer: no stall
    assert by_host["b"].frozen_at == pytest.approx(100.1)
    members = {m.host: m for m in manifest.members}
    assert members["a"].level == "application"
    assert members["a"].databases == ["orders"]
    assert members["b"].level == "crash"
    assert members["b"].snapshot_at == pytest.approx(100.2)
    assert [w.database for w in manifest.writers] == ["orders"]
    assert [h.host for h in manifest.hooks] == ["a"]
