"""``cleancut guest``: the guest agent on stdin/stdout, and the line that lets a backup key in."""

from __future__ import annotations

import base64
import binascii
import os
import re
import sys
from pathlib import Path

import typer

from cleancut.errors import ConfigError
from cleancut.guest.agent import run_agent
from cleancut.transport.ssh import REMOTE_COMMAND

DEFAULT_GUEST_CONFIG = Path("/etc/cleancut/guest.toml")

#: Key types OpenSSH accepts in authorized_keys.
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
#: What a path in the forced command may contain: sshd runs it through the user's shell.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+@,=-]+$")
_SAFE_FROM = re.compile(r"^[A-Za-z0-9.:*?!/,-]+$")

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback()
def guest(
    ctx: typer.Context,
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

    Run over SSH, it refuses any command but the agent's: a backup key can run nothing else.
    """
    if ctx.invoked_subcommand is not None:
        return
    asked = os.environ.get("SSH_ORIGINAL_COMMAND")
    if asked is not None and asked.strip() not in ("", REMOTE_COMMAND):
        print(
            f"cleancut guest: refused: this key runs only the cleancut guest agent, "
            f"not {asked[:200]!r}",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    code = run_agent(config)
    if code:
        raise typer.Exit(code)


@app.command("authorize")
def authorize(
    public_key: str = typer.Argument(
        ...,
        metavar="PUBKEY",
        help="The coordinator's public key: a .pub file, or the key line itself.",
    ),
    config: Path = typer.Option(
        DEFAULT_GUEST_CONFIG, "--config", "-c", help="The guest config the key may run."
    ),
    source: str | None = typer.Option(
        None,
        "--from",
        help='Only accept the key from these addresses (sshd\'s from="…"), e.g. 198.18.0.1.',
    ),
) -> None:
    """Print the authorized_keys line that lets the coordinator's backup key in.

    The line forces the command (this host's guest agent, with this guest config) and
    sets `restrict`: no terminal, no port, agent or X11 forwarding. Whatever command the
    client asks for, the key runs only the agent. Append the line to the backup user's
    ~/.ssh/authorized_keys on this host (the user must be root: only root can freeze).
    """
    key = _public_key(public_key)
    guest_config = config.absolute()
    if not guest_config.is_file():
        raise ConfigError(
            "no such file", file=str(guest_config), hint="give --config the host's guest.toml"
        )
    command = _forced_command(guest_config)
    options = [f'command="{command}"', "restrict"]
    if source is not None:
        if not _SAFE_FROM.match(source):
            raise ConfigError(
                f"--from {source!r}: not a list of addresses or patterns",
                hint="e.g. --from 198.18.0.1 or --from '198.18.0.0/15'",
            )
        options.insert(0, f'from="{source}"')
    print(f"{','.join(options)} {key}")


def _forced_command(guest_config: Path) -> str:
    python = Path(sys.executable).absolute()
    for what, path in (("the Python interpreter", python), ("--config", guest_config)):
        if not _SAFE_PATH.match(str(path)):
            raise ConfigError(
                f"{what} {path}: the path holds characters a forced command cannot carry "
                "safely (sshd runs it through the shell)",
                hint="use a path of letters, digits and ./_+@,=- only",
            )
    return f"{python} -I -m cleancut guest --config {guest_config}"


def _public_key(value: str) -> str:
    """``value`` as one OpenSSH public key line ``TYPE BASE64 [COMMENT]``, checked."""
    text = value
    where = "PUBKEY"
    if not value.lstrip().startswith(tuple(KEY_TYPES)):
        path = Path(value)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"PUBKEY {value!r} is neither a public key line nor a readable file "
                f"({exc.strerror})",
                hint="give the .pub file (e.g. ~/.ssh/cleancut_backup.pub) or its contents",
            ) from None
        where = str(path)
    if "PRIVATE KEY" in text:
        raise ConfigError(
            f"{where} is a private key: never hand it to a host",
            hint="give its .pub file (the public half) instead",
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ConfigError(
            f"{where}: expected one public key line, found {len(lines)}",
            hint="give the .pub file of one key",
        )
    fields = lines[0].split(None, 2)
    if len(fields) < 2 or fields[0] not in KEY_TYPES:
        raise ConfigError(
            f"{where}: not an OpenSSH public key (a private key, or options in front?)",
            hint=f"the line must start with one of: {', '.join(sorted(KEY_TYPES))}",
        )
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: the key's base64 is damaged") from None
    if not blob[4:].startswith(fields[0].encode()):
        raise ConfigError(f"{where}: the key data says another type than {fields[0]}")
    comment = fields[2] if len(fields) == 3 else ""
    if any(ch in comment for ch in '"\n\r'):
        raise ConfigError(f"{where}: the key's comment holds quotes or line breaks")
    return " ".join(f for f in (fields[0], fields[1], comment) if f)
