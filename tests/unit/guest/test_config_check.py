"""``cleancut config check`` refuses hooks as the agent would, and says which rule a file broke."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from cleancut.cli.main import main
from tests.unit.guest import write_script

AZURE_TEMPLATE = Path("/work/shared/fixtures/azure/VMSnapshotScriptPluginConfig.json")


def write_files(folder: Path, guest_extra: str) -> Path:
    """An application file and its guest file in ``folder``; returns the application file."""
    (folder / "orders").mkdir()
    guest = folder / "guest.toml"
    guest.write_text(
        f'[volumes.orders]\npath = "{folder / "orders"}"\nsnapshot = "copy"\nfreeze = false\n'
        + guest_extra,
        encoding="utf-8",
    )
    guest.chmod(0o644)
    app = folder / "shop.toml"
    app.write_text(
        f'name = "shop"\n[repository]\nurl = "{folder / "repository"}"\n'
        '[hosts.app1]\nguest_config = "guest.toml"\n',
        encoding="utf-8",
    )
    return app


def config_check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, app: Path
) -> tuple[int, str]:
    """Exit code and stderr (on one line) of ``cleancut config check APP``."""
    monkeypatch.setattr(sys, "argv", ["cleancut", "config", "check", str(app)])
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, " ".join(capsys.readouterr().err.split())


def azure_config(folder: Path, mode: int, pre: Path | None = None) -> Path:
    path = folder / "VMSnapshotScriptPluginConfig.json"
    shutil.copyfile(AZURE_TEMPLATE, path)
    if pre is not None:
        text = path.read_text(encoding="utf-8")
        path.write_text(
            text.replace('"preScriptLocation" : ""', f'"preScriptLocation" : "{pre}"'),
            encoding="utf-8",
        )
    path.chmod(mode)
    return path


def test_azure_config_readable_by_others_names_azures_rule(
    trusted_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    azure = azure_config(trusted_dir, 0o644)
    app = write_files(trusted_dir, f'[hooks_import]\nazure = "{azure}"\n')
    code, err = config_check(capsys, monkeypatch, app)
    assert code == 2
    assert f"{azure}: refused: Azure Backup accepts only mode 0600 or stricter" in err
    assert f"(mode 0644); fix: chmod 600 {azure}" in err
    azure.chmod(0o600)
    assert config_check(capsys, monkeypatch, app)[0] == 0


def test_azure_script_readable_by_others_names_azures_rule(
    trusted_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pre = write_script(trusted_dir, "pre.sh", "true", mode=0o755)
    azure = azure_config(trusted_dir, 0o600, pre)
    app = write_files(trusted_dir, f'[hooks_import]\nazure = "{azure}"\n')
    code, err = config_check(capsys, monkeypatch, app)
    assert code == 2
    assert f"{pre}: refused: Azure Backup accepts only mode 0700 or stricter" in err
    assert f"fix: chmod 700 {pre}" in err
    pre.chmod(0o700)
    assert config_check(capsys, monkeypatch, app)[0] == 0


def test_script_handed_to_sh_is_checked_and_named(
    trusted_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = trusted_dir / "shared"
    shared.mkdir()
    script = write_script(shared, "quiesce.sh", "true")
    shared.chmod(0o777)
    app = write_files(trusted_dir, f'[[hooks]]\nname = "q"\npre = ["/bin/sh", "{script}"]\n')
    code, err = config_check(capsys, monkeypatch, app)
    assert code == 2
    assert f"{shared}: refused: parent directory is writable by group or others" in err
    assert f"{script} is named by argument 1 of /bin/sh" in err
    assert f"(hook 'q', its pre command /bin/sh {script}); fix: chmod go-w {shared}" in err
    shared.chmod(0o755)
    assert config_check(capsys, monkeypatch, app)[0] == 0
