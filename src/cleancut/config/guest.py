"""The guest config: what exists on one host (volumes, databases, hooks). Root-owned on the host."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from cleancut.config.base import Duration, Strict

SnapshotKind = Literal["image", "copy", "btrfs", "reflink"]
DatabaseKind = Literal["sqlite"]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]

#: Providers whose snapshot is written inside the volume's own file system: freezing it
#: would make the snapshot wait for the thaw, and the guest would wait for itself forever.
IN_PLACE_PROVIDERS = frozenset({"btrfs", "reflink"})


def _must_be_absolute(value: Path | None) -> Path | None:
    """``value`` unchanged, or an error when it is a relative path."""
    if value is not None and not value.is_absolute():
        raise ValueError(f"{value} is not an absolute path")
    return value


class Volume(Strict):
    """A mount point or directory whose contents one snapshot provider captures."""

    path: Path
    snapshot: SnapshotKind = "image"
    image: Path | None = None
    freeze: bool | None = None
    staging: Path | None = None

    @field_validator("path", "image", "staging")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{value} is not an absolute path")
        return value

    @model_validator(mode="after")
    def _freeze_fits_provider(self) -> Volume:
        if self.freeze and self.snapshot in IN_PLACE_PROVIDERS:
            raise ValueError(
                f'freeze = true cannot be combined with snapshot = "{self.snapshot}": '
                "that snapshot is written inside the frozen file system and would wait for "
                "the thaw forever; set freeze = false (consistency then comes from hooks and "
                'writers) or use snapshot = "image" or "copy"'
            )
        if self.image is not None and self.snapshot != "image":
            raise ValueError(
                f'"image" is only valid with snapshot = "image", not "{self.snapshot}"'
            )
        return self

    @property
    def frozen(self) -> bool:
        """Whether the volume's file system is frozen for the cut (the default where it is safe)."""
        if self.freeze is None:
            return self.snapshot not in IN_PLACE_PROVIDERS
        return self.freeze


class Database(Strict):
    """A database made consistent for the cut by a writer."""

    kind: DatabaseKind
    path: Path
    volume: Name

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{value} is not an absolute path")
        return value


class HookPins(Strict):
    """Expected SHA-256 digests of a hook's scripts."""

    pre: Sha256 | None = None
    post: Sha256 | None = None


class Hook(Strict):
    """A pre-/post-script pair, run as argv lists without a shell."""

    name: Name
    pre: list[str] | None = Field(default=None, min_length=1)
    post: list[str] | None = Field(default=None, min_length=1)
    timeout: Duration = 30.0
    retries: int = Field(default=0, ge=0, le=10)
    sha256: HookPins | None = None
    continue_on_failure: bool = False

    @field_validator("pre", "post")
    @classmethod
    def _absolute_program(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value[0].startswith("/"):
            raise ValueError(
                f"{value[0]!r} must be an absolute path: hooks run without a shell and without PATH"
            )
        return value

    @model_validator(mode="after")
    def _has_a_script(self) -> Hook:
        if self.pre is None and self.post is None:
            raise ValueError("a hook needs a pre or a post script (or both)")
        return self


class HooksImport(Strict):
    """Existing hook setups used unchanged."""

    azure: Path | None = None
    gcp: Path | None = None
    qemu_ga: Path | None = None

    @field_validator("azure", "gcp", "qemu_ga")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return _must_be_absolute(value)


class GuestConfig(Strict):
    """Everything one host offers to a cut."""

    volumes: dict[Name, Volume] = Field(default_factory=dict)
    databases: dict[Name, Database] = Field(default_factory=dict)
    hooks: list[Hook] = Field(default_factory=list)
    hooks_import: HooksImport = Field(default_factory=HooksImport)
    staging: Path = Path("/var/lib/cleancut/staging")
    allow_root_freeze: bool = False

    @field_validator("staging")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # the agent's working directory is the coordinator's: a relative path would move with it
        return _must_be_absolute(value) or value

    @model_validator(mode="after")
    def _references(self) -> GuestConfig:
        for name, db in self.databases.items():
            if db.volume not in self.volumes:
                known = ", ".join(sorted(self.volumes)) or "none declared"
                raise ValueError(
                    f"databases.{name}.volume: no volume named {db.volume!r} (volumes: {known})"
                )
        names = [hook.name for hook in self.hooks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"hooks: the name {duplicates[0]!r} is used twice")
        return self
