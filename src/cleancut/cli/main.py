"""The ``cleancut`` command. ``main()`` is the one place that turns exceptions into exit codes."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from cleancut import __version__, signals
from cleancut.cli import (
    backup,
    catalog_cmd,
    check,
    config_cmd,
    demo,
    forget,
    guest,
    logs,
    points,
    restore,
    schedule,
    status,
    verify,
)
from cleancut.cli.output import err
from cleancut.errors import CleancutError, Interrupted

app = typer.Typer(
    name="cleancut",
    help=(
        "Application-consistent backups of whole applications: the VMs' disks, the databases "
        "on them and the file shares they use, captured at one consistent cut and restored "
        "so that everything starts without clean-up and agrees with itself."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(catalog_cmd.app, name="catalog")
app.add_typer(schedule.app, name="schedule")
app.command("backup")(backup.backup)
app.command("points")(points.points)
app.command("restore")(restore.restore)
app.command("verify")(verify.verify)
app.command("forget")(forget.forget)
app.command("check")(check.check)
app.command("status")(status.status)
app.command("metrics")(status.metrics)
app.add_typer(guest.app, name="guest")
app.command("demo")(demo.demo)


def _version(value: bool) -> None:
    if value:
        print(f"cleancut {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    log_json: bool = typer.Option(
        False,
        "--log-json",
        help="Write stderr as one JSON object per line (time, level, message). May be given "
        "anywhere on the command line, as may -v and -q.",
    ),
    verbose: int = typer.Option(
        0,
        "-v",
        "--verbose",
        count=True,
        show_default=False,
        help="Say more: every restic command, every connection.",
    ),
    quiet: bool = typer.Option(
        False, "-q", "--quiet", help="Say only warnings and errors on stderr (no progress)."
    ),
) -> None:
    """Application-consistent backups of whole applications at one consistent cut."""


def main() -> None:
    """Run the CLI; map cleancut's errors to their exit codes with a one-line message."""
    signals.install()  # SIGTERM/SIGHUP unwind like Ctrl-C: every host is released first
    argv, options = logs.split(sys.argv[1:])  # --log-json, -v, -q: anywhere on the line
    logs.configure(options)
    try:
        app(args=argv, prog_name="cleancut")  # also under `python -m cleancut`
    except Interrupted as exc:
        err.print(escape(exc.message))
        sys.exit(exc.exit_code)
    except CleancutError as exc:
        err.print(f"[bold red]error:[/] {escape(exc.message)}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except signals.StopSignal as exc:
        err.print(f"stopped by signal {exc.signum}")
        sys.exit(128 + exc.signum)
