"""The recovery point manifest: everything an RP is, stored in the repository as its commit record.

It is written to the repository last; a backup interrupted before that leaves snapshots
without a manifest, which no listing shows as a recovery point.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from cleancut.levels import Level

MANIFEST_FORMAT = 1
MANIFEST_FILENAME = "manifest.json"
MANIFEST_TAG = "cleancut-manifest"


def new_rp_id(now: datetime | None = None) -> str:
    """A sortable, unique recovery point id such as ``20261127T112301Z-3fa9``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(2)}"


class HookRun(BaseModel):
    """One run of one hook script, with its bounded output.

    ``volumes`` names the volumes the hook quiesces; empty (as in manifests written before
    the field existed) means every volume of its host.
    """

    host: str
    hook: str
    source: str
    phase: Literal["pre", "post"]
    argv: list[str]
    ok: bool
    returncode: int | None
    attempts: int
    duration: float
    timed_out: bool = False
    continue_on_failure: bool = False
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    volumes: list[str] = Field(default_factory=list)


class WriterRecord(BaseModel):
    """What one writer did and the database position it recorded."""

    host: str
    database: str
    kind: str
    volume: str
    ok: bool
    error: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class Member(BaseModel):
    """One resource (volume) of one host in the RP."""

    host: str
    resource: str
    provider: str
    layout: Literal["file", "tree"]
    source_path: str
    image_path: str | None = None
    fstype: str | None = None
    frozen: bool
    level: Level
    reason: str
    snapshot_at: float | None = None
    snapshot_seconds: float | None = None
    repository_snapshot: str | None = None
    bytes_processed: int = 0
    bytes_added: int = 0
    databases: list[str] = Field(default_factory=list)


class HostTimings(BaseModel):
    """One host's view of the cut; instants on the coordinator's clock.

    ``write_stall`` runs from the first hold that stops writes (a writer's lock or
    FIFREEZE; not PostgreSQL's backup mode) until the file systems are thawed and no such
    hold is left: what the applications on the host waited for. ``pause`` is the application's
    own pause, from the first pre-script's start to the last post-script's end (None when
    no pre- or post-script ran): a stall its users feel too, often the longer one. Both
    are durations on the guest's monotonic clock. The quiet window uses ``frozen_at`` (all
    held) and ``thaw_started_at``.
    """

    host: str
    clock_offset: float = 0.0
    frozen_at: float | None = None
    thaw_started_at: float | None = None
    thawed_at: float | None = None
    write_stall: float | None = None
    pause: float | None = None
    self_thawed: str | None = None
    stall_includes_copy: bool = False


class Manifest(BaseModel):
    """One recovery point of one application."""

    format: int = MANIFEST_FORMAT
    app: str
    rp_id: str
    created_at: datetime
    finished_at: datetime | None = None
    on_failure: Literal["abort", "degrade"]
    level: Level
    group_consistent: bool
    quiet_window: tuple[float, float] | None = None
    hosts: list[HostTimings]
    members: list[Member]
    writers: list[WriterRecord] = Field(default_factory=list)
    hooks: list[HookRun] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(member.bytes_processed for member in self.members)

    @property
    def added(self) -> int:
        return sum(member.bytes_added for member in self.members)

    @property
    def max_write_stall(self) -> float | None:
        stalls = [h.write_stall for h in self.hosts if h.write_stall is not None]
        return max(stalls) if stalls else None

    @property
    def max_pause(self) -> float | None:
        """The longest application pause of any host (None when no host ran a script)."""
        pauses = [h.pause for h in self.hosts if h.pause is not None]
        return max(pauses) if pauses else None

    @property
    def quiet_window_seconds(self) -> float | None:
        if self.quiet_window is None:
            return None
        return self.quiet_window[1] - self.quiet_window[0]
