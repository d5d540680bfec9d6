"""The testbed hosts' sshd: keys, config, start, readiness, and stopping by pid.

Each host runs its own ``/usr/sbin/sshd -D -e`` inside its network namespace, with its own
ed25519 host key and an ``authorized_keys`` whose only line forces the guest agent
(``command="... cleancut guest --config GUEST",restrict``): the testbed's client key can
run nothing else. A session whose network was cut ends on the host's side within about
seven seconds (measured, OpenSSH 9.2): sshd sends its first keepalive after
``ClientAliveInterval`` (1 s) of silence, then one every *two* intervals (each keepalive it
writes wakes its poll loop early, which restarts the wait), and gives up after
``ClientAliveCountMax`` (3) unanswered: ~1 + 3 x 2 s. (Interval 2 with count 3 measured
~15 s.)

A process is only ever signalled when its pid *and* its start time (``/proc/PID/stat``
field 22) match what was recorded, so a pid the kernel gave to someone else since is
never killed.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cleancut.cli.guest import authorize
from cleancut.testbed.netns import TestbedError, enter

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")
SSH_PORT = 22
READY_TIMEOUT = 15.0
KEYGEN_TIMEOUT = 30.0


def authorized_line(guest_config: Path, public_key: str) -> str:
    """The ``authorized_keys`` line that lets ``public_key`` run only the guest agent.

    Exactly what ``cleancut guest authorize --config GUEST PUBKEY`` prints: its function
    is called in-process, since starting the CLI once per host would cost ~0.4 s each.
    """
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        authorize(public_key=public_key.strip(), config=guest_config, source=None)
    return printed.getvalue().strip()


def sshd_config(address: str, host_key: Path, pid_file: Path, authorized_keys: Path) -> str:
    """The ``sshd_config`` of one host: key-only root login, quick dead-peer detection."""
    return "\n".join(
        [
            f"ListenAddress {address}:{SSH_PORT}",
            f"HostKey {host_key}",
            f"PidFile {pid_file}",
            f"AuthorizedKeysFile {authorized_keys}",
            "AuthorizedPrincipalsFile none",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "ClientAliveInterval 1",  # see the module docstring: ~7 s to end a cut session
            "ClientAliveCountMax 3",
            "MaxStartups 100:30:200",
            "LogLevel VERBOSE",
            "StrictModes yes",
            "PrintMotd no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "",
        ]
    )


def keygen(keys: Mapping[Path, str]) -> None:
    """Generate ed25519 key pairs without passphrase (path -> comment), all in parallel."""
    procs = {
        path: subprocess.Popen(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for path, comment in keys.items()
    }
    failed = []
    for path, proc in procs.items():
        out, _ = proc.communicate(timeout=KEYGEN_TIMEOUT)
        if proc.returncode != 0:
            failed.append(f"{path}: {out.decode(errors='replace').strip()}")
    if failed:
        raise TestbedError("ssh-keygen failed: " + "; ".join(failed))


def public_key(private_key: Path) -> str:
    """The ``type base64 comment`` line of a key pair's public half."""
    return Path(f"{private_key}.pub").read_text(encoding="ascii").strip()


def known_hosts_line(address: str, host_key: Path) -> str:
    """``ADDRESS TYPE BASE64``: one host's entry for the client's ``known_hosts``."""
    key_type, key = public_key(host_key).split()[:2]
    return f"{address} {key_type} {key}"


def write_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` atomically (a reader never sees half a file) with ``mode``."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(tmp, mode)  # the umask may have narrowed it
    os.replace(tmp, path)


def start(namespace: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start ``sshd -D -e -f CONFIG`` in ``namespace``'s network, logging to ``log``.

    It gets its own session, so it outlives the process that started it (``testbed up``
    exits and leaves the hosts running) and a Ctrl-C in that terminal does not reach it.
    """
    if not SSHD.exists():
        raise TestbedError(f"{SSHD} not found: install openssh-server (scripts/setup.sh)")
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            enter(namespace, [str(SSHD), "-D", "-e", "-f", str(config)]),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class Pending:
    """An sshd being waited for: the address it should listen on and its log."""

    name: str
    address: str
    proc: subprocess.Popen[bytes]
    log: Path


def wait_listening(pending: Sequence[Pending], timeout: float = READY_TIMEOUT) -> None:
    """Wait until every sshd accepts TCP connections; raise naming the host and its log."""
    waiting = list(pending)
    deadline = time.monotonic() + timeout
    while waiting:
        for item in list(waiting):
            if item.proc.poll() is not None:
                raise TestbedError(
                    f"host {item.name}: sshd exited with {item.proc.returncode}: {_tail(item.log)}"
                )
            if _accepts(item.address):
                waiting.remove(item)
        if not waiting:
            return
        if time.monotonic() > deadline:
            item = waiting[0]
            raise TestbedError(
                f"host {item.name}: sshd does not accept on {item.address}:{SSH_PORT} "
                f"after {timeout:.0f} s: {_tail(item.log)}"
            )
        time.sleep(0.02)


def _accepts(address: str) -> bool:
    try:
        with socket.create_connection((address, SSH_PORT), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return " | ".join(text[-lines:]) or f"(nothing in {log})"


def start_time(pid: int) -> int | None:
    """The start time of a live process (clock ticks after boot); None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of the whole line


def stop(processes: Mapping[int, int], grace: float = 3.0) -> list[str]:
    """SIGTERM each ``pid -> start time`` that is still that process, SIGKILL after ``grace``.

    Never raises; returns the pids that would not die.
    """
    alive = {pid: start for pid, start in processes.items() if start_time(pid) == start}
    _signal(alive, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = {pid: start for pid, start in alive.items() if start_time(pid) == start}
    _signal(alive, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = {pid: start for pid, start in alive.items() if start_time(pid) == start}
    return [f"process {pid} does not die" for pid in alive]


def _signal(processes: Mapping[int, int], signum: signal.Signals) -> None:
    for pid, start in processes.items():
        if start_time(pid) == start:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)
