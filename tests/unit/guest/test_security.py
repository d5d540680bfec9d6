"""The hook security rules, each checked against a real file that breaks it."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from cleancut.errors import HookSecurityError
from cleancut.guest.security import check_config_file, open_config, open_trusted
from tests.unit.guest import write_script


def test_trusted_script_opens_with_digest(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "hook", "echo hi")
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    with open_trusted(script, sha256=digest.upper()) as trusted:
        assert trusted.path == script
        assert trusted.sha256 == digest
        assert trusted.read_bytes() == script.read_bytes()
        fd = trusted.fd
    with pytest.raises(OSError):
        os.fstat(fd)  # closed on exit


def test_group_writable_script_is_refused(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "hook", "echo hi", mode=0o775)
    with pytest.raises(HookSecurityError) as caught:
        open_trusted(script)
    assert caught.value.path == str(script)
    assert "writable by group or others" in caught.value.rule
    assert caught.value.fix == f"chmod go-w {script}"


def test_world_writable_parent_is_refused(trusted_dir: Path) -> None:
    shared = trusted_dir / "shared"
    shared.mkdir()
    script = write_script(shared, "hook", "echo hi")
    shared.chmod(0o777)
    with pytest.raises(HookSecurityError) as caught:
        open_trusted(script)
    assert caught.value.path == str(shared)
    assert "parent directory is writable" in caught.value.rule
    assert caught.value.fix == f"chmod go-w {shared}"


def test_world_writable_tmp_is_refused(tmp_path: Path) -> None:
    script = write_script(tmp_path, "hook", "echo hi")
    with pytest.raises(HookSecurityError, match="writable by group or others"):
        open_trusted(script)


def test_symlink_out_of_its_directory_is_refused(trusted_dir: Path) -> None:
    elsewhere = trusted_dir / "elsewhere"
    hooks = trusted_dir / "hooks"
    elsewhere.mkdir()
    hooks.mkdir()
    target = write_script(elsewhere, "evil", "echo evil")
    link = hooks / "hook"
    link.symlink_to(target)
    with pytest.raises(HookSecurityError) as caught:
        open_trusted(link)
    assert "leads out of its directory" in caught.value.rule
    assert caught.value.path == str(link)


def test_symlink_within_its_directory_is_followed(trusted_dir: Path) -> None:
    real = write_script(trusted_dir, "hook-v2", "echo v2")
    link = trusted_dir / "hook"
    link.symlink_to("hook-v2")
    with open_trusted(link) as trusted:
        assert trusted.path == real


def test_symlinked_parent_folder_is_checked_where_it_leads(trusted_dir: Path) -> None:
    real = trusted_dir / "real"
    real.mkdir()
    write_script(real, "hook", "echo hi")
    (trusted_dir / "alias").symlink_to(real)
    with open_trusted(trusted_dir / "alias" / "hook") as trusted:
        assert trusted.path == real / "hook"
    real.chmod(0o777)
    with pytest.raises(HookSecurityError) as caught:
        open_trusted(trusted_dir / "alias" / "hook")
    assert caught.value.path == str(real)


@pytest.mark.root
def test_wrong_owner_is_refused(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "hook", "echo hi")
    os.chown(script, 65534, 65534)
    with pytest.raises(HookSecurityError) as caught:
        open_trusted(script)
    assert "owned by uid 65534" in caught.value.rule
    assert caught.value.fix == f"chown root:root {script}"


def test_pin_mismatch_is_refused(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "hook", "echo hi")
    actual = hashlib.sha256(script.read_bytes()).hexdigest()
    with pytest.raises(HookSecurityError) as caught:
        open_trusted(script, sha256="0" * 64)
    assert "differs from the pinned" in caught.value.rule
    assert actual in caught.value.fix


def test_not_executable_is_refused(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "hook", "echo hi", mode=0o644)
    with pytest.raises(HookSecurityError, match="not executable") as caught:
        open_trusted(script)
    assert caught.value.fix == f"chmod u+x {script}"


def test_missing_and_relative_paths_are_refused(trusted_dir: Path) -> None:
    with pytest.raises(HookSecurityError, match="does not exist"):
        open_trusted(trusted_dir / "nope")
    with pytest.raises(HookSecurityError, match="not an absolute path"):
        open_trusted(Path("relative/hook"))
    with pytest.raises(HookSecurityError, match="not a regular file"):
        open_config(Path("/dev/null"))


def test_config_file_with_mode_0666_is_refused(trusted_dir: Path) -> None:
    config = trusted_dir / "guest.toml"
    config.write_text("", encoding="utf-8")
    config.chmod(0o600)
    check_config_file(config)  # passes: root-owned, 600, trusted parents
    config.chmod(0o666)
    with pytest.raises(HookSecurityError) as caught:
        check_config_file(config)
    assert "(mode 0666)" in caught.value.rule
    assert caught.value.fix == f"chmod go-w {config}"


def test_opened_descriptor_keeps_the_checked_content(trusted_dir: Path) -> None:
    """Swapping the file after the check does not change what the descriptor runs."""
    script = write_script(trusted_dir, "hook", "echo checked")
    with open_trusted(script) as trusted:
        swapped = write_script(trusted_dir, "hook.new", "echo swapped")
        swapped.rename(script)
        out = subprocess.run(
            ["hook"],
            executable=f"/proc/self/fd/{trusted.fd}",
            pass_fds=(trusted.fd,),
            capture_output=True,
            text=True,
            check=True,
        )
    assert out.stdout == "checked\n"
