"""RTO of a restored PostgreSQL: ``pg_backup_start`` against a crash-consistent snapshot.

One PostgreSQL server on its own ext4 disk image (XFS datastore, ``snapshot = "image"``,
``freeze = true``; :mod:`bench.dbbed`) runs pgbench throughout (``pgbench -i -s 5``, then
``pgbench -n -c 2 -R 300``). Cuts alternate between two configs of that disk, the order
swapping each round:

* **pg_backup_start**: the volume and the PostgreSQL writer (``CHECKPOINT``, then
  ``pg_backup_start`` held through the freeze); the recovery point is restored by the
  restore drill, :func:`cleancut.verify.verify_rp`: the image restored and extracted into
  a sandbox, the writer's restore step (``backup_label`` back, the WAL tail, the pid file
  gone), the server started on a free port, ``pg_amcheck --all``;
* **crash-consistent snapshot**: the volume only (fsfreeze alone); the recovery point is
  restored the same way (:func:`cleancut.restore.restore_rp`, extracted), the copied
  ``postmaster.pid`` of the running original removed by hand, the same
  :class:`PostgresqlServer` started (it runs crash recovery from the last checkpoint),
  and the same built-in checks.

**RTO** runs from the restore's start to the server answering (``verify_rp``'s
``rto_seconds``; the same span is timed for the crash-consistent copy). **Recovery** is
the server's own recovery, from its log: the first sign of recovery to "ready to accept
connections" (:meth:`PostgresqlServer.recovery_seconds`). Both are set against the
crash-consistent copy of the same server under the same load, in the same run.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench import dbbed
from bench.common import Series, require_root, say, table
from bench.dbbed import Bed, Cutter
from cleancut.errors import CleancutError
from cleancut.manifest import Manifest
from cleancut.restore import restore_rp
from cleancut.verify import verify_rp
from cleancut.writers.pgserver import PostgresqlServer, pg_bin
from cleancut.writers.server import CheckResult

FULL_CUTS = 8
DISK_MIB = 384
SCALE = 5
LOAD = ["-n", "-c", "2", "-R", "300", "-T", "100000"]
WRITER = "pg_backup_start (writer)"
CRASH = "crash-consistent snapshot"
#: The rows of both tables, in order (the smoke test checks each one).
ROWS = (WRITER, CRASH)
STARTS = "starts with no manual step"
AMCHECK = "pg_amcheck --all"
_SPREAD = ["p50 s", "p99 s", "mean s", "p50/base", "p99/base"]
RTO_HEADERS = ["RTO: restore start to answering", "n", "failed", *_SPREAD, "started", "amcheck ok"]
RECOVERY_HEADERS = ["recovery, from the server's log", "n", *_SPREAD]


@dataclass(frozen=True)
class Drill:
    """One restored copy: RTO and recovery (None: it did not start), what passed."""

    rto: float | None
    recovery: float | None
    restore: float | None
    started: bool
    amcheck: bool
    problems: tuple[str, ...] = ()


@dataclass
class Runs:
    """Every drill of every method, and the errors of cuts or restores that failed."""

    drills: dict[str, list[Drill]] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)


def _passed(checks: Sequence[CheckResult], suffix: str) -> bool:
    found = [check for check in checks if check.name.endswith(suffix)]
    return bool(found) and all(check.ok for check in found)


def _problems(checks: Sequence[CheckResult]) -> tuple[str, ...]:
    return tuple(f"{c.name}: {c.detail.strip()[-300:]}" for c in checks if not c.ok)


def verified(cutter: Cutter, manifest: Manifest, sandboxes: Path) -> Drill:
    """The restore drill of a writer's recovery point (``cleancut verify``'s code path)."""
    report = verify_rp(cutter.loaded, manifest, cutter.mover, sandbox=sandboxes)
    recovery = report.databases[0].recovery_seconds if report.databases else None
    return Drill(
        report.rto_seconds,
        recovery,
        report.restore_seconds,
        _passed(report.checks, STARTS),
        _passed(report.checks, AMCHECK),
        _problems(report.checks),
    )


def crash_restored(cutter: Cutter, manifest: Manifest, sandboxes: Path) -> Drill:
    """A crash-consistent recovery point restored and started the same way, after one
    manual step: the running original's ``postmaster.pid`` removed from the copy."""
    root = Path(tempfile.mkdtemp(prefix="crash-", dir=sandboxes))
    root.chmod(0o755)  # the server runs as postgres and must reach its files
    server: PostgresqlServer | None = None
    try:
        began = time.monotonic()
        restored = restore_rp(manifest, cutter.mover, root / "restored", extract=True)
        restore = time.monotonic() - began
        (member,) = restored.members
        if member.files is None:
            raise CleancutError(f"{manifest.rp_id}: the image was not extracted")
        datadir = member.files / "pgdata"
        (datadir / "postmaster.pid").unlink(missing_ok=True)
        server = PostgresqlServer(datadir, root / "run")
        try:
            server.start()
        except CleancutError as exc:
            return Drill(None, None, restore, False, False, (f"start: {exc}",))
        rto = time.monotonic() - began
        checks = server.builtin_checks()
        fsck = [CheckResult("file system check", bool(member.fsck_ok), member.fsck_output)]
        problems = _problems([*fsck, *checks])
        return Drill(
            rto, server.recovery_seconds(), restore, True, _passed(checks, AMCHECK), problems
        )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def start_pgbench(stack: ExitStack, bed: Bed, server: PostgresqlServer) -> None:
    """``pgbench -i -s 5``, then the load as a subprocess, stopped by its pid (SIGINT,
    then SIGKILL) when ``stack`` closes, before the server stops."""
    pgbench = pg_bin("pgbench", server.datadir)
    where = ["-h", str(server.socket_dir), "-p", str(server.port), "-U", "postgres"]
    say(f"pgbench -i -s {SCALE}")
    done = subprocess.run(
        [pgbench, "-i", "-q", "-s", str(SCALE), *where, "postgres"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise CleancutError(f"pgbench -i failed: {(done.stderr or done.stdout).strip()[-500:]}")
    log = (bed.root / "pgbench.log").open("w", encoding="utf-8")
    stack.callback(log.close)
    proc = subprocess.Popen(
        [pgbench, *LOAD, *where, "postgres"], stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    stack.callback(dbbed.stop_process, proc, signal.SIGINT)
    time.sleep(2.0)
    if proc.poll() is not None:
        raise CleancutError(f"pgbench stopped at once (exit {proc.returncode}): see {log.name}")


def commits(server: PostgresqlServer) -> int:
    """Transactions committed in the database ``postgres`` so far."""
    rows = dbbed.pg_sql(
        server, "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'"
    )
    return int(str(rows[0][0]))


Method = Callable[[], Drill]


def run_rounds(methods: dict[str, Method], cuts: int) -> Runs:
    """``cuts`` drills per method, alternating, the order swapping each round; a cut or a
    restore that fails is counted as failed and the run goes on."""
    runs = Runs({name: [] for name in methods}, {name: [] for name in methods})
    names = list(methods)
    for index in range(cuts):
        order = names if index % 2 == 0 else names[::-1]
        done = []
        for name in order:
            try:
                drill = methods[name]()
            except CleancutError as exc:
                say(f"{name}: failed: {exc}")
                runs.failed[name].append(str(exc))
                continue
            runs.drills[name].append(drill)
            rto = "-" if drill.rto is None else f"{drill.rto:.2f}"
            rec = "-" if drill.recovery is None else f"{drill.recovery:.3f}"
            done.append(f"{name}: RTO {rto} s, recovery {rec} s")
            for problem in drill.problems:
                say(f"{name}: {problem}")
        say(f"round {index + 1}/{cuts}: {'; '.join(done)}")
    return runs


def _seconds(series: Series, digits: int) -> list[str]:
    if not series.values:
        return ["-", "-", "-"]
    return [f"{value:.{digits}f}" for value in (series.p50, series.p99, series.mean)]


def _ratios(series: Series, base: Series) -> list[str]:
    if not series.values or not base.values or base.p50 <= 0 or base.p99 <= 0:
        return ["-", "-"]
    return [f"{series.p50 / base.p50:.2f}", f"{series.p99 / base.p99:.2f}"]


def _series(runs: Runs, name: str, what: str) -> Series:
    values = [getattr(drill, what) for drill in runs.drills[name]]
    return Series(name, tuple(float(v) for v in values if v is not None))


def _tables(runs: Runs) -> list[str]:
    rto_rows, recovery_rows = [], []
    rto_base, recovery_base = _series(runs, CRASH, "rto"), _series(runs, CRASH, "recovery")
    for name in ROWS:
        drills = runs.drills[name]
        rto, recovery = _series(runs, name, "rto"), _series(runs, name, "recovery")
        started = sum(d.started for d in drills)
        amcheck = sum(d.amcheck for d in drills)
        rto_rows.append(
            [
                name,
                str(len(rto.values)),
                str(len(runs.failed[name])),
                *_seconds(rto, 2),
                *_ratios(rto, rto_base),
                str(started),
                str(amcheck),
            ]
        )
        recovery_rows.append(
            [
                name,
                str(len(recovery.values)),
                *_seconds(recovery, 3),
                *_ratios(recovery, recovery_base),
            ]
        )
    return [table(RTO_HEADERS, rto_rows), "", table(RECOVERY_HEADERS, recovery_rows)]


def _verdicts(runs: Runs) -> list[str]:
    lines = []
    for name in ROWS:
        drills = runs.drills[name]
        started = sum(d.started for d in drills)
        amcheck = sum(d.amcheck for d in drills)
        every = "every copy" if drills and started == amcheck == len(drills) else "NOT every copy"
        how = "with no manual step" if name == WRITER else "after removing postmaster.pid by hand"
        lines.append(
            f"{name}: {every} started {how} and passed pg_amcheck "
            f"({started}/{len(drills)} started, {amcheck}/{len(drills)} pg_amcheck ok)"
        )
        restores = _series(runs, name, "restore")
        if restores.values:
            lines.append(
                f"{name}: of the RTO, the restore (restic restore, fsck, extract, "
                f"restore step) took p50 {restores.p50:.2f} s"
            )
    return lines


def report(runs: Runs, cuts: int, seconds: float, tps: float) -> str:
    """The header, both tables, the verdicts and the failures."""
    lines = [
        f"RTO of a restored PostgreSQL: pg_backup_start against a crash-consistent snapshot, "
        f"{cuts} cuts per method (alternating); the whole run took {seconds:.0f} s",
        f"one server on a {DISK_MIB} MiB ext4 disk image (XFS datastore), image snapshot, "
        f"freeze; load: pgbench -i -s {SCALE}, then pgbench {' '.join(LOAD)} ({tps:.0f} tps "
        "measured)",
        "each recovery point restored into a sandbox, extracted, started on a free port; "
        "base = crash-consistent",
        "",
        *_tables(runs),
        "",
        "RTO: restore start until the server answers (verify_rp's rto_seconds; the same span",
        "  for the crash-consistent copy); recovery: the server's log, first sign of recovery",
        "  to 'ready to accept connections' (PostgresqlServer.recovery_seconds)",
        *_verdicts(runs),
        *dbbed.failures(runs.failed),
    ]
    return "\n".join(lines)


def run(cuts: int = FULL_CUTS) -> int:
    """Build the server and its load, measure ``cuts`` drills per method, tear it all
    down; print the figures. Exit status 1 when a method has no drill that started."""
    require_root("PostgreSQL RTO")
    started = time.monotonic()
    with dbbed.torn_down() as stack:
        bed = dbbed.open_bed(stack, "pgrto-", 1536)
        say(f"workspace {bed.root}; initialising and starting PostgreSQL")
        server = dbbed.start_postgresql(stack, bed, "pg", DISK_MIB)
        start_pgbench(stack, bed, server)
        disk = bed.datastore.disks["pg"]
        volume = dbbed.volume_toml(disk)
        database = f'\n[databases.main]\nkind = "postgresql"\ndsn = "{server.uri}"\n'
        writer = Cutter(bed.app("pg-writer", volume + database + f'volume = "{dbbed.VOLUME}"\n'))
        crash = Cutter(bed.app("pg-crash", volume))
        sandboxes = bed.root / "sandboxes"
        sandboxes.mkdir(mode=0o711)  # the servers (postgres) pass through it to their files
        methods: dict[str, Method] = {
            WRITER: lambda: verified(writer, writer.cut(), sandboxes),
            CRASH: lambda: crash_restored(crash, crash.cut(), sandboxes),
        }
        first, since = commits(server), time.monotonic()
        runs = run_rounds(methods, cuts)
        tps = (commits(server) - first) / (time.monotonic() - since)
        machine = dbbed.machine(
            {
                "disk image's datastore": bed.datastore.path,
                "PostgreSQL's disk": disk.mountpoint,
                "repository and sandboxes": bed.root,
            }
        )
        text = report(runs, cuts, time.monotonic() - started, tps)
    print(text)
    print(machine, flush=True)
    ok = all(any(d.rto is not None for d in drills) for drills in runs.drills.values())
    return 0 if ok else 1
