"""Existing database hooks keep working: qemu's ``fsfreeze-hook.d/mysql-flush.sh`` against a
real MariaDB, unchanged but for its two settings lines (issue 7 §3).

On ``freeze`` that script leaves a background ``mysql`` client holding ``FLUSH TABLES WITH
READ LOCK`` and exits 0; on ``thaw`` it tells the client (through a FIFO) to unlock. The
tests show, with a concurrent INSERT, that the lock really holds through the cut and is
gone after it; that when the thaw never comes (the coordinator killed or stopped while
frozen) the guest's watchdog runs the thaw script and the lock is gone within
``freeze_timeout`` and a few seconds; and that a holder its thaw script cannot reach is
killed when the holds end. Each time no hook process is left afterwards.

The data directory lives on the frozen volume, as on a real VM; the INSERT is seen waiting
for the *lock* (``Waiting for backup lock``), not for the frozen disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cleancut.demo.disks import Datastore
from cleancut.guest.hooks.processes import KILL_GRACE, LEFTOVER_GRACE, live_members
from tests.integration.cutlib import children, make_app, wait_gone, write_private

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("mariadbd") is None, reason="needs MariaDB (mariadbd)"),
]

SAMPLE = Path(__file__).parent / "data" / "mysql-flush.sh.sample"
CLIENT = "/usr/bin/mariadb"

#: a coordinator that stops after the freeze (with its snapshot) until told to go on
DRIVER = """
import json, sys
from pathlib import Path
from cleancut.transport.local import LocalChannel
channel = LocalChannel("vm1", Path(sys.argv[1]))
hello = {"protocol": 1, "rp_id": "20260101T000000Z-hook", "freeze_timeout": float(sys.argv[2])}
channel.call("hello", hello, timeout=60)
print(json.dumps(channel.call("prepare", timeout=120)), flush=True)
print(json.dumps(channel.call("freeze", {"snapshot": True}, timeout=60)), flush=True)
sys.stdin.readline()
print(json.dumps(channel.call("thaw", timeout=60)), flush=True)
channel.call("release", timeout=60)
channel.call("bye", timeout=10)
channel.close()
"""


@dataclass
class Mariadb:
    """A throw-away MariaDB on a volume of its own, reached through its socket."""

    mount: Path
    socket: Path
    proc: subprocess.Popen[bytes]

    def client(self) -> list[str]:
        return [CLIENT, "--no-defaults", "-uroot", f"--socket={self.socket}", "-B", "-N"]

    def sql(self, statement: str, timeout: float = 30) -> str:
        done = subprocess.run(
            [*self.client(), "-e", statement],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{statement}: {done.stderr}"
        return done.stdout.strip()

    def insert(self) -> subprocess.Popen[str]:
        """Start one INSERT in another client; it waits while anything holds the tables."""
        statement = "INSERT INTO app.t (v) VALUES ('probe')"
        return subprocess.Popen(
            [*self.client(), "-e", statement],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def waiting_inserts(self) -> list[str]:
        """The state of every INSERT the server is running (while one waits for a lock)."""
        query = (
            "SELECT state FROM information_schema.processlist WHERE info LIKE 'INSERT INTO app.t%'"
        )
        return self.sql(query).splitlines()

    def rows(self) -> int:
        return int(self.sql("SELECT count(*) FROM app.t"))

    def unlocks(self) -> int:
        """How many UNLOCK TABLES the server ran: the holder's, when its thaw reached it."""
        return int(self.sql("SHOW GLOBAL STATUS LIKE 'Com_unlock_tables'").split()[1])

    def hook_processes(self) -> list[int]:
        """Processes other than the server that name its socket: hook clients left behind."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.proc.pid:
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(self.socket).encode() in cmdline:
                found.append(int(entry.name))
        return found


@pytest.fixture
def mariadb(datastore: Datastore, trusted_dir: Path) -> Iterator[Mariadb]:
    """MariaDB with its data directory on a datastore disk (the volume the cut freezes)."""
    mount = datastore.add_disk("db", datastore.root / "db", 400).mountpoint
    datadir, rundir = mount / "mysql", trusted_dir / "mysqld"
    for folder in (datadir, rundir):
        folder.mkdir(mode=0o750)
        shutil.chown(folder, "mysql", "mysql")
    subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={datadir}",
            "--user=mysql",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        ],
        check=True,
        capture_output=True,
    )
    socket = rundir / "mysqld.sock"
    proc = subprocess.Popen(
        [
            "mariadbd",
            "--no-defaults",
            f"--datadir={datadir}",
            f"--socket={socket}",
            "--skip-networking",
            "--user=mysql",
            f"--pid-file={rundir / 'mysqld.pid'}",
            f"--log-error={rundir / 'mysqld.log'}",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # all of it goes to --log-error, once it is open
    )
    server = Mariadb(mount, socket, proc)
    try:
        _wait_answering(server, rundir / "mysqld.log")
        server.sql(
            "CREATE DATABASE app; CREATE TABLE app.t "
            "(id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB; "
            "INSERT INTO app.t (v) VALUES ('first')"
        )
        yield server
    finally:
        # a test that failed while frozen must not leave the server unable to stop
        subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True, check=False)
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _wait_answering(server: Mariadb, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            [*server.client(), "-e", "SELECT 1"], capture_output=True, check=False
        )
        if done.returncode == 0:
            return
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"MariaDB did not start: {log.read_text(errors='replace')}")
        time.sleep(0.2)


@dataclass
class Hook:
    """qemu's sample installed in a qemu-ga hook folder, and the guest config importing it."""

    guest: Path
    fifo: Path


def install_hook(mariadb: Mariadb, trusted_dir: Path) -> Hook:
    """Copy the sample into ``fsfreeze-hook.d`` as ``mysql-flush.sh``, setting MYSQL_OPTS and
    FIFO the way its comments ask (the rest of the script is untouched)."""
    fifo = trusted_dir / "fifo" / "mysql-flush.fifo"
    fifo.parent.mkdir(mode=0o700)
    text = SAMPLE.read_text(encoding="utf-8")
    text, opts = re.subn(
        r"^MYSQL_OPTS=.*$",
        f'MYSQL_OPTS="--no-defaults -uroot --socket={mariadb.socket}"',
        text,
        flags=re.M,
    )
    text, fifos = re.subn(r"^FIFO=.*$", f"FIFO={fifo}", text, flags=re.M)
    assert opts == fifos == 1
    folder = trusted_dir / "fsfreeze-hook.d"
    folder.mkdir(mode=0o755)
    script = folder / "mysql-flush.sh"
    script.write_text(text, encoding="utf-8")
    script.chmod(0o755)
    guest = write_private(
        trusted_dir / "guest.toml",
        f'[volumes.db]\npath = "{mariadb.mount}"\nsnapshot = "image"\nfreeze = true\n\n'
        f'[hooks_import]\nqemu_ga = "{folder}"\n',
    )
    return Hook(guest, fifo)


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

    def reply(self, what: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the driver ended before its {what} reply"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def thaw(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.reply("thaw")

    def finish(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=30)
        wait_gone(self.guest_pid, 30)  # it releases everything on its way out


def hook_run(runs: list[dict[str, Any]], phase: str) -> dict[str, Any]:
    [run] = [r for r in runs if r["hook"] == "qemu_ga/mysql-flush.sh" and r["phase"] == phase]
    return run


def holder_group(pre: dict[str, Any]) -> int:
    """The process group the freeze script's record says it left running."""
    found = re.search(r"left running in its process group \(group (\d+): ", pre["stderr"])
    assert found, f"the freeze script's record names no leftover: {pre['stderr']!r}"
    return int(found.group(1))


def assert_inserts_blocked(mariadb: Mariadb) -> subprocess.Popen[str]:
    """An INSERT started now waits — for the hook's lock, not the frozen disk."""
    rows = mariadb.rows()
    probe = mariadb.insert()
    time.sleep(1.5)
    assert probe.poll() is None, f"an INSERT got through the hook's lock: {probe.stderr}"
    assert mariadb.waiting_inserts() == ["Waiting for backup lock"]
    assert mariadb.rows() == rows
    return probe


def assert_writable_within(mariadb: Mariadb, seconds: float) -> float:
    """INSERTs succeed within ``seconds``; how long it took until one did."""
    started = time.monotonic()
    while True:
        probe = mariadb.insert()
        try:
            if probe.wait(timeout=1.0) == 0:
                return time.monotonic() - started
        except subprocess.TimeoutExpired:
            probe.kill()
            probe.wait()
        assert time.monotonic() - started < seconds, "the database stayed locked"


def assert_nothing_left(mariadb: Mariadb, group: int) -> None:
    assert live_members(group) == [], "a process of the freeze script is still running"
    assert mariadb.hook_processes() == [], "a hook's mysql client is still running"


def test_the_qemu_mysql_hook_holds_its_lock_through_the_cut(
    mariadb: Mariadb, trusted_dir: Path
) -> None:
    hook = install_hook(mariadb, trusted_dir)
    unlocks = mariadb.unlocks()
    driver = Driver(hook.guest, freeze_timeout=30)
    try:
        pre = hook_run(driver.prepared["hooks"], "pre")
        assert pre["ok"] and pre["returncode"] == 0, pre
        group = holder_group(pre)
        assert "/usr/bin/mariadb" in pre["stderr"], "the record names the held client"
        assert driver.frozen["mounts"] == [str(mariadb.mount)]
        probe = assert_inserts_blocked(mariadb)
        thawed = driver.thaw()
        post = hook_run(thawed["hooks"], "post")
        assert post["ok"] and "ended:" not in post["stderr"], post
        assert probe.wait(timeout=10) == 0, probe.stderr
        assert mariadb.unlocks() == unlocks + 1, "the holder did not unlock by itself"
        assert driver.proc.wait(timeout=30) == 0
        assert_nothing_left(mariadb, group)
        assert not hook.fifo.exists(), "the holder removes its FIFO after the unlock"
    finally:
        driver.finish()


@pytest.mark.parametrize("coordinator", ["killed", "stopped"])
def test_a_thaw_that_never_comes_is_run_by_the_watchdog(
    mariadb: Mariadb, trusted_dir: Path, coordinator: str
) -> None:
    """SIGKILL (stdin closes: the holds end at once) or SIGSTOP (the deadline ends them) of
    the coordinator while frozen: the guest runs the thaw script itself, the holder unlocks,
    and an INSERT succeeds within freeze_timeout and a few seconds."""
    hook = install_hook(mariadb, trusted_dir)
    freeze_timeout = 5.0
    unlocks = mariadb.unlocks()
    driver = Driver(hook.guest, freeze_timeout)
    try:
        group = holder_group(hook_run(driver.prepared["hooks"], "pre"))
        os.kill(driver.proc.pid, signal.SIGKILL if coordinator == "killed" else signal.SIGSTOP)
        probe = assert_inserts_blocked(mariadb) if coordinator == "stopped" else None
        took = assert_writable_within(mariadb, freeze_timeout + 3)
        print(f"writable {took:.2f}s after the coordinator was {coordinator}")
        if probe is not None:
            assert probe.wait(timeout=10) == 0, probe.stderr
        wait_until(lambda: live_members(group) == [], 5, "the holder outlived the holds")
        assert mariadb.unlocks() == unlocks + 1, "the thaw script did not reach the holder"
        if coordinator == "stopped":
            os.kill(driver.proc.pid, signal.SIGCONT)
            thawed = driver.thaw()
            assert thawed["self_thawed"] == "deadline"
            post = hook_run(thawed["hooks"], "post")
            assert post["ok"] and "ended:" not in post["stderr"], {
                k: post.get(k) for k in ("ok", "exit_code", "timed_out", "stdout", "stderr")
            }
            assert driver.proc.wait(timeout=30) == 0
        else:
            wait_gone(driver.guest_pid, 30)
        assert_nothing_left(mariadb, group)
    finally:
        driver.finish()


@pytest.mark.parametrize("end", ["thaw", "deadline"])
def test_a_holder_its_thaw_cannot_reach_is_killed_when_the_holds_end(
    mariadb: Mariadb, trusted_dir: Path, end: str
) -> None:
    """The FIFO is gone, so the thaw script fails and the client would hold the lock
    forever: it is killed at the end of the holds — by the thaw, or by the deadline."""
    hook = install_hook(mariadb, trusted_dir)
    freeze_timeout = 3.0
    driver = Driver(hook.guest, freeze_timeout)
    try:
        group = holder_group(hook_run(driver.prepared["hooks"], "pre"))
        hook.fifo.unlink()
        if end == "thaw":
            started = time.monotonic()
            thawed = driver.thaw()
            assert time.monotonic() - started < LEFTOVER_GRACE + 2 * KILL_GRACE + 2
        else:
            os.kill(driver.proc.pid, signal.SIGSTOP)
            assert_writable_within(mariadb, freeze_timeout + LEFTOVER_GRACE + KILL_GRACE + 3)
            os.kill(driver.proc.pid, signal.SIGCONT)
            thawed = driver.thaw()
            assert thawed["self_thawed"] == "deadline"
        post = hook_run(thawed["hooks"], "post")
        assert not post["ok"] and post["returncode"] == 1, post
        ended = re.search(r"ended: (.*)\]", post["stderr"])
        assert ended and "(/usr/bin/mariadb) by SIG" in ended.group(1), post["stderr"]
        assert_writable_within(mariadb, 2)
        assert driver.proc.wait(timeout=30) == 0
        assert_nothing_left(mariadb, group)
    finally:
        driver.finish()


@pytest.mark.restic
def test_backups_with_the_qemu_mysql_hook(mariadb: Mariadb, trusted_dir: Path) -> None:
    """``cleancut backup`` twice with the hook: application level, both runs recorded, the
    holder unlocked by its thaw call and nothing left running. The second backup shows the
    holder cleaned up after itself: a FIFO left behind would fail the next freeze (mkfifo)."""
    hook = install_hook(mariadb, trusted_dir)
    app = make_app(trusted_dir / "app", {"vm1": hook.guest.read_text(encoding="utf-8")})
    for backup in (1, 2):
        unlocks = mariadb.unlocks()
        code, manifest, stderr = app.backup_json()
        assert code == 0 and manifest is not None, f"backup {backup}: {stderr}"
        assert manifest["level"] == "application"
        pre, post = hook_run(manifest["hooks"], "pre"), hook_run(manifest["hooks"], "post")
        assert pre["ok"], f"backup {backup}: the freeze script failed: {pre}"
        assert post["ok"] and "ended:" not in post["stderr"], post
        assert mariadb.unlocks() == unlocks + 1, "the holder did not unlock: it died"
        assert_writable_within(mariadb, 2)
        assert_nothing_left(mariadb, holder_group(pre))
        assert not hook.fifo.exists()


def wait_until(condition: Callable[[], bool], seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)
