"""Consistency levels (DESIGN.md §1): an RP is as strong as its weakest member."""

from __future__ import annotations

from typing import Literal

Level = Literal["application", "filesystem", "crash", "none"]
ORDER: tuple[Level, ...] = ("none", "crash", "filesystem", "application")


def weakest(levels: list[Level]) -> Level:
    """The weakest of ``levels`` (``none`` for an empty list)."""
    if not levels:
        return "none"
    return min(levels, key=ORDER.index)
