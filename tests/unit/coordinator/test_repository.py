"""The repository password: password_command runs only from a checked file, checked itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleancut.config.application import Repository
from cleancut.coordinator.repository import resolve_password
from cleancut.errors import ConfigError, HookSecurityError
from tests.unit.guest import write_script


def app_file(folder: Path, mode: int = 0o644) -> Path:
    path = folder / "shop.toml"
    path.write_text("# the application file that names password_command\n", encoding="utf-8")
    path.chmod(mode)
    return path


def password_of(command: list[str], config: Path) -> str:
    repo = Repository(url="/srv/repository", password_command=command)
    return resolve_password(repo, config_file=str(config))


def test_a_checked_command_gives_the_password(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "pw", 'echo "s3cret $1"')
    assert password_of([str(script), "shop"], app_file(trusted_dir)) == "s3cret shop"
    data = write_script(trusted_dir, "pw.sh", "echo from-sh", mode=0o600)
    assert password_of(["/bin/sh", str(data)], app_file(trusted_dir)) == "from-sh"


def test_application_file_others_may_change_is_refused(trusted_dir: Path) -> None:
    marker = trusted_dir / "ran"
    script = write_script(trusted_dir, "pw", f"touch {marker}; echo x")
    config = app_file(trusted_dir, 0o666)
    with pytest.raises(HookSecurityError) as caught:
        password_of([str(script)], config)
    assert caught.value.path == str(config)
    assert "writable by group or others (mode 0666)" in caught.value.rule
    assert f"repository.password_command in {config} runs a program" in caught.value.rule
    assert caught.value.fix == f"chmod go-w {config}"
    assert not marker.exists()


def test_application_file_in_a_writable_folder_is_refused(trusted_dir: Path) -> None:
    shared = trusted_dir / "shared"
    shared.mkdir()
    script = write_script(trusted_dir, "pw", "echo x")
    config = app_file(shared)
    shared.chmod(0o777)
    with pytest.raises(HookSecurityError) as caught:
        password_of([str(script)], config)
    assert caught.value.path == str(shared)
    assert "repository.password_command" in caught.value.rule


@pytest.mark.parametrize("prefix", [[], ["/bin/sh"], ["/usr/bin/env", "sh"]])
def test_command_in_a_writable_folder_is_refused(trusted_dir: Path, prefix: list[str]) -> None:
    shared = trusted_dir / "shared"
    shared.mkdir()
    marker = trusted_dir / "ran"
    script = write_script(shared, "pw", f"touch {marker}; echo x")
    shared.chmod(0o777)
    config = app_file(trusted_dir)
    with pytest.raises(HookSecurityError) as caught:
        password_of([*prefix, str(script)], config)
    assert caught.value.path == str(shared)
    assert f"(repository.password_command in {config} runs it)" in caught.value.rule
    assert caught.value.fix == f"chmod go-w {shared}"
    assert not marker.exists()


def test_command_by_bare_name_or_failing_is_a_clear_error(trusted_dir: Path) -> None:
    config = app_file(trusted_dir)
    with pytest.raises(HookSecurityError, match="not an absolute path"):
        password_of(["echo", "x"], config)
    failing = write_script(trusted_dir, "pw", "echo nope >&2; exit 3")
    with pytest.raises(ConfigError) as caught:
        password_of([str(failing)], config)
    assert caught.value.key == "repository.password_command"
    assert "exited with 3: nope" in caught.value.message


def test_plain_words_are_no_files_even_where_anyone_may_write(
    trusted_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cleancut backup` may be run from /tmp: ``pass show backup/shop`` names no file
    there, so the shared folder is no reason to refuse it (a file it names still would be)."""
    monkeypatch.chdir("/tmp")
    script = write_script(trusted_dir, "pw", 'echo "$1 $2"')
    assert password_of([str(script), "show", "backup/shop"], app_file(trusted_dir)) == (
        "show backup/shop"
    )
