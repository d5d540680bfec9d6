"""One cut across several hosts, over ``local`` and over ``ssh`` (the same scenarios both ways).

Real parts only: loop-mounted ext4/XFS disks on an XFS datastore, real FIFREEZE, SQLite,
restic, and over ssh real sshd in network namespaces with a forced command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cleancut.demo.disks import Datastore
from tests.integration.clusterlib import (
    TRANSPORTS,
    Cluster,
    disk_entry,
    external_volume,
    fsck_clean,
    guest_pids,
    restic_pids,
)
from tests.integration.conftest import TEST_BASE, finishes, start_probe
from tests.integration.cutlib import (
    CLEANCUT,
    _env,
    hook,
    image_volume,
    make_db,
    sqlite_db,
    write_script,
)
from tests.integration.testbed_fixtures import TestbedFactory

pytestmark = [pytest.mark.root, pytest.mark.restic]

MakeCluster = Callable[[list[str]], Cluster]


@pytest.fixture(params=TRANSPORTS)
def cluster(
    request: pytest.FixtureRequest,
    datastore: Datastore,
    trusted_dir: Path,
    testbed: TestbedFactory,
) -> Iterator[MakeCluster]:
    def make(hosts: list[str]) -> Cluster:
        bed = testbed(hosts) if request.param == "ssh" else None
        return Cluster(request.param, trusted_dir, datastore, bed)

    yield make


@pytest.fixture
def hang_store(trusted_dir: Path) -> Iterator[Datastore]:
    """A second datastore: frozen by a pre-script, it makes the FIFREEZE of a disk on it
    hang, which holds the cut at the freeze barrier with the other hosts frozen."""
    store = Datastore(Path(tempfile.mkdtemp(dir=TEST_BASE)), remove_images=True)
    try:
        store.open()
        yield store
    finally:
        subprocess.run(["fsfreeze", "-u", str(store.path)], capture_output=True, check=False)
        store.close()
        subprocess.run(["rm", "-rf", "--one-file-system", str(store.root)], check=False)


def hanging_vm2(c: Cluster, store: Datastore, trusted: Path) -> tuple[Path, str]:
    """vm2's disk on ``store``, and a pre-script that freezes ``store`` (so vm2's own
    freeze then hangs until the test thaws ``store``)."""
    disk = store.add_disk("vm2-data", store.root / "vm2" / "data")
    pre = write_script(trusted / "hooks" / "hang.sh", f"fsfreeze -f {store.path}\n")
    post = write_script(trusted / "hooks" / "post2.sh", f"echo post >> {trusted}/trace\n")
    # copied to staging on the main datastore: the frozen one must not be written to
    volume = (
        f'[volumes.data]\npath = "{disk.mountpoint}"\nsnapshot = "copy"\nfreeze = true\n'
        f'staging = "{c.datastore.path / "staging-vm2"}"\n'
    )
    return disk.mountpoint, volume + hook("hang", pre, post)


def lift(store: Datastore) -> None:
    subprocess.run(["fsfreeze", "-u", str(store.path)], capture_output=True, check=False)


def start_backup(app_config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLEANCUT, "backup", "--json", str(app_config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def is_frozen(mount: Path) -> bool:
    """Whether a write to ``mount`` blocks (the probe is left to finish after the thaw)."""
    probe = start_probe(mount)
    if finishes(probe, 0.3):
        return False
    frozen_probes.append(probe)
    return True


frozen_probes: list[subprocess.Popen[bytes]] = []


def three_hosts(c: Cluster) -> dict[str, str]:
    """vm1: an ext4 image volume with a SQLite database; vm2: an XFS volume whose disk the
    datastore host ds clones (the hypervisor's view)."""
    d1 = c.disk("vm1", "data")
    d2 = c.disk("vm2", "data", "xfs", 300)
    make_db(d1.mountpoint / "orders.db", 200)
    (d2.mountpoint / "receipt.txt").write_text("receipt 1\n")
    return {
        "vm1": image_volume("data", d1.mountpoint)
        + sqlite_db("orders", d1.mountpoint / "orders.db", "data"),
        "vm2": external_volume("data", d2.mountpoint),
        "ds": disk_entry("vm2-data", d2.image, "vm2/data"),
    }


def test_one_cut_across_hosts_with_a_disk_cloned_by_the_datastore(
    cluster: MakeCluster, trusted_dir: Path
) -> None:
    c = cluster(["vm1", "vm2", "ds"])
    app = c.app(three_hosts(c))

    code, manifest, stderr = app.backup_json()

    assert code == 3, stderr  # vm2 has no hook or writer: file-system level, committed
    assert manifest is not None
    assert manifest["group_consistent"] is True, manifest["notes"]
    hosts = {h["host"]: h for h in manifest["hosts"]}
    assert set(hosts) == {"vm1", "vm2", "ds"}
    members = {(m["host"], m["resource"]): m for m in manifest["members"]}
    assert set(members) == {("vm1", "data"), ("vm2", "data")}
    assert members[("vm1", "data")]["level"] == "application"
    external = members[("vm2", "data")]
    assert external["provider"] == "external" and external["frozen"] is True
    assert external["level"] == "filesystem" and external["repository_snapshot"]
    # the clone was made on ds while vm2 was frozen: inside vm2's hold, on one clock
    vm2 = hosts["vm2"]
    assert vm2["frozen_at"] <= external["snapshot_at"] <= vm2["thaw_started_at"]
    start, end = manifest["quiet_window"]
    for timing in (hosts["vm1"], vm2):
        assert timing["frozen_at"] <= start and end <= timing["thaw_started_at"]
        assert timing["write_stall"] is not None and timing["write_stall"] < 5

    restored = trusted_dir / "restored"
    done = app.run("restore", "latest", "--to", str(restored), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    image = restored / "vm2" / "data.img"
    assert image.is_file()
    check = fsck_clean(image, "xfs")
    assert check.returncode == 0, check.stdout + check.stderr
    assert all(m["fsck_ok"] for m in json.loads(done.stdout)["members"])


def test_an_unpaired_external_volume_is_refused_before_anything_is_held(
    cluster: MakeCluster, trusted_dir: Path
) -> None:
    c = cluster(["vm1", "ds"])
    d1 = c.disk("vm1", "data")
    pre = write_script(trusted_dir / "hooks" / "pre.sh", f"echo pre >> {trusted_dir}/trace\n")
    other = d1.image.with_name("elsewhere.img")
    other.write_bytes(b"")
    app = c.app(
        {
            "vm1": external_volume("data", d1.mountpoint) + hook("q", pre, None),
            "ds": disk_entry("stray", other, "vm1/nothing"),
        }
    )
    done = app.run("backup")
    assert done.returncode == 2, done.stderr
    assert "disks.stray" in done.stderr and "no volume 'nothing'" in done.stderr
    assert not (trusted_dir / "trace").exists()  # no pre-script ran, nothing was held

    app = c.app({"vm1": external_volume("data", d1.mountpoint), "ds": ""})
    done = app.run("backup")
    assert done.returncode == 2
    assert 'volume data has snapshot = "external", but no host' in done.stderr


@pytest.mark.parametrize("on_failure", ["abort", "degrade"])
def test_a_failed_pre_script_on_one_host(
    cluster: MakeCluster, trusted_dir: Path, on_failure: str
) -> None:
    c = cluster(["vm1", "vm2"])
    d1, d2 = c.disk("vm1", "data"), c.disk("vm2", "data")
    fail = write_script(trusted_dir / "hooks" / "fail.sh", "exit 3\n")
    post = write_script(trusted_dir / "hooks" / "post.sh", f"echo post >> {trusted_dir}/trace\n")
    ok = write_script(trusted_dir / "hooks" / "ok.sh", "exit 0\n")
    app = c.app(
        {
            "vm1": image_volume("data", d1.mountpoint) + hook("q1", ok, post),
            "vm2": image_volume("data", d2.mountpoint)
            + hook("q2", fail, post, continue_on_failure=True),
        },
        on_failure=on_failure,
    )
    code, manifest, stderr = app.backup_json()
    assert (trusted_dir / "trace").read_text().split() == ["post", "post"]  # both resumed
    points = json.loads(app.run("points", "--json").stdout or "[]")
    if on_failure == "abort":
        assert code == 4, stderr
        assert "pre-script q2 failed" in stderr
        assert points == []
    else:
        assert code == 3, stderr
        assert manifest is not None
        levels = {(m["host"], m["resource"]): m["level"] for m in manifest["members"]}
        assert levels == {("vm1", "data"): "application", ("vm2", "data"): "filesystem"}
        assert manifest["level"] == "filesystem" and len(points) == 1
    for disk in (d1, d2):
        assert not is_frozen(disk.mountpoint)


def test_two_backups_of_one_application_at_once(cluster: MakeCluster, trusted_dir: Path) -> None:
    c = cluster(["vm1"])
    d1 = c.disk("vm1", "data")
    slow = write_script(
        trusted_dir / "hooks" / "slow.sh", f"echo pre >> {trusted_dir}/trace\nsleep 2\n"
    )
    app = c.app({"vm1": image_volume("data", d1.mountpoint) + hook("q", slow, None)})
    first = start_backup(app.config)
    try:
        wait_for(lambda: (trusted_dir / "trace").exists(), 30, "the first backup's pre-script")
        second = app.run("backup")
        assert second.returncode == 11, second.stderr
        assert "another cleancut run is in progress (pid" in second.stderr
        assert ", backup, since " in second.stderr
    finally:
        _out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert (trusted_dir / "trace").read_text().split() == ["pre"]


def test_restic_killed_during_upload_leaves_no_recovery_point(
    cluster: MakeCluster, trusted_dir: Path
) -> None:
    c = cluster(["vm1", "vm2"])
    d1, d2 = c.disk("vm1", "data", size_mib=200), c.disk("vm2", "data")
    (d1.mountpoint / "big.bin").write_bytes(os.urandom(120 * 1024 * 1024))
    app = c.app(
        {"vm1": image_volume("data", d1.mountpoint), "vm2": image_volume("data", d2.mountpoint)}
    )
    app.run("points")  # nothing yet; makes sure the repository exists before the race below
    proc = start_backup(app.config)
    try:
        wait_for(lambda: bool(restic_pids(app.repository)), 60, "restic's upload")
        for pid in restic_pids(app.repository):
            os.kill(pid, signal.SIGKILL)
    finally:
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode not in (0, 3, 9), err
    points = json.loads(app.run("points", "--json").stdout or "[]")
    assert points == []
    rebuilt = app.run("catalog rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(app.run("points", "--json").stdout or "[]") == []

    code, manifest, stderr = app.backup_json()
    assert code == 3, stderr
    assert manifest is not None
    assert len(json.loads(app.run("points", "--json").stdout)) == 1


def test_a_guest_killed_while_frozen_is_thawed_and_the_others_too(
    cluster: MakeCluster, trusted_dir: Path, hang_store: Datastore
) -> None:
    """vm1 is frozen at the barrier (vm2's FIFREEZE hangs) when vm1's guest agent is
    SIGKILLed: its sentinel (another process) thaws vm1, and the coordinator releases vm2."""
    c = cluster(["vm1", "vm2"])
    d1 = c.disk("vm1", "data")
    mount2, guest2 = hanging_vm2(c, hang_store, trusted_dir)
    app = c.app({"vm1": image_volume("data", d1.mountpoint), "vm2": guest2}, freeze_timeout="8s")
    proc = start_backup(app.config)
    try:
        wait_for(lambda: is_frozen(d1.mountpoint), 30, "vm1 frozen at the barrier")
        killed_at = time.monotonic()
        for pid in guest_pids(trusted_dir / "guest-vm1.toml"):
            os.kill(pid, signal.SIGKILL)
        assert finishes(frozen_probes[-1], 2.0), "vm1 still frozen after its guest died"
        assert time.monotonic() - killed_at < 2.5
    finally:
        lift(hang_store)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode in (5, 6), err
    assert "vm1" in err
    assert not is_frozen(mount2)
    assert (trusted_dir / "trace").read_text().split() == ["post"]  # vm2 resumed
    wait_for(lambda: not guest_pids(trusted_dir / "guest-vm2.toml"), 15, "vm2's guest to end")
    (trusted_dir / "hooks" / "hang.sh").write_text("#!/bin/sh\nexit 0\n")
    code, _manifest, stderr = app.backup_json()  # nothing left behind blocks the next one
    assert code in (0, 3), stderr


LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def test_the_coordinator_killed_while_a_host_is_frozen(
    cluster: MakeCluster, trusted_dir: Path, hang_store: Datastore
) -> None:
    """SIGKILL of the coordinator while vm1 is frozen and vm2 is in its FIFREEZE: vm1 thaws
    at once (its input closed), vm2 as soon as its ioctl returns, both post-scripts run,
    and nothing left behind blocks the next backup."""
    c = cluster(["vm1", "vm2"])
    d1 = c.disk("vm1", "data")
    post = write_script(trusted_dir / "hooks" / "post.sh", f"echo post >> {trusted_dir}/trace\n")
    ok = write_script(trusted_dir / "hooks" / "ok.sh", "exit 0\n")
    mount2, guest2 = hanging_vm2(c, hang_store, trusted_dir)
    app = c.app(
        {"vm1": image_volume("data", d1.mountpoint) + hook("q1", ok, post), "vm2": guest2},
        freeze_timeout="6s",
    )
    proc = start_backup(app.config)
    try:
        wait_for(lambda: is_frozen(d1.mountpoint), 30, "vm1 frozen at the barrier")
        proc.kill()
        proc.communicate(timeout=30)
        assert finishes(frozen_probes[-1], 6.0 + 1.0), "vm1 frozen past freeze_timeout + 1 s"
    finally:
        lift(hang_store)
    wait_for(lambda: (trusted_dir / "trace").exists()
             and len((trusted_dir / "trace").read_text().split()) == 2, 15,
             "both post-scripts")  # fmt: skip
    assert not is_frozen(mount2)
    wait_for(lambda: not guest_pids(trusted_dir / "guest-vm1.toml"), 15, "vm1's guest to end")
    wait_for(lambda: not guest_pids(trusted_dir / "guest-vm2.toml"), 15, "vm2's guest to end")
    hang = trusted_dir / "hooks" / "hang.sh"
    hang.write_text("#!/bin/sh\nexit 0\n")  # the next backup's vm2 freezes normally
    code, _manifest, stderr = app.backup_json()
    assert code == 0, stderr


# -- over ssh only: what only a network can do ---------------------------------------------


@pytest.fixture
def ssh_cluster(datastore: Datastore, trusted_dir: Path, testbed: TestbedFactory) -> MakeCluster:
    def make(hosts: list[str]) -> Cluster:
        return Cluster("ssh", trusted_dir, datastore, testbed(hosts))

    return make


def test_an_unreachable_host_at_hello_freezes_nobody(
    ssh_cluster: MakeCluster, trusted_dir: Path
) -> None:
    c = ssh_cluster(["vm1", "vm2"])
    d1, d2 = c.disk("vm1", "data"), c.disk("vm2", "data")
    pre = write_script(trusted_dir / "hooks" / "pre.sh", f"echo pre >> {trusted_dir}/trace\n")
    app = c.app(
        {
            "vm1": image_volume("data", d1.mountpoint) + hook("q", pre, None),
            "vm2": image_volume("data", d2.mountpoint),
        }
    )
    c.cut("vm2")
    done = app.run("backup")
    assert done.returncode == 5, done.stderr
    assert "host vm2" in done.stderr and "unreachable" in done.stderr
    assert not (trusted_dir / "trace").exists()  # vm1 never got past hello
    assert not is_frozen(d1.mountpoint)


def test_ssh_refusals_are_told_apart(ssh_cluster: MakeCluster, trusted_dir: Path) -> None:
    c = ssh_cluster(["vm1"])
    assert c.bed is not None
    d1 = c.disk("vm1", "data")
    app = c.app({"vm1": image_volume("data", d1.mountpoint)})
    known = c.bed.known_hosts
    saved = known.read_text()

    known.write_text("")  # the host key is unknown
    done = app.run("backup")
    assert done.returncode == 10, done.stderr
    assert "unknown host key" in done.stderr and "--accept-new-host-keys" in done.stderr
    accepted = app.run("backup", "--accept-new-host-keys")
    assert accepted.returncode == 3, accepted.stderr  # first contact added the key
    assert c.bed.hosts["vm1"].address in known.read_text()

    other = [*saved.split()[:1], "ssh-ed25519", _other_key(trusted_dir)]
    known.write_text(" ".join(other) + "\n")  # a different key for the same address
    done = app.run("backup", "--accept-new-host-keys")
    assert done.returncode == 10
    assert "CHANGED" in done.stderr

    known.write_text(saved)
    c.bed.hosts["vm1"].authorized_keys.write_text("")  # the key is not authorized
    done = app.run("backup")
    assert done.returncode == 10
    assert "refused the backup key" in done.stderr


def _other_key(folder: Path) -> str:
    key = folder / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key.with_suffix(".pub").read_text().split()[1]


def test_the_backup_key_runs_the_guest_and_nothing_else(
    ssh_cluster: MakeCluster, trusted_dir: Path
) -> None:
    c = ssh_cluster(["vm1"])
    assert c.bed is not None
    c.app({"vm1": ""})
    secret = trusted_dir / "secret.txt"
    secret.write_text("nobody may read this\n")
    for command in (["cat", str(secret)], ["sh", "-c", f"cat {secret}"], ["id"]):
        done = subprocess.run(
            [*c.bed.ssh_argv("vm1"), *command],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2, done.stderr
        assert "runs only the cleancut guest agent" in done.stderr
        assert "nobody may read" not in done.stdout and "uid=" not in done.stdout
    forward = subprocess.run(
        [*c.bed.ssh_argv("vm1", "-W", "127.0.0.1:22")],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert forward.returncode != 0
    assert "SSH-2.0" not in forward.stdout  # no tunnel to anything
    pty = subprocess.run(
        [*c.bed.ssh_argv("vm1", "-tt"), "cleancut-guest"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert "PTY allocation request failed" in pty.stderr


def test_a_frozen_host_whose_network_is_cut_thaws_by_itself(
    ssh_cluster: MakeCluster, trusted_dir: Path, hang_store: Datastore
) -> None:
    c = ssh_cluster(["vm1", "vm2"])
    d1 = c.disk("vm1", "data")
    _mount2, guest2 = hanging_vm2(c, hang_store, trusted_dir)
    app = c.app({"vm1": image_volume("data", d1.mountpoint), "vm2": guest2}, freeze_timeout="5s")
    proc = start_backup(app.config)
    try:
        wait_for(lambda: is_frozen(d1.mountpoint), 30, "vm1 frozen at the barrier")
        c.cut("vm1")
        assert finishes(frozen_probes[-1], 5.0 + 1.0), "vm1 frozen past its freeze_timeout"
    finally:
        lift(hang_store)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        c.mend("vm1")
    assert proc.returncode == 5, err
    assert "vm1" in err
    assert '"event": "result"' not in out  # no recovery point, let alone a consistent one
    assert json.loads(app.run("points", "--json").stdout or "[]") == []
    wait_for(lambda: not guest_pids(trusted_dir / "guest-vm1.toml"), 20, "vm1's guest to end")
    (trusted_dir / "hooks" / "hang.sh").write_text("#!/bin/sh\nexit 0\n")
    code, manifest, stderr = app.backup_json()
    assert code == 3, stderr  # vm1 has no application step: file-system level
    assert manifest is not None and manifest["group_consistent"] is True
