"""The shop's cross-resource invariants, checked on a restored (or stopped/paused) shop.

Every order in ``orders.db`` must have its invoice in ``invoices.db`` and its receipt file
in the receipts folder; every invoice and receipt must have its order. A backup whose
resources were taken at different moments breaks this:

* **orphans** — invoices or receipts whose order is missing (taken after the orders);
* **incomplete** — orders missing their invoice or receipt (later steps taken before).

A consistent cut *without* application hooks may still show the order that was in flight
incomplete: those are the incomplete orders past the last complete one
(``in_flight_tolerance``). A cut with hooks shows nothing broken.

The databases are opened normally (not read-only) so that SQLite recovers a hot ``-wal`` or
``-journal`` of a restored copy, as the application would on start; run this on restored
copies, or on the live shop only while its load is stopped or paused.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cleancut.demo.shopdb import is_server, open_db
from cleancut.errors import CleancutError, NotFound

_RECEIPT = re.compile(r"^(\d+)\.txt$")
_SAMPLE = 20


@dataclass(frozen=True)
class InvariantReport:
    """Counts and verdicts of one check; ``*_ids`` hold the first few offenders, for messages."""

    orders: int
    invoices: int
    receipts: int
    orphans: int
    incomplete: int
    in_flight_tolerance: int
    integrity_ok: dict[str, bool]
    orphan_ids: tuple[int, ...] = ()
    incomplete_ids: tuple[int, ...] = ()

    @property
    def broken(self) -> int:
        """Records that break the invariants: orphans plus incomplete orders."""
        return self.orphans + self.incomplete

    @property
    def clean(self) -> bool:
        """Nothing broken and both databases pass ``PRAGMA integrity_check``."""
        return self.broken == 0 and all(self.integrity_ok.values())

    def consistent_cut(self, max_in_flight: int = 1) -> bool:
        """What a cut without hooks must show: no orphans, only in-flight orders incomplete."""
        return (
            self.orphans == 0
            and all(self.integrity_ok.values())
            and self.incomplete == self.in_flight_tolerance <= max_in_flight
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InvariantReport:
        """The report :meth:`to_dict` wrote (e.g. the JSON line of ``cleancut.demo.check``)."""
        return cls(
            orders=int(data["orders"]),
            invoices=int(data["invoices"]),
            receipts=int(data["receipts"]),
            orphans=int(data["orphans"]),
            incomplete=int(data["incomplete"]),
            in_flight_tolerance=int(data["in_flight_tolerance"]),
            integrity_ok={str(k): bool(v) for k, v in data["integrity_ok"].items()},
            orphan_ids=tuple(int(i) for i in data.get("orphan_ids", ())),
            incomplete_ids=tuple(int(i) for i in data.get("incomplete_ids", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``broken`` and ``clean`` included."""
        data = asdict(self)
        data.update(broken=self.broken, clean=self.clean)
        data["orphan_ids"] = list(self.orphan_ids)
        data["incomplete_ids"] = list(self.incomplete_ids)
        return data


def _read_db(target: str, table: str) -> tuple[set[int], bool]:
    """The order ids in ``table`` and whether the database passes its integrity check."""
    if not is_server(target) and not Path(target).is_file():
        raise NotFound(f"{target}: shop database not found; was it restored to this path?")
    try:
        db = open_db(target, busy_timeout=30.0)
    except CleancutError as exc:
        raise NotFound(exc.message) from exc
    with db:
        try:
            ok = db.intact()
            ids = db.ids(table)
        except Exception:  # corrupt beyond reading (any driver's error): nothing in it counts
            return set(), False
        return ids, ok


def _read_receipts(receipts_dir: Path) -> set[int]:
    """Order ids of the finished receipts (temporary files of an unfinished write are skipped)."""
    if not receipts_dir.is_dir():
        raise NotFound(f"{receipts_dir}: receipts folder not found; was it restored here?")
    ids = set()
    for entry in receipts_dir.iterdir():
        match = _RECEIPT.match(entry.name)
        if match:
            ids.add(int(match.group(1)))
    return ids


def check(orders_db: Path | str, invoices_db: Path | str, receipts_dir: Path) -> InvariantReport:
    """Check the shop's cross-resource invariants on one copy of its three resources; each
    database is a SQLite file or a server URI (:mod:`cleancut.demo.shopdb`)."""
    orders, orders_ok = _read_db(str(orders_db), "orders")
    invoices, invoices_ok = _read_db(str(invoices_db), "invoices")
    receipts = _read_receipts(receipts_dir)
    orphan_invoices = invoices - orders
    orphan_receipts = receipts - orders
    complete = orders & invoices & receipts
    incomplete = sorted(orders - complete)
    last_complete = max(complete, default=0)
    return InvariantReport(
        orders=len(orders),
        invoices=len(invoices),
        receipts=len(receipts),
        orphans=len(orphan_invoices) + len(orphan_receipts),
        incomplete=len(incomplete),
        in_flight_tolerance=sum(1 for i in incomplete if i > last_complete),
        integrity_ok={"orders": orders_ok, "invoices": invoices_ok},
        orphan_ids=tuple(sorted(orphan_invoices | orphan_receipts)[:_SAMPLE]),
        incomplete_ids=tuple(incomplete[:_SAMPLE]),
    )
