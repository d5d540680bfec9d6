"""The guest config: what exists on one host (volumes, databases, hooks). Root-owned on the host."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from cleancut.config.base import Duration, Strict

SnapshotKind = Literal["image", "copy", "btrfs", "reflink", "external"]
DatabaseKind = Literal["sqlite", "postgresql", "mariadb", "mysql"]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
#: ``host/volume``: the application's host name, then that host's volume name.
VolumeRef = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"),
]

#: Providers whose snapshot is written inside the volume's own file system: freezing it
#: would make the snapshot wait for the thaw, and the guest would wait for itself forever.
IN_PLACE_PROVIDERS = frozenset({"btrfs", "reflink"})

#: The most ``max_freeze_timeout`` may allow, as the application's ``freeze_timeout``.
MAX_FREEZE_TIMEOUT_BOUND = 600.0


def _must_be_absolute(value: Path | None) -> Path | None:
    """``value`` unchanged, or an error when it is a relative path."""
    if value is not None and not value.is_absolute():
        raise ValueError(f"{value} is not an absolute path")
    return value


class Volume(Strict):
    """A mount point or directory whose contents one snapshot provider captures.

    ``snapshot = "external"``: another host makes the snapshot, the way a hypervisor or a
    cloud snapshots a VM's disk. This host only freezes the volume; the host that holds
    the disk image declares it under ``[disks]`` with ``backs = "THIS-HOST/VOLUME"``.
    """

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


class SqliteDatabase(Strict):
    """A SQLite database file, held with ``BEGIN IMMEDIATE`` for the cut."""

    kind: Literal["sqlite"]
    path: Path
    volume: Name

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{value} is not an absolute path")
        return value


class PostgresqlDatabase(Strict):
    """A PostgreSQL server, held with ``pg_backup_start`` for the cut.

    ``dsn`` is a libpq connection string or URI (a password belongs in a ``passfile=``,
    not in the config). ``volume`` holds the data directory; its WAL directory and every
    tablespace must lie in volumes of this host too, which hello checks against the
    running server. ``lock_timeout`` bounds ``CHECKPOINT`` and ``pg_backup_start``
    (never more than what is left of the cut's deadline).
    """

    kind: Literal["postgresql"]
    dsn: str = Field(min_length=1)
    volume: Name
    lock_timeout: Duration = 10.0


class MariadbDatabase(Strict):
    """A MariaDB or MySQL server, held with ``FLUSH TABLES WITH READ LOCK`` for the cut.

    Reached by ``socket`` or by ``host``/``port``, as ``user`` with the password read from
    ``password_file`` (if any). ``lock_timeout`` bounds the wait for the global read lock
    (a long query in the way): past it the lock is given up and the server never stays
    read-only.
    """

    kind: Literal["mariadb", "mysql"]
    socket: Path | None = None
    host: str | None = None
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = Field(default="root", min_length=1)
    password_file: Path | None = None
    volume: Name
    lock_timeout: Duration = 5.0

    @field_validator("socket", "password_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return _must_be_absolute(value)

    @model_validator(mode="after")
    def _one_way_in(self) -> MariadbDatabase:
        if (self.socket is None) == (self.host is None):
            raise ValueError(
                'give exactly one of socket = "/run/mysqld/mysqld.sock" or host = "ADDRESS" '
                "(with port) to reach the server"
            )
        return self


Database = Annotated[
    SqliteDatabase | PostgresqlDatabase | MariadbDatabase, Field(discriminator="kind")
]


class DiskImage(Strict):
    """A VM's disk image held on this host (a datastore, the hypervisor's view).

    ``backs`` names the host and volume whose file system lives in the image (the host's
    name in the application config): that host freezes the volume, this host clones the
    image (FICLONE, on the image's own file system) while it is frozen.
    """

    image: Path
    backs: VolumeRef
    staging: Path | None = None

    @field_validator("image", "staging")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return _must_be_absolute(value)


class HookPins(Strict):
    """Expected SHA-256 digests of a hook's scripts."""

    pre: Sha256 | None = None
    post: Sha256 | None = None


class Hook(Strict):
    """A pre-/post-script pair, run as argv lists without a shell.

    ``volumes`` names the volumes the hook quiesces: only those count as held by it when
    the cut's levels are judged. Omitted, it means every volume of the host, which is what
    the imported formats (Azure, GCP, qemu-ga) mean by a host-wide script.
    """

    name: Name
    pre: list[str] | None = Field(default=None, min_length=1)
    post: list[str] | None = Field(default=None, min_length=1)
    volumes: list[Name] | None = None
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

    @field_validator("volumes")
    @classmethod
    def _some_volume(cls, value: list[str] | None) -> list[str] | None:
        # an empty list would read as "every volume" in a report: say so instead of guessing
        if value is not None and not value:
            raise ValueError(
                "an empty list quiesces no volume; name the volumes the hook quiesces, "
                "or leave volumes out to mean every volume of this host"
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
    """Everything one host offers to a cut.

    ``max_freeze_timeout`` is this host's own bound on a cut: the longest ``freeze_timeout``
    a coordinator may ask it to hold writes for (its locks, its quiesced application, its
    frozen file systems). A request above it is refused before anything is touched, so
    whoever can reach the guest cannot make it stall the host for longer.
    """

    volumes: dict[Name, Volume] = Field(default_factory=dict)
    databases: dict[Name, Database] = Field(default_factory=dict)
    disks: dict[Name, DiskImage] = Field(default_factory=dict)
    hooks: list[Hook] = Field(default_factory=list)
    hooks_import: HooksImport = Field(default_factory=HooksImport)
    staging: Path = Path("/var/lib/cleancut/staging")
    allow_root_freeze: bool = False
    max_freeze_timeout: Duration = 60.0

    @field_validator("staging")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # the agent's working directory is the coordinator's: a relative path would move with it
        return _must_be_absolute(value) or value

    @field_validator("max_freeze_timeout")
    @classmethod
    def _bounded(cls, value: float) -> float:
        if value > MAX_FREEZE_TIMEOUT_BOUND:
            raise ValueError(
                "max_freeze_timeout above 10m would let a coordinator stall this host's "
                'writes too long; write at most "10m"'
            )
        return value

    @model_validator(mode="after")
    def _references(self) -> GuestConfig:
        known = ", ".join(sorted(self.volumes)) or "none declared"
        for name, db in self.databases.items():
            if db.volume not in self.volumes:
                raise ValueError(
                    f"databases.{name}.volume: no volume named {db.volume!r} (volumes: {known})"
                )
            if isinstance(db, SqliteDatabase):
                _database_inside_volume(name, db, self.volumes[db.volume])
        for index, hook in enumerate(self.hooks):
            unknown = [v for v in hook.volumes or [] if v not in self.volumes]
            if unknown:
                raise ValueError(
                    f"hooks.{index}.volumes (hook {hook.name}): no volume named "
                    f"{unknown[0]!r} (volumes: {known})"
                )
        for name in self.disks:
            if name in self.volumes:
                raise ValueError(
                    f"disks.{name}: a volume is called {name!r} too; give the disk another name"
                )
        backed = [disk.backs for disk in self.disks.values()]
        twice = sorted({ref for ref in backed if backed.count(ref) > 1})
        if twice:
            raise ValueError(f"disks: two disks back the same volume {twice[0]!r}")
        names = [hook.name for hook in self.hooks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"hooks: the name {duplicates[0]!r} is used twice")
        return self


def _database_inside_volume(name: str, db: SqliteDatabase, volume: Volume) -> None:
    """Refuse a database whose file lies outside its volume: that volume's snapshot would
    not contain it, and the writer would hold a database nobody captures."""
    path = PurePosixPath(os.path.normpath(db.path))
    root = PurePosixPath(os.path.normpath(volume.path))
    if not path.is_relative_to(root):
        raise ValueError(
            f"databases.{name}.path: {db.path} is not inside volume {db.volume!r} "
            f"({volume.path}); move the database into {volume.path} or set "
            "volume to the volume whose path holds it"
        )
