"""The SSH transport: the guest agent behind OpenSSH's client, as Ansible and borg reach hosts.

The coordinator runs ``ssh`` as a child process and speaks the cut protocol over its
stdin/stdout. On the host, the backup key's ``authorized_keys`` line forces the command
(``cleancut guest authorize`` prints it), so the key runs the guest agent and nothing else,
with the guest config the host chose. Host keys are always checked: ``BatchMode`` (never a
prompt), a ``known_hosts`` file of the operator's and no other; a host that is not in it is
added only when ``accept_new_host_key`` (or ``--accept-new-host-keys``) says so. Keep-alives
let the coordinator notice a cut network; the guest notices it by its own deadline and by
sshd closing its input.

When ``ssh`` ends before the guest answered, its last words say why; :func:`classify`
turns them into a :class:`~cleancut.errors.HostUnreachable` (exit 5: no route, refused
port, timeout — try again later) or a :class:`~cleancut.errors.HostRefused` (exit 10: the
key was refused, or the host key is unknown or changed — fix the config).
"""

from __future__ import annotations

from pathlib import Path

from cleancut.config.application import Host, SshTarget
from cleancut.errors import CleancutError, HostFailed, HostRefused, HostUnreachable
from cleancut.transport.pipe import PipeChannel

#: What the client asks the forced command for; sshd hands it over as SSH_ORIGINAL_COMMAND.
REMOTE_COMMAND = "cleancut-guest"

#: ssh's exit status for its own errors (connection, authentication).
SSH_ERROR = 255

#: What ssh says when the network (not the host) is the problem.
_UNREACHABLE = (
    "connection timed out",
    "connection refused",
    "no route to host",
    "network is unreachable",
    "could not resolve hostname",
    "name or service not known",
    "operation timed out",
    "timeout, server",
    "connection closed by",
    "connection reset",
    "broken pipe",
    "kex_exchange_identification",
)


def ssh_argv(target: SshTarget, host: Host, *, accept_new_host_key: bool = False) -> list[str]:
    """The ``ssh`` command line for ``host``: checked host keys, no prompt, keep-alives."""
    assert host.known_hosts is not None  # the config requires it for ssh hosts
    accept = accept_new_host_key or host.accept_new_host_key
    argv = [
        "ssh",
        "-F",
        "/dev/null",  # no user or system ssh_config can loosen the checks below
        "-T",  # no terminal: the protocol is JSON lines
        "-x",
        "-a",
        "-o",
        "BatchMode=yes",
        "-o",
        f"StrictHostKeyChecking={'accept-new' if accept else 'yes'}",
        "-o",
        f"UserKnownHostsFile={host.known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "CheckHostIP=no",
        "-o",
        f"ConnectTimeout={max(1, round(host.connect_timeout))}",
        "-o",
        f"ServerAliveInterval={max(1, round(host.keepalive_interval))}",
        "-o",
        f"ServerAliveCountMax={host.keepalive_count}",
        "-o",
        "ControlPath=none",
        "-o",
        "ClearAllForwardings=yes",
        "-o",
        "LogLevel=ERROR",
        "-p",
        str(target.port),
        "-l",
        target.user,
    ]
    if host.identity_file is not None:
        argv += ["-o", "IdentitiesOnly=yes", "-i", str(host.identity_file)]
    return [*argv, "--", target.address, REMOTE_COMMAND]


class SshChannel(PipeChannel):
    """The guest agent of ``host`` over OpenSSH."""

    def __init__(self, name: str, host: Host, *, accept_new_host_key: bool = False) -> None:
        target = host.ssh
        if target is None:  # pragma: no cover - open_channel picks the transport
            raise ValueError(f"host {name}: {host.connect!r} is not an ssh:// address")
        self.target = target
        self.known_hosts = host.known_hosts or Path("/dev/null")
        super().__init__(name, ssh_argv(target, host, accept_new_host_key=accept_new_host_key))

    def went_away(self, what: str, code: int | None, stderr: list[str]) -> CleancutError:
        return classify(self.host, self.target, self.known_hosts, what, code, stderr)


def classify(
    host: str,
    target: SshTarget,
    known_hosts: Path,
    what: str,
    code: int | None,
    stderr: list[str],
) -> CleancutError:
    """Why ssh to ``host`` ended, as the error an operator can act on."""
    said = [line.strip() for line in stderr if line.strip()]
    text = " ".join(said).lower()
    last = said[-1] if said else "ssh said nothing"
    where = f"host {host} ({target})"
    tail = "; ".join(said[-5:]) or "no message"
    if code is not None and code != SSH_ERROR:
        # ssh connected and the forced command ran: the guest itself ended
        return HostFailed(f"{where}: the guest agent exited with code {code}: {what}. {tail}")
    if "identification has changed" in text:
        return HostRefused(
            f"{where}: its host key has CHANGED from the one in {known_hosts}: the host was "
            "reinstalled, or someone is in the middle; check the new key out of band, then "
            "replace the host's line in known_hosts"
        )
    if "host key verification failed" in text or "host key is known" in text:
        return HostRefused(
            f"{where}: unknown host key: {target.address} is not in {known_hosts}; add its "
            f"key (ssh-keyscan -p {target.port} {target.address}, checked out of band), or "
            "run once with --accept-new-host-keys"
        )
    if "permission denied" in text or "too many authentication failures" in text:
        return HostRefused(
            f"{where}: the host refused the backup key ({last}); add the line printed by "
            f"`cleancut guest authorize` to {target.user}'s authorized_keys on the host, or "
            "fix identity_file"
        )
    if any(s in text for s in _UNREACHABLE):
        return HostUnreachable(f"{where}: unreachable: {last} ({what})")
    return HostUnreachable(f"{where}: the connection ended: {what}. {tail}")
