"""Consistency levels, quiet window and group consistency from the guests' replies.

The replies are built in the shape :class:`cleancut.guest.session.GuestSession` returns
them, so each rule of DESIGN.md §1/§3a is checked without a host.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cleancut.coordinator.assemble import build_manifest
from cleancut.coordinator.policy import (
    HostReport,
    MemberVerdict,
    blocking_hook_failures,
    group_consistent,
    judge_member,
    post_script_failures,
    quiet_window,
    rp_level,
)
from cleancut.errors import ProtocolError

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
    thaw_extra: dict[str, Any] | None = None,
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
                        "mount": "/srv/orders",
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
            **(thaw_extra or {}),
        },
    )


def with_volume(
    r: HostReport, name: str, provider: str = "image", *, freeze: bool = True
) -> HostReport:
    """``r`` with one more volume ``name`` (its own file system at /srv/NAME), snapshotted."""
    r.hello["inventory"]["volumes"][name] = {
        "path": f"/srv/{name}",
        "mount": f"/srv/{name}",
        "provider": provider,
        "freeze": freeze,
        "unheld_level": UNHELD[provider],
    }
    r.snapshot["snapshots"][name] = dict(r.snapshot["snapshots"]["orders"])
    return r


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


def judged(r: HostReport) -> Any:
    """The manifest of a one-host cut of ``r``."""
    verdicts = [judge_member(r, name) for name in r.volumes]
    consistent, problems = group_consistent([r], verdicts)
    return build_manifest(
        app="shop",
        rp_id="20260101T000000Z-abcd",
        created=datetime(2026, 1, 1, tzinfo=UTC),
        on_failure="degrade",
        reports=[r],
        verdicts=verdicts,
        level=rp_level(verdicts),
        consistent=consistent,
        problems=problems,
    )


# -- which volumes a hook holds ----------------------------------------------------------


@pytest.mark.parametrize("provider", ["reflink", "copy"])
def test_a_hook_of_another_volume_does_not_make_this_one_application(provider: str) -> None:
    r = with_volume(
        report(provider, freeze=False, hooks=[hook_run("db-quiesce", volumes=["invoices"])]),
        "invoices",
        "copy",
        freeze=False,
    )
    verdict = judge(r)
    assert verdict.level == "none"
    assert not verdict.held
    assert "pre-script db-quiesce quiesces only invoices" in verdict.reason
    assert judge_member(r, "invoices").level == "application"


def test_a_hook_naming_this_volume_holds_it() -> None:
    r = report("reflink", freeze=False, hooks=[hook_run(volumes=["orders", "invoices"])])
    r = with_volume(r, "invoices", "reflink", freeze=False)
    assert judge(r).level == "application"
    assert judge_member(r, "invoices").level == "application"


def test_a_frozen_volume_with_only_another_volumes_hook_is_filesystem() -> None:
    r = with_volume(report("image", hooks=[hook_run(volumes=["invoices"])]), "invoices")
    assert judge(r).level == "filesystem"
    assert judge_member(r, "invoices").level == "application"


@pytest.mark.parametrize("extra", [{}, {"volumes": []}])
def test_a_hook_without_volumes_holds_every_volume(extra: dict[str, Any]) -> None:
    # imported formats (Azure, GCP, qemu-ga) and guests older than the field mean the host
    r = with_volume(report("reflink", freeze=False, hooks=[hook_run(**extra)]), "invoices")
    assert judge(r).level == "application"
    assert judge_member(r, "invoices").level == "application"


def test_the_declared_hook_volumes_count_when_a_run_lacks_them() -> None:
    r = with_volume(report("reflink", freeze=False, hooks=[hook_run()]), "invoices", "copy")
    r.hello["inventory"]["hooks"] = [{"name": "quiesce", "volumes": ["invoices"]}]
    assert judge(r).level == "none"


def test_a_failed_hook_of_another_volume_does_not_weaken_this_one() -> None:
    failed = hook_run("other", ok=False, continue_on_failure=True, volumes=["invoices"])
    r = with_volume(report("image", hooks=[failed], writers={"orders": writer()}), "invoices")
    verdict = judge(r)
    assert verdict.level == "application"
    assert "failed" not in verdict.reason
    weak = judge_member(r, "invoices")
    assert weak.level == "filesystem"
    assert "pre-script other failed: exit code 1" in weak.reason


# -- a freeze thawed from outside --------------------------------------------------------


def test_a_freeze_thawed_from_outside_is_not_frozen() -> None:
    r = report("image", hooks=[hook_run()], thaw_extra={"thawed_from_outside": ["/srv/orders"]})
    verdict = judge(r)
    assert not verdict.frozen
    assert verdict.level == "crash"  # an image without a freeze misses the page cache
    assert "thawed from outside before cleancut's thaw" in verdict.reason
    assert "file system frozen" not in verdict.reason
    consistent, problems = group_consistent([r], [verdict])
    assert not consistent
    assert problems == [
        "app1/orders was neither frozen nor held by application steps (its file system "
        "was thawed from outside before cleancut's thaw)"
    ]
    manifest = judged(r)
    assert [m.frozen for m in manifest.members] == [False]
    assert manifest.level == "crash"


def test_only_the_file_system_thawed_from_outside_loses_its_freeze() -> None:
    r = report("image", thaw_extra={"thawed_from_outside": ["/srv/invoices"]})
    r = with_volume(r, "invoices")
    assert judge(r).frozen and judge(r).level == "filesystem"
    assert not judge_member(r, "invoices").frozen
    assert {m.resource: m.frozen for m in judged(r).members} == {
        "orders": True,
        "invoices": False,
    }


def test_a_copy_thawed_from_outside_but_quiesced_by_its_hook_stays_application() -> None:
    r = report("copy", hooks=[hook_run()], thaw_extra={"thawed_from_outside": ["/srv/orders"]})
    verdict = judge(r)
    assert not verdict.frozen and verdict.held
    assert verdict.level == "application"


# -- write stall and pause ---------------------------------------------------------------


def test_the_guests_monotonic_write_stall_and_pause_are_recorded() -> None:
    r = report("image", hooks=[hook_run()], thaw_extra={"write_stall": 0.042, "pause": 1.25})
    host = judged(r).hosts[0]
    assert host.write_stall == pytest.approx(0.042)  # not thawed_at - frozen_at (0.501)
    assert host.pause == pytest.approx(1.25)
    assert judged(r).max_pause == pytest.approx(1.25)


def test_a_guest_that_held_nothing_sends_no_stall() -> None:
    r = report("image", thaw_extra={"write_stall": None, "pause": None})
    manifest = judged(r)
    assert manifest.hosts[0].write_stall is None
    assert manifest.max_pause is None


def test_without_the_guests_figures_the_stall_comes_from_its_instants() -> None:
    host = judged(report("image")).hosts[0]
    assert host.write_stall == pytest.approx(0.501)
    assert host.pause is None


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0, "1s", True])
def test_a_duration_that_is_not_one_is_a_protocol_error(value: object) -> None:
    with pytest.raises(ProtocolError, match="as a duration"):
        judged(report("image", thaw_extra={"pause": value}))


# -- post-scripts ------------------------------------------------------------------------


def post_run(name: str = "quiesce", **extra: Any) -> dict[str, Any]:
    return hook_run(name, phase="post", argv=["/etc/cleancut/hooks/post.sh"], **extra)


def declared(*hooks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"source": "native", "pre": None, "post": None, **h} for h in hooks]


def test_failed_post_scripts_are_named_with_their_error() -> None:
    r = report("image", hooks=[hook_run("a"), hook_run("b"), hook_run("c")])
    r.thaw["hooks"] = [
        post_run("c", ok=False, returncode=4),
        post_run("b", ok=False, returncode=None, timed_out=True),
        post_run("a", ok=False, returncode=None, error="not run: refused: world-writable"),
    ]
    assert post_script_failures([r]) == [
        "host app1: post-script c failed: exit code 4; the application may still be quiesced",
        "host app1: post-script b failed: timed out; the application may still be quiesced",
        "host app1: post-script a failed: not run: refused: world-writable; "
        "the application may still be quiesced",
    ]
    assert judged(r).notes[-3:] == post_script_failures([r])


def test_post_scripts_that_ran_are_no_warning() -> None:
    r = report("image", hooks=[hook_run()])
    r.hello["inventory"]["hooks"] = declared({"name": "quiesce", "pre": ["/p"], "post": ["/q"]})
    r.thaw["hooks"] = [post_run()]
    assert post_script_failures([r]) == []
    assert judged(r).notes == []


def test_a_post_script_whose_result_never_arrived_is_a_warning() -> None:
    r = report("image", hooks=[hook_run("ran")])
    r.hello["inventory"]["hooks"] = declared(
        {"name": "ran", "pre": ["/p"], "post": ["/q"]},
        {"name": "not-reached", "pre": ["/p"], "post": ["/q"]},  # its pre-script never ran
        {"name": "post-only", "post": ["/q"]},
        {"name": "pre-only", "pre": ["/p"]},
    )
    r.thaw = {}  # the thaw reply was lost and release did not answer
    warnings = post_script_failures([r])
    assert [w.split(":")[1].strip() for w in warnings] == [
        "post-script ran",
        "post-script post-only",
    ]
    assert "no result reached the coordinator" in warnings[0]


def test_before_prepare_answered_no_post_script_is_expected() -> None:
    r = report("image")
    r.prepare = {}
    r.hello["inventory"]["hooks"] = declared({"name": "post-only", "post": ["/q"]})
    assert post_script_failures([r]) == []
    r.thaw["hooks"] = [post_run("post-only", ok=False)]  # release ran it: it failed
    assert post_script_failures([r]) == [
        "host app1: post-script post-only failed: exit code 1; "
        "the application may still be quiesced"
    ]
