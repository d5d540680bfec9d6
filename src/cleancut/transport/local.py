"""The local transport: the guest agent as a child process of the coordinator."""

from __future__ import annotations

import sys
from pathlib import Path

from cleancut.transport.pipe import PipeChannel


class LocalChannel(PipeChannel):
    """Spawns ``cleancut guest --config PATH`` and talks to it over pipes."""

    def __init__(self, host: str, guest_config: Path, *, command: list[str] | None = None) -> None:
        # -I: never import from the working directory or PYTHON* variables (the guest runs as root)
        argv = command or [
            sys.executable,
            "-I",
            "-m",
            "cleancut",
            "guest",
            "--config",
            str(guest_config),
        ]
        super().__init__(host, argv)
