"""``cleancut restore``: every resource of one recovery point."""

from __future__ import annotations

from pathlib import Path

import typer

from cleancut.cli.common import APP_CONFIG, JSON, load, open_catalog, open_repository
from cleancut.cli.output import emit_json, out, progress_bars
from cleancut.errors import CleancutError, RestoreRefused
from cleancut.restore import restore_in_place, restore_rp


def restore(
    config: Path = APP_CONFIG,
    rp: str = typer.Argument(
        "latest", help="The recovery point id (a unique prefix will do) or 'latest'."
    ),
    to: Path | None = typer.Option(None, "--to", help="Restore under DIR/<host>/<resource>."),
    extract: bool = typer.Option(
        False, "--extract", help="Also copy the files out of restored disk images (needs root)."
    ),
    in_place: bool = typer.Option(
        False,
        "--in-place",
        help="Without --to: put every resource back where it came from (disk images only "
        "while detached). With --to: allow a target that overlaps live data.",
    ),
    json_output: bool = JSON,
) -> None:
    """Restore every resource of one recovery point and check it.

    Disk images come back as DIR/<host>/<volume>.img and are checked with e2fsck -n /
    xfs_repair -n; trees (and, with --extract, the files inside images) come back in
    DIR/<host>/<volume>/, where every SQLite database must pass PRAGMA integrity_check.
    --in-place without --to puts every resource back where it came from: stop the
    application first. Exit code 0 when every check passed, 1 otherwise.
    """
    if to is None and not in_place:
        raise RestoreRefused(
            "without --to the restore would overwrite the live volumes; give --to DIR to "
            "restore beside them, or --in-place to put every resource back where it came from"
        )
    loaded = load(config)
    _access, mover = open_repository(loaded)
    entry = open_catalog(loaded).get(loaded.config.name, rp)
    with progress_bars(not json_output) as bars:
        sink = bars.update if bars is not None else None
        if to is None:
            report = restore_in_place(entry.manifest, mover, progress=sink)
        else:
            report = restore_rp(
                entry.manifest, mover, to, extract=extract, in_place=in_place, progress=sink
            )
    if json_output:
        emit_json("restore", report.as_dict())
    else:
        out.print(f"restored {report.rp_id} to {report.target}", markup=False)
        for m in report.members:
            fsck = {True: "fsck ok", False: "FSCK FAILED", None: ""}[m.fsck_ok]
            dbs = ", ".join(f"{n}: {'ok' if ok else 'CORRUPT'}" for n, ok in m.databases.items())
            out.print(f"  {m.host}/{m.resource:<12} {m.path}  {fsck}  {dbs}", markup=False)
    if not report.ok:
        raise CleancutError("restored, but a check failed (see above)")
