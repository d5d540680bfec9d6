"""The guest's replies, one model per operation: what each reply holds, checked on arrival.

The coordinator validates every reply before it reads a figure from it (numbers finite,
times and durations where they belong), so a confused or hostile guest shows up as a
ProtocolError naming the host, the operation and the field, not as a wrong manifest.
Details that are the guest's own business (a provider's description, a writer's
positions, a snapshot's details) stay free-form mappings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cleancut.errors import ProtocolError
from cleancut.manifest import HookRun

Time = Annotated[float, Field(allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Reply(BaseModel):
    """Base of every reply: unknown fields are refused, so the models stay the documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class VolumeInfo(BaseModel):
    """One volume as hello reports it; providers add their own description keys."""

    model_config = ConfigDict(extra="allow", frozen=True)

    path: str
    provider: str
    freeze: bool
    unheld_level: Literal["crash", "none"]
    mount: str | None = None


class HookInfo(Reply):
    name: str
    source: str
    pre: list[str] | None
    post: list[str] | None
    timeout: Seconds
    pre_retries: int = Field(ge=0)
    post_retries: int = Field(ge=0)
    volumes: list[str]


class DiskInfo(BaseModel):
    """A disk image this host holds for another host's volume (``backs``: host/volume)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    image: str
    backs: str = Field(pattern=r"^[^/]+/[^/]+$")


class Inventory(Reply):
    volumes: dict[str, VolumeInfo]
    databases: dict[str, dict[str, Any]]
    hooks: list[HookInfo]
    freeze_enabled: bool
    disks: dict[str, DiskInfo] = {}


class HelloReply(Reply):
    version: str
    protocol: int
    received_at: Time
    time: Time
    inventory: Inventory


class ClockReply(Reply):
    time: Time


class PlanReply(Reply):
    steps: list[str]


class HookRunInfo(HookRun):
    """One run of one hook script: the manifest's :class:`~cleancut.manifest.HookRun`, before
    the coordinator fills in the host, with its figures checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = ""
    attempts: int = Field(ge=0)
    duration: Seconds


class WriterReport(Reply):
    kind: str
    volume: str
    ok: bool
    error: str | None
    details: dict[str, Any]


class PrepareReply(Reply):
    hooks: list[HookRunInfo]
    writers: dict[str, WriterReport]


class SnapshotInfo(Reply):
    taken_at: Time
    seconds: Seconds
    layout: Literal["file", "tree"]
    details: dict[str, Any]


class SnapshotReply(Reply):
    snapshots: dict[str, SnapshotInfo]
    errors: dict[str, str]
    self_thawed: str | None
    self_thawed_at: Time | None


class SnapshotDisksReply(Reply):
    snapshots: dict[str, SnapshotInfo]
    errors: dict[str, str]


class FreezeReply(Reply):
    hold_started_at: Time
    frozen_at: Time
    mounts: list[str]
    freeze_error: str | None
    writers: dict[str, WriterReport]
    snapshot: SnapshotReply | None = None


class Figures(Reply):
    """What a host measured of its holds, on its own monotonic clock."""

    write_stall: Seconds | None
    pause: Seconds | None
    thawed_from_outside: list[str]


class ThawReply(Figures):
    thaw_started_at: Time
    thawed_at: Time
    hold_ended_at: Time
    thaw_errors: list[str]
    self_thawed: str | None
    self_thawed_at: Time | None
    writers: dict[str, WriterReport]
    hooks: list[HookRunInfo]


class UploadInfo(Reply):
    snapshot_id: str
    bytes_processed: int = Field(ge=0)
    bytes_added: int = Field(ge=0)
    files: int = Field(ge=0)
    files_unmodified: int = Field(ge=0)
    seconds: Seconds
    change_detection: str | None
    record_warning: str | None


class UploadReply(Reply):
    uploads: dict[str, UploadInfo]


class NotRun(Reply):
    hook: str
    why: str


class ReleaseReply(Figures):
    self_thawed: str | None
    hooks: list[HookRunInfo]
    not_run: list[NotRun]
    errors: list[str]


class ByeReply(Reply):
    pass


REPLIES: dict[str, type[BaseModel]] = {
    "hello": HelloReply,
    "clock": ClockReply,
    "plan": PlanReply,
    "prepare": PrepareReply,
    "freeze": FreezeReply,
    "snapshot": SnapshotReply,
    "snapshot_disks": SnapshotDisksReply,
    "thaw": ThawReply,
    "upload": UploadReply,
    "release": ReleaseReply,
    "bye": ByeReply,
}


def check_reply(host: str, op: str, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` of ``op`` from ``host`` validated by its model, as plain data again."""
    model = REPLIES.get(op)
    if model is None:
        return result
    try:
        return model.model_validate(result).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'result'}: {error['msg']}"
            for error in exc.errors(include_input=False)[:5]
        )
        raise ProtocolError(f"host {host}: invalid {op} reply: {problems}") from None
