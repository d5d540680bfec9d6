"""``cleancut demo``: the seed problem in one screen.

The shop keeps writing correlated records (order → invoice → receipt, each its own step)
while the demo backs it up three ways, restores every backup and checks the
cross-resource invariants:

* per-resource — each resource on its own, one job after another (today's practice);
* cleancut without application hooks — one cut at file-system level;
* cleancut — one cut with the shop's quiesce hooks and SQLite writers (application level).
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleancut.catalog import Catalog
from cleancut.config.load import load_app
from cleancut.coordinator import Coordinator
from cleancut.coordinator.repository import repository_access
from cleancut.demo import workspace
from cleancut.demo.baseline import per_resource_backup
from cleancut.demo.invariants import InvariantReport, check
from cleancut.demo.shop import RESOURCES, LoadGenerator, ShopPaths
from cleancut.mover.restic import ResticMover
from cleancut.restore import restore_rp

PER_RESOURCE = "per-resource"
PLAIN = "cleancut, no application hook"
HOOKS = "cleancut"


@dataclass
class MethodResult:
    """One backup method's row of the table."""

    method: str
    level: str = "-"
    checks: list[InvariantReport] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)

    @property
    def broken_backups(self) -> int:
        return sum(1 for c in self.checks if c.broken or not all(c.integrity_ok.values()))

    @property
    def orphans(self) -> int:
        return sum(c.orphans for c in self.checks)

    @property
    def incomplete(self) -> int:
        return sum(c.incomplete for c in self.checks)

    def stall(self, quantile: float) -> float | None:
        if not self.stalls:
            return None
        ordered = sorted(self.stalls)
        if len(ordered) == 1:
            return ordered[0]
        return statistics.quantiles(ordered, n=100, method="inclusive")[int(quantile) - 1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "backups": len(self.checks),
            "level": self.level,
            "broken_backups": self.broken_backups,
            "orphans": self.orphans,
            "incomplete": self.incomplete,
            "write_stall_p50": self.stall(50),
            "write_stall_p99": self.stall(99),
            "checks": [c.to_dict() for c in self.checks],
        }


def _restored_shop(folder: Path) -> ShopPaths:
    return ShopPaths(
        folder / "orders" / "orders.db", folder / "invoices" / "invoices.db", folder / "receipts"
    )


def per_resource_row(
    ws: workspace.Workspace, count: int, say: Callable[[str], None]
) -> MethodResult:
    result = MethodResult(PER_RESOURCE, level="none across resources")
    orders = [list(RESOURCES), list(reversed(RESOURCES))]
    for index in range(count):
        copy = ws.root / "per-resource" / str(index)
        per_resource_backup(ws.shop, copy, orders[index % 2])
        report = check(*_paths(_restored_shop(copy)))
        result.checks.append(report)
        say(f"{PER_RESOURCE} backup {index + 1}/{count}: {verdict(report)}")
    return result


def _paths(shop: ShopPaths) -> tuple[Path, Path, Path]:
    return shop.orders_db, shop.invoices_db, shop.receipts_dir


def verdict(report: InvariantReport) -> str:
    return f"{report.orders} orders, {report.orphans} orphans, {report.incomplete} incomplete" + (
        "" if all(report.integrity_ok.values()) else ", DATABASE CORRUPT"
    )


def cleancut_row(
    config: Path,
    method: str,
    count: int,
    restored: Path,
    shop_of: Callable[[Path], ShopPaths],
    say: Callable[[str], None],
    *,
    extract: bool,
    discard: bool = False,
    name_hosts: bool = False,
) -> tuple[MethodResult, list[str]]:
    """``count`` cuts of the application in ``config``, each restored under ``restored``
    and checked where ``shop_of(target)`` says the shop's files are; the row and the hosts
    the recovery points recorded. ``discard`` removes each restore once checked."""
    loaded = load_app(config)
    access = repository_access(loaded.config.repository, config_file=str(config))
    mover = ResticMover(access)
    assert loaded.config.catalog is not None
    catalog = Catalog(loaded.config.catalog)
    result = MethodResult(method)
    levels = []
    hosts: set[str] = set()
    for index in range(count):
        outcome = Coordinator(loaded, access=access, mover=mover, catalog=catalog).run()
        manifest = outcome.manifest
        levels.append(manifest.level)
        hosts.update(h.host for h in manifest.hosts)
        result.stalls += [h.write_stall for h in manifest.hosts if h.write_stall is not None]
        target = restored / f"{loaded.config.name}-{index}"
        restore_rp(manifest, mover, target, extract=extract)
        report = check(*_paths(shop_of(target)))
        if discard:
            shutil.rmtree(target, ignore_errors=True)
        result.checks.append(report)
        stall, pause = manifest.max_write_stall, manifest.max_pause
        paused = f", application pause {pause * 1000:.1f} ms" if pause is not None else ""
        named = f"hosts {', '.join(sorted(h.host for h in manifest.hosts))}, " if name_hosts else ""
        say(
            f"{method} backup {index + 1}/{count}: level {manifest.level}, "
            f"group-consistent {'yes' if manifest.group_consistent else 'no'}, {named}"
            f"write stall {stall * 1000 if stall else 0:.1f} ms{paused}; "
            f"restored: {verdict(report)}"
        )
    result.level = ", ".join(sorted(set(levels)))
    return result, sorted(hosts)


def _local_row(
    ws: workspace.Workspace, method: str, config: Path, count: int, say: Callable[[str], None]
) -> MethodResult:
    row, _hosts = cleancut_row(
        config,
        method,
        count,
        ws.root / "restored",
        lambda target: _restored_shop(target / "app1"),
        say,
        extract=ws.as_root,
    )
    return row


def expectations(rows: dict[str, MethodResult], *, frozen: bool) -> list[str]:
    """What must hold for the demo to pass; each failure as a sentence.

    Without root nothing can be frozen, so the cut without hooks copies a live shop and
    promises nothing; only the rows that do not depend on a freeze are checked then.
    """
    problems = []
    if rows[PER_RESOURCE].broken_backups == 0:
        problems.append("per-resource backups showed no broken records: the load is too light")
    plain = rows[PLAIN]
    if frozen and (plain.orphans or any(c.incomplete > 1 for c in plain.checks)):
        problems.append("the cut without hooks shows orphans or more than the in-flight order")
    if any(not all(c.integrity_ok.values()) for r in rows.values() for c in r.checks):
        problems.append("a restored database failed PRAGMA integrity_check")
    hooks = rows[HOOKS]
    if hooks.broken_backups:
        problems.append("the cut with hooks shows broken records")
    if hooks.level != "application":
        problems.append(f"the cut with hooks reached level {hooks.level}, not application")
    return problems


@dataclass
class DemoResult:
    """What the demo found; the CLI renders it."""

    as_root: bool
    why_level: str
    orders_written: int
    rows: dict[str, MethodResult]
    problems: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_root": self.as_root,
            "why": self.why_level,
            "orders_written": self.orders_written,
            "methods": [row.as_dict() for row in self.rows.values()],
            "ok": not self.problems,
            "problems": self.problems,
        }


def run_demo(*, backups: int = 4, say: Callable[[str], None] = lambda _text: None) -> DemoResult:
    """Build the shop, back it up three ways under load, restore and check every backup."""
    with ExitStack() as stack:
        ws = workspace.build(stack)
        say(f"workspace {ws.root}\n{ws.why_level}")
        load = stack.enter_context(LoadGenerator(ws.shop, ws.socket))
        rows = {
            PER_RESOURCE: per_resource_row(ws, backups, say),
            PLAIN: _local_row(ws, PLAIN, ws.app_plain, backups, say),
            HOOKS: _local_row(ws, HOOKS, ws.app_hooks, backups, say),
        }
        stats = load.stop()
        say(f"the shop wrote {stats.orders} orders during the demo")
    problems = expectations(rows, frozen=ws.as_root)
    return DemoResult(ws.as_root, ws.why_level, stats.orders, rows, problems)
