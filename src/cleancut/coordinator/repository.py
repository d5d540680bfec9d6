"""Opening the application's repository: where it is and how its password is found."""

from __future__ import annotations

import os
import subprocess

from cleancut.config.application import Repository
from cleancut.errors import ConfigError
from cleancut.mover.base import RepositoryAccess


def resolve_password(repo: Repository, *, config_file: str) -> str:
    """The repository password from password_file, password_command or RESTIC_PASSWORD."""
    if repo.password_file is not None:
        try:
            text = repo.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read {repo.password_file}: {exc.strerror}",
                file=config_file,
                key="repository.password_file",
                hint="create the file with the repository password, mode 600",
            ) from exc
        password = text.rstrip("\r\n")
    elif repo.password_command is not None:
        try:
            done = subprocess.run(
                repo.password_command, capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(
                f"cannot run {repo.password_command[0]}: {exc}",
                file=config_file,
                key="repository.password_command",
            ) from exc
        if done.returncode != 0:
            raise ConfigError(
                f"exited with {done.returncode}: {done.stderr.strip()[-300:]}",
                file=config_file,
                key="repository.password_command",
            )
        password = done.stdout.rstrip("\r\n")
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


def repository_access(repo: Repository, *, config_file: str) -> RepositoryAccess:
    return RepositoryAccess(repo.url, resolve_password(repo, config_file=config_file))
