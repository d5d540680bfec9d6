"""What several commands share: loading the application, its repository and its catalog."""

from __future__ import annotations

from pathlib import Path

import typer

from cleancut.catalog import Catalog, default_catalog_path
from cleancut.config.load import LoadedApp, load_app
from cleancut.coordinator.repository import repository_access
from cleancut.mover.base import RepositoryAccess
from cleancut.mover.restic import ResticMover

APP_CONFIG = typer.Argument(
    ..., help="The application config file (e.g. shop.toml).", show_default=False
)
JSON = typer.Option(False, "--json", help="Print JSON (one object per line) instead of tables.")
WAIT = typer.Option(
    False,
    "--wait",
    help="When another run of the application (backup, forget, verify) is in progress on "
    "this machine, wait for it to finish instead of failing with exit code 11.",
)


def open_repository(loaded: LoadedApp) -> tuple[RepositoryAccess, ResticMover]:
    access = repository_access(loaded.config.repository, config_file=str(loaded.path))
    return access, ResticMover(access)


def open_catalog(loaded: LoadedApp) -> Catalog:
    return Catalog(loaded.config.catalog or default_catalog_path(loaded.config.name))


def load(path: Path) -> LoadedApp:
    return load_app(path)
