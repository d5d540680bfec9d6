"""The application config: one consistency group, its repository and its hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from cleancut.config.base import Duration, Strict

AppName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)]
HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]


class Repository(Strict):
    """Where recovery points go: any restic repository URL and how to unlock it."""

    url: str = Field(min_length=1)
    password_file: Path | None = None
    password_command: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_password_source(self) -> Repository:
        if self.password_file is not None and self.password_command is not None:
            raise ValueError("give password_file or password_command, not both")
        return self


class Host(Strict):
    """A machine holding resources, and how to reach its guest agent."""

    connect: Literal["local"] = "local"
    guest_config: Path


class AppConfig(Strict):
    """One application: everything captured at one cut."""

    name: AppName
    freeze_timeout: Duration = 10.0
    on_failure: Literal["abort", "degrade"] = "abort"
    catalog: Path | None = None
    repository: Repository
    hosts: dict[HostName, Host] = Field(min_length=1)

    @field_validator("freeze_timeout")
    @classmethod
    def _bounded(cls, value: float) -> float:
        if value > 600:
            raise ValueError("freeze_timeout above 10m would let a host stall writes too long")
        return value
