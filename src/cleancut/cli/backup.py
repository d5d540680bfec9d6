"""``cleancut backup``: one recovery point of an application."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

import typer

from cleancut.cli.common import (
    APP_CONFIG,
    JSON,
    WAIT,
    load,
    open_catalog,
    open_repository,
    tracked,
)
from cleancut.cli.output import emit_json, err, fmt_bytes, fmt_ms, out, progress_bars
from cleancut.coordinator import Coordinator
from cleancut.coordinator.policy import post_script_failures
from cleancut.errors import EXIT_DEGRADED, EXIT_POST_FAILED
from cleancut.manifest import Manifest
from cleancut.monitoring.summaries import backup_summary
from cleancut.transport import open_channel


def backup(
    config: Path = APP_CONFIG,
    json_output: bool = JSON,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print every step and restic command; touch nothing."
    ),
    accept_new_host_keys: bool = typer.Option(
        False,
        "--accept-new-host-keys",
        help="Add the host key of an SSH host that is not in its known_hosts yet (first "
        "contact only; a changed key is still refused).",
    ),
    wait: bool = WAIT,
) -> None:
    """Take one recovery point (RP) of the application: every host at one consistent cut.

    Runs hello → prepare → freeze → snapshot → thaw → upload on all hosts, then commits
    the RP's manifest to the repository. Exit code 0 when the RP reached application level
    and is group-consistent, 3 when it was committed at a weaker level (on_failure =
    "degrade"), 9 when it was committed but a post-script failed (the application may
    still be quiesced; a warning on stderr names the host and the hook), 4 when
    on_failure = "abort" refused it, 2 for a configuration error, 5 when a host was
    unreachable (no route, refused port, timeout), 10 when an SSH host refused the backup
    key or its host key is unknown or changed, 6 when a host failed a phase, 11 when
    another run of the application (backup, forget, verify) is in progress (--wait waits
    for it). Ctrl-C or SIGTERM release every host
    first (thaw, end the database holds, run the post-scripts), then exit with 130 or 143.
    """
    loaded = load(config)
    access, mover = open_repository(loaded)
    catalog = None if dry_run else open_catalog(loaded)
    run = None if catalog is None else tracked(loaded, "backup", catalog, mover)
    with run or contextlib.nullcontext(), progress_bars(not json_output and not dry_run) as bars:

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if json_output:
                emit_json(kind, data)
            elif kind == "progress" and bars is not None:
                bars.update(f"{data.get('host')}/{data.get('resource')}", data)
            elif kind == "phase" and data.get("state") == "done":
                err.print(f"  {data['phase']:<9} done in {fmt_ms(data.get('seconds'))}")
            if kind == "lock_wait" and not json_output:
                err.print(data["message"], markup=False)
            if kind == "host_failed" and run is not None:
                run.host_failed(str(data["host"]), str(data["phase"]), str(data["error"]))
            if kind == "host_failed" and not json_output:
                err.print(
                    f"  {data['phase']} failed on {data['host']}: {data['error']}", markup=False
                )
            if kind == "released":  # what a host's release could not do is never dropped
                for problem in data.get("problems", []):
                    err.print(f"warning: {problem}", markup=False)

        coordinator = Coordinator(
            loaded,
            access=access,
            mover=mover,
            catalog=catalog,
            on_event=on_event,
            connect=functools.partial(open_channel, accept_new_host_key=accept_new_host_keys),
            wait=wait,
        )
        if dry_run:
            plan = coordinator.dry_run()
            _print_plan(plan, json_output)
            return
        try:
            outcome = coordinator.run()
        finally:  # committed, aborted or failed: a quiesced application is never silent
            failures = post_script_failures(coordinator.reports.values())
            warn_post_failures(failures)
        manifest = outcome.manifest
        strong = manifest.level == "application" and manifest.group_consistent
        if run is not None:
            run.done(
                "success" if strong and not failures else "degraded",
                backup_summary(manifest, failures),
            )
    if json_output:
        emit_json(
            "result",
            {"manifest": manifest.model_dump(mode="json"), "post_script_failures": failures},
        )
    else:
        print_summary(manifest)
    if failures:
        raise typer.Exit(EXIT_POST_FAILED)
    if not strong:
        raise typer.Exit(EXIT_DEGRADED)


def warn_post_failures(failures: list[str]) -> None:
    """One warning line on stderr per failed post-script (in every output mode)."""
    for failure in failures:
        err.print(f"warning: {failure}", markup=False)


def _print_plan(plan: dict[str, list[str]], json_output: bool) -> None:
    if json_output:
        emit_json("plan", {"steps": plan})
        return
    out.print("dry run: nothing is touched; these are the steps a backup would run")
    for host, steps in plan.items():
        out.print(f"\n[{host}]" if host != "coordinator" else "\n[coordinator]", markup=False)
        for step in steps:
            out.print(f"  {step}", markup=False)


def print_summary(manifest: Manifest) -> None:
    """The committed RP in a few lines: level, group consistency, stalls, pauses, members."""
    consistent = "yes" if manifest.group_consistent else "NO"
    out.print(f"recovery point {manifest.rp_id} committed", markup=False)
    out.print(f"  level            {manifest.level}", markup=False)
    out.print(f"  group-consistent {consistent}", markup=False)
    out.print(f"  quiet window     {fmt_ms(manifest.quiet_window_seconds)}", markup=False)
    for host in manifest.hosts:
        copy = " (includes the copy)" if host.stall_includes_copy else ""
        selfthaw = f", thawed by itself: {host.self_thawed}" if host.self_thawed else ""
        out.print(
            f"  write stall      {host.host}: {fmt_ms(host.write_stall)}{copy}{selfthaw}",
            markup=False,
        )
        if host.pause is not None:
            out.print(
                f"  app paused       {host.host}: {fmt_ms(host.pause)} "
                "(first pre-script start to last post-script end)",
                markup=False,
            )
    for m in manifest.members:
        size = fmt_bytes(m.bytes_processed)
        out.print(f"  {m.host}/{m.resource:<12} {m.level:<11} {size:>10}  {m.reason}", markup=False)
    for note in manifest.notes:
        out.print(f"  note: {note}", markup=False)
