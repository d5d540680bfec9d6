"""Write stall with each database writer, against fsfreeze alone under the same load.

``python -m bench.writers [--cuts N] [--quick] [--only stall|rto]`` (root) runs this
benchmark and :mod:`bench.pgrto` (the RTO of a restored PostgreSQL); both build on
:mod:`bench.dbbed` (servers on disks, the commit client, cuts).

One local host: an XFS datastore holds one ext4 disk image per database (SQLite,
PostgreSQL, MariaDB), each declared ``snapshot = "image"``, ``freeze = true``, and a real
server on it (:mod:`bench.dbbed`). Throughout the run one client process per database
commits one small row at a time (a 2 ms sleep between commits) and records when each
commit returned. Six methods take turns, round after round, the order rotating each round:
for each database, a cut of its disk with its writer (``[databases]`` entry: SQLite's
``BEGIN IMMEDIATE``, PostgreSQL's ``pg_backup_start``, MariaDB's ``FLUSH TABLES WITH READ
LOCK``, then the freeze), and a cut of the same disk with the volume only (fsfreeze
alone), which is that database's baseline. Like is compared with like: each writer's
figures are divided by the freeze-alone figures of the same database under the same
load, in the same run.

Two measures of each cut:

* **guest**: the manifest's ``hosts[*].write_stall``, from the first hold that stops
  writes (a writer's lock or the first FIFREEZE call; PostgreSQL's backup mode lets writes
  go on and does not count) until writes can go on again, on the guest's monotonic clock;
* **client**: what the database's client waited for: the longest gap between two
  successive commits that overlaps the cut's freeze (the manifest's ``frozen_at`` to
  ``thawed_at``), on the wall clock of the same host.

A warm-up round (not counted; none with ``--quick``) comes first. Before every cut its
disk is frozen and thawed once (ext4's journal checkpointed) and the load runs on for
:data:`SETTLE_SECONDS`, so every cut finds the same amount of journal to flush, whichever
method came before. Each cut also uploads its disk image to the run's
restic repository; that is part of the cut's wall time, not of either stall.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

from bench import dbbed, pgrto
from bench.common import Series, figures, ms, require_root, say, table
from bench.dbbed import Bed, CommitLog, Cutter
from cleancut.demo.disks import Disk
from cleancut.errors import CleancutError
from cleancut.system.ioctls import FIFREEZE, FITHAW

FULL_CUTS = 10
QUICK_CUTS = 2
SETTLE_SECONDS = 1.0
#: each database's disk in MiB (MariaDB's as the fixtures': InnoDB's files need room)
DISKS = {"sqlite": 64, "postgresql": 256, "mariadb": 400}
BASELINE = "fsfreeze alone"
WRITER = "writer + fsfreeze"
WAYS = (BASELINE, WRITER)


def label(database: str, way: str) -> str:
    """A method's row label: ``postgresql, writer + fsfreeze``."""
    return f"{database}, {way}"


#: The rows of both tables, in order (the smoke test checks each one).
ROWS = tuple(label(db, way) for db in DISKS for way in WAYS)
GUEST_HEADERS = ["guest: write_stall", "n", "failed", "p50 ms", "p99 ms", "mean ms"]
CLIENT_HEADERS = ["client: longest commit gap", "n", "p50 ms", "p99 ms", "mean ms"]
RATIO_HEADERS = ["p50/base", "p99/base"]


@dataclass(frozen=True)
class Database:
    """One database of the bench: its disk, its load client, and its guest stanza."""

    kind: str
    disk: Disk
    client: CommitLog
    stanza: str


@dataclass(frozen=True)
class Measured:
    """One cut: the guest's write stall, the client's longest gap, the RP's level."""

    guest: float
    client: float
    level: str


@dataclass
class Runs:
    """Every counted cut of every method, and the errors of the cuts that failed."""

    measured: dict[str, list[Measured]] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)


def _sqlite(_stack: ExitStack, bed: Bed) -> tuple[str, str]:
    path = dbbed.make_sqlite(bed.disk("sqlite", DISKS["sqlite"]))
    return str(path), f'kind = "sqlite"\npath = "{path}"\n'


def _postgresql(stack: ExitStack, bed: Bed) -> tuple[str, str]:
    server = dbbed.start_postgresql(stack, bed, "postgresql", DISKS["postgresql"])
    dbbed.pg_sql(server, "CREATE TABLE rows (id bigserial PRIMARY KEY, at double precision)")
    return server.uri, f'kind = "postgresql"\ndsn = "{server.uri}"\n'


def _mariadb(stack: ExitStack, bed: Bed) -> tuple[str, str]:
    server = dbbed.start_mariadb(stack, bed, "mariadb", DISKS["mariadb"])
    return str(server.socket), f'kind = "mariadb"\nsocket = "{server.socket}"\n'


#: How each database is made: (what its client connects to, its ``[databases]`` keys).
MAKERS: dict[str, Callable[[ExitStack, Bed], tuple[str, str]]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
    "mariadb": _mariadb,
}


def databases(stack: ExitStack, bed: Bed) -> dict[str, Database]:
    """The three databases on their disks, servers started, each client committing."""
    found: dict[str, Database] = {}
    for kind in DISKS:
        say(f"making the {kind} database")
        target, stanza = MAKERS[kind](stack, bed)
        client = dbbed.start_client(stack, bed, kind, target)
        found[kind] = Database(kind, bed.datastore.disks[kind], client, stanza)
    return found


def guest_toml(db: Database, way: str) -> str:
    """The guest config of one method: the volume, and the database when it has a writer."""
    text = dbbed.volume_toml(db.disk)
    if way == WRITER:
        text += f'\n[databases.{db.kind}]\n{db.stanza}volume = "{dbbed.VOLUME}"\n'
    return text


def settle(db: Database) -> None:
    """Freeze and thaw the database's disk once (thawed in ``finally``), then let the load
    run for :data:`SETTLE_SECONDS`: every cut starts from the same journal state."""
    fd = os.open(db.disk.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        finally:
            with contextlib.suppress(OSError):  # EINVAL: the freeze did not happen
                fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)
    time.sleep(SETTLE_SECONDS)


def measure(cutter: Cutter, db: Database) -> Measured:
    """One cut of ``db``'s disk: the guest's write stall and the client's longest gap."""
    manifest = cutter.cut()
    (host,) = manifest.hosts
    if host.write_stall is None or host.frozen_at is None or host.thawed_at is None:
        raise CleancutError(f"cut {manifest.rp_id} recorded no freeze window or write stall")
    gap = db.client.longest_gap(host.frozen_at, host.thawed_at)
    return Measured(host.write_stall, gap, manifest.level)


def run_rounds(
    methods: dict[str, Callable[[], Measured]], rounds: int, *, warmup: bool = True
) -> Runs:
    """A warm-up round (not counted) if asked, then ``rounds`` rounds of every method, the
    order rotating each round. A cut that fails is counted as failed and the run goes on;
    the report lists the errors."""
    runs = Runs({name: [] for name in methods}, {name: [] for name in methods})
    names = list(methods)
    for index in range(-1 if warmup else 0, rounds):
        shift = index % len(names)
        done = []
        for name in names[shift:] + names[:shift]:
            try:
                result = methods[name]()
            except CleancutError as exc:
                say(f"{name}: the cut failed: {exc}")
                runs.failed[name].append(str(exc))
                continue
            if index >= 0:
                runs.measured[name].append(result)
            done.append(f"{name} {ms(result.guest)}/{ms(result.client)} ms")
        which = "warm-up round" if index < 0 else f"round {index + 1}/{rounds}"
        say(f"{which} (guest/client): {'; '.join(done)}")
    return runs


def _ratios(series: Series, base: Series) -> list[str]:
    if not series.values or not base.values or base.p50 <= 0 or base.p99 <= 0:
        return ["-", "-"]
    return [f"{series.p50 / base.p50:.2f}", f"{series.p99 / base.p99:.2f}"]


def _tables(runs: Runs) -> list[str]:
    """The guest's and the client's table; ratios against the same database's baseline."""
    guest_rows, client_rows = [], []
    for name in ROWS:
        cuts = runs.measured[name]
        base_name = label(name.split(",", 1)[0], BASELINE)
        base = runs.measured[base_name]
        guest = Series(name, tuple(m.guest for m in cuts))
        client = Series(name, tuple(m.client for m in cuts))
        guest_base = Series(base_name, tuple(m.guest for m in base))
        client_base = Series(base_name, tuple(m.client for m in base))
        n, failed = str(len(cuts)), str(len(runs.failed[name]))
        guest_rows.append([name, n, failed, *figures(guest), *_ratios(guest, guest_base)])
        client_rows.append([name, n, *figures(client), *_ratios(client, client_base)])
    return [
        table([*GUEST_HEADERS, *RATIO_HEADERS], guest_rows),
        "",
        table([*CLIENT_HEADERS, *RATIO_HEADERS], client_rows),
    ]


def report(runs: Runs, dbs: dict[str, Database], rounds: int, seconds: float, warmup: bool) -> str:
    """The header, both tables, the levels, the load and the failures."""
    first = ", after a warm-up round" if warmup else ", no warm-up"
    lines = [
        f"write stall per writer against fsfreeze alone: {rounds} rounds of 6 methods "
        f"(order rotating{first}), one local host; the whole run took {seconds:.0f} s",
        "each database on its own ext4 disk image (XFS datastore), image snapshot, freeze;",
        "a client per database commits one row at a time throughout; base = fsfreeze alone",
        "(the volume, no [databases] entry) on the same database under the same load",
        "",
        *_tables(runs),
        "",
        "guest: the manifest's hosts[*].write_stall, on the guest's monotonic clock: from the",
        "  first hold that stops writes (a writer's lock or the first FIFREEZE call; not",
        "  pg_backup_start, which lets writes go on) until writes can go on again",
        "client: the longest gap between two successive commits of the database's client",
        "  that overlaps the cut's freeze (manifest frozen_at to thawed_at, wall clock)",
        f"before every cut: a freeze and thaw of its disk, then {SETTLE_SECONDS:.1f} s of load",
    ]
    for name in ROWS:
        levels = sorted({m.level for m in runs.measured[name]})
        if levels:
            lines.append(f"{name}: recovery point level {', '.join(levels)}")
    for kind, db in dbs.items():
        lines.append(f"{kind} client: {len(db.client.times)} commits, {db.client.rate():.0f}/s")
    lines += dbbed.failures(runs.failed)
    return "\n".join(lines)


def methods(bed: Bed, dbs: dict[str, Database]) -> dict[str, Callable[[], Measured]]:
    """Every method by its row label: settle the database's disk, then cut and measure."""
    found: dict[str, Callable[[], Measured]] = {}
    for kind, db in dbs.items():
        for way in WAYS:
            slug = "base" if way == BASELINE else "writer"
            cutter = Cutter(bed.app(f"{kind}-{slug}", guest_toml(db, way)))

            def one(cutter: Cutter = cutter, db: Database = db) -> Measured:
                settle(db)
                return measure(cutter, db)

            found[label(kind, way)] = one
    return found


def run(rounds: int = FULL_CUTS, *, warmup: bool = True) -> int:
    """Build the bench, measure ``rounds`` rounds (after a warm-up round, not counted, if
    asked), tear it all down; print the figures. Exit status 1 when a method has no
    successful cut."""
    require_root("writer stall")
    started = time.monotonic()
    with dbbed.torn_down() as stack:
        bed = dbbed.open_bed(stack, "writers-", 2048)
        say(f"workspace {bed.root}")
        dbs = databases(stack, bed)
        runs = run_rounds(methods(bed, dbs), rounds, warmup=warmup)
        machine = dbbed.machine(
            {
                "disk images' datastore": bed.datastore.path,
                "database disks": dbs["postgresql"].disk.mountpoint,
                "restic repository": bed.root,
            }
        )
        text = report(runs, dbs, rounds, time.monotonic() - started, warmup)
    print(text)
    print(machine, flush=True)
    return 0 if all(runs.measured.values()) else 1


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.writers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_CUTS} cuts per method, no warm-up round"
    )
    parser.add_argument("--cuts", type=int, help="cuts per method (stall 10, rto 8)")
    parser.add_argument("--only", choices=["stall", "rto"], help="run one benchmark only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the writer-stall and the RTO benchmarks (or one); exit status 2 when not root."""
    args = _parse(argv)
    require_root("writers")
    if args.cuts is not None and args.cuts < 1:
        say("--cuts must be at least 1")
        return 2
    status = 0
    try:
        for name in ("stall", "rto"):
            if args.only not in (None, name):
                continue
            started = time.monotonic()
            say(f"== {name} benchmark ==")
            if name == "stall":
                cuts = args.cuts or (QUICK_CUTS if args.quick else FULL_CUTS)
                status |= run(cuts, warmup=not args.quick)
            else:
                status |= pgrto.run(args.cuts or (QUICK_CUTS if args.quick else pgrto.FULL_CUTS))
            say(f"== {name} benchmark took {time.monotonic() - started:.0f} s ==")
            print(flush=True)
    except KeyboardInterrupt:
        say("interrupted: the servers, clients, disks and workspace were taken down")
        return 130
    return status


if __name__ == "__main__":
    raise SystemExit(main())
