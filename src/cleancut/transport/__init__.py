"""Transports: how the coordinator reaches guest agents (``local`` or OpenSSH)."""

from __future__ import annotations

from cleancut.config.application import Host
from cleancut.transport.base import Channel, EventCallback


def open_channel(name: str, host: Host, *, accept_new_host_key: bool = False) -> Channel:
    """A channel to ``name``'s guest agent, by the host's ``connect`` setting."""
    if host.connect == "local":
        from cleancut.transport.local import LocalChannel

        assert host.guest_config is not None  # the config requires it for local hosts
        return LocalChannel(name, host.guest_config)
    from cleancut.transport.ssh import SshChannel

    return SshChannel(name, host, accept_new_host_key=accept_new_host_key)


__all__ = ["Channel", "EventCallback", "open_channel"]
