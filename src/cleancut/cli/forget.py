"""``cleancut forget``: apply ``[retention]`` to whole recovery points (see cleancut.forget)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cleancut.cli.common import (
    APP_CONFIG,
    JSON,
    WAIT,
    load,
    open_catalog,
    open_repository,
    tracked,
)
from cleancut.cli.output import emit_json, err, out, print_table
from cleancut.coordinator.runlock import AppLock
from cleancut.errors import ConfigError
from cleancut.forget import ForgetResult, apply_forget, plan_forget, policy_of
from cleancut.monitoring.summaries import forget_summary


def forget(
    config: Path = APP_CONFIG,
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Only list which recovery points would be kept or forgotten, and why.",
    ),
    prune: bool = typer.Option(
        False, "--prune", help="Afterwards run restic prune to reclaim the space."
    ),
    json_output: bool = JSON,
    wait: bool = WAIT,
) -> None:
    """Forget the recovery points [retention] does not keep, each one whole.

    The keep rules (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly,
    keep_yearly, keep_within, keep_only) are restic's, decided per recovery point: an RP
    spans many hosts and is kept or forgotten with all its members. A forgotten RP leaves
    the catalog first, then its manifest goes, then its member snapshots, in one restic
    call each; member snapshots no manifest names (an interrupted backup) go too and are
    reported. A forget stopped at any moment leaves only whole RPs. It never runs beside a
    backup or verify of the application (exit code 11, or --wait).
    """
    loaded = load(config)
    retention = loaded.config.retention
    if retention is None:
        raise ConfigError(
            "no [retention] table, so nothing says which recovery points to keep",
            file=str(loaded.path),
            key="retention",
            hint="add e.g. [retention] keep_daily = 7 and keep_weekly = 4 (see --help)",
        )
    catalog = open_catalog(loaded)
    _access, mover = open_repository(loaded)
    say = (lambda _text: None) if json_output else (lambda text: err.print(text, markup=False))
    lock = AppLock(loaded.config.name, action="forget", wait=wait, on_wait=say)
    if dry_run:  # a look, not a run: it is not recorded
        with lock:
            plan = plan_forget(loaded.config.name, policy_of(retention), catalog, mover)
        result = ForgetResult(plan, dry_run=True)
    else:
        with tracked(loaded, "forget", catalog, mover) as run, lock:
            plan = plan_forget(loaded.config.name, policy_of(retention), catalog, mover)
            result = apply_forget(plan, catalog, mover, prune=prune, say=say)
            run.done("success", forget_summary(result))
    if json_output:
        emit_json("forget", result.as_dict())
    else:
        render(result)


def render(result: ForgetResult) -> None:
    """Every RP with keep/forget and why, then the leftovers and what was done."""
    plan = result.plan
    verb = "would be" if result.dry_run else "were"
    table = Table(title=f"retention of {plan.app}" + (" (dry run)" if result.dry_run else ""))
    for column in ("RP", "time (UTC)", "level", "decision", "why"):
        table.add_column(column)
    for decision in plan.decisions:
        point = decision.point
        table.add_row(
            point.rp_id,
            point.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            point.level,
            "keep" if decision.keep else "forget",
            decision.why,
        )
    print_table(table)
    for snapshot in plan.leftovers:
        out.print(
            f"leftover member snapshot {snapshot.snapshot_id[:8]} (rp {snapshot.tags.get('rp')}, "
            f"{snapshot.tags.get('host')}/{snapshot.tags.get('resource')}): no manifest names "
            f"it; it {verb} removed",
            markup=False,
        )
    out.print(
        f"{len(plan.kept)} kept, {len(plan.forgotten)} {verb} forgotten, "
        f"{len(plan.leftovers)} leftovers; {plan.restic_calls} restic calls"
        + ("; pruned" if result.pruned else ""),
        markup=False,
    )
