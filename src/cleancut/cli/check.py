"""``cleancut check``: the repository and every recovery point in it (see cleancut.check)."""

from __future__ import annotations

from pathlib import Path

import typer

from cleancut.check import SUBSET_FORMS, CheckReport, parse_read_data_subset, run_check
from cleancut.cli.common import (
    APP_CONFIG,
    JSON,
    WAIT,
    load,
    open_catalog,
    open_repository,
    tracked,
)
from cleancut.cli.output import emit_json, err, out
from cleancut.coordinator.runlock import AppLock
from cleancut.errors import CheckProblems
from cleancut.monitoring.summaries import check_summary


def check(
    config: Path = APP_CONFIG,
    read_data_subset: str | None = typer.Option(
        None,
        "--read-data-subset",
        help=f"Also read back this part of the repository's data: {SUBSET_FORMS}.",
        show_default=False,
    ),
    json_output: bool = JSON,
    wait: bool = WAIT,
) -> None:
    """Check the repository and that every recovery point in it is whole.

    Runs restic check (reading back part of the data with --read-data-subset), then
    compares the application's snapshots with its manifests: a member a manifest names
    but the repository lacks (missing: that RP does not restore whole), a member snapshot
    whose files do not add up to the size its manifest recorded, a member snapshot no
    manifest names (an orphan, left by an interrupted backup or forget: cleancut forget
    removes it), and a manifest snapshot that is not a valid manifest. Each problem is
    printed with its RP, host/resource, snapshot and what to do. Exit code 0 when nothing
    was found, 12 when anything was, 2 for a configuration error or a bad
    --read-data-subset, 7 when restic could not open the repository or it is locked by
    another restic (restic check takes restic's exclusive lock: a backup from another
    machine fails meanwhile), 11 when another run of the application (backup, forget,
    verify, check) is in progress on this machine (--wait waits for it).
    """
    subset = parse_read_data_subset(read_data_subset)
    loaded = load(config)
    catalog = open_catalog(loaded)
    _access, mover = open_repository(loaded)
    say = (lambda _text: None) if json_output else (lambda text: err.print(text, markup=False))
    with (
        tracked(loaded, "check", catalog, mover) as run,
        AppLock(loaded.config.name, action="check", wait=wait, on_wait=say),
    ):
        report = run_check(loaded.config.name, mover, catalog=catalog, read_data_subset=subset)
        run.done("success" if report.ok else "failure", check_summary(report))
    if json_output:
        emit_json("result", report.as_dict())
    else:
        render(report)
    if not report.ok:
        raise CheckProblems(
            f"the check of {report.app} found {len(report.problems)} problems (listed above)"
        )


def render(report: CheckReport) -> None:
    """The counts, then each problem on its own line, then restic check's output if it failed."""
    restic = report.repository
    read = f", read back {restic.read_data_subset} of the data" if restic.read_data_subset else ""
    out.print(
        f"check of {report.app}: {report.rps} recovery points, {report.members} members; "
        f"restic check {'ok' if restic.ok else 'FAILED'} in {restic.seconds:.1f} s{read}",
        markup=False,
    )
    out.print(
        f"{len(report.orphans)} orphans, {len(report.missing)} missing members, "
        f"{len(report.size_mismatches)} size mismatches, "
        f"{len(report.unreadable_manifests)} unreadable manifests "
        f"({report.manifests_read} manifests read from the repository, {report.seconds:.1f} s)",
        markup=False,
    )
    for problem in report.problems:
        out.print(f"problem: {problem}", markup=False)
    if not restic.ok:
        out.print("restic check said:", markup=False)
        for line in restic.output:
            out.print(f"  {line}", markup=False)
    if report.ok:
        out.print("no problems found", markup=False)
