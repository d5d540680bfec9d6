"""The shop's own check for ``cleancut verify``: every order has its invoice and its receipt.

Declared in the shop's application file as::

    [[checks]]
    name = "every order has its invoice and its receipt"
    run = ["python3", "-m", "cleancut.demo.check"]

It reads the restored shop from the names ``cleancut verify`` sets —
``CLEANCUT_DB_ORDERS``, ``CLEANCUT_DB_INVOICES`` (a SQLite file or a server URI) and
``CLEANCUT_VOLUME_RECEIPTS`` — prints the invariant report as one JSON line and exits 0
only when nothing is broken (``--allow-in-flight``: the order in flight may be
incomplete, what a cut without application hooks promises).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cleancut.demo.invariants import check
from cleancut.errors import CleancutError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cleancut.demo.check", description=__doc__)
    parser.add_argument("--orders", default=os.environ.get("CLEANCUT_DB_ORDERS"))
    parser.add_argument("--invoices", default=os.environ.get("CLEANCUT_DB_INVOICES"))
    parser.add_argument("--receipts", default=os.environ.get("CLEANCUT_VOLUME_RECEIPTS"))
    parser.add_argument("--allow-in-flight", action="store_true")
    args = parser.parse_args(argv)
    missing = [n for n in ("orders", "invoices", "receipts") if not getattr(args, n)]
    if missing:
        parser.error(
            f"no {', '.join(missing)}: give --{missing[0]} or run under cleancut verify, "
            "which sets CLEANCUT_DB_ORDERS, CLEANCUT_DB_INVOICES and CLEANCUT_VOLUME_RECEIPTS"
        )
    try:
        report = check(args.orders, args.invoices, Path(args.receipts))
    except CleancutError as exc:
        print(f"cleancut.demo.check: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict()))
    ok = report.consistent_cut() if args.allow_in_flight else report.clean
    if not ok:
        print(
            f"{report.orphans} orphans, {report.incomplete} incomplete orders "
            f"(first: {list(report.orphan_ids[:5]) or list(report.incomplete_ids[:5])})",
            file=sys.stderr,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
