"""The ``cleancut`` command: help everywhere, version, completion, plain output, config
commands, and the exit codes ``main()`` turns errors into.

Most tests run ``main()`` in-process (fast); the ones about terminals, pipes and the
environment run the installed command as a real process.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cleancut import __version__
from cleancut.cli.main import app, main
from cleancut.config import load_app, load_guest

ANSI = re.compile(rb"\x1b\[")
_SCRIPT = Path(sys.executable).parent / "cleancut"
#: the installed command (``python -m cleancut`` where it is not installed as a script)
CLEANCUT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cleancut"]


@dataclass
class Run:
    code: int
    out: str
    err: str


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> Run:
    """``cleancut ARGS`` through ``main()``, as the installed command runs it."""
    monkeypatch.setattr(sys, "argv", ["cleancut", *args])
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- files -------------------------------------------------------------------------------


@dataclass
class Files:
    app: Path
    guest: Path
    folder: Path


def guest_text(folder: Path) -> str:
    return (
        f'staging = "{folder / "staging"}"\n'
        f'[volumes.orders]\npath = "{folder / "orders"}"\nsnapshot = "copy"\nfreeze = false\n'
        f'[databases.orders]\nkind = "sqlite"\npath = "{folder / "orders" / "orders.db"}"\n'
        'volume = "orders"\n'
    )


@pytest.fixture
def files(trusted_dir: Path) -> Files:
    """A good application file and guest file, in a folder that passes the security rules."""
    guest = trusted_dir / "guest.toml"
    guest.write_text(guest_text(trusted_dir), encoding="utf-8")
    guest.chmod(0o644)
    for folder in ("orders", "staging"):  # config check looks at the volumes too
        (trusted_dir / folder).mkdir(exist_ok=True)
    app_file = trusted_dir / "shop.toml"
    app_file.write_text(
        'name = "shop"\ncatalog = "shop.catalog.sqlite"\n'
        f'[repository]\nurl = "{trusted_dir / "repository"}"\n'
        '[hosts.app1]\nguest_config = "guest.toml"\n',
        encoding="utf-8",
    )
    return Files(app_file, guest, trusted_dir)


# -- help, version, completion -----------------------------------------------------------


def all_commands() -> list[tuple[list[str], typer.main.click.Command]]:  # type: ignore[name-defined]
    """Every command and subcommand of the app, with its path of names."""
    found = []

    def walk(path: list[str], command: typer.main.click.Command) -> None:  # type: ignore[name-defined]
        found.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk([*path, name], sub)

    walk([], typer.main.get_command(app))
    return found


def test_every_command_is_listed() -> None:
    paths = {" ".join(path) for path, _ in all_commands()}
    expected = {
        "",
        "backup",
        "points",
        "restore",
        "guest",
        "demo",
        "config",
        "config check",
        "config generate",
        "config show",
        "config schema",
        "catalog",
        "catalog rebuild",
    }
    assert expected <= paths


@pytest.mark.parametrize(
    "path", [p for p, _ in all_commands()], ids=lambda p: " ".join(p) or "root"
)
def test_help_works_and_explains(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, path: list[str]
) -> None:
    command = dict((tuple(p), c) for p, c in all_commands())[tuple(path)]
    assert (command.help or "").strip(), f"{path}: no help text"
    result = run(capsys, monkeypatch, *path, "--help")
    assert result.code == 0
    assert result.out.startswith("Usage: cleancut")
    first_line = (command.help or "").strip().splitlines()[0]
    assert first_line[:40] in one_line(result.out)


def test_every_option_and_argument_is_explained() -> None:
    for path, command in all_commands():
        for param in command.params:
            if param.name in ("help", "install_completion", "show_completion"):
                continue
            assert getattr(param, "help", None), f"cleancut {' '.join(path)}: {param.name}"


def test_version(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(capsys, monkeypatch, "--version")
    assert result.code == 0
    assert result.out.strip() == f"cleancut {__version__}"


def test_no_arguments_shows_usage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run(capsys, monkeypatch)
    assert "Usage: cleancut" in result.out + result.err
    assert "backup" in result.out + result.err


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o default -F _cleancut_completion cleancut"),
        ("zsh", "#compdef cleancut"),
        ("fish", "complete --command cleancut"),
    ],
)
def test_show_completion_prints_the_script(shell: str, marker: str) -> None:
    # The shell is named explicitly (typer's switch for that); without it typer detects the
    # shell running the command.
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    done = subprocess.run(
        [*CLEANCUT, "--show-completion", shell], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert marker in done.stdout
    assert "_CLEANCUT_COMPLETE" in done.stdout


def test_completion_completes_subcommands() -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        [],
        prog_name="cleancut",
        env={
            "_CLEANCUT_COMPLETE": "complete_bash",
            "COMP_WORDS": "cleancut config ",
            "COMP_CWORD": "2",
        },
    )
    assert result.exit_code == 0
    assert result.output.split() == ["check", "generate", "show", "schema"]


def test_completion_offers_top_level_commands_to_fish() -> None:
    result = CliRunner().invoke(
        app,
        [],
        prog_name="cleancut",
        env={
            "_CLEANCUT_COMPLETE": "complete_fish",
            "_TYPER_COMPLETE_ARGS": "cleancut ",
            "_TYPER_COMPLETE_FISH_ACTION": "get-args",
        },
    )
    names = {line.split("\t")[0] for line in result.output.splitlines()}
    assert {"backup", "points", "restore", "config", "catalog", "guest", "demo"} <= names


# -- colour ------------------------------------------------------------------------------


def on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run ``args`` with stdout and stderr on a pseudo-terminal; what it wrote there."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
        )
    finally:
        os.close(follower)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
        code = process.wait(timeout=30)
    return code, output


def test_no_color_means_no_escape_codes_on_a_terminal(files: Files) -> None:
    bad = files.folder / "bad.toml"
    bad.write_text('name = "shop"\ncolour = 1\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    env["TERM"] = "xterm-256color"
    for args in ([*CLEANCUT, "config", "check", str(bad)], [*CLEANCUT, "points", str(files.app)]):
        code, coloured = on_a_terminal(args, env)
        assert ANSI.search(coloured), "a terminal without NO_COLOR should get styles"
        code_plain, plain = on_a_terminal(args, {**env, "NO_COLOR": "1"})
        assert code_plain == code
        assert not ANSI.search(plain), plain
        assert plain.replace(b"\r\n", b"\n").strip()


def test_output_to_a_pipe_has_no_escape_codes(files: Files) -> None:
    bad = files.folder / "bad.toml"
    bad.write_text('name = "shop"\ncolour = 1\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    for args, code in (
        ([*CLEANCUT, "config", "check", str(bad)], 2),
        ([*CLEANCUT, "points", str(files.app)], 0),
    ):
        done = subprocess.run(args, capture_output=True, env=env, timeout=30)
        assert done.returncode == code
        assert done.stdout or done.stderr
        assert not ANSI.search(done.stdout + done.stderr)


def test_config_error_from_the_installed_command(files: Files) -> None:
    """The real process: exit 2, one line "error: FILE: KEY: message", nothing on stdout."""
    long_folder = files.folder / ("x" * 60)
    long_folder.mkdir()
    bad = long_folder / "shop.toml"
    bad.write_text(files.app.read_text() + "colour = 1\n", encoding="utf-8")
    done = subprocess.run(
        [*CLEANCUT, "backup", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"error: {bad}: hosts.app1.colour: unknown key 'colour'; "
        "valid keys here: connect, guest_config, identity_file, known_hosts, "
        "accept_new_host_key, connect_timeout, keepalive_interval, keepalive_count\n"
    )


# -- config commands ---------------------------------------------------------------------


def test_config_check_good_pair(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    result = run(capsys, monkeypatch, "config", "check", str(files.app))
    assert result.code == 0, result.err
    assert f"host app1: {files.guest} ok — 1 volume(s), 1 database(s), 0 hook(s)" in result.out
    assert f"{files.app}: ok" in result.out


def test_config_check_bad_app_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    files.app.write_text(files.app.read_text().replace('name = "shop"', 'name = "Shop!"'))
    result = run(capsys, monkeypatch, "config", "check", str(files.app))
    assert result.code == 2
    assert one_line(result.err).startswith(f"error: {files.app}: name: String should match")


def test_config_check_bad_guest_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    text = guest_text(files.folder).replace(
        'snapshot = "copy"\nfreeze = false', 'snapshot = "reflink"\nfreeze = true'
    )
    files.guest.write_text(text, encoding="utf-8")
    result = run(capsys, monkeypatch, "config", "check", str(files.app))
    assert result.code == 2
    message = one_line(result.err)
    assert message.startswith(f"error: {files.guest}: volumes.orders: freeze = true cannot be")
    assert "set freeze = false" in message


def test_config_check_guest_file_with_mode_0666(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    files.guest.chmod(0o666)
    result = run(capsys, monkeypatch, "config", "check", str(files.app))
    assert result.code == 2
    message = one_line(result.err)
    assert f"{files.guest}: refused: the file is writable by group or others (mode 0666)" in (
        message
    )
    assert f"fix: chmod go-w {files.guest}" in message


def test_config_check_missing_guest_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    files.guest.unlink()
    result = run(capsys, monkeypatch, "config", "check", str(files.app))
    assert result.code == 2
    assert str(files.guest) in result.err
    assert "does not exist" in result.err


def test_config_check_refuses_an_insecure_hook_script(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    script = files.folder / "pre.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o777)
    with files.guest.open("a") as handle:
        handle.write(f'[[hooks]]\nname = "q"\npre = ["{script}"]\n')
    result = run(capsys, monkeypatch, "config", "check", str(files.app))
    assert result.code == 2
    assert f"{script}: refused" in one_line(result.err)
    script.chmod(0o755)
    assert run(capsys, monkeypatch, "config", "check", str(files.app)).code == 0


@pytest.mark.parametrize(("flag", "loader"), [([], load_app), (["--guest"], load_guest)])
def test_config_generate_output_loads_unchanged(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flag: list[str],
    loader: object,
) -> None:
    result = run(capsys, monkeypatch, "config", "generate", *flag)
    assert result.code == 0
    assert result.out.startswith("# cleancut")
    sample = tmp_path / "sample.toml"
    sample.write_text(result.out, encoding="utf-8")
    assert callable(loader)
    loader(sample)  # raises ConfigError if the sample were invalid


def test_config_generate_samples_differ(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app_sample = run(capsys, monkeypatch, "config", "generate").out
    guest_sample = run(capsys, monkeypatch, "config", "generate", "--guest").out
    assert "[hosts." in app_sample and "[volumes." not in app_sample
    assert "[volumes." in guest_sample and "[hosts." not in guest_sample


def test_config_schema_is_json_with_both_files(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run(capsys, monkeypatch, "config", "schema")
    assert result.code == 0
    schema = json.loads(result.out)
    app_props = schema["application"]["properties"]
    assert {"name", "freeze_timeout", "on_failure", "repository", "hosts"} <= set(app_props)
    assert schema["application"]["additionalProperties"] is False
    guest_props = schema["guest"]["properties"]
    assert {"volumes", "databases", "hooks", "hooks_import", "staging"} <= set(guest_props)
    assert "Volume" in schema["guest"]["$defs"]
    assert schema["guest"]["$defs"]["Volume"]["additionalProperties"] is False


def test_config_show_fills_in_defaults_and_the_guest(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    result = run(capsys, monkeypatch, "config", "show", str(files.app))
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    assert shown["on_failure"] == "abort"
    assert shown["freeze_timeout"] == "10s"
    assert shown["catalog"] == str(files.folder / "shop.catalog.sqlite")
    host = shown["hosts"]["app1"]
    assert host["connect"] == "local"
    assert host["guest_config"] == str(files.guest)
    volume = host["guest"]["volumes"]["orders"]
    assert volume == {
        "path": str(files.folder / "orders"),
        "snapshot": "copy",
        "image": None,
        "freeze": False,
        "staging": None,
    }
    assert host["guest"]["databases"]["orders"]["kind"] == "sqlite"
    assert host["guest"]["allow_root_freeze"] is False


def test_config_show_bad_file_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    files.app.write_text(files.app.read_text() + 'freeze_timeout = "soon"\n')
    result = run(capsys, monkeypatch, "config", "show", str(files.app))
    assert result.code == 2
    assert result.out == ""


# -- points, restore, errors -------------------------------------------------------------


def test_points_on_an_empty_catalog(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    result = run(capsys, monkeypatch, "points", str(files.app))
    assert result.code == 0, result.err
    assert "recovery points of shop" in result.out
    assert "no recovery points yet" in result.out
    as_json = run(capsys, monkeypatch, "points", str(files.app), "--json")
    assert as_json.code == 0
    assert json.loads(as_json.out) == []  # one document, a list, even when empty


def test_restore_without_to_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    result = run(capsys, monkeypatch, "restore", str(files.app), "latest")
    assert result.code == 2
    message = one_line(result.err)
    assert "--to DIR" in message
    assert "--in-place" in message
    assert not (files.folder / "shop.catalog.sqlite").exists()  # refused before anything


def test_a_config_error_exits_2_with_file_key_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    files.app.write_text(files.app.read_text().replace('name = "shop"', 'name = "shop"\nzzz = 1'))
    for command in (["backup"], ["points"], ["catalog", "rebuild"], ["restore"]):
        args = [*command, str(files.app)] + (
            ["--to", str(files.folder / "r")] if command == ["restore"] else []
        )
        result = run(capsys, monkeypatch, *args)
        assert result.code == 2, command
        assert one_line(result.err).startswith(f"error: {files.app}: zzz: unknown key 'zzz'")


def test_backup_without_a_password_names_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    monkeypatch.delenv("RESTIC_PASSWORD", raising=False)
    result = run(capsys, monkeypatch, "backup", str(files.app), "--dry-run")
    assert result.code == 2
    message = one_line(result.err)
    assert f"{files.app}: repository: no repository password" in message
    assert "password_file" in message


def test_missing_file_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = run(capsys, monkeypatch, "points", str(tmp_path / "nope.toml"))
    assert result.code == 2
    assert f"{tmp_path / 'nope.toml'}: no such file" in result.err


def test_config_check_refuses_a_database_outside_its_volume(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    outside = files.folder / "elsewhere" / "orders.db"
    text = guest_text(files.folder).replace(
        str(files.folder / "orders" / "orders.db"), str(outside)
    )
    files.guest.write_text(text, encoding="utf-8")
    result = run(capsys, monkeypatch, "config", "check", str(files.app))
    assert result.code == 2
    assert (
        f"databases.orders.path: {outside} is not inside volume 'orders' "
        f"({files.folder / 'orders'})" in one_line(result.err)
    )


# -- backup: post-scripts, pause ---------------------------------------------------------


def script(folder: Path, name: str, status: int) -> Path:
    """An executable shell script in ``folder`` that exits with ``status``."""
    path = folder / name
    path.write_text(f"#!/bin/sh\nexit {status}\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def hooked_files(files: Files, hook: str) -> None:
    """The guest of ``files`` with a plain copy volume (no database) and the hook ``hook``."""
    (files.folder / "orders").mkdir(exist_ok=True)
    (files.folder / "orders" / "note.txt").write_text("hello\n", encoding="utf-8")
    files.guest.write_text(
        f'staging = "{files.folder / "staging"}"\n'
        f'[volumes.orders]\npath = "{files.folder / "orders"}"\nsnapshot = "copy"\n'
        f"freeze = false\n[[hooks]]\n{hook}",
        encoding="utf-8",
    )


@pytest.mark.restic
def test_a_failed_post_script_of_a_committed_backup_exits_9_and_names_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    monkeypatch.setenv("RESTIC_PASSWORD", "test")
    post = script(files.folder, "post.sh", 5)
    hooked_files(files, f'name = "resume"\npost = ["{post}"]\n')
    degrade = 'name = "shop"\non_failure = "degrade"'
    files.app.write_text(files.app.read_text().replace('name = "shop"', degrade))
    result = run(capsys, monkeypatch, "backup", str(files.app))
    assert "recovery point" in result.out and "committed" in result.out
    assert result.code == 9, result.err  # ahead of 3: the copy volume is level none
    warning = r"warning: host app1: post-script resume failed: [^;]*\b5; the application may"
    assert re.search(warning, one_line(result.err)), result.err
    listed = json.loads(run(capsys, monkeypatch, "points", str(files.app), "--json").out)
    assert len(listed) == 1


@pytest.mark.restic
def test_a_failed_post_script_of_an_aborted_backup_is_warned_about_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    monkeypatch.setenv("RESTIC_PASSWORD", "test")
    pre, post = script(files.folder, "pre.sh", 1), script(files.folder, "post.sh", 6)
    hooked_files(files, f'name = "quiesce"\npre = ["{pre}"]\npost = ["{post}"]\n')
    result = run(capsys, monkeypatch, "backup", str(files.app))
    assert result.code == 4, result.err  # the pre-script forbids going on: PolicyAbort
    message = one_line(result.err)
    assert re.search(r"warning: host app1: post-script quiesce failed: [^;]*\b6;", message)
    assert "pre-script quiesce failed" in message  # and the error itself follows


def test_points_and_the_backup_summary_show_the_pause(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, files: Files
) -> None:
    from datetime import UTC, datetime

    from cleancut.catalog import Catalog
    from cleancut.cli.backup import print_summary
    from cleancut.manifest import HostTimings, Manifest

    manifest = Manifest(
        app="shop",
        rp_id="20260101T000000Z-abcd",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        on_failure="degrade",
        level="application",
        group_consistent=True,
        hosts=[HostTimings(host="app1", write_stall=0.0421, pause=1.2345)],
        members=[],
    )
    Catalog(files.folder / "shop.catalog.sqlite").add(manifest, "snap")
    table = run(capsys, monkeypatch, "points", str(files.app))
    assert table.code == 0, table.err
    assert "pause" in table.out
    assert "42.1 ms" in table.out and "1234.5 ms" in table.out
    as_json = run(capsys, monkeypatch, "points", str(files.app), "--json")
    [point] = json.loads(as_json.out)
    assert point["write_stall"] == pytest.approx(0.0421)
    assert point["pause"] == pytest.approx(1.2345)
    capsys.readouterr()
    print_summary(manifest)
    summary = capsys.readouterr().out
    assert "write stall      app1: 42.1 ms" in summary
    assert "app paused       app1: 1234.5 ms" in summary
