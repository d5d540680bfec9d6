"""run_hook with real scripts: output, exit codes, retries, timeouts, environment, refusals."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from cleancut.guest.hooks import HookSpec, run_hook, runner
from tests.unit.guest import write_script


def spec_for(
    script: Path, *args: str, timeout: float = 5.0, retries: int = 0, pin: str | None = None
) -> HookSpec:
    argv = [str(script), *args]
    return HookSpec(
        name="t",
        source="native",
        pre=argv,
        post=argv,
        timeout=timeout,
        pre_retries=retries,
        post_retries=retries,
        pre_sha256=pin,
    )


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] == b"Z"


def test_success_captures_output_and_argv(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "hook", 'echo "out $1 $#"; echo err >&2')
    run = run_hook(spec_for(script, "a b"), "pre")
    assert run.ok and run.returncode == 0 and run.attempts == 1
    assert run.stdout == "out a b 1\n" and run.stderr == "err\n"
    assert (run.hook, run.source, run.phase, run.host) == ("t", "native", "pre", "")
    assert run.argv == [str(script), "a b"] and run.error is None


def test_nonzero_exit_is_a_failed_run(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "hook", "echo trying; exit 3")
    run = run_hook(spec_for(script), "post")
    assert not run.ok and run.returncode == 3 and not run.timed_out
    assert run.stdout == "trying\n" and "status 3" in (run.error or "")


def test_retries_really_rerun_the_script(trusted_dir: Path) -> None:
    counter = trusted_dir / "runs"
    script = write_script(
        trusted_dir,
        "hook",
        f'echo run >> {counter}; [ "$(wc -l < {counter})" -ge 3 ]',
    )
    run = run_hook(spec_for(script, retries=5), "pre")
    assert run.ok and run.attempts == 3
    assert counter.read_text().count("run") == 3
    counter.unlink()
    run = run_hook(spec_for(script, retries=1), "pre")
    assert not run.ok and run.attempts == 2 and run.returncode == 1
    assert counter.read_text().count("run") == 2


def test_timeout_kills_the_whole_process_group(trusted_dir: Path) -> None:
    pidfile = trusted_dir / "child.pid"
    script = write_script(trusted_dir, "hook", f"sleep 60 & echo $! > {pidfile}; wait")
    started = time.monotonic()
    run = run_hook(spec_for(script, timeout=0.5), "pre")
    assert time.monotonic() - started < 2.5
    assert run.timed_out and not run.ok and "timed out" in (run.error or "")
    grandchild = int(pidfile.read_text())
    assert process_gone(grandchild)


def test_timeout_sigkills_what_ignores_sigterm(
    trusted_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "KILL_GRACE", 0.3)
    pidfile = trusted_dir / "child.pid"
    script = write_script(
        trusted_dir, "hook", f"trap '' TERM; sleep 60 & echo $! > {pidfile}; wait; sleep 60"
    )
    run = run_hook(spec_for(script, timeout=0.3), "pre")
    assert run.timed_out and run.returncode == -signal.SIGKILL
    assert process_gone(int(pidfile.read_text()))


def test_background_child_does_not_hold_the_run(trusted_dir: Path) -> None:
    """A pre-script may leave a holder running (e.g. a lock until the post-script)."""
    pidfile = trusted_dir / "child.pid"
    script = write_script(trusted_dir, "hook", f"sleep 30 & echo $! > {pidfile}; echo done")
    started = time.monotonic()
    run = run_hook(spec_for(script, timeout=5), "pre")
    pid = int(pidfile.read_text())
    try:
        assert run.ok and run.stdout == "done\n"
        assert time.monotonic() - started < 1.5
        assert not process_gone(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def test_output_is_bounded_to_its_tail(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "hook", "head -c 200000 /dev/zero | tr '\\0' x; echo END")
    run = run_hook(spec_for(script), "pre", output_limit=1000)
    assert run.ok
    assert run.stdout.endswith("x" * 996 + "END\n")
    assert "truncated, first 199004 bytes dropped" in run.stdout
    assert len(run.stdout) < 1100


def test_environment_is_clean(trusted_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEANCUT_TEST_SECRET", "leak")
    script = write_script(trusted_dir, "hook", "env; pwd")
    run = run_hook(spec_for(script), "post", env_extra={"CLEANCUT_RP": "rp1"})
    lines = run.stdout.splitlines()
    assert "CLEANCUT_TEST_SECRET=leak" not in lines
    assert f"PATH={runner.CLEAN_PATH}" in lines
    assert {"LANG=C.UTF-8", "CLEANCUT_PHASE=post", "CLEANCUT_RP=rp1"} <= set(lines)
    assert f"CLEANCUT_SCRIPT={script}" in lines
    assert lines[-1] == "/"


def test_security_refusal_is_a_failed_run(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "hook", f"touch {trusted_dir}/ran", mode=0o775)
    run = run_hook(spec_for(script), "pre")
    assert not run.ok and run.attempts == 0 and run.returncode is None
    assert "writable by group or others" in (run.error or "")
    assert not (trusted_dir / "ran").exists()


def test_pin_mismatch_is_a_failed_run(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "hook", f"touch {trusted_dir}/ran")
    run = run_hook(spec_for(script, pin="0" * 64), "pre")
    assert not run.ok and "differs from the pinned" in (run.error or "")
    assert not (trusted_dir / "ran").exists()


def test_start_failure_is_a_failed_run(trusted_dir: Path) -> None:
    script = trusted_dir / "hook"
    script.write_text("#!/nonexistent/interpreter\n", encoding="utf-8")
    script.chmod(0o755)
    run = run_hook(spec_for(script), "pre")
    assert not run.ok and "cannot start" in (run.error or "")


def test_phase_without_script_is_a_caller_error(trusted_dir: Path) -> None:
    spec = HookSpec(name="t", source="gcp", pre=None, post=["/x"], timeout=1)
    with pytest.raises(ValueError, match="no pre script"):
        run_hook(spec, "pre")


# -- every file the hook runs is checked, not only argv[0] (issue 5 §3) ------------------


def planted(trusted_dir: Path) -> tuple[Path, Path]:
    """An attacker's script in a world-writable folder, and the file it creates if it runs."""
    shared = trusted_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    marker = trusted_dir / "pwned"
    return write_script(shared, "quiesce.sh", f"touch {marker}"), marker


def hook(argv: list[str]) -> HookSpec:
    return HookSpec(name="t", source="native", pre=argv, post=None, timeout=5.0)


@pytest.mark.parametrize("prefix", [["/bin/sh"], ["/usr/bin/env", "sh"], ["/bin/bash", "-e"]])
def test_script_handed_to_an_interpreter_is_not_run(trusted_dir: Path, prefix: list[str]) -> None:
    script, marker = planted(trusted_dir)
    run = run_hook(hook([*prefix, str(script)]), "pre")
    assert not run.ok and run.attempts == 0
    assert str(script) in (run.error or "")
    assert not marker.exists()


@pytest.mark.parametrize("line", ["#!{script}", "#!/usr/bin/env {script}"])
def test_shebang_interpreter_in_a_writable_folder_is_not_run(trusted_dir: Path, line: str) -> None:
    interp, marker = planted(trusted_dir)
    script = trusted_dir / "hook"
    script.write_text(line.format(script=interp) + "\n", encoding="utf-8")
    script.chmod(0o755)
    run = run_hook(hook([str(script)]), "pre")
    assert not run.ok and run.attempts == 0
    assert str(interp) in (run.error or "") and str(script) in (run.error or "")
    assert not marker.exists()


def test_checked_script_handed_to_sh_runs(trusted_dir: Path) -> None:
    script = write_script(trusted_dir, "quiesce.sh", 'echo "ran $1"', mode=0o644)
    run = run_hook(hook(["/bin/sh", str(script), "x"]), "pre")
    assert run.ok and run.stdout == "ran x\n"
