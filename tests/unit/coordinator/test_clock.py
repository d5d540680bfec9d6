"""The clock offset comes from each host's own round trip, not from the slowest host's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from cleancut.config.application import AppConfig
from cleancut.config.load import LoadedApp
from cleancut.coordinator import Coordinator
from cleancut.mover.base import RepositoryAccess
from cleancut.transport.base import Channel, EventCallback


class SkewedGuest(Channel):
    """A channel whose guest clock runs ``skew`` seconds ahead and whose hello takes ``work``."""

    def __init__(self, host: str, skew: float, work: float, startup: float = 0.0) -> None:
        self.host, self.skew, self.work, self.startup = host, skew, work, startup

    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
    ) -> dict[str, Any]:
        if self.startup:  # the guest is still starting when the first request is sent
            time.sleep(self.startup)
            self.startup = 0.0
        if op == "clock":
            return {"time": time.time() + self.skew}
        received_at = time.time() + self.skew
        time.sleep(self.work)
        return {
            "version": "test",
            "protocol": 1,
            "received_at": received_at,
            "time": time.time() + self.skew,
            "inventory": {"volumes": {}, "databases": {}, "hooks": [], "freeze_enabled": True},
        }

    def close(self, wait: float = 30.0) -> None:
        return None


def test_offsets_ignore_how_long_each_hello_worked_and_each_guest_took_to_start() -> None:
    config = AppConfig.model_validate(
        {
            "name": "clock",
            "repository": {"url": "/nowhere"},
            "hosts": {
                "slow": {"guest_config": "/etc/g.toml"},
                "fast": {"guest_config": "/etc/g.toml"},
            },
        }
    )
    guests = {
        "slow": SkewedGuest("slow", 50.0, 0.4, startup=0.5),
        "fast": SkewedGuest("fast", -3.0, 0.0, startup=0.1),
    }
    coordinator = Coordinator(
        LoadedApp(config, Path("/etc/clock.toml")),
        access=RepositoryAccess("/nowhere", "pw"),
        mover=None,  # type: ignore[arg-type]  # hello needs no repository
        connect=lambda name, _host: guests[name],
    )
    coordinator._open()
    coordinator._hello()

    assert coordinator.reports["slow"].clock_offset == pytest.approx(50.0, abs=0.02)
    assert coordinator.reports["fast"].clock_offset == pytest.approx(-3.0, abs=0.02)
