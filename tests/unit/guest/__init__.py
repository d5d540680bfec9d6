"""Tests of the guest agent's parts; ``write_script`` makes real executable hooks for them."""

from __future__ import annotations

from pathlib import Path


def write_script(folder: Path, name: str, body: str, mode: int = 0o755) -> Path:
    """A bash script ``folder/name`` with ``body`` and ``mode`` (0755: passes the checks)."""
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n", encoding="utf-8")
    path.chmod(mode)
    return path
