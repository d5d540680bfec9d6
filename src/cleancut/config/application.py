"""The application config: one consistency group, its repository and its hosts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from cleancut.config.base import Duration, Strict
from cleancut.config.operations import Monitoring, Schedule
from cleancut.levels import Level

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


#: ``ssh://[user@]address[:port]``: the user, an address or name, an optional port.
_SSH_URL = re.compile(
    r"^ssh://(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]*)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*)(?::(?P<port>[0-9]{1,5}))?$"
)


@dataclass(frozen=True)
class SshTarget:
    """Where ``connect = "ssh://…"`` points."""

    user: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


class Host(Strict):
    """A machine holding resources, and how to reach its guest agent.

    ``connect = "local"`` runs the agent as a child process with ``guest_config``.
    ``connect = "ssh://user@address:port"`` runs it through OpenSSH: the guest config is
    then chosen on the host, by the forced command of the backup key (``cleancut guest
    authorize``), never by the coordinator. Host keys are always checked against
    ``known_hosts`` (required); only ``accept_new_host_key = true`` (or ``--accept-new-host-keys``)
    lets a host that is not in it yet be added on first contact.
    """

    connect: str = "local"
    guest_config: Path | None = None
    identity_file: Path | None = None
    known_hosts: Path | None = None
    accept_new_host_key: bool = False
    connect_timeout: Duration = 10.0
    keepalive_interval: Duration = 5.0
    keepalive_count: int = Field(default=3, ge=1, le=100)

    @field_validator("connect")
    @classmethod
    def _known_transport(cls, value: str) -> str:
        if value == "local":
            return value
        if not value.startswith("ssh://"):
            raise ValueError(
                f'{value!r} is not a transport: use "local" or "ssh://user@address:port"'
            )
        match = _SSH_URL.match(value)
        if match is None or (match["port"] and not 0 < int(match["port"]) < 65536):
            raise ValueError(
                f'{value!r} is not an SSH address: write "ssh://user@address:port" '
                '(user and port optional; e.g. "ssh://root@198.18.0.11:22")'
            )
        return value

    @model_validator(mode="after")
    def _fits_transport(self) -> Host:
        if self.connect == "local":
            if self.guest_config is None:
                raise ValueError('connect = "local" needs guest_config (the path of guest.toml)')
            ssh_only = [
                key for key in ("identity_file", "known_hosts") if getattr(self, key) is not None
            ]
            if ssh_only:
                raise ValueError(f'{ssh_only[0]} is only used with connect = "ssh://…"')
            return self
        if self.guest_config is not None:
            raise ValueError(
                "guest_config cannot be given for an SSH host: the host's own authorized_keys "
                "line (its forced command, see `cleancut guest authorize`) decides which guest "
                "config runs; remove guest_config"
            )
        if self.known_hosts is None:
            raise ValueError(
                "an SSH host needs known_hosts (a file with its host key): cleancut never "
                "connects to a host whose key it cannot check; e.g. ssh-keyscan the host "
                "once into a file you trust, or set accept_new_host_key = true for the first run"
            )
        return self

    @property
    def ssh(self) -> SshTarget | None:
        """The SSH target, or None for a local host."""
        match = _SSH_URL.match(self.connect)
        if match is None:
            return None
        address = match["host"].strip("[]")
        return SshTarget(match["user"] or "root", address, int(match["port"] or 22))


class AppCheck(Strict):
    """One of the application's own checks, run by ``cleancut verify`` on a restored RP.

    ``run`` is an argv list (no shell), run in the application file's folder, with each
    restored database as ``CLEANCUT_DB_<NAME>`` and each restored volume as
    ``CLEANCUT_VOLUME_<NAME>`` in its environment; exit status 0 means it passed.
    """

    name: str = Field(min_length=1, max_length=200)
    run: list[str] = Field(min_length=1)
    timeout: Duration = 300.0


class Retention(Strict):
    """``[retention]``: which recovery points ``cleancut forget`` keeps, decided per RP
    with restic's rules (see :mod:`cleancut.retention`); counts of 0 leave a rule out."""

    keep_last: int = Field(default=0, ge=0)
    keep_hourly: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    keep_monthly: int = Field(default=0, ge=0)
    keep_yearly: int = Field(default=0, ge=0)
    keep_within: Duration | None = None
    keep_only: Level | None = None

    @model_validator(mode="after")
    def _keeps_something(self) -> Retention:
        rules = (self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly)
        if not any(rules) and not (self.keep_monthly or self.keep_yearly or self.keep_within):
            raise ValueError(
                "no rule keeps anything, so forget would remove every recovery point; set "
                "at least one of keep_last, keep_hourly, ..., keep_yearly or keep_within (e.g. "
                "keep_daily = 7)"
            )
        return self


class AppConfig(Strict):
    """One application: everything captured at one cut."""

    name: AppName
    freeze_timeout: Duration = 10.0
    on_failure: Literal["abort", "degrade"] = "abort"
    catalog: Path | None = None
    repository: Repository
    hosts: dict[HostName, Host] = Field(min_length=1)
    checks: list[AppCheck] = Field(default_factory=list)
    retention: Retention | None = None
    schedule: Schedule | None = None
    monitoring: Monitoring | None = None

    @field_validator("freeze_timeout")
    @classmethod
    def _bounded(cls, value: float) -> float:
        if value > 600:
            raise ValueError("freeze_timeout above 10m would let a host stall writes too long")
        return value

    @field_validator("checks")
    @classmethod
    def _unique_check_names(cls, value: list[AppCheck]) -> list[AppCheck]:
        names = [check.name for check in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"checks: the name {twice[0]!r} is used twice")
        return value
