"""``cleancut catalog``: the local index of recovery points."""

from __future__ import annotations

from pathlib import Path

import typer

from cleancut.cli.common import APP_CONFIG, load, open_catalog, open_repository
from cleancut.cli.output import out

app = typer.Typer(help="The local index of recovery points.", no_args_is_help=True)


@app.command("rebuild")
def rebuild(config: Path = APP_CONFIG) -> None:
    """Recreate the local catalog from the repository alone (the manifests stored there)."""
    loaded = load(config)
    _access, mover = open_repository(loaded)
    count = open_catalog(loaded).rebuild(loaded.config.name, mover)
    out.print(f"catalog rebuilt: {count} recovery point(s) of {loaded.config.name}")
