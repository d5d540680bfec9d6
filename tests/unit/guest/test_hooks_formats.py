"""The four hook formats parsed into HookSpecs, from real files (Azure's template unchanged)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cleancut.config.guest import GuestConfig
from cleancut.errors import ConfigError, HookSecurityError
from cleancut.guest.hooks import collect_hooks
from cleancut.guest.hooks.azure import azure_specs
from cleancut.guest.hooks.gcp import gcp_specs
from cleancut.guest.hooks.qemu_ga import qemu_ga_specs
from tests.unit.guest import write_script

AZURE_TEMPLATE = Path("/work/shared/fixtures/azure/VMSnapshotScriptPluginConfig.json")


def azure_copy(folder: Path, replace: dict[str, str] | None = None) -> Path:
    """Azure's template copied into ``folder`` (mode 600), with text replacements applied."""
    path = folder / "VMSnapshotScriptPluginConfig.json"
    shutil.copyfile(AZURE_TEMPLATE, path)
    text = path.read_text(encoding="utf-8")
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def azure_with(folder: Path, **changes: Any) -> Path:
    """Azure's template as JSON with keys changed (for the error cases)."""
    data = json.loads(AZURE_TEMPLATE.read_text(encoding="utf-8"))
    data.update(changes)
    path = folder / "azure.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    path.chmod(0o600)
    return path


def test_native_hooks_keep_every_setting() -> None:
    config = GuestConfig.model_validate(
        {
            "hooks": [
                {
                    "name": "db",
                    "pre": ["/x/pre", "-q"],
                    "timeout": "5s",
                    "retries": 2,
                    "sha256": {"pre": "a" * 64},
                    "continue_on_failure": True,
                }
            ]
        }
    )
    [spec] = collect_hooks(config)
    assert (spec.name, spec.source, spec.pre, spec.post) == ("db", "native", ["/x/pre", "-q"], None)
    assert (spec.timeout, spec.pre_retries, spec.post_retries) == (5.0, 2, 2)
    assert (spec.pre_sha256, spec.post_sha256) == ("a" * 64, None)
    assert spec.continue_on_failure and spec.freeze


def test_azure_template_is_accepted_unchanged(trusted_dir: Path) -> None:
    [spec] = azure_specs(azure_copy(trusted_dir))
    assert (spec.name, spec.source, spec.pre, spec.post) == ("azure", "azure", None, None)
    assert (spec.timeout, spec.pre_retries, spec.post_retries) == (30.0, 0, 0)
    assert spec.continue_on_failure is True
    assert spec.freeze is True
    assert spec.details["poll_seconds"] == 3


def test_azure_filled_in_gives_scripts_params_and_freeze(trusted_dir: Path) -> None:
    path = azure_copy(
        trusted_dir,
        {
            '"preScriptLocation" : ""': '"preScriptLocation" : "/opt/app/pre.sh"',
            '"postScriptLocation" : ""': '"postScriptLocation" : "/opt/app/post.sh"',
            '"preScriptParams" : ["", ""]': '"preScriptParams" : ["--db", ""]',
            '"postScriptNoOfRetries" : 0': '"postScriptNoOfRetries" : 2',
            '"timeoutInSeconds" : 30': '"timeoutInSeconds" : 1800',
            '"continueBackupOnFailure" : true': '"continueBackupOnFailure" : false',
            '"fsFreezeEnabled" : true': '"fsFreezeEnabled" : false',
        },
    )
    [spec] = azure_specs(path)
    assert spec.pre == ["/opt/app/pre.sh", "--db"]
    assert spec.post == ["/opt/app/post.sh"]
    assert (spec.timeout, spec.pre_retries, spec.post_retries) == (1800.0, 0, 2)
    assert spec.continue_on_failure is False
    assert spec.freeze is False


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"preScriptTimeout": 5}, "preScriptTimeout"),
        ({"timeoutInSeconds": "30"}, "timeoutInSeconds"),
        ({"timeoutInSeconds": 0}, "timeoutInSeconds"),
        ({"timeoutInSeconds": 1801}, "timeoutInSeconds"),
        ({"fsFreezeEnabled": 1}, "fsFreezeEnabled"),
        ({"preScriptNoOfRetries": True}, "preScriptNoOfRetries"),
        ({"postScriptParams": [1]}, "postScriptParams"),
        ({"pluginName": "Other"}, "pluginName"),
        ({"preScriptLocation": "pre.sh"}, "preScriptLocation"),
        ({"postScriptParams": ["-x"]}, "postScriptParams"),
    ],
)
def test_azure_errors_name_file_and_key(
    trusted_dir: Path, changes: dict[str, Any], key: str
) -> None:
    path = azure_with(trusted_dir, **changes)
    with pytest.raises(ConfigError) as caught:
        azure_specs(path)
    assert caught.value.key == key
    assert caught.value.file == str(path)


def test_azure_invalid_json_and_bad_mode(trusted_dir: Path) -> None:
    path = trusted_dir / "azure.json"
    path.write_text("{not json", encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not valid JSON"):
        azure_specs(path)
    writable = azure_copy(trusted_dir)
    writable.chmod(0o666)
    with pytest.raises(HookSecurityError, match="writable by group or others"):
        azure_specs(writable)


def test_gcp_pre_and_post(trusted_dir: Path) -> None:
    pre = write_script(trusted_dir, "pre.sh", "true")
    [spec] = gcp_specs(trusted_dir, disks="data,logs")
    assert (spec.pre, spec.post) == ([str(pre), "data,logs"], None)
    assert spec.timeout == 60.0 and not spec.continue_on_failure
    post = write_script(trusted_dir, "post.sh", "true")
    [spec] = gcp_specs(trusted_dir)
    assert (spec.pre, spec.post) == ([str(pre), ""], [str(post), ""])


def test_gcp_without_scripts_is_an_error(trusted_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"neither pre\.sh nor post\.sh"):
        gcp_specs(trusted_dir)
    with pytest.raises(ConfigError, match="is not a folder"):
        gcp_specs(trusted_dir / "missing")


def test_qemu_ga_takes_executables_in_name_order(trusted_dir: Path) -> None:
    b = write_script(trusted_dir, "20-b", "true")
    a = write_script(trusted_dir, "10-a", "true")
    write_script(trusted_dir, "30-notes", "true", mode=0o644)
    write_script(trusted_dir, ".hidden", "true")
    write_script(trusted_dir, "10-a~", "true")
    write_script(trusted_dir, "10-a.dpkg-old", "true")
    (trusted_dir / "40-dir").mkdir()
    specs = qemu_ga_specs(trusted_dir)
    assert [s.name for s in specs] == ["qemu_ga/10-a", "qemu_ga/20-b"]
    assert specs[0].pre == [str(a), "freeze"] and specs[0].post == [str(a), "thaw"]
    assert specs[1].pre == [str(b), "freeze"]
    assert all(s.source == "qemu_ga" for s in specs)


def test_qemu_ga_missing_folder_is_an_error(trusted_dir: Path) -> None:
    with pytest.raises(ConfigError, match="cannot list"):
        qemu_ga_specs(trusted_dir / "missing")


def test_collect_hooks_order(trusted_dir: Path) -> None:
    gcp, qemu = trusted_dir / "gcp", trusted_dir / "qemu"
    gcp.mkdir()
    qemu.mkdir()
    write_script(gcp, "post.sh", "true")
    write_script(qemu, "app", "true")
    config = GuestConfig.model_validate(
        {
            "hooks": [{"name": "n1", "pre": ["/a"]}, {"name": "n2", "post": ["/b"]}],
            "hooks_import": {
                "azure": str(azure_copy(trusted_dir)),
                "gcp": str(gcp),
                "qemu_ga": str(qemu),
            },
        }
    )
    specs = collect_hooks(config)
    assert [(s.source, s.name) for s in specs] == [
        ("native", "n1"),
        ("native", "n2"),
        ("azure", "azure"),
        ("gcp", "gcp"),
        ("qemu_ga", "qemu_ga/app"),
    ]


# -- Azure's own permission rules for Azure's files --------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o444])
def test_azure_config_with_any_group_or_other_bit_is_refused(trusted_dir: Path, mode: int) -> None:
    path = azure_copy(trusted_dir)
    path.chmod(mode)
    with pytest.raises(HookSecurityError) as caught:
        azure_specs(path)
    assert caught.value.path == str(path)
    assert "Azure Backup accepts only mode 0600 or stricter" in caught.value.rule
    assert f"(mode {mode:04o})" in caught.value.rule
    assert caught.value.fix == f"chmod 600 {path}"


def test_azure_config_with_mode_0400_is_accepted(trusted_dir: Path) -> None:
    path = azure_copy(trusted_dir)
    path.chmod(0o400)
    [spec] = azure_specs(path)
    assert spec.freeze is True


def azure_with_scripts(folder: Path, mode: int) -> tuple[Path, Path]:
    """Azure's template naming a pre-script of ``mode`` (and the script)."""
    pre = write_script(folder, "pre.sh", "true", mode=mode)
    path = azure_copy(folder, {'"preScriptLocation" : ""': f'"preScriptLocation" : "{pre}"'})
    return path, pre


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o710])
def test_azure_script_with_any_group_or_other_bit_is_refused(trusted_dir: Path, mode: int) -> None:
    path, pre = azure_with_scripts(trusted_dir, mode)
    with pytest.raises(HookSecurityError) as caught:
        azure_specs(path)
    assert caught.value.path == str(pre)
    assert "Azure Backup accepts only mode 0700 or stricter" in caught.value.rule
    assert caught.value.fix == f"chmod 700 {pre}"


def test_azure_script_with_mode_0700_is_accepted(trusted_dir: Path) -> None:
    path, pre = azure_with_scripts(trusted_dir, 0o700)
    [spec] = azure_specs(path)
    assert spec.pre == [str(pre)]
