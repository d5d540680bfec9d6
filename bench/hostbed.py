"""The host-count benchmark's testbed: N hosts with a busy disk each, reached over SSH.

:func:`build_testbed` brings up one testbed host per name, each with one ext4 disk image
on the testbed's XFS datastore and a guest config declaring it (``snapshot = "image"``,
``freeze = true``); :func:`endpoints` says how the application reaches each host —
straight to its sshd, or through a delay (``tc netem``, else :mod:`bench.relay`);
:func:`writers` keeps each disk busy. Everything registers its own teardown on the
caller's :class:`~contextlib.ExitStack`: the testbed's ``down()``, relays and writers
killed by their pids.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import say
from bench.common import write_private as _write_private
from cleancut.testbed import Testbed

REPO = Path(__file__).resolve().parents[1]
DISK_MIB = 32
VOLUME = "data"
WRITER_STOP_TIMEOUT = 40.0  # a writer blocked on a frozen disk dies at the thaw
WARM_UP = 1.0  # the writers run this long before the first cut

#: writes and fsyncs a small file in a loop (argv[1]): the load each frozen disk flushes
WRITER = """
import os, sys, time
path = sys.argv[1]
while True:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, os.urandom(4096))
    os.fsync(fd)
    os.close(fd)
    time.sleep(0.01)
"""


@dataclass(frozen=True)
class Endpoint:
    """How the application reaches one host: its ``connect`` URL and ``known_hosts``."""

    connect: str
    known_hosts: Path


def write_private(path: Path, text: str) -> Path:
    """A root-only (0600) file in a folder made if needed; the guest refuses others."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _write_private(path, text)
    return path


def stop(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGKILL one process this benchmark started (by its pid) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        say(f"warning: process {proc.pid} did not end within {timeout:.0f} s")


def build_testbed(stack: ExitStack, names: Sequence[str], ws: Path) -> Testbed:
    """The testbed: one host per name, each with its disk and its guest config."""
    bed = Testbed(None, names)
    stack.callback(_down, bed)
    bed.up()
    bed.datastore(max(512, 2 * DISK_MIB * len(names)))
    for name in names:
        disk = bed.add_disk(name, VOLUME, DISK_MIB, "ext4")
        guest = write_private(
            ws / "guests" / f"{name}.toml",
            f'[volumes.{VOLUME}]\npath = "{disk.mountpoint}"\nsnapshot = "image"\nfreeze = true\n',
        )
        bed.set_guest_config(name, guest)
    return bed


def _down(bed: Testbed) -> None:
    for problem in bed.down():
        say(f"warning: testbed teardown: {problem}")


def endpoints(
    stack: ExitStack, bed: Testbed, names: Sequence[str], delay_ms: int, ws: Path
) -> tuple[str, dict[str, Endpoint]]:
    """Add the delay (netem, else the relay); how, and each host's endpoint."""
    direct = {n: Endpoint(bed.hosts[n].connect_url, bed.known_hosts) for n in names}
    if delay_ms == 0:
        return "none (the testbed's veth links as they are)", direct
    tried = bed.set_delay(names[0], delay_ms)
    if tried:
        for name in names:
            stack.callback(bed.set_delay, name, 0)
            bed.set_delay(name, delay_ms)
        return f"tc netem, {delay_ms} ms on both ends of every host's link", direct
    say(f"tc netem is not available ({tried.reason}); relaying through bench/relay.py")
    return (
        f"TCP relay (bench/relay.py), {delay_ms} ms each way per host, because tc netem "
        f"failed: {tried.reason}",
        relays(stack, bed, names, delay_ms, ws),
    )


def relays(
    stack: ExitStack, bed: Testbed, names: Sequence[str], delay_ms: int, ws: Path
) -> dict[str, Endpoint]:
    """One delaying relay per host on 127.0.0.1, and a known_hosts naming it."""
    keys = {}
    for line in bed.known_hosts.read_text(encoding="utf-8").splitlines():
        address, _, key = line.partition(" ")
        keys[address] = key
    known = ws / "known_hosts.relay"
    lines, found = [], {}
    for name in names:
        host = bed.hosts[name]
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.relay", f"{host.address}:22", str(delay_ms)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        stack.callback(stop, proc, 5.0)
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip() or 0)
        if not port:
            raise RuntimeError(f"the relay for host {name} did not start (exit {proc.poll()})")
        lines.append(f"[127.0.0.1]:{port} {keys[host.address]}")
        found[name] = Endpoint(f"ssh://root@127.0.0.1:{port}", known)
    known.write_text("\n".join(lines) + "\n", encoding="utf-8")
    known.chmod(0o644)
    return found


def app_config(ws: Path, bed: Testbed, n: int, hosts: dict[str, Endpoint]) -> Path:
    """The application of the first ``n`` hosts, reached over SSH."""
    lines = [
        f'name = "bench-hosts-{n}"',
        'freeze_timeout = "30s"',
        'on_failure = "degrade"',
        f'catalog = "{ws / "catalog.sqlite"}"',
        "",
        "[repository]",
        f'url = "{ws / "repository"}"',
        f'password_file = "{ws / "repository.pass"}"',
        "",
    ]
    for name, end in list(hosts.items())[:n]:
        lines += [
            f"[hosts.{name}]",
            f'connect = "{end.connect}"',
            f'identity_file = "{bed.identity_file}"',
            f'known_hosts = "{end.known_hosts}"',
            "",
        ]
    return write_private(ws / f"app-{n}.toml", "\n".join(lines))


@contextlib.contextmanager
def writers(mounts: Sequence[Path]) -> Iterator[None]:
    """A writer process per mount while the block runs; each killed by its pid after."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for mount in mounts:
            argv = [sys.executable, "-c", WRITER, str(mount / "writer.dat")]
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True))
        time.sleep(WARM_UP)
        yield
    finally:
        for proc in procs:
            stop(proc, WRITER_STOP_TIMEOUT)
