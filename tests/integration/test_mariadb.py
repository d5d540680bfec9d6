"""The MariaDB writer against a real MariaDB 10.11 whose data directory lives on the volume
the cut freezes and clones (issue 7, items 2 to 4).

* A cut under continuous inserts records the binary log's file:position and GTID, holds
  every writer off while it holds (an INSERT waits for the lock, then goes through after
  the thaw), and restores to a copy that :class:`MariadbServer` starts with no manual step
  beside the running original: every order committed before the hold is there, none sent
  after the release, its GTID position is the recorded one and ``CHECK TABLE`` passes —
  also through ``cleancut verify``.
* A lock that cannot be taken within ``lock_timeout`` (a long write or ``LOCK TABLES`` in
  the way) follows ``on_failure``, and writers never wait much longer than that nor find
  the server read-only.
* Every hold ends on every path (a later phase fails, the deadline passes, the coordinator
  or the guest is killed, the locking connection is killed), and afterwards no cleancut
  connection is left and INSERTs go through.
* hello refuses a server whose data directory is on no volume of the host, or whose
  password file others can read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from cleancut.config.guest import MariadbDatabase
from cleancut.demo.disks import Datastore
from cleancut.demo.shopdb import mysql_connect_args
from cleancut.errors import WriterError
from cleancut.writers.mysql import MariadbWriter
from cleancut.writers.mysqlserver import MariadbServer
from tests.integration.cutlib import App, children, make_app, wait_gone, write_private
from tests.integration.mariadb_fixtures import (  # noqa: F401
    Inserter,
    Mariadb,
    Prober,
    inserter_fixture,
    mariadb_fixture,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("mariadbd") is None, reason="needs MariaDB (mariadbd)"),
]

#: a coordinator that stops after the freeze (with its snapshot) until told how to go on:
#: "go" thaws and releases, "fail" makes a later phase fail and then releases
DRIVER = """
import json, sys
from pathlib import Path
from cleancut.errors import CleancutError
from cleancut.transport.local import LocalChannel
channel = LocalChannel("vm1", Path(sys.argv[1]))
hello = {"protocol": 1, "rp_id": "20260101T000000Z-mariadb", "freeze_timeout": float(sys.argv[2])}
def say(step, reply):
    print(json.dumps({"step": step, **reply}), flush=True)
channel.call("hello", hello, timeout=60)
say("prepare", channel.call("prepare", timeout=60))
say("freeze", channel.call("freeze", {"snapshot": True}, timeout=60))
command = sys.stdin.readline().strip()
if command == "fail":
    try:
        channel.call("snapshot_disks", {"disks": ["no-such-disk"]}, timeout=60)
    except CleancutError as exc:
        say("failed", {"error": str(exc)})
else:
    say("thaw", channel.call("thaw", timeout=60))
say("release", channel.call("release", timeout=60))
channel.call("bye", timeout=10)
channel.close()
"""

CHECK_ORDERS = """\
import os, sys
from urllib.parse import parse_qs, urlsplit
import pymysql
uri = urlsplit(os.environ["CLEANCUT_DB_SHOP"])
socket = parse_qs(uri.query)["unix_socket"][0]
conn = pymysql.connect(unix_socket=socket, user=uri.username)
with conn.cursor() as cur:
    cur.execute("SELECT count(*) FROM app.orders")
    count = cur.fetchone()[0]
print(f"{count} orders via {uri.scheme}://{uri.hostname}")
sys.exit(0 if count > 0 else 1)
"""


def own_app(root: Path, guests: dict[str, str], **settings: Any) -> App:
    """:func:`make_app` under a name of its own: the backup lock is per application name
    and machine-wide, and other test runs on this machine back up "itest" too."""
    app = make_app(root, guests, **settings)
    text = app.config.read_text(encoding="utf-8")
    app.config.write_text(text.replace('name = "itest"', f'name = "mdb-{_digest(root)}"', 1))
    return app


def _digest(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:10]


class Driver:
    """The coordinator's side of a cut that waits while frozen until told to go on."""

    def __init__(self, guest: Path, freeze_timeout: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(guest), str(freeze_timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.prepared = self.reply("prepare")
        self.frozen = self.reply("freeze")
        [self.guest_pid] = children(self.proc.pid)

    def reply(self, step: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the driver ended before its {step} reply"
        reply: dict[str, Any] = json.loads(line)
        assert reply["step"] == step, reply
        return reply

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    @property
    def holder(self) -> int:
        """The connection the writer takes its lock on (opened in prepare)."""
        return int(self.prepared["writers"]["shop"]["details"]["holder_connection_id"])

    def finish(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=30)
        wait_gone(self.guest_pid, 30)  # it releases everything on its way out


@pytest.fixture
def drivers() -> Iterator[list[Driver]]:
    started: list[Driver] = []
    try:
        yield started
    finally:
        for driver in started:
            driver.finish()


class PendingInsert:
    """One INSERT from a connection of its own, in a thread: is it still waiting?"""

    def __init__(self, db: Mariadb) -> None:
        self.conn = db.connect(read_timeout=60)
        self.done = threading.Event()
        self.error: BaseException | None = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.execute("INSERT INTO app.probe (v) VALUES ('waits for the hold')")
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def finished(self, within: float) -> bool:
        if not self.done.wait(within):
            return False
        assert self.error is None, f"the INSERT failed: {self.error}"
        self.conn.close()
        return True


def waiting_inserts(db: Mariadb) -> list[str]:
    rows = db.sql(
        "SELECT state FROM information_schema.processlist WHERE info LIKE 'INSERT INTO app.probe%'"
    )
    return [str(row[0]) for row in rows]


def assert_released(db: Mariadb, baseline: set[int], within: float = 2.0) -> None:
    """No connection of cleancut's is left, and an INSERT goes through at once."""
    deadline = time.monotonic() + within
    while (left := db.connection_ids() - baseline) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"connections left behind: {db.sql('SHOW PROCESSLIST')}"
    assert db.insert_seconds(timeout=5) < 1.0
    assert not db.read_only()


# -- 1. a cut under load, restored and started ----------------------------------------


@pytest.mark.restic
def test_a_cut_under_load_records_the_binlog_and_restores_clean(
    mariadb: Mariadb, inserter: Inserter, trusted_dir: Path
) -> None:
    app = own_app(trusted_dir, {"vm1": mariadb.guest()})
    (trusted_dir / "checks").mkdir(mode=0o755)
    (trusted_dir / "checks" / "orders.py").write_text(CHECK_ORDERS)
    app.config.write_text(
        app.config.read_text()
        + f'\n[[checks]]\nname = "orders are there"\nrun = ["{sys.executable}", '
        '"checks/orders.py"]\n'
    )

    code, manifest, stderr = app.backup_json()

    assert code == 0, stderr
    assert manifest is not None and manifest["level"] == "application"
    [record] = manifest["writers"]
    details = record["details"]
    assert record["ok"] and record["kind"] == "mariadb", record
    assert re.fullmatch(r"mysql-bin\.\d{6}", details["binlog_file"]), details
    assert details["binlog_position"] > 4
    assert re.fullmatch(r"0-1-\d+", details["gtid"]), details
    assert details["files"]["data directory"] == {"volume": "db", "path": "mysql"}
    assert details["files"]["binary logs"] == {"volume": "db", "path": "mysql"}
    print(
        f"lock taken in {details['lock_seconds'] * 1000:.1f} ms, held "
        f"{details['held_seconds'] * 1000:.1f} ms, write stall "
        f"{manifest['hosts'][0]['write_stall'] * 1000:.1f} ms"
    )
    assert inserter.advances(2.0), "the original takes writes after the cut"

    target = trusted_dir / "restored"
    done = app.run("restore", "latest", "--to", str(target), "--extract", "--json")
    assert done.returncode == 0, done.stderr
    restored = MariadbServer(target / "vm1" / "db" / "mysql", trusted_dir / "restored-run")
    try:
        started = restored.start()
        recovery = restored.recovery_seconds()
        print(f"restored copy answering after {started:.2f}s, InnoDB recovery {recovery}s")
        assert recovery is not None, "a copy taken under load needs InnoDB's crash recovery"
        assert mariadb.insert_seconds() < 1.0, "the original runs on beside the copy"
        _assert_orders_of_the_cut(restored, inserter, details)
        builtin = restored.builtin_checks()
        assert {c.name for c in builtin} >= {"answers", "CHECK TABLE app.orders"}
        assert all(c.ok for c in builtin), [c.as_dict() for c in builtin]
    finally:
        restored.stop()

    verified = app.run("verify", "latest", "--json", "--sandbox", str(trusted_dir / "sb"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["vm1/shop: starts with no manual step"]["ok"], checks
    assert checks["vm1/shop: CHECK TABLE app.orders"]["ok"], checks
    assert "orders via mysql://localhost" in checks["orders are there"]["detail"], checks
    print(f"verify: RTO {report['rto_seconds']:.2f}s, databases {report['databases']}")


def _assert_orders_of_the_cut(
    restored: MariadbServer, inserter: Inserter, details: dict[str, Any]
) -> None:
    """Every order committed before the lock is in the copy; none sent after the release;
    and the copy's GTID position is the one recorded inside the lock."""
    args = mysql_connect_args(restored.uri)
    assert args == {"user": "root", "unix_socket": str(restored.socket)}
    conn = pymysql.connect(**args)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM app.orders")
            present = {int(row[0]) for row in cur.fetchall()}
            cur.execute("SELECT @@gtid_binlog_pos")
            row = cur.fetchone()
    finally:
        conn.close()
    before = {o.id for o in inserter.orders if o.committed < details["held_at"]}
    after = {o.id for o in inserter.orders if o.sent > details["released_at"]}
    assert before and after, "the inserter ran on both sides of the cut"
    assert before <= present, f"committed before the hold but lost: {sorted(before - present)}"
    assert not present & after, "rows sent after the release are in the copy"
    assert row is not None and row[0] == details["gtid"]


def test_the_hold_blocks_writers_until_the_thaw(
    mariadb: Mariadb, trusted_dir: Path, drivers: list[Driver]
) -> None:
    guest = write_private(trusted_dir / "guest.toml", mariadb.guest())
    baseline = mariadb.connection_ids()
    driver = Driver(guest, freeze_timeout=30)
    drivers.append(driver)
    assert driver.frozen["mounts"] == [str(mariadb.mount)]

    pending = PendingInsert(mariadb)
    assert not pending.finished(1.5), "an INSERT got through the hold"
    assert waiting_inserts(mariadb) == ["Waiting for backup lock"]  # the lock, not the disk
    assert mariadb.one("SELECT count(*) FROM app.orders") == 0  # reads go on

    driver.tell("go")
    thawed = driver.reply("thaw")
    assert pending.finished(5), "the INSERT still waits after the thaw"
    details = thawed["writers"]["shop"]["details"]
    assert thawed["writers"]["shop"]["ok"], thawed["writers"]
    assert details["binlog_file"] and details["gtid"]
    driver.reply("release")
    assert driver.proc.wait(timeout=30) == 0
    assert_released(mariadb, baseline)


# -- 2. a lock that cannot be taken ---------------------------------------------------


class Blocker:
    """Another session in the way of the global read lock: a long UPDATE, or LOCK TABLES."""

    def __init__(self, db: Mariadb, how: str) -> None:
        self.db = db
        self.conn = db.connect(read_timeout=120)
        with self.conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            self.conn_id = int(cur.fetchall()[0][0])
            if how == "lock tables":
                cur.execute("LOCK TABLES app.blocker WRITE")
                return
        self._thread = threading.Thread(target=self._update, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 5
        while not db.sql("SELECT 1 FROM information_schema.processlist WHERE state = 'User sleep'"):
            assert time.monotonic() < deadline, "the long UPDATE did not start"
            time.sleep(0.02)

    def _update(self) -> None:
        with contextlib.suppress(pymysql.Error), self.conn.cursor() as cur:
            cur.execute("UPDATE app.blocker SET v = SLEEP(60) WHERE id = 1")

    def end(self) -> None:
        with contextlib.suppress(pymysql.Error):
            self.db.sql(f"KILL CONNECTION {self.conn_id}")
        self.conn.close()


@pytest.mark.restic
@pytest.mark.parametrize("on_failure", ["degrade", "abort"])
@pytest.mark.parametrize("how", ["long update", "lock tables"])
def test_a_lock_that_cannot_be_taken_follows_on_failure(
    mariadb: Mariadb, trusted_dir: Path, on_failure: str, how: str
) -> None:
    lock_timeout = 2.0
    app = own_app(
        trusted_dir,
        {"vm1": mariadb.guest(lock_timeout=f"{lock_timeout:g}s")},
        on_failure=on_failure,
    )
    read_only = mariadb.read_only()
    blocker = Blocker(mariadb, how)
    try:
        baseline = mariadb.connection_ids()
        prober = Prober(mariadb)
        started = time.monotonic()
        code, manifest, stderr = app.backup_json()
        took = time.monotonic() - started
        time.sleep(0.5)  # and right after
        latencies = prober.stop()
    finally:
        blocker.end()
    message = "FLUSH TABLES WITH READ LOCK could not be taken within 2s"
    if on_failure == "degrade":
        assert code == 3, stderr
        assert manifest is not None and manifest["level"] == "filesystem"
        [member] = manifest["members"]
        assert member["level"] == "filesystem" and message in member["reason"], member
        [record] = manifest["writers"]
        assert not record["ok"] and message in record["error"]
    else:
        assert code == 4, stderr
        assert manifest is None
        assert message in stderr
    worst = max(latencies)
    print(f"{how}, {on_failure}: backup {took:.1f}s, worst INSERT wait {worst:.2f}s")
    assert worst < lock_timeout + 1.0, "writers waited much longer than lock_timeout"
    assert len(latencies) > 20
    assert prober.read_only == {int(read_only)}, "the server was left read-only"
    assert mariadb.read_only() == read_only
    assert_released(mariadb, baseline | {prober.conn_id})


def test_taking_the_lock_ends_by_the_deadline_even_below_one_second(
    mariadb: Mariadb, trusted_dir: Path
) -> None:
    """``lock_wait_timeout`` counts whole seconds: a bound of 0.6 s is kept by the writer's
    own KILL QUERY of its waiting statement."""
    blocker = Blocker(mariadb, "long update")
    database = MariadbDatabase(kind="mariadb", socket=mariadb.socket, volume="db")
    writer = MariadbWriter("shop", database)
    try:
        writer.check()
        writer.prepare()
        started = time.monotonic()
        with pytest.raises(WriterError, match=r"could not be taken within 0\.6s"):
            writer.hold(0.6)
        took = time.monotonic() - started
        assert took < 0.9, f"taking the lock took {took:.2f}s, more than its 0.6s"
        assert mariadb.insert_seconds() < 0.5
    finally:
        writer.close()
        blocker.end()


def test_abort_ends_a_lock_still_waited_for(mariadb: Mariadb) -> None:
    """``abort`` from another thread while the lock waits behind LOCK TABLES (and every
    writer waits behind the lock): the wait ends at once, not at lock_timeout."""
    blocker = Blocker(mariadb, "lock tables")
    database = MariadbDatabase(kind="mariadb", socket=mariadb.socket, volume="db", lock_timeout=20)
    writer = MariadbWriter("shop", database)
    failed: list[BaseException] = []

    def hold() -> None:
        try:
            writer.hold(30)
        except WriterError as exc:
            failed.append(exc)

    try:
        writer.check()
        writer.prepare()
        holding = threading.Thread(target=hold)
        holding.start()
        pending = PendingInsert(mariadb)
        assert not pending.finished(0.5), "writers wait behind the waiting lock"
        started = time.monotonic()
        writer.abort()
        assert time.monotonic() - started < 1.5, "abort blocked"
        assert pending.finished(1.0), "the waiting lock outlived abort()"
        holding.join(timeout=5)
        assert failed and "ended from outside" in str(failed[0]), failed
    finally:
        writer.close()
        blocker.end()


def test_a_lock_still_waited_for_ends_when_the_coordinator_goes(
    mariadb: Mariadb, trusted_dir: Path
) -> None:
    """While the lock waits for LOCK TABLES (writers wait behind it), the coordinator is
    killed: the guest's watchdog ends the wait with KILL CONNECTION at once, long before
    lock_timeout would."""
    guest = write_private(trusted_dir / "guest.toml", mariadb.guest(lock_timeout="20s"))
    blocker = Blocker(mariadb, "lock tables")
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(guest), "30"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout is not None and '"prepare"' in driver.stdout.readline()
        [guest_pid] = children(driver.pid)
        deadline = time.monotonic() + 10
        while "FLUSH TABLES WITH READ LOCK" not in str(mariadb.sql("SHOW PROCESSLIST")):
            assert time.monotonic() < deadline, "the lock was never waited for"
            time.sleep(0.02)
        pending = PendingInsert(mariadb)
        assert not pending.finished(0.5), "writers wait behind the waiting lock"
        driver.kill()
        assert pending.finished(2.0), "the waiting lock outlived its coordinator"
        wait_gone(guest_pid, 30)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait(timeout=30)
        blocker.end()
    assert "FLUSH TABLES" not in str(mariadb.sql("SHOW PROCESSLIST"))


# -- 3. every hold ends on every path -------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "later phase fails",
        "deadline",
        "coordinator killed",
        "guest killed",
        "guest stopped",
        "holder killed",
    ],
)
def test_every_hold_is_released(
    mariadb: Mariadb, trusted_dir: Path, drivers: list[Driver], path: str
) -> None:
    freeze_timeout = 4.0
    guest = write_private(trusted_dir / "guest.toml", mariadb.guest())
    baseline = mariadb.connection_ids()
    driver = Driver(guest, freeze_timeout)
    drivers.append(driver)
    held_from = time.monotonic()
    pending = PendingInsert(mariadb)
    assert not pending.finished(0.5), "an INSERT got through the hold"

    if path == "later phase fails":
        driver.tell("fail")
        assert "no-such-disk" in driver.reply("failed")["error"]
        assert pending.finished(3), "the hold outlived the failed cut"
        driver.reply("release")
    elif path == "deadline":
        os.kill(driver.proc.pid, signal.SIGSTOP)
        # the guest's watchdog ends the hold at its deadline (the server's wait_timeout
        # would only a second or more later)
        assert pending.finished(held_from + freeze_timeout + 0.7 - time.monotonic()), (
            "the hold outlived the guest's deadline"
        )
        assert time.monotonic() - held_from > freeze_timeout - 1
        os.kill(driver.proc.pid, signal.SIGCONT)
        driver.tell("go")
        thawed = driver.reply("thaw")
        assert thawed["self_thawed"] == "deadline"
        # ended by the watchdog, not released: no position is claimed for it
        assert "binlog_file" not in thawed["writers"]["shop"]["details"], thawed
        driver.reply("release")
    elif path == "coordinator killed":
        driver.proc.kill()
        assert pending.finished(2), "the hold outlived its coordinator"
    elif path == "guest killed":
        os.kill(driver.guest_pid, signal.SIGKILL)
        # the lock ends with the guest's socket; the frozen disk waits for the sentinel
        assert pending.finished(freeze_timeout + 2), "the hold outlived its guest"
    elif path == "guest stopped":
        # nothing of the guest runs: the server drops the idle locking session by its
        # wait_timeout, and the sentinel thaws the disk
        os.kill(driver.guest_pid, signal.SIGSTOP)
        try:
            assert pending.finished(held_from + freeze_timeout + 3 - time.monotonic()), (
                "the hold outlived a stopped guest"
            )
        finally:
            os.kill(driver.guest_pid, signal.SIGCONT)
        driver.tell("go")
        assert driver.reply("thaw")["self_thawed"] is not None
        driver.reply("release")
    else:
        mariadb.sql(f"KILL CONNECTION {driver.holder}")
        driver.tell("go")
        thawed = driver.reply("thaw")
        assert pending.finished(3)
        shop = thawed["writers"]["shop"]
        assert not shop["ok"], shop
        assert "the hold did not last to the end" in shop["error"], shop
        driver.reply("release")
    driver.finish()
    assert_released(mariadb, baseline)


@pytest.mark.restic
def test_a_lock_lost_during_the_cut_drops_the_level(
    mariadb: Mariadb, trusted_dir: Path, datastore: Datastore
) -> None:
    """The locking connection is killed while a slow copy volume keeps the cut frozen: the
    database's volume drops to file-system level and says why."""
    slow = trusted_dir / "slow"
    slow.mkdir()
    for index in range(8000):
        (slow / f"{index:05d}.txt").write_text("x" * 512)
    guest = mariadb.guest() + (
        f'\n[volumes.files]\npath = "{slow}"\nsnapshot = "copy"\nfreeze = false\n'
        f'staging = "{datastore.path / "staging"}"\n'
    )
    app = own_app(trusted_dir / "app", {"vm1": guest})
    baseline = mariadb.connection_ids()
    flushes = int(mariadb.sql("SHOW GLOBAL STATUS LIKE 'Com_flush'")[0][1])
    killed: list[int] = []

    def kill_the_lock() -> None:  # FLUSH TABLES in prepare, then the lock: kill cleancut's
        conn = mariadb.connect()
        deadline = time.monotonic() + 60
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            mine = {int(cur.fetchall()[0][0])}
            while time.monotonic() < deadline:
                cur.execute("SHOW GLOBAL STATUS LIKE 'Com_flush'")
                if int(cur.fetchall()[0][1]) >= flushes + 2:
                    time.sleep(0.1)  # the lock is taken in a millisecond; the copy takes long
                    cur.execute("SELECT id FROM information_schema.processlist")
                    for (conn_id,) in cur.fetchall():
                        if int(conn_id) not in baseline | mine:
                            with contextlib.suppress(pymysql.Error):
                                cur.execute(f"KILL CONNECTION {int(conn_id)}")
                                killed.append(int(conn_id))
                    break
                time.sleep(0.001)
        conn.close()

    killer = threading.Thread(target=kill_the_lock, daemon=True)
    killer.start()
    code, manifest, stderr = app.backup_json()
    killer.join(timeout=60)
    assert killed, "the killer found no connection to kill"
    assert code == 3, stderr
    assert manifest is not None
    print(f"write stall with the slow copy: {manifest['hosts'][0]['write_stall']:.2f}s")
    levels = {m["resource"]: m for m in manifest["members"]}
    assert levels["db"]["level"] == "filesystem", levels["db"]
    assert "the hold did not last to the end" in levels["db"]["reason"], levels["db"]
    assert_released(mariadb, baseline)


# -- 4. refused at hello --------------------------------------------------------------


@pytest.mark.restic
def test_hello_refuses_a_data_directory_outside_the_volumes(
    mariadb: Mariadb, trusted_dir: Path, datastore: Datastore
) -> None:
    elsewhere = datastore.add_disk("other", datastore.root / "other").mountpoint
    app = own_app(trusted_dir, {"vm1": mariadb.guest(volume_path=elsewhere)})
    code, manifest, stderr = app.backup_json()
    assert code != 0 and manifest is None
    datadir = mariadb.server.datadir
    assert f"databases.shop: its data directory {datadir} lies in no volume" in stderr, stderr
    assert "Declare a [volumes.NAME] whose path holds" in stderr


@pytest.mark.restic
def test_hello_refuses_a_password_file_others_can_read(mariadb: Mariadb, trusted_dir: Path) -> None:
    password = trusted_dir / "shop.pass"
    password.write_text("secret\n")
    password.chmod(0o644)
    extra = f'password_file = "{password}"\n'
    app = own_app(trusted_dir, {"vm1": mariadb.guest(extra=extra)})
    code, manifest, stderr = app.backup_json()
    assert code != 0 and manifest is None
    assert "databases.shop.password_file" in stderr and "chmod 600" in stderr, stderr
