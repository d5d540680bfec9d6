"""The fault matrix: every way a backup is stopped, at every point of the cut.

The real CLI (`cleancut backup`) cuts two local hosts on real loop-mounted ext4 disks, each
on its own XFS datastore: vm1 holds a SQLite database and a quiesce hook, vm2 a hook of
its own. For each signal — SIGINT to the coordinator's process group (a terminal's
Ctrl-C), SIGTERM to every process of the tree at once (``systemctl stop``), SIGKILL of the
coordinator, SIGKILL of vm1's guest, SIGSTOP of the coordinator (continued later) — and
each point of the cut, the test waits until the cut really is at that point, delivers the
signal and checks:

* nothing stays frozen and no database lock is held longer than ``freeze_timeout`` + 1 s;
* every post-script whose pre-script ran has run, or the coordinator reported it as not
  run, with why;
* a recovery point is committed only when the backup says so (exit 0, 3 or 9), never by an
  interrupted coordinator;
* no process of the cut outlives it, and the next backup succeeds.

The points that are a few milliseconds long in a healthy cut are held open with faults a
production host sees: a FIFREEZE or FITHAW that hangs (the test freezes the datastore
beneath a disk, so the disk's own freeze or thaw waits for it), a snapshot whose target
hangs, a slow pre- or post-script, a long upload. A hook of vm2 (a root-owned script of
the test's) sets up the hang in its pre-script, and the test lifts it shortly after the
signal. SIGKILL of every process at once (``systemctl kill -s KILL``) is the one case no
user-space process can cover; README's Safety section says what the operator sees then.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cleancut.demo.disks import Datastore
from tests.integration.conftest import TEST_BASE, finishes, start_probe
from tests.integration.cutlib import CLEANCUT, _env, make_db, write_private, write_script

pytestmark = [pytest.mark.root, pytest.mark.restic, pytest.mark.matrix]

FREEZE_TIMEOUT = 4.0
PRE_SLEEP = 3.0  # vm1's pre-script at the "prepare" point
POST_SLEEP = 3.0  # vm1's post-script at the "post-scripts" point
SYS_IOCTL = 16  # x86_64

SIGNALS = ("SIGINT to the group", "SIGTERM to all", "SIGKILL coordinator", "SIGKILL guest",
           "SIGSTOP coordinator")  # fmt: skip
POINTS = ("prepare", "in FIFREEZE", "frozen at the barrier", "snapshot", "thaw",
          "post-scripts", "upload")  # fmt: skip

LOCK_PROBE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=0.05, isolation_level=None)
try:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")
    print("free")
except sqlite3.OperationalError as exc:
    print("locked" if "locked" in str(exc) else f"error {exc}")
"""


@dataclass
class World:
    """The two hosts, their datastores and files, shared by every case of the matrix."""

    root: Path
    d1: Datastore  # holds vm1's disk image
    d2: Datastore  # holds vm2's disk image
    d3: Datastore  # vm1's copy staging
    vm1: Path
    vm2: Path
    db: Path
    app: Path
    catalog: Path

    def file(self, name: str) -> Path:
        return self.root / name

    def reset(self, mode: str) -> None:
        for name in ("trace-vm1", "trace-vm2", "marker"):
            self.file(name).unlink(missing_ok=True)
        self.file("mode").write_text(mode + "\n")
        if mode == "upload":  # new data, so the upload takes a while
            (self.vm1 / "blob").write_bytes(os.urandom(48 << 20))

    def trace(self, host: str) -> list[str]:
        path = self.file(f"trace-{host}")
        return path.read_text().split() if path.exists() else []

    def thaw_all(self) -> None:
        for store in (self.d1, self.d2, self.d3):
            fsfreeze("-u", store.path)


def fsfreeze(flag: str, mount: Path) -> None:
    subprocess.run(["fsfreeze", flag, str(mount)], capture_output=True, check=False, timeout=30)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    TEST_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=TEST_BASE))
    root.chmod(0o755)
    stores: list[Datastore] = []
    try:
        d1, d2, d3 = (Datastore(root / f"d{i}", remove_images=True) for i in (1, 2, 3))
        for store in (d1, d2, d3):
            stores.append(store.open())
        vm1 = d1.add_disk("vm1", root / "vm1", 160).mountpoint
        vm2 = d2.add_disk("vm2", root / "vm2").mountpoint
        db = vm1 / "app.db"
        make_db(db, 20, wal=False)  # a lock probe needs no write: DELETE journal mode
        (vm1 / "blob").write_bytes(os.urandom(16 << 20))
        (vm2 / "note.txt").write_text("vm2\n")
        (root / "staging2").mkdir()
        app = _write_configs(root, d1, d2, d3, vm1, vm2, db)
        yield World(root, d1, d2, d3, vm1, vm2, db, app, root / "catalog.sqlite")
    finally:
        for store in stores:
            fsfreeze("-u", store.path)
        for store in reversed(stores):
            store.close()
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


def _write_configs(
    root: Path, d1: Datastore, d2: Datastore, d3: Datastore, vm1: Path, vm2: Path, db: Path
) -> Path:
    mode, marker = root / "mode", root / "marker"
    trace1, trace2 = root / "trace-vm1", root / "trace-vm2"
    pre1 = write_script(
        root / "hooks" / "vm1-pre.sh",
        f'echo pre-start >> {trace1}\n[ "$(cat {mode})" = prepare ] && sleep {PRE_SLEEP}\n'
        f"echo pre-end >> {trace1}\nexit 0\n",
    )
    post1 = write_script(
        root / "hooks" / "vm1-post.sh",
        f'echo post-start >> {trace1}\n[ "$(cat {mode})" = post-scripts ] && sleep {POST_SLEEP}\n'
        f"echo post-end >> {trace1}\nexit 0\n",
    )
    pre2 = write_script(
        root / "hooks" / "vm2-pre.sh",
        f"echo pre-start >> {trace2}\n"
        f'case "$(cat {mode})" in\n'
        f'  "in FIFREEZE") sleep 1; fsfreeze -f {d1.path} ;;\n'
        f'  "frozen at the barrier"|thaw) sleep 1; fsfreeze -f {d2.path} ;;\n'
        f"  snapshot) sleep 1; fsfreeze -f {d3.path} ;;\n"
        "esac\n"
        f"cat {mode} > {marker}\necho pre-end >> {trace2}\nexit 0\n",
    )
    post2 = write_script(root / "hooks" / "vm2-post.sh", f"echo post-start >> {trace2}\n")
    guest1 = write_private(
        root / "guest-vm1.toml",
        f'[volumes.data]\npath = "{vm1}"\nsnapshot = "copy"\nfreeze = true\n'
        f'staging = "{d3.path / "staging"}"\n'
        f'[databases.app]\nkind = "sqlite"\npath = "{db}"\nvolume = "data"\n'
        f'[[hooks]]\nname = "quiesce"\npre = ["{pre1}"]\npost = ["{post1}"]\ntimeout = "30s"\n',
    )
    guest2 = write_private(
        root / "guest-vm2.toml",
        f'staging = "{root / "staging2"}"\n'
        f'[volumes.files]\npath = "{vm2}"\nsnapshot = "copy"\nfreeze = true\n'
        f'[[hooks]]\nname = "sync"\npre = ["{pre2}"]\npost = ["{post2}"]\ntimeout = "30s"\n',
    )
    write_private(root / "repository.pass", "correct horse battery staple\n")
    return write_private(
        root / "app.toml",
        f'name = "matrix"\nfreeze_timeout = "{FREEZE_TIMEOUT:g}s"\non_failure = "abort"\n'
        f'catalog = "{root / "catalog.sqlite"}"\n'
        f'[repository]\nurl = "{root / "repository"}"\npassword_file = "repository.pass"\n'
        f'[hosts.vm1]\nguest_config = "{guest1}"\n[hosts.vm2]\nguest_config = "{guest2}"\n',
    )


# -- looking at the processes of a cut ------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, by the parent links in /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        todo += children
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def guest_of(coordinator: int, host: str) -> int | None:
    for pid in descendants(coordinator):
        if f"guest-{host}.toml" in cmdline(pid) and " guest " in cmdline(pid):
            return pid
    return None


def in_ioctl(pid: int | None) -> bool:
    if pid is None:
        return False
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, IndexError):
            if (task / "syscall").read_text().split()[0] == str(SYS_IOCTL):
                return True
    return False


def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"the cut never reached {what} within {within}s"
        time.sleep(0.02)


def lock_is_free(db: Path) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", LOCK_PROBE, str(db)], capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip() == "free"


def blocked(directory: Path, probes: list[subprocess.Popen[bytes]]) -> bool:
    probe = start_probe(directory)
    probes.append(probe)
    return not finishes(probe, 0.3)


# -- one case ------------------------------------------------------------------------------------


@dataclass
class Case:
    world: World
    proc: subprocess.Popen[str]
    probes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)

    def guest(self, host: str) -> int | None:
        pid = guest_of(self.proc.pid, host)
        if pid is not None:
            self.seen.add(pid)
        return pid

    def watch(self) -> None:
        self.seen.update(descendants(self.proc.pid))


def reach(case: Case, point: str) -> Callable[[], None] | None:
    """Wait until the cut is at ``point``; the function that lifts its hang, if it has one."""
    w = case.world
    if point == "prepare":
        wait_until(lambda: "pre-start" in w.trace("vm1"), 30, point)
        return None
    if point == "post-scripts":
        wait_until(lambda: "post-start" in w.trace("vm1"), 60, point)
        return None
    if point == "upload":
        wait_until(lambda: _restic_below(case.guest("vm1")), 60, point)
        return None
    wait_until(lambda: w.file("marker").exists(), 30, f"{point} (the hang set up)")
    if point == "in FIFREEZE":
        wait_until(lambda: in_ioctl(case.guest("vm1")), 30, point)
        return lambda: fsfreeze("-u", w.d1.path)
    if point == "snapshot":
        wait_until(lambda: blocked(w.vm1, case.probes), 30, point)
        return lambda: fsfreeze("-u", w.d3.path)
    wait_until(lambda: in_ioctl(case.guest("vm2")), 30, f"{point} (vm2 in FIFREEZE)")
    wait_until(lambda: blocked(w.vm1, case.probes), 30, f"{point} (vm1 frozen)")
    if point == "frozen at the barrier":
        return lambda: fsfreeze("-u", w.d2.path)
    fsfreeze("-f", w.d1.path)  # vm1's thaw will now hang, once vm2 lets the cut go on
    fsfreeze("-u", w.d2.path)
    wait_until(lambda: in_ioctl(case.guest("vm1")), 30, point)
    return lambda: fsfreeze("-u", w.d1.path)


def _restic_below(pid: int | None) -> bool:
    return pid is not None and any(
        Path(f"/proc/{child}/comm").read_text().strip() == "restic"
        for child in descendants(pid)
        if Path(f"/proc/{child}").exists()
    )


def deliver(case: Case, how: str) -> None:
    proc = case.proc
    case.watch()
    if how == "SIGINT to the group":
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "SIGTERM to all":
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    elif how == "SIGKILL coordinator":
        proc.kill()
    elif how == "SIGKILL guest":
        guest = case.guest("vm1")
        assert guest is not None
        os.kill(guest, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGSTOP)


def recovery_points(world: World) -> list[str]:
    done = subprocess.run(
        [*CLEANCUT, "points", str(world.app), "--json"],
        capture_output=True, text=True, env=_env(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [point["rp"] for point in json.loads(done.stdout)]


def backup(world: World) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLEANCUT, "backup", str(world.app), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,  # its own process group, as a terminal gives a command
    )


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("how", SIGNALS)
def test_fault_matrix(world: World, how: str, point: str) -> None:
    before = recovery_points(world)
    world.reset(point)
    case = Case(world, backup(world))
    try:
        lift = reach(case, point)
        signalled = time.monotonic()
        deliver(case, how)
        lifted = signalled
        if lift is not None:
            time.sleep(0.5)  # the signal acts while the ioctl still hangs
            lift()
            lifted = time.monotonic()
        hold_from = signalled + (PRE_SLEEP if point == "prepare" else 0)
        bound = max(hold_from, lifted) + FREEZE_TIMEOUT + 1.0
        # probes start now, and must be through by the bound
        thawed, unlocked = _assert_released_by(case, bound, max(signalled, lifted))
        if how == "SIGSTOP coordinator":  # the holds ended without it; now let it go on
            time.sleep(max(0.0, hold_from + FREEZE_TIMEOUT + 1.5 - time.monotonic()))
            os.kill(case.proc.pid, signal.SIGCONT)
        _out, err = case.proc.communicate(timeout=180)
        code = case.proc.returncode
        if how in PROMPT:  # Ctrl-C and systemctl stop end the backup promptly, after release
            assert code == PROMPT[how], f"{how}: exit {code}: {err}"
            took = time.monotonic() - signalled
            assert took < PROMPT_WITHIN, f"{how}: the backup took {took:.1f}s to end"
            assert "interrupted by" in err and "released" in err, err
        _assert_posts_ran_or_reported(world, how, err)
        _assert_no_process_outlives(case)
        after = recovery_points(world)
        committed = code in (0, 3, 9)
        if how != "SIGSTOP coordinator":
            assert not committed, f"an interrupted backup claims success ({code}): {err}"
        assert len(after) == len(before) + (1 if committed else 0), (code, err)
        rp = "RP" if committed else "no RP"
        RESULTS[(how, point)] = f"{thawed:.1f} s / {unlocked:.1f} s, exit {code}, {rp}"
    finally:
        world.thaw_all()
        _stop_everything(case)
    world.reset("normal")
    done = backup(world)
    _out, err = done.communicate(timeout=180)
    assert done.returncode == 0, f"the next backup failed ({done.returncode}): {err}"


RESULTS: dict[tuple[str, str], str] = {}
#: the coordinator's exit status after Ctrl-C / SIGTERM, and how soon it must come
PROMPT = {"SIGINT to the group": 130, "SIGTERM to all": 143}
PROMPT_WITHIN = POST_SLEEP + 10.0


def _assert_released_by(case: Case, bound: float, since: float) -> tuple[float, float]:
    """Both disks writable and the database lock free by ``bound`` (monotonic); how long
    after ``since`` each was so (seconds)."""
    w = case.world
    probes = [start_probe(disk) for disk in (w.vm1, w.vm2)]
    case.probes.extend(probes)
    for disk, probe in zip((w.vm1, w.vm2), probes, strict=True):
        left = bound - time.monotonic()
        assert finishes(probe, max(0.1, left)), f"{disk} still frozen past freeze_timeout + 1 s"
    thawed = time.monotonic() - since
    while not lock_is_free(w.db):
        assert time.monotonic() < bound, "the database stayed locked past freeze_timeout + 1 s"
        time.sleep(0.05)
    return thawed, time.monotonic() - since


def _assert_posts_ran_or_reported(world: World, how: str, stderr: str) -> None:
    for host, hook in (("vm1", "quiesce"), ("vm2", "sync")):
        trace = world.trace(host)
        if "pre-start" not in trace:
            continue
        deadline = time.monotonic() + 40  # a guest that outlived its coordinator still runs it
        while "post-start" not in world.trace(host) and time.monotonic() < deadline:
            if how != "SIGKILL coordinator" and f"post-script {hook}" in stderr:
                break  # reported as not run, with why
            time.sleep(0.1)
        ran = "post-start" in world.trace(host)
        reported = f"post-script {hook}" in stderr and (
            "not run" in stderr or "no result" in stderr
        )
        assert ran or reported, f"{host}: pre-script ran, post-script neither ran nor reported"


def _assert_no_process_outlives(case: Case) -> None:
    case.seen.update(descendants(case.proc.pid))
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in case.seen):
        left = [f"{pid}: {cmdline(pid)[:120]}" for pid in case.seen if alive(pid)]
        assert time.monotonic() < deadline, f"processes outlived the cut: {left}"
        time.sleep(0.1)


def _stop_everything(case: Case) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(case.proc.pid, signal.SIGCONT)
    for pid in [*case.seen, *descendants(case.proc.pid)]:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if case.proc.poll() is None:
        case.proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        case.proc.communicate(timeout=30)
    for probe in case.probes:
        if not finishes(probe, 10):
            probe.kill()
            probe.wait(timeout=10)


def teardown_module() -> None:
    """The matrix as a table, for the issue note: per signal and point, how long after the
    signal (or after the test lifted its hang) both disks were writable and the database
    lock free, the backup's exit status, and whether a recovery point was committed."""
    if RESULTS:
        lines = ["| signal | " + " | ".join(POINTS) + " |", "|---" * (len(POINTS) + 1) + "|"]
        for how in SIGNALS:
            cells = [RESULTS.get((how, point), "-") for point in POINTS]
            lines.append(f"| {how} | " + " | ".join(cells) + " |")
        report = TEST_BASE / "fault-matrix.md"
        report.write_text("\n".join(lines) + "\n")
        print("\n".join(lines), file=sys.stderr)
