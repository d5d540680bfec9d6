"""``python -m bench.consistency [--backups N]``: the cross-database consistency table.

The shop runs on three testbed VMs — its orders in PostgreSQL on vm1, its invoices in
MariaDB on vm2, its receipts on a share on vm3, their disk images on the datastore host
``ds`` — under continuous load (order, invoice, receipt, each its own commit) while
``pgbench`` adds unrelated load (:mod:`cleancut.demo.crossdb`). ``N`` backups are taken
with per-resource jobs one after another (``pg_basebackup -X stream``, ``mariadb-backup``,
``tar``: the baseline) and ``N`` with cleancut (quiesce hook, PostgreSQL and MariaDB
writers, one cut). Every backup gets the same restore drill: put the files back, start both
servers on free ports, run their checks and the shop's invariant check.

Figures: broken backups (an orphan or an incomplete order), how many drills started every
database with no manual step and passed, cleancut's write stall p50/p99 (the manifest's
per-host ``write_stall``; per-resource jobs freeze nothing, so they have none), the RTO
p50/p99 (restore start until both databases answer; cleancut's includes the restic
restore of the three disk images and their extraction, the baseline's the copy of its
local files and ``mariadb-backup --prepare``/``--copy-back``) with its ratio to the
baseline, and each database's recovery time read from its log.
"""

from __future__ import annotations

import argparse
import time

from bench.common import machine_report, require_root, say, table
from cleancut.demo.crossdb import CLEANCUT, COLUMNS, PER_RESOURCE, run_crossdb
from cleancut.demo.workspace import workspace_base

BACKUPS = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.consistency", description=__doc__)
    parser.add_argument(
        "--backups", type=int, default=BACKUPS, help=f"backups per method (default {BACKUPS})"
    )
    args = parser.parse_args(argv)
    if args.backups < 1:
        parser.error("--backups must be at least 1")
    require_root("consistency")
    started = time.monotonic()
    result = run_crossdb(backups=args.backups, say=say)
    rows = result.rows
    print(machine_report({"workspace": workspace_base()}))
    print(f"\nthe shop wrote {result.orders_written} orders in {time.monotonic() - started:.0f} s")
    print(table(COLUMNS, [row.cells() for row in rows.values()]))
    base, ours = rows[PER_RESOURCE].rto(50), rows[CLEANCUT].rto(50)
    if base and ours:
        print(f"\nRTO p50 ratio cleancut / per-resource (baseline): {ours / base:.2f}")
    for problem in result.problems:
        print(f"UNEXPECTED: {problem}")
    if not result.problems:
        print("as expected: cleancut 0 broken, every database started with no manual step")
    return 1 if result.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
