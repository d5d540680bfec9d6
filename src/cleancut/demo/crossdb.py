"""The cross-database proof: the shop on PostgreSQL, MariaDB and a share, on three VMs.

``cleancut demo --hosts 3 --databases`` and ``bench/consistency.py`` run this. The shop's
orders live in PostgreSQL on vm1, its invoices in MariaDB on vm2, its receipts on a share
on vm3; the three disk images sit on the datastore host ``ds`` (the seed's Figure 1: VM
disks, two databases, a share). The servers run on this machine with their data
directories on the VMs' disks (their sockets and logs outside them, so a frozen disk
stalls writes, never the server's log); the VMs' guests reach them over unix sockets,
which work across network namespaces. The shop's load generator writes order, invoice
and receipt, each its own commit, while ``pgbench`` adds unrelated load to PostgreSQL.

Two methods take turns backing it up, and every backup gets the same restore drill:

* **per-resource** — ``pg_basebackup``, ``mariadb-backup`` and ``tar``, one job after
  another (:mod:`cleancut.demo.dbbaseline`); restored the way each tool's manual says;
* **cleancut** — one cut: the shop's quiesce hook on vm3 pauses it between two orders,
  the PostgreSQL writer (``pg_backup_start``) and the MariaDB writer (``FLUSH TABLES WITH
  READ LOCK``) hold, the VMs freeze and ``ds`` clones the images; then ``cleancut
  verify`` restores the recovery point into a sandbox, starts both servers and runs the
  shop's own check (:mod:`cleancut.demo.check`).

Expected: cleancut 0 broken backups, every database started with no manual step, every
drill passed; per-resource backups broken. Everything made here is removed at the end.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from cleancut.catalog import Catalog
from cleancut.config.load import load_app
from cleancut.coordinator import Coordinator
from cleancut.coordinator.repository import repository_access
from cleancut.demo import hostconfigs
from cleancut.demo.crossdbbed import DbWorkspace, build
from cleancut.demo.dbbaseline import drill, per_resource_backup
from cleancut.demo.invariants import InvariantReport
from cleancut.demo.multihost import require_root
from cleancut.demo.shop import RESOURCES, LoadGenerator
from cleancut.mover.restic import ResticMover
from cleancut.verify import VerifyReport, verify_rp
from cleancut.writers.server import CheckResult

Say = Callable[[str], None]
PER_RESOURCE = "per-resource (pg_basebackup, mariadb-backup, tar)"
CLEANCUT = "cleancut (hooks + PostgreSQL and MariaDB writers)"
DATABASES = ("orders", "invoices")
COLUMNS = (
    "method",
    "backups",
    "level",
    "broken backups",
    "orphans",
    "incomplete",
    "started clean",
    "drill passed",
    "write stall p50",
    "write stall p99",
    "RTO p50",
    "RTO p99",
    "of it restore p50",
    "PG recovery p50",
    "MariaDB recovery p50",
)


def quantile(values: list[float], q: int) -> float | None:
    """The ``q``-th percentile (nearest rank, inclusive); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


@dataclass
class Drill:
    """One backup's restore drill: what its restored shop showed and how it started."""

    report: InvariantReport | None
    passed: bool
    started: bool
    rto_seconds: float | None
    recovery_seconds: dict[str, float | None]
    failed: list[str] = field(default_factory=list)
    #: of the RTO: until every file was back in place (the rest is the servers starting)
    restore_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "invariants": self.report.to_dict() if self.report else None,
            "passed": self.passed,
            "started": self.started,
            "rto_seconds": self.rto_seconds,
            "restore_seconds": self.restore_seconds,
            "recovery_seconds": self.recovery_seconds,
            "failed": self.failed,
        }


@dataclass
class DrillRow:
    """One method's row: its backups' drills and the write stalls its cuts caused."""

    method: str
    level: str = "-"
    drills: list[Drill] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)

    @property
    def broken_backups(self) -> int:
        """Backups whose restored shop breaks the invariants or could not be read."""
        return sum(1 for d in self.drills if d.report is None or not d.report.clean)

    @property
    def orphans(self) -> int:
        return sum(d.report.orphans for d in self.drills if d.report)

    @property
    def incomplete(self) -> int:
        return sum(d.report.incomplete for d in self.drills if d.report)

    @property
    def started(self) -> int:
        return sum(1 for d in self.drills if d.started)

    @property
    def passed(self) -> int:
        return sum(1 for d in self.drills if d.passed)

    def rto(self, q: int) -> float | None:
        return quantile([d.rto_seconds for d in self.drills if d.rto_seconds is not None], q)

    def restore(self, q: int) -> float | None:
        values = [d.restore_seconds for d in self.drills if d.restore_seconds is not None]
        return quantile(values, q)

    def recovery(self, database: str, q: int) -> float | None:
        values = [d.recovery_seconds.get(database) for d in self.drills]
        return quantile([v for v in values if v is not None], q)

    def cells(self) -> list[str]:
        """The row as :data:`COLUMNS` prints it."""
        n = len(self.drills)
        return [
            self.method,
            str(n),
            self.level,
            str(self.broken_backups),
            str(self.orphans),
            str(self.incomplete),
            f"{self.started}/{n}",
            f"{self.passed}/{n}",
            _ms(quantile(self.stalls, 50)),
            _ms(quantile(self.stalls, 99)),
            _s(self.rto(50)),
            _s(self.rto(99)),
            _s(self.restore(50)),
            _s(self.recovery("orders", 50)),
            _s(self.recovery("invoices", 50)),
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "backups": len(self.drills),
            "level": self.level,
            "broken_backups": self.broken_backups,
            "orphans": self.orphans,
            "incomplete": self.incomplete,
            "started": self.started,
            "passed": self.passed,
            "write_stall_p50": quantile(self.stalls, 50),
            "write_stall_p99": quantile(self.stalls, 99),
            "rto_p50": self.rto(50),
            "rto_p99": self.rto(99),
            "restore_p50": self.restore(50),
            "recovery_p50": {db: self.recovery(db, 50) for db in DATABASES},
            "drills": [d.as_dict() for d in self.drills],
        }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


@dataclass
class CrossDbResult:
    """What the proof found; the CLI and the benchmark render it."""

    orders_written: int
    rows: dict[str, DrillRow]
    problems: list[str]
    made: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "orders_written": self.orders_written,
            "methods": [row.as_dict() for row in self.rows.values()],
            "ok": not self.problems,
            "problems": self.problems,
            "made": self.made,
        }


def _per_resource(ws: DbWorkspace, index: int) -> Drill:
    """One per-resource backup (the jobs' order alternating) and its drill."""
    order = list(RESOURCES) if index % 2 == 0 else list(reversed(RESOURCES))
    copy = ws.root / "per-resource" / str(index)
    per_resource_backup(ws.live, copy, order)
    try:
        result = drill(copy, ws.root / "drill")
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return Drill(
        result.report,
        result.ok,
        result.started,
        result.rto_seconds,
        result.recovery_seconds,
        [_failure(c) for c in result.checks if not c.ok],
        result.restore_seconds,
    )


def _failure(check: CheckResult) -> str:
    """A failed check's name and the last line of what it said."""
    last = check.detail.strip().splitlines()[-1:] or [""]
    return f"{check.name} ({last[0][:300]})" if last[0] else check.name


def _from_verify(report: VerifyReport) -> Drill:
    """A drill from ``cleancut verify``'s report: the shop's check prints its invariant
    report as a JSON line; each database's recovery time comes from its log."""
    invariants = None
    for check in report.checks:
        if check.name == hostconfigs.SHOP_CHECK:
            invariants = _json_report(check.detail)
    recovery = {db.name: db.recovery_seconds for db in report.databases}
    started = bool(report.databases) and all(db.error is None for db in report.databases)
    failed = [_failure(c) for c in report.checks if not c.ok]
    return Drill(
        invariants,
        report.ok,
        started,
        report.rto_seconds,
        recovery,
        failed,
        report.restore_seconds,
    )


def _json_report(output: str) -> InvariantReport | None:
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                return InvariantReport.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError):
                return None
    return None


def _cleancut_rows(ws: DbWorkspace, count: int, say: Say) -> DrillRow:
    """``count`` cuts of the shop, each verified by ``cleancut verify``'s drill."""
    loaded = load_app(ws.app)
    access = repository_access(loaded.config.repository, config_file=str(ws.app))
    mover = ResticMover(access)
    assert loaded.config.catalog is not None
    catalog = Catalog(loaded.config.catalog)
    row = DrillRow(CLEANCUT)
    levels = set()
    for index in range(count):
        manifest = Coordinator(loaded, access=access, mover=mover, catalog=catalog).run().manifest
        levels.add(manifest.level)
        row.stalls += [h.write_stall for h in manifest.hosts if h.write_stall is not None]
        report = verify_rp(loaded, manifest, mover, sandbox=ws.root / "verify")
        found = _from_verify(report)
        row.drills.append(found)
        say(
            f"cleancut backup {index + 1}/{count}: level {manifest.level}, write stall "
            f"{_ms(manifest.max_write_stall)}; drill: {_verdict(found)}"
        )
    row.level = ", ".join(sorted(levels))
    return row


def _verdict(found: Drill) -> str:
    shop = (
        f"{found.report.orders} orders, {found.report.orphans} orphans, "
        f"{found.report.incomplete} incomplete"
        if found.report
        else "shop not readable"
    )
    started = "both databases started" if found.started else "A DATABASE DID NOT START"
    failed = f"; FAILED: {', '.join(found.failed)}" if found.failed else ""
    return f"{shop}; {started}, RTO {_s(found.rto_seconds)}{failed}"


def expectations(rows: dict[str, DrillRow]) -> list[str]:
    """What must hold for the proof to pass; each failure as a sentence."""
    problems = []
    ours, theirs = rows[CLEANCUT], rows[PER_RESOURCE]
    if ours.broken_backups:
        problems.append(f"{ours.broken_backups} cleancut backups show broken records")
    if ours.passed != len(ours.drills):
        problems.append("a cleancut recovery point failed its restore drill")
    if ours.level != "application":
        problems.append(f"the cleancut cuts reached level {ours.level}, not application")
    if theirs.broken_backups == 0:
        problems.append("the per-resource backups showed no broken records: the load is too light")
    for row in (ours, theirs):
        if row.started != len(row.drills):
            problems.append(f"{row.method}: a restored database did not start by itself")
    return problems


def run_crossdb(*, backups: int = 4, say: Say = lambda _text: None) -> CrossDbResult:
    """Build the shop on three VMs with PostgreSQL and MariaDB, back it up both ways under
    load, drill every backup; everything made is removed afterwards."""
    require_root()
    with ExitStack() as stack:
        ws = build(stack, say, python=sys.executable)
        made = ws.record()
        load = stack.enter_context(LoadGenerator(ws.targets, ws.socket, step_delay=0.01))
        stack.enter_context(ws.pgbench())
        per = DrillRow(PER_RESOURCE, level="none across resources")
        for index in range(backups):
            found = _per_resource(ws, index)
            per.drills.append(found)
            say(f"per-resource backup {index + 1}/{backups}: drill: {_verdict(found)}")
        rows = {PER_RESOURCE: per, CLEANCUT: _cleancut_rows(ws, backups, say)}
        stats = load.stop()
        say(f"the shop wrote {stats.orders} orders during the run")
    return CrossDbResult(stats.orders, rows, expectations(rows), made)
