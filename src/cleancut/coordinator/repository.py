"""Opening the application's repository: where it is and how its password is found.

``password_command`` runs a program named in the application file, as whoever runs the
coordinator (often root). So before it runs, the application file must pass the config
file rules (owned by root or the running user, no group/other write bit on it or a
folder above it) and the command the hook rules (every file it executes or reads).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cleancut.config.application import Repository
from cleancut.errors import ConfigError, HookSecurityError
from cleancut.guest.security import check_config_file, check_hook_command
from cleancut.mover.base import RepositoryAccess

_KEY = "repository.password_command"
#: The credential ``cleancut schedule install`` has systemd load (``LoadCredential=``).
CREDENTIAL = "repository-password"


def resolve_password(repo: Repository, *, config_file: str) -> str:
    """The repository password from password_file, password_command or RESTIC_PASSWORD.

    Under a scheduled unit, password_file is handed in as the systemd credential
    ``repository-password`` (the unit itself cannot read the path), so that copy is used.
    """
    if repo.password_file is not None:
        source = repo.password_file
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials and (Path(credentials) / CREDENTIAL).is_file():
            source = Path(credentials) / CREDENTIAL
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read {source}: {exc.strerror}",
                file=config_file,
                key="repository.password_file",
                hint="create the file with the repository password, mode 600",
            ) from exc
        password = text.rstrip("\r\n")
    elif repo.password_command is not None:
        password = run_password_command(repo.password_command, config_file=config_file)
    else:
        password = os.environ.get("RESTIC_PASSWORD", "")
        if not password:
            raise ConfigError(
                "no repository password",
                file=config_file,
                key="repository",
                hint="set password_file or password_command, or RESTIC_PASSWORD in the environment",
            )
    if not password:
        raise ConfigError("the repository password is empty", file=config_file, key="repository")
    return password


def run_password_command(argv: list[str], *, config_file: str) -> str:
    """The password ``argv`` prints, once the application file and the command pass the checks.

    The program runs from the descriptor its check opened (``/proc/self/fd/N``, so ``$0``
    of a script is that path), with the coordinator's environment: it may need the user's
    agent (gpg, pass). ``env`` in it searches that environment's PATH, which is checked.

    Raises:
        HookSecurityError: the application file or a file of the command fails the checks;
            the message names the file, the rule, ``repository.password_command`` and the fix.
        ConfigError: the command cannot start, times out or fails.
    """
    app_file = Path(config_file).absolute()
    try:
        check_config_file(app_file)
    except HookSecurityError as exc:
        rule = f"{exc.rule}, and {_KEY} in {app_file} runs a program as this user"
        raise HookSecurityError(exc.path, rule, exc.fix) from None
    try:
        program = check_hook_command(
            argv, cwd=Path.cwd(), search_path=os.environ.get("PATH", os.defpath)
        )
    except HookSecurityError as exc:
        rule = f"{exc.rule} ({_KEY} in {app_file} runs it)"
        raise HookSecurityError(exc.path, rule, exc.fix) from None
    with program:
        try:
            done = subprocess.run(
                argv,
                executable=f"/proc/self/fd/{program.fd}",
                pass_fds=(program.fd,),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"cannot run {argv[0]}: {exc}", file=config_file, key=_KEY) from exc
    if done.returncode != 0:
        raise ConfigError(
            f"exited with {done.returncode}: {done.stderr.strip()[-300:]}",
            file=config_file,
            key=_KEY,
        )
    return done.stdout.rstrip("\r\n")


def repository_access(repo: Repository, *, config_file: str) -> RepositoryAccess:
    return RepositoryAccess(repo.url, resolve_password(repo, config_file=config_file))
