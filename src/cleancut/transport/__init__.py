"""Transports: how the coordinator reaches guest agents (local today, OpenSSH next)."""

from __future__ import annotations

from cleancut.config.application import Host
from cleancut.transport.base import Channel, EventCallback


def open_channel(name: str, host: Host) -> Channel:
    """A channel to ``name``'s guest agent, by the host's ``connect`` setting."""
    if host.connect == "local":
        from cleancut.transport.local import LocalChannel

        return LocalChannel(name, host.guest_config)
    raise ValueError(f"unsupported connect {host.connect!r}")  # pragma: no cover


__all__ = ["Channel", "EventCallback", "open_channel"]
