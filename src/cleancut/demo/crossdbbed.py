"""What the cross-database proof runs on: three VMs with PostgreSQL, MariaDB and a share.

:func:`build` brings up a testbed (vm1, vm2, vm3 and the datastore host ``ds``), gives
each VM an ext4 disk on ``ds``'s XFS datastore, starts PostgreSQL with its data directory
on vm1's disk and MariaDB (binary log on) with its data directory on vm2's, creates the
shop's tables and ``pgbench``'s, and writes the guest and application configs. Every
step registers its undo on the caller's ``ExitStack`` before it runs, in the order that
unwinds safely: the load stops, then the servers, then the testbed (its disks unmounted),
then the workspace is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from cleancut.demo import hostconfigs, workspace
from cleancut.demo.dbbaseline import LiveShop
from cleancut.demo.hostconfigs import DATASTORE, HOSTS, SHOP_CHECK
from cleancut.demo.multihost import remove_workspace, take_down, write_private
from cleancut.demo.shop import write_hook_scripts
from cleancut.demo.shopdb import ShopTargets, create_tables
from cleancut.errors import CleancutError
from cleancut.testbed import Testbed
from cleancut.writers.mysqlserver import MariadbServer
from cleancut.writers.pgserver import PostgresqlServer, pg_bin

Say = Callable[[str], None]
APP = "shop-databases"
DISK_MIB = {"orders": 384, "invoices": 320, "receipts": 256}
DATASTORE_MIB = 4096
#: small enough for the disks above, and quick to start
MARIADB_OPTIONS = ("--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M")
#: keeps pg_wal within vm1's disk under pgbench's load
PG_SETTINGS = "\n# cleancut cross-database proof\nmax_wal_size = 64MB\nmin_wal_size = 32MB\n"
PGBENCH_SCALE = 2
PGBENCH_RATE = 50  # transactions per second: unrelated load, not a stress test


@dataclass
class DbWorkspace:
    """What :func:`build` made."""

    root: Path
    bed: Testbed
    pg: PostgresqlServer
    mariadb: MariadbServer
    targets: ShopTargets
    socket: Path
    app: Path

    @property
    def live(self) -> LiveShop:
        """How the per-resource jobs reach the live resources."""
        pg, receipts = self.pg, self.targets.receipts_dir
        return LiveShop(pg.socket_dir, pg.port, self.mariadb.socket, receipts)

    def record(self) -> dict[str, Any]:
        return {
            "workspace": str(self.root),
            "testbed": str(self.bed.root),
            "namespaces": [host.namespace for host in self.bed.hosts.values()],
            "servers": {"postgresql": str(self.pg.datadir), "mariadb": str(self.mariadb.datadir)},
        }

    @contextlib.contextmanager
    def pgbench(self) -> Iterator[None]:
        """``pgbench`` against the ``bench`` database for as long as the block runs."""
        log = self.root / "pgbench.log"
        argv = [
            pg_bin("pgbench"), "-n", "-c", "2", "-j", "1", "-R", str(PGBENCH_RATE),
            "-T", "86400", *self._pg_args(), "bench",
        ]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _pg_args(self) -> list[str]:
        return ["-h", str(self.pg.socket_dir), "-p", str(self.pg.port), "-U", "postgres"]

    def init_pgbench(self) -> None:
        with psycopg.connect(self.pg.uri, autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE DATABASE bench")
        argv = [pg_bin("pgbench"), "-i", "-q", "-s", str(PGBENCH_SCALE), *self._pg_args(), "bench"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise CleancutError(f"pgbench -i failed: {(done.stderr or done.stdout).strip()}")


def _start_servers(
    stack: ExitStack, root: Path, mounts: dict[str, Path]
) -> tuple[PostgresqlServer, MariadbServer]:
    """PostgreSQL on vm1's disk, MariaDB on vm2's; their sockets and logs in ``root/run``."""
    run = root / "run"
    run.mkdir(mode=0o755)
    pg = PostgresqlServer.initialise(mounts["orders"] / "pgdata", run / "pg")
    with (pg.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(PG_SETTINGS)
    stack.callback(pg.stop)
    pg.start()
    mariadb = MariadbServer.initialise(
        mounts["invoices"] / "mysql", run / "mariadb", log_bin=True, options=MARIADB_OPTIONS
    )
    stack.callback(mariadb.stop)
    mariadb.start()
    return pg, mariadb


def _write_configs(
    root: Path, bed: Testbed, pg: PostgresqlServer, mariadb: MariadbServer, python: str
) -> Path:
    """The four guest configs (switched in for the testbed's hosts) and the app config."""
    socket = root / "run" / "shop.sock"
    pre, post = write_hook_scripts(root / "hooks", python, socket)
    folder = root / "etc"
    folder.mkdir(mode=0o755)
    staging = {host: root / "staging" / host for host in bed.hosts}
    for place in staging.values():
        place.mkdir(mode=0o700, parents=True)
    mounts = {resource: bed.root / host / resource for resource, host in HOSTS.items()}
    databases = {
        "orders": f'kind = "postgresql"\ndsn = "{pg.uri}"\n',
        "invoices": f'kind = "mariadb"\nsocket = "{mariadb.socket}"\n',
    }
    guests = {
        HOSTS[resource]: hostconfigs.server_guest(
            resource, mounts[resource], staging[HOSTS[resource]], text
        )
        for resource, text in databases.items()
    }
    guests[HOSTS["receipts"]] = hostconfigs.vm_guest(
        "receipts", mounts["receipts"], staging[HOSTS["receipts"]], hooks=True, pre=pre, post=post
    )
    images = {r: bed.datastore().disks[f"{h}-{r}"].image for r, h in HOSTS.items()}
    guests[DATASTORE] = hostconfigs.datastore_guest(images, staging[DATASTORE])
    for host, text in guests.items():
        bed.set_guest_config(host, write_private(folder / f"{host}.toml", text))
    write_private(root / "repository.pass", secrets.token_hex(16) + "\n")
    tables = {host: bed.app_config(host) for host in bed.hosts}
    checks = {SHOP_CHECK: [python, "-m", "cleancut.demo.check"]}
    app = hostconfigs.app_toml(APP, root, tables, freeze_timeout="20s", checks=checks)
    return write_private(folder / f"{APP}.toml", app)


def build(stack: ExitStack, say: Say, *, python: str) -> DbWorkspace:
    """The workspace, testbed, servers and configs; all undone when ``stack`` closes."""
    root = Path(tempfile.mkdtemp(prefix="shop-db-", dir=workspace.workspace_base()))
    root.chmod(0o755)  # the servers run as their own users and must reach their files
    stack.callback(remove_workspace, root, say)
    bed = Testbed(root / "testbed", [*HOSTS.values(), DATASTORE])
    stack.callback(take_down, bed, say)  # first: up() may be interrupted half-way
    bed.up()
    bed.datastore(DATASTORE_MIB)
    for resource, host in HOSTS.items():
        bed.add_disk(host, resource, DISK_MIB[resource], "ext4")
    mounts = {resource: bed.root / host / resource for resource, host in HOSTS.items()}
    say(f"testbed {bed.root}: starting PostgreSQL on vm1's disk and MariaDB on vm2's")
    pg, mariadb = _start_servers(stack, root, mounts)
    targets = ShopTargets(pg.uri, mariadb.uri, mounts["receipts"])
    create_tables(targets)
    app = _write_configs(root, bed, pg, mariadb, python)
    ws = DbWorkspace(root, bed, pg, mariadb, targets, root / "run" / "shop.sock", app)
    ws.init_pgbench()
    where = ", ".join(f"{r} on {h} ({bed.hosts[h].address})" for r, h in HOSTS.items())
    say(
        f"workspace {root}: {where}; PostgreSQL {pg.datadir}, MariaDB {mariadb.datadir}; "
        f"the disk images on {DATASTORE} ({bed.hosts[DATASTORE].address}); every host over SSH"
    )
    return ws
