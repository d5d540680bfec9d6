"""What several commands share: loading the application, its repository and its catalog."""

from __future__ import annotations

from pathlib import Path

import typer

from cleancut.catalog import Catalog, default_catalog_path
from cleancut.cli.output import err
from cleancut.config.load import LoadedApp, load_app
from cleancut.coordinator.repository import repository_access
from cleancut.monitoring.tracked import TrackedRun
from cleancut.mover.base import Mover, RepositoryAccess
from cleancut.mover.restic import ResticMover

APP_CONFIG = typer.Argument(
    ..., help="The application config file (e.g. shop.toml).", show_default=False
)
JSON = typer.Option(False, "--json", help="Print JSON (one object per line) instead of tables.")
WAIT = typer.Option(
    False,
    "--wait",
    help="When another run of the application (backup, forget, check, verify) is in progress on "
    "this machine, wait for it to finish instead of failing with exit code 11.",
)


def open_repository(loaded: LoadedApp) -> tuple[RepositoryAccess, ResticMover]:
    access = repository_access(loaded.config.repository, config_file=str(loaded.path))
    return access, ResticMover(access)


def open_catalog(loaded: LoadedApp) -> Catalog:
    return Catalog(loaded.config.catalog or default_catalog_path(loaded.config.name))


def load(path: Path) -> LoadedApp:
    return load_app(path)


def tracked(
    loaded: LoadedApp, action: str, catalog: Catalog, mover: Mover | None = None
) -> TrackedRun:
    """The run log and [monitoring] around one run of ``action`` (see TrackedRun); with
    ``mover``, the repository's size is measured afterwards (when [monitoring] is set)."""
    return TrackedRun(
        loaded,
        action,
        catalog,
        warn=lambda text: err.print(text, markup=False),
        measure_repository=None if mover is None else mover.repository_size,
    )
