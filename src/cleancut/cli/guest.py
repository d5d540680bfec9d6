"""``cleancut guest``: the guest agent, serving the cut protocol on stdin/stdout."""

from __future__ import annotations

from pathlib import Path

import typer

from cleancut.guest.agent import run_agent

DEFAULT_GUEST_CONFIG = Path("/etc/cleancut/guest.toml")


def guest(
    config: Path = typer.Option(
        DEFAULT_GUEST_CONFIG, "--config", "-c", help="The guest config of this host (root-owned)."
    ),
) -> None:
    """Run the guest agent: the cut protocol as JSON lines on stdin/stdout.

    The coordinator starts this itself (as a child process, or over SSH as the forced
    command of its backup key); you run it by hand only to debug. Every hold it takes (a
    quiesce pre-script, a database lock, a frozen file system) ends within the cut's
    freeze_timeout, counted from the first hold: it thaws, ends the database holds and
    runs the post-scripts at that deadline, when its input closes, when it is asked to
    release and when it gets SIGTERM, SIGINT or SIGHUP. It refuses a freeze_timeout above
    max_freeze_timeout of its guest config.
    """
    code = run_agent(config)
    if code:
        raise typer.Exit(code)
