"""The transport interface: how the coordinator reaches a host's guest agent.

A channel carries the cut protocol (JSON lines) to one guest. ``local`` spawns the agent
as a child process; ``ssh`` (next) runs it through OpenSSH with a forced command. Both
give the agent a stdin whose end-of-file means "coordinator gone".
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

EventCallback = Callable[[str, dict[str, Any]], None]


class Channel(abc.ABC):
    """A conversation with one guest agent."""

    host: str

    @abc.abstractmethod
    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
    ) -> dict[str, Any]:
        """Send one request and wait for its reply; events before it go to ``on_event``.

        Raises GuestError when the guest answered with an error and HostUnreachable when
        the guest went away or did not answer within ``timeout`` seconds. Thread-safe: a
        second call (``release``) may be made while one still waits.
        """

    @abc.abstractmethod
    def close(self, wait: float = 30.0) -> None:
        """End the conversation; the guest releases everything when its input closes.
        ``wait`` is how long that release may take (its post-scripts) before the guest is
        asked to stop."""
