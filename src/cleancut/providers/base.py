"""The snapshot provider interface: how a point-in-time image of one volume is made.

A provider never knows about databases or hooks (that is the writers' axis); the guest
agent composes them. ``snapshot()`` runs while the volume's file system may be frozen,
so it must not write inside that file system, import modules or log to disk.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from cleancut.config.guest import Volume


@dataclass
class Snapshot:
    """A point-in-time image of a volume, ready to be uploaded."""

    path: Path
    layout: Literal["file", "tree"]
    taken_at: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


class Provider(abc.ABC):
    """Makes point-in-time images of one volume."""

    #: the ``snapshot =`` value that selects this provider
    kind: ClassVar[str]
    #: whether the volume's file system may be frozen while this provider snapshots it
    freezable: ClassVar[bool]
    #: the level the snapshot gives with no freeze and no hold: crash (atomic) or none
    unheld_level: ClassVar[Literal["crash", "none"]]

    def __init__(self, name: str, volume: Volume, staging: Path) -> None:
        self.name = name
        self.volume = volume
        self.staging = staging

    def describe(self) -> dict[str, Any]:
        """What hello reports about this volume (image path, file system type, ...)."""
        return {}

    @abc.abstractmethod
    def check(self) -> None:
        """Refuse early (ProviderError) what cannot work: no reflink support, staging inside
        the frozen file system, not a subvolume. Runs at hello, before anything is touched."""

    @abc.abstractmethod
    def prepare(self, rp_id: str) -> None:
        """Slow set-up before the freeze: create staging folders, open what snapshot needs."""

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """Make the point-in-time image. Runs inside the freeze: keep it short and in-memory."""

    @abc.abstractmethod
    def release(self) -> None:
        """Delete the local snapshot; safe to call more than once and after a failure."""
