"""The PostgreSQL writer against real servers on real loop-mounted disks.

A cut of a busy server records its backup (LSNs, timeline, ``backup_label``); the restored
copy gets that label back byte for byte and starts with no manual step, beside the
original on the same machine, with every row committed before the hold. The backup is in
progress in the held session while the disk is frozen, and it ends on every path — a
failing phase, the deadline, a killed coordinator or guest, a terminated session — after
which the server takes writes and no backup is left behind. Databases whose WAL or
tablespace lies outside the host's volumes are refused at hello.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cleancut.config.guest import PostgresqlDatabase
from cleancut.demo.disks import Datastore
from cleancut.errors import WriterError
from cleancut.writers.pgserver import PostgresqlServer
from cleancut.writers.postgresql import PostgresqlWriter
from tests.integration import pg_fixtures
from tests.integration.cutlib import children, make_app, wait_gone, write_private
from tests.integration.pg_fixtures import PgCluster, RowWriter, make_cluster, postgres_owned

# the fixtures, bound here so pytest finds them (an import would read as unused)
pg_cluster = pg_fixtures.pg_cluster
servers = pg_fixtures.servers

pytestmark = [pytest.mark.root, pytest.mark.restic]

#: A coordinator that stops after the freeze (snapshot taken) until told to go on, or whose
#: next phase fails ("fail": it releases without a thaw, as the real one does on errors).
DRIVER = """
import json, sys
from pathlib import Path
from cleancut.errors import CleancutError
from cleancut.transport.local import LocalChannel
channel = LocalChannel("vm1", Path(sys.argv[1]))
hello = {"protocol": 1, "rp_id": "20260101T000000Z-pg", "freeze_timeout": float(sys.argv[2])}
channel.call("hello", hello, timeout=60)
channel.call("prepare", timeout=60)
frozen = channel.call("freeze", {"snapshot": True, "thaw": False}, timeout=60)
print(json.dumps(frozen), flush=True)
if sys.argv[3] == "fail":
    try:
        channel.call("snapshot_disks", {"disks": ["no-such-disk"]}, timeout=60)
    except CleancutError as exc:
        print(json.dumps({"failed": str(exc)}), flush=True)
    print(json.dumps(channel.call("release", timeout=60)), flush=True)
else:
    sys.stdin.readline()
    print(json.dumps(channel.call("thaw", timeout=60)), flush=True)
    channel.call("release", timeout=60)
channel.call("bye", timeout=10)
channel.close()
"""


@pytest.fixture
def drivers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=30)


def start_driver(
    drivers: list[subprocess.Popen[str]], guest: Path, freeze_timeout: float, mode: str
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """The driver, once its guest answered the freeze; (driver, the freeze reply)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(guest), str(freeze_timeout), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    drivers.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the driver ended before the freeze"
    return proc, json.loads(line)


def restored_rows(server: PostgresqlServer) -> list[int]:
    import psycopg

    with psycopg.connect(server.uri, autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM rows ORDER BY id").fetchall()]


def test_a_busy_cut_restores_with_its_backup_label_and_starts_by_itself(
    pg_cluster: PgCluster, trusted_dir: Path, servers: list[PostgresqlServer]
) -> None:
    rows = RowWriter(pg_cluster)
    try:
        rows.wait_for(100)
        app = make_app(trusted_dir, {"vm1": pg_cluster.guest_toml()})
        code, manifest, stderr = app.backup_json()
        rows.wait_for(len(rows.committed) + 50)  # the writer went on after the cut
    finally:
        rows.stop()
    assert code == 0, stderr
    assert manifest is not None and manifest["level"] == "application"
    (record,) = manifest["writers"]
    details = record["details"]
    assert record["ok"] and record["kind"] == "postgresql"
    label = details["backup_label"]
    assert hashlib.sha256(label.encode()).hexdigest() == details["backup_label_sha256"]
    assert f"START WAL LOCATION: {details['start_lsn']} " in label
    assert f"START TIMELINE: {details['timeline']}\n" in label
    assert f"LABEL: {details['label']}\n" in label
    assert _lsn(details["start_lsn"]) < _lsn(details["stop_lsn"])
    assert details["files"]["data directory"] == {"volume": "pg", "path": "pgdata"}
    assert details["files"]["WAL"] == {"volume": "pg", "path": "pgdata/pg_wal"}
    before_hold = [n for n, at in rows.committed if at < details["held_at"]]

    target = trusted_dir / "restored"
    done = app.run("restore", "latest", "--to", str(target), "--extract", "--json")
    assert done.returncode == 0, done.stderr
    datadir = target / "vm1" / "pg" / "pgdata"
    assert (datadir / "backup_label").read_bytes() == label.encode()
    assert not (datadir / "postmaster.pid").exists()

    restored = PostgresqlServer(datadir, trusted_dir / "restored-run")
    servers.append(restored)
    start_seconds = restored.start()  # beside the original, which still runs
    assert pg_cluster.sql("SELECT 1") == [(1,)]
    log = restored.log_file.read_text()
    assert "starting backup recovery" in log, log
    assert f"end LSN {details['stop_lsn']}" in log, log  # recovered to the end of the backup
    recovery = restored.recovery_seconds()
    assert recovery is not None
    ids = restored_rows(restored)
    assert ids == list(range(1, len(ids) + 1)), "the restored rows have holes"
    assert set(before_hold) <= set(ids), "rows committed before the hold are missing"
    checks = {check.name: check for check in restored.builtin_checks()}
    assert checks["answers"].ok, checks
    assert checks["pg_amcheck --all"].ok, checks["pg_amcheck --all"].detail
    tail = sum(piece["length"] for piece in details["wal_tail"]["pieces"])
    taken, held = details["backup_start_seconds"], details["held_seconds"]
    print(
        f"\nhold taken in {taken:.3f}s, held {held:.3f}s;"
        f" WAL tail {tail} bytes; restored copy answered after {start_seconds:.2f}s, recovery "
        f"{recovery:.3f}s; {len(ids)} rows restored, {len(before_hold)} committed before the hold"
    )


@pytest.mark.parametrize("depth", ["short", "deep"])
def test_verify_starts_the_restored_server_and_runs_pg_amcheck(
    pg_cluster: PgCluster, trusted_dir: Path, depth: str
) -> None:
    """Also from a sandbox so deep that a socket in its run folder would not fit in a unix
    socket's path: the server then gets a short socket folder of its own."""
    pg_cluster.sql("CREATE TABLE rows (id bigint PRIMARY KEY)")
    pg_cluster.sql("INSERT INTO rows SELECT generate_series(1, 1000)")
    app = make_app(trusted_dir, {"vm1": pg_cluster.guest_toml()})
    code, _manifest, stderr = app.backup_json()
    assert code == 0, stderr
    sandboxes = trusted_dir / "sandboxes" / ("d" * 70 if depth == "deep" else "")
    sandboxes.mkdir(mode=0o755, parents=True)
    done = app.run("verify", "latest", "--json", "--sandbox", str(sandboxes))
    report = json.loads(done.stdout.splitlines()[-1])
    assert done.returncode == 0, (done.stderr, report)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["vm1/main: starts with no manual step"]["ok"], checks
    assert checks["vm1/main: pg_amcheck --all"]["ok"], checks
    (database,) = report["databases"]
    assert database["recovery_seconds"] is not None
    assert (depth == "deep") == ("/run/cleancut-pg/" in database["uri"]), database["uri"]
    assert not list(Path("/run/cleancut-pg").glob("*")), "a short socket folder was left"
    print(f"\nverify: RTO {report['rto_seconds']:.2f}s, recovery {database['recovery_seconds']}s")


def test_the_backup_is_in_progress_in_the_held_session_during_the_freeze(
    pg_cluster: PgCluster, trusted_dir: Path, drivers: list[subprocess.Popen[str]]
) -> None:
    guest = write_private(trusted_dir / "guest.toml", pg_cluster.guest_toml())
    with pg_cluster.connect() as probe:  # connected before the freeze
        driver, frozen = start_driver(drivers, guest, 30.0, "barrier")
        assert frozen["mounts"] == [str(pg_cluster.disk.mountpoint)], frozen
        assert frozen["writers"]["main"]["ok"], frozen["writers"]
        sessions = probe.execute(
            "SELECT state, query FROM pg_stat_activity WHERE application_name LIKE %s",
            ("cleancut writer %",),
        ).fetchall()
        assert len(sessions) == 1, sessions
        state, query = sessions[0]
        assert state == "idle" and "pg_backup_start(" in query, sessions
        ((during,),) = probe.execute("SELECT pg_current_wal_insert_lsn()::text").fetchall()
        assert driver.stdin is not None and driver.stdout is not None
        driver.stdin.write("go\n")
        driver.stdin.flush()
        thawed = json.loads(driver.stdout.readline())
    details = thawed["writers"]["main"]["details"]
    assert thawed["writers"]["main"]["ok"], thawed["writers"]
    assert details["label"].startswith("cleancut ")
    # the server's own positions: the backup started before the probe and stopped after it
    assert _lsn(details["start_lsn"]) <= _lsn(during) < _lsn(details["stop_lsn"]), details
    assert driver.wait(timeout=30) == 0
    pg_cluster.assert_released()


@pytest.mark.parametrize(
    "way", ["a later phase fails", "deadline", "coordinator killed", "guest killed"]
)
def test_every_hold_is_released(
    pg_cluster: PgCluster, trusted_dir: Path, drivers: list[subprocess.Popen[str]], way: str
) -> None:
    guest = write_private(trusted_dir / "guest.toml", pg_cluster.guest_toml())
    freeze_timeout = 2.0 if way == "deadline" else 30.0
    mode = "fail" if way == "a later phase fails" else "barrier"
    driver, frozen = start_driver(drivers, guest, freeze_timeout, mode)
    assert frozen["writers"]["main"]["ok"], frozen["writers"]
    assert len(pg_cluster.writer_sessions()) == 1
    held_at = time.monotonic()
    assert driver.stdout is not None
    if way == "a later phase fails":
        assert "no-such-disk" in json.loads(driver.stdout.readline())["failed"]
        released = json.loads(driver.stdout.readline())
        assert released is not None
        assert driver.wait(timeout=30) == 0
    elif way == "deadline":
        os.kill(driver.pid, signal.SIGSTOP)
    elif way == "coordinator killed":
        driver.kill()
    else:
        (agent,) = children(driver.pid)
        os.kill(agent, signal.SIGKILL)
        wait_gone(agent, 10)
    pg_cluster.assert_released(within=freeze_timeout + 5 if way == "deadline" else 10)
    print(f"\n{way}: released {time.monotonic() - held_at:.2f}s after the freeze reply")


def test_a_terminated_session_fails_the_writer_and_its_volume_drops_a_level(
    pg_cluster: PgCluster, trusted_dir: Path
) -> None:
    """pg_terminate_backend of the held session during the hold (widened by a slow copy of
    another volume inside the freeze): the release finds the backup gone."""
    slow = trusted_dir / "slow"
    slow.mkdir()
    with (slow / "big").open("wb") as big:
        for _ in range(384):
            big.write(b"\1" * (1 << 20))
    guest = pg_cluster.guest_toml() + (
        f'\n[volumes.slow]\npath = "{slow}"\nsnapshot = "copy"\nfreeze = false\n'
        f'staging = "{trusted_dir / "staging"}"\n'
    )
    app = make_app(trusted_dir, {"vm1": guest})
    terminated: list[int] = []
    stop = threading.Event()

    def terminate_the_hold() -> None:
        with pg_cluster.connect() as conn:
            while not stop.is_set() and not terminated:
                for pid, state, query in conn.execute(
                    "SELECT pid, state, query FROM pg_stat_activity "
                    "WHERE application_name LIKE 'cleancut writer %'"
                ).fetchall():
                    if state == "idle" and "pg_backup_start(" in query:
                        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                        terminated.append(pid)
                time.sleep(0.002)

    watcher = threading.Thread(target=terminate_the_hold, daemon=True)
    watcher.start()
    try:
        code, manifest, stderr = app.backup_json()
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert terminated, "the held session was never seen (the hold window was missed)"
    assert code == 3, stderr  # committed, degraded
    assert manifest is not None
    (record,) = manifest["writers"]
    assert not record["ok"] and "did not last to the end" in record["error"], record
    levels = {m["resource"]: m["level"] for m in manifest["members"]}
    assert levels["pg"] == "filesystem", levels
    pg_cluster.assert_released()


@pytest.mark.parametrize(("lock_timeout", "seconds"), [(1.0, 10.0), (20.0, 1.0)])
def test_taking_the_hold_is_bounded_by_lock_timeout_and_the_deadline(
    pg_cluster: PgCluster, lock_timeout: float, seconds: float
) -> None:
    """A checkpointer that does not answer (SIGSTOP) keeps pg_backup_start waiting for its
    checkpoint: the hold gives up within lock_timeout or the deadline's seconds, whichever
    is shorter, and nothing is left held."""
    database = PostgresqlDatabase(
        kind="postgresql", dsn=pg_cluster.uri, volume="pg", lock_timeout=lock_timeout
    )
    writer = PostgresqlWriter("main", database)
    ((checkpointer,),) = pg_cluster.sql(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
    )
    # a hold that never gives up would wait for the checkpointer: let it go on after 6s
    resume = threading.Timer(6.0, os.kill, (checkpointer, signal.SIGCONT))
    try:
        writer.check()
        writer.prepare()
        os.kill(checkpointer, signal.SIGSTOP)
        resume.start()
        began = time.monotonic()
        with pytest.raises(WriterError, match="starting the backup"):
            writer.hold(seconds)
        took = time.monotonic() - began
    finally:
        resume.cancel()
        os.kill(checkpointer, signal.SIGCONT)
        writer.close()
    assert took < 2.0, f"the hold took {took:.2f}s to give up (bound 1s)"
    pg_cluster.assert_released()


def test_abort_ends_a_hold_being_taken_at_once(pg_cluster: PgCluster) -> None:
    """The watchdog's abort, from another thread, while pg_backup_start waits for a stopped
    checkpointer: the hold fails at once, not at lock_timeout, and nothing stays held."""
    writer = PostgresqlWriter(
        "main",
        PostgresqlDatabase(kind="postgresql", dsn=pg_cluster.uri, volume="pg", lock_timeout=20.0),
    )
    ((checkpointer,),) = pg_cluster.sql(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
    )
    failed: list[BaseException] = []

    def hold() -> None:
        try:
            writer.hold(30.0)
        except WriterError as exc:
            failed.append(exc)

    holder = threading.Thread(target=hold, daemon=True)
    try:
        writer.check()
        writer.prepare()
        os.kill(checkpointer, signal.SIGSTOP)
        holder.start()
        deadline = time.monotonic() + 5
        while "pg_backup_start(" not in str(pg_cluster.writer_sessions()):
            assert time.monotonic() < deadline, "the hold never started"
            time.sleep(0.01)
        began = time.monotonic()
        writer.abort()
        aborted_in = time.monotonic() - began
        holder.join(timeout=3.0)
        ended_in = time.monotonic() - began
    finally:
        os.kill(checkpointer, signal.SIGCONT)
        holder.join(timeout=30)
        writer.close()
    assert aborted_in < 0.5, f"abort blocked for {aborted_in:.2f}s"
    assert failed and ended_in < 3.0, f"the hold went on {ended_in:.2f}s after the abort"
    pg_cluster.assert_released()


HOLDER = """
import sys, time
from cleancut.config.guest import PostgresqlDatabase
from cleancut.writers.postgresql import PostgresqlWriter
database = PostgresqlDatabase(kind="postgresql", dsn=sys.argv[1], volume="v")
writer = PostgresqlWriter("main", database)
writer.check()
writer.prepare()
writer.hold(float(sys.argv[2]))
print("held", flush=True)
time.sleep(600)
"""


def test_a_stopped_guest_cannot_keep_the_backup_past_its_deadline(pg_cluster: PgCluster) -> None:
    """The held session ends by itself at the deadline (the server's idle_session_timeout),
    while the process that holds it is stopped with SIGSTOP."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, pg_cluster.uri, "2.0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        held_at = time.monotonic()
        assert len(pg_cluster.writer_sessions()) == 1
        time.sleep(1.0)
        assert len(pg_cluster.writer_sessions()) == 1, "the hold ended before its deadline"
        pg_cluster.assert_released(within=3.0)
        ended = time.monotonic() - held_at
        assert ended < 3.0, f"the hold outlived its 2s deadline: {ended:.2f}s"
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait(timeout=10)


def test_wal_outside_the_volumes_is_refused_at_hello(
    datastore: Datastore, trusted_dir: Path
) -> None:
    waldir = postgres_owned(trusted_dir / "elsewhere" / "wal")
    cluster = make_cluster(datastore, trusted_dir, initdb_args=("-X", str(waldir)))
    try:
        assert (cluster.datadir / "pg_wal").is_symlink()
        app = make_app(trusted_dir, {"vm1": cluster.guest_toml()})
        code, manifest, stderr = app.backup_json()
        assert code == 6, stderr  # the host refused at hello
        assert manifest is None
        assert "databases.main" in stderr and f"its WAL {waldir} lies in no volume" in stderr
        assert "[volumes.NAME]" in stderr, stderr
        assert not cluster.writer_sessions()  # refused before anything was held
    finally:
        cluster.server.stop()


def test_a_tablespace_outside_the_volumes_is_refused_at_hello(
    pg_cluster: PgCluster, trusted_dir: Path
) -> None:
    location = postgres_owned(trusted_dir / "elsewhere" / "spc1")
    pg_cluster.sql(f"CREATE TABLESPACE spc1 LOCATION '{location}'")
    app = make_app(trusted_dir, {"vm1": pg_cluster.guest_toml()})
    code, _manifest, stderr = app.backup_json()
    assert code == 6, stderr  # the host refused at hello
    assert f"databases.main: its tablespace spc1 {location} lies in no volume" in stderr, stderr
    assert "move the tablespace spc1 into volume 'pg'" in stderr


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)
