"""The SSH transport's command line and how it tells ssh's failures apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleancut.config.application import Host
from cleancut.errors import HostFailed, HostRefused, HostUnreachable
from cleancut.transport.ssh import classify, ssh_argv

KNOWN = Path("/etc/cleancut/known_hosts")


def ssh_host(**extra: object) -> Host:
    return Host.model_validate(
        {"connect": "ssh://backup@198.18.0.11:2222", "known_hosts": str(KNOWN), **extra}
    )


def option(argv: list[str], name: str) -> str:
    values = [argv[i + 1] for i, a in enumerate(argv) if a == "-o" and argv[i + 1].startswith(name)]
    assert len(values) == 1, (name, argv)
    return values[0].split("=", 1)[1]


def test_host_keys_are_always_checked_and_never_prompted_for() -> None:
    host = ssh_host(identity_file="/root/.ssh/cleancut")
    argv = ssh_argv(host.ssh, host)  # type: ignore[arg-type]
    assert argv[:3] == ["ssh", "-F", "/dev/null"]
    assert option(argv, "BatchMode") == "yes"
    assert option(argv, "StrictHostKeyChecking") == "yes"
    assert option(argv, "UserKnownHostsFile") == str(KNOWN)
    assert option(argv, "GlobalKnownHostsFile") == "/dev/null"
    assert option(argv, "ConnectTimeout") == "10"
    assert option(argv, "ServerAliveInterval") == "5"
    assert argv[-3:] == ["--", "198.18.0.11", "cleancut-guest"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "backup"
    accepting = ssh_argv(host.ssh, host, accept_new_host_key=True)  # type: ignore[arg-type]
    assert option(accepting, "StrictHostKeyChecking") == "accept-new"


def test_ssh_hosts_need_known_hosts_and_no_guest_config() -> None:
    with pytest.raises(ValueError, match="needs known_hosts"):
        Host.model_validate({"connect": "ssh://root@198.18.0.11"})
    with pytest.raises(ValueError, match="guest_config cannot be given"):
        ssh_host(guest_config="/etc/cleancut/guest.toml")
    with pytest.raises(ValueError, match="not an SSH address"):
        Host.model_validate({"connect": "ssh://root@bad host", "known_hosts": "/k"})
    assert ssh_host().ssh is not None and str(ssh_host().ssh) == "backup@198.18.0.11:2222"


CASES = [
    (["ssh: connect to host 198.18.0.11 port 2222: Connection timed out"], HostUnreachable,
     "unreachable"),
    (["ssh: connect to host 198.18.0.11 port 2222: Connection refused"], HostUnreachable,
     "unreachable"),
    (["No ED25519 host key is known for [198.18.0.11]:2222 and you have requested strict "
      "checking.", "Host key verification failed."], HostRefused, "unknown host key"),
    (["@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@",
      "Host key verification failed."], HostRefused, "CHANGED"),
    (["backup@198.18.0.11: Permission denied (publickey)."], HostRefused,
     "refused the backup key"),
]  # fmt: skip


@pytest.mark.parametrize(("stderr", "kind", "words"), CASES)
def test_failures_are_told_apart(stderr: list[str], kind: type, words: str) -> None:
    host = ssh_host()
    error = classify("vm1", host.ssh, KNOWN, "no answer to 'hello'", 255, stderr)  # type: ignore[arg-type]
    assert type(error) is kind
    assert words in error.message and "host vm1 (backup@198.18.0.11:2222)" in error.message


def test_a_guest_that_exits_by_itself_failed_and_was_reached() -> None:
    host = ssh_host()
    error = classify("vm1", host.ssh, KNOWN, "no answer", 2, ["guest.toml: refused"])  # type: ignore[arg-type]
    assert type(error) is HostFailed and error.exit_code == 6
    assert HostUnreachable("x").exit_code != HostRefused("x").exit_code != 6
