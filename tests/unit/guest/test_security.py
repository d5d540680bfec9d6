"""The hook security rules, each checked against a real file that breaks it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cleancut.errors import HookSecurityError
from cleancut.guest.security import (
    check_config_file,
    check_hook_command,
    open_config,
    open_trusted,
)
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


# -- every file a hook command runs, not only argv[0] (issue 5 §3) -----------------------


def writable_folder(trusted_dir: Path) -> Path:
    """A world-writable folder (no sticky bit) where any local user could drop a script."""
    folder = trusted_dir / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    return folder


def attacker_script(trusted_dir: Path) -> Path:
    """``quiesce.sh`` planted in a world-writable folder, as an attacker would."""
    return write_script(writable_folder(trusted_dir), "quiesce.sh", "id > /dev/null")


def test_script_handed_to_sh_is_checked(trusted_dir: Path) -> None:
    script = attacker_script(trusted_dir)
    with pytest.raises(HookSecurityError) as caught:
        check_hook_command(["/bin/sh", str(script)])
    assert caught.value.path == str(script.parent)
    assert "parent directory is writable by group or others (mode 0777)" in caught.value.rule
    assert f"{script} is named by argument 1 of /bin/sh" in caught.value.rule
    assert caught.value.fix == f"chmod go-w {script.parent}"


def test_script_handed_to_env_sh_is_checked(trusted_dir: Path) -> None:
    script = attacker_script(trusted_dir)
    with pytest.raises(HookSecurityError) as caught:
        check_hook_command(["/usr/bin/env", "sh", str(script)])
    assert caught.value.path == str(script.parent)
    assert str(script) in caught.value.rule


def test_writable_script_handed_to_sh_in_a_trusted_folder_is_refused(trusted_dir: Path) -> None:
    data = write_script(trusted_dir, "quiesce.sh", "true", mode=0o666)
    with pytest.raises(HookSecurityError) as caught:
        check_hook_command(["/bin/bash", str(data)])
    assert caught.value.path == str(data)
    assert "the file is writable by group or others (mode 0666), and it is named" in (
        caught.value.rule
    )
    assert caught.value.fix == f"chmod go-w {data}"


@pytest.mark.parametrize(
    "line",
    ["#!{interp}", "#! {interp} -x", "#!/usr/bin/env {interp}", "#!/usr/bin/env -S {interp} -x"],
)
def test_shebang_interpreter_in_a_writable_folder_is_refused(trusted_dir: Path, line: str) -> None:
    interp = write_script(writable_folder(trusted_dir), "interp", 'exec /bin/sh "$@"')
    hook = trusted_dir / "hook"
    hook.write_text(line.format(interp=interp) + "\necho hi\n", encoding="utf-8")
    hook.chmod(0o755)
    with open_trusted(hook):
        pass  # argv[0] alone passes: only its interpreter is wrong
    with pytest.raises(HookSecurityError) as caught:
        check_hook_command([str(hook)])
    assert caught.value.path == str(interp.parent)
    assert str(interp) in caught.value.rule
    assert str(hook) in caught.value.rule


def test_interpreters_are_followed_recursively(trusted_dir: Path) -> None:
    interp = write_script(writable_folder(trusted_dir), "interp", 'exec /bin/sh "$@"')
    middle = trusted_dir / "middle"
    middle.write_text(f"#!{interp}\n", encoding="utf-8")
    middle.chmod(0o755)
    hook = trusted_dir / "hook"
    hook.write_text(f"#!{middle}\n", encoding="utf-8")
    hook.chmod(0o755)
    with pytest.raises(HookSecurityError) as caught:
        check_hook_command([str(hook)])
    assert caught.value.path == str(interp.parent)
    assert f"the #! interpreter of {middle}" in caught.value.rule


def test_interpreter_loops_are_bounded(trusted_dir: Path) -> None:
    hook = trusted_dir / "hook"
    hook.write_text(f"#!{hook}\n", encoding="utf-8")
    hook.chmod(0o755)
    with pytest.raises(HookSecurityError, match="more than 8 #! interpreters or env calls"):
        check_hook_command([str(hook)])


def test_program_env_finds_in_a_writable_path_is_refused(trusted_dir: Path) -> None:
    script = attacker_script(trusted_dir)
    for argv in (
        ["/usr/bin/env", f"PATH={script.parent}", "quiesce.sh"],
        ["/usr/bin/env", "-i", f"PATH={script.parent}:/usr/bin", "quiesce.sh"],
        ["/usr/bin/env", "-C", str(script.parent), "./quiesce.sh"],
        ["/usr/bin/env", "--chdir", str(script.parent), "/bin/sh", "quiesce.sh"],
        ["/usr/bin/env", "-S", f"sh {script}"],
    ):
        with pytest.raises(HookSecurityError) as caught:
            check_hook_command(argv)
        assert caught.value.path == str(script.parent), argv
        assert str(script) in caught.value.rule, argv


def test_env_options_that_hide_the_program_are_refused(trusted_dir: Path) -> None:
    with pytest.raises(HookSecurityError, match="cannot tell which program env runs"):
        check_hook_command(["/usr/bin/env", "--frobnicate", "sh"])
    with pytest.raises(HookSecurityError, match="expands variables"):
        check_hook_command(["/usr/bin/env", "-S", "${PROG} x"])


def test_argument_forms_that_name_files_are_checked(trusted_dir: Path) -> None:
    script = attacker_script(trusted_dir)
    relative = str(script.relative_to("/"))  # hooks run from /
    for argv in (
        ["/bin/sh", relative],
        ["/bin/bash", f"--rcfile={script}"],
        ["/usr/bin/nice", str(script)],
        ["/bin/sh", str(script.parent / "not-yet.sh")],  # could be created before it runs
    ):
        with pytest.raises(HookSecurityError) as caught:
            check_hook_command(argv)
        assert caught.value.path == str(script.parent), argv


def test_symlink_argument_out_of_its_folder_is_refused(trusted_dir: Path) -> None:
    elsewhere = trusted_dir / "elsewhere"
    elsewhere.mkdir()
    target = write_script(elsewhere, "real.sh", "true")
    link = trusted_dir / "quiesce.sh"
    link.symlink_to(target)
    with pytest.raises(HookSecurityError, match="leads out of its directory") as caught:
        check_hook_command(["/bin/sh", str(link)])
    assert caught.value.fix.startswith(f"name the file itself ({target}) in the hook's command")


def test_executable_argument_has_its_interpreter_checked(trusted_dir: Path) -> None:
    interp = write_script(writable_folder(trusted_dir), "interp", "true")
    wrapped = trusted_dir / "wrapped"
    wrapped.write_text(f"#!{interp}\n", encoding="utf-8")
    wrapped.chmod(0o755)
    with pytest.raises(HookSecurityError) as caught:
        check_hook_command(["/usr/bin/nice", str(wrapped)])
    assert caught.value.path == str(interp.parent)
    assert f"the #! interpreter of {wrapped}" in caught.value.rule


def test_trusted_commands_pass(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "quiesce.sh", "true", mode=0o644)  # data: no x bit
    data = trusted_dir / "settings.json"
    data.write_text("{}", encoding="utf-8")
    env_hook = trusted_dir / "hook"
    env_hook.write_text("#!/usr/bin/env bash\ntrue\n", encoding="utf-8")
    env_hook.chmod(0o755)
    long_word = "x" * 300
    for argv in (
        ["/bin/sh", str(script), "--db", "freeze", str(data), long_word, '{"a": "b/c"}'],
        ["/usr/bin/env", "sh", str(script)],
        ["/usr/bin/env", "-i", "LANG=C", "sh", "-c", "true"],
        [str(env_hook), "/dev/null", str(trusted_dir), "/", "..", "/no/such/file"],
        ["/bin/sh", str(trusted_dir / "later.sh")],
    ):
        with check_hook_command(argv) as trusted:
            assert trusted.path.name in {"dash", "sh", "bash", "env", "hook"}, argv


def test_pin_applies_to_argv0_and_fd_is_returned(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "hook", "echo hi")
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    with check_hook_command([str(script), "a"], digest) as trusted:
        assert trusted.path == script and trusted.sha256 == digest
        os.fstat(trusted.fd)
    with pytest.raises(HookSecurityError, match="differs from the pinned"):
        check_hook_command([str(script)], "0" * 64)
    with pytest.raises(HookSecurityError, match="is empty"):
        check_hook_command([])


# -- fix hints that are safe to follow ----------------------------------------------------


def test_file_under_sticky_tmp_is_told_to_move_not_to_chmod_tmp(tmp_path: Path) -> None:
    script = write_script(tmp_path, "hook", "echo hi")
    with pytest.raises(HookSecurityError) as caught:
        open_trusted(script)
    assert caught.value.path == "/tmp"
    assert "chmod go-w /tmp" not in caught.value.fix
    assert caught.value.fix.startswith(
        f"move {script} into a folder only root can write, such as /etc/cleancut/"
    ) or caught.value.fix.startswith(f"move {script} into a folder only root or the agent's")
    assert "do not chmod /tmp" in caught.value.fix


def test_argument_under_tmp_is_told_to_move(tmp_path: Path) -> None:
    script = write_script(tmp_path, "quiesce.sh", "true")
    with pytest.raises(HookSecurityError) as caught:
        check_hook_command(["/bin/sh", str(script)])
    assert caught.value.fix.startswith(f"move {script} into a folder only root")


def test_config_in_a_sticky_folder_is_told_to_move(trusted_dir: Path) -> None:
    shared = trusted_dir / "drop"
    shared.mkdir()
    config = shared / "guest.toml"
    config.write_text("", encoding="utf-8")
    config.chmod(0o600)
    shared.chmod(0o1777)
    with pytest.raises(HookSecurityError) as caught:
        check_config_file(config)
    assert caught.value.path == str(shared)
    assert caught.value.fix.startswith(f"move {config} into a folder only root")


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_file_under_dev_shm_is_told_to_move() -> None:
    folder = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        script = write_script(folder, "hook", "true")
        with pytest.raises(HookSecurityError) as caught:
            open_trusted(script)
        assert caught.value.path == "/dev/shm"
        assert caught.value.fix.startswith(f"move {script} into a folder only root")
    finally:
        shutil.rmtree(folder)
