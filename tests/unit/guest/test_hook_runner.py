"""run_hook with real scripts: output, exit codes, retries, timeouts, environment, refusals,
and what a freeze script leaves running (a lock holder) ending with the holds."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cleancut.guest.hooks import HookSpec, processes, run_hook, runner
from cleancut.guest.hooks_phase import HookPhases
from cleancut.guest.watchdog import Watchdog
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


# -- what a freeze script leaves behind (issue 7 §3: qemu's mysql-flush.sh and its holder) --


def test_a_child_keeping_the_pipes_costs_the_run_nothing(
    trusted_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run is the script's: its whole output, its exit code and its duration, although
    a background child keeps both pipes open (and the runner drains them a while longer)."""
    monkeypatch.setattr(runner, "DRAIN_GRACE", 1.0)
    pidfile = trusted_dir / "child.pid"
    script = write_script(
        trusted_dir,
        "hook",
        f"sleep 30 & echo $! > {pidfile}\n"
        "head -c 100000 /dev/zero | tr '\\0' x; echo; echo END; echo bye >&2; exit 3",
    )
    started = time.monotonic()
    run = run_hook(spec_for(script), "pre", output_limit=200000)
    took = time.monotonic() - started
    pid = int(pidfile.read_text())
    try:
        assert took < 1.0 + 1.5, "a child holding the pipes held the run"
        assert run.returncode == 3 and not run.ok and not run.timed_out
        assert run.stdout == "x" * 100000 + "\nEND\n" and run.stderr == "bye\n"
        assert run.duration < 0.5, f"{run.duration:.2f}s: the drain was counted as the script's"
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_holder_that_writes_after_its_script_exited_keeps_holding(trusted_dir: Path) -> None:
    """Closing the pipes behind a holder would kill it at its next write (SIGPIPE), before
    the thaw: its lock gone in the middle of the cut. They are drained instead."""
    pidfile = trusted_dir / "holder.pid"
    script = write_script(
        trusted_dir,
        "hook",
        f"( sleep 0.5; echo late; echo late-err >&2; exec sleep 30 ) & echo $! > {pidfile}",
    )
    run, left = runner.run_hook_tracked(spec_for(script), "pre")
    pid = int(pidfile.read_text())
    try:
        assert run.ok and [group.pgid for group in left] == [_pgid(pid)]
        time.sleep(1.0)
        assert not process_gone(pid), "the holder died when it wrote after its script exited"
        [end] = processes.end_leftovers(left, grace=0.2)
        assert (end.stdout, end.stderr) == ("late\n", "late-err\n")
        assert [(p.pid, p.signal) for p in end.ended] == [(pid, "SIGTERM")]
        assert process_gone(pid)
    finally:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


def _pgid(pid: int) -> int:
    return os.getpgid(pid)


def holder_hook(trusted_dir: Path, thaw: str, *, holder: str | None = None) -> HookSpec:
    """A hook shaped like qemu's mysql-flush.sh: its freeze script leaves a holder waiting on
    a FIFO and exits 0; ``thaw`` is its thaw script's body. The holder's pid is in ``pid``."""
    fifo, trace, pidfile = trusted_dir / "fifo", trusted_dir / "trace", trusted_dir / "pid"
    holder = holder or f"read x < {fifo}; sleep 0.3; echo released >> {trace}"
    freeze = write_script(
        trusted_dir, "freeze", f"mkfifo {fifo}\n( {holder} ) &\necho $! > {pidfile}; echo frozen"
    )
    post = write_script(trusted_dir, "thaw", thaw)
    return HookSpec(name="holder", source="qemu_ga", pre=[str(freeze)], post=[str(post)], timeout=5)


def quiesce(phases: HookPhases) -> dict[str, Any]:
    [pre] = phases.run_pres(on_quiesced=lambda: None, expired=lambda: False)
    return pre


def test_a_holder_its_thaw_script_lets_go_is_not_killed(trusted_dir: Path) -> None:
    phases = HookPhases([holder_hook(trusted_dir, f"echo > {trusted_dir / 'fifo'}")])
    pre = quiesce(phases)
    pid = int((trusted_dir / "pid").read_text())
    assert pre["ok"] and pre["stdout"] == "frozen\n"
    assert f"left running in its process group (group {_pgid(pid)}: " in pre["stderr"]
    assert f"{pid} (" in pre["stderr"], "the freeze script's record names what it left"
    assert not process_gone(pid)
    [post] = phases.run_posts()
    assert post["ok"] and post["phase"] == "post"
    assert "ended:" not in post["stderr"], "a holder that went by itself was reported killed"
    assert (trusted_dir / "trace").read_text() == "released\n"
    assert process_gone(pid)


def test_a_holder_its_thaw_script_cannot_reach_is_ended_after_the_grace(
    trusted_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thaw script fails (its FIFO is gone): the holder is SIGTERMed after the grace,
    and a holder that ignores SIGTERM is SIGKILLed; the thaw run says which and how."""
    monkeypatch.setattr(processes, "LEFTOVER_GRACE", 0.5)
    monkeypatch.setattr(processes, "KILL_GRACE", 0.5)
    sleeper = trusted_dir / "sleeper"
    spec = holder_hook(
        trusted_dir,
        f"[ -p {trusted_dir / 'fifo'} ] || exit 1",
        holder=f"sleep 60 & echo $! > {sleeper}; trap '' TERM; while :; do sleep 0.05; done",
    )
    phases = HookPhases([spec])
    quiesce(phases)
    holder, sleep = int((trusted_dir / "pid").read_text()), int(sleeper.read_text())
    group = _pgid(holder)
    (trusted_dir / "fifo").unlink()
    started = time.monotonic()
    [post] = phases.run_posts()
    took = time.monotonic() - started
    assert not post["ok"] and post["returncode"] == 1
    assert re.search(rf"{sleep} \([^)]*sleep\) by SIGTERM", post["stderr"]), post["stderr"]
    assert re.search(rf"{holder} \([^)]*bash\) by SIGKILL", post["stderr"]), post["stderr"]
    assert f"(group {group}) were still running 0.5s after this script" in post["stderr"]
    assert process_gone(holder) and process_gone(sleep)
    assert processes.live_members(group) == []
    assert 0.5 + 0.5 <= took < 0.5 + 2 * 0.5 + 1.5


def test_the_watchdog_ends_a_holder_whose_thaw_never_came(
    trusted_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody sends the thaw: at the deadline the watchdog's call runs the thaw script (it
    lets the holder go, which takes it 0.3 s) — and a leftover nothing lets go (a hook
    without a thaw script) is ended after the grace."""
    grace = 1.0
    monkeypatch.setattr(processes, "LEFTOVER_GRACE", grace)
    fifo = trusted_dir / "fifo"
    stubborn = trusted_dir / "stubborn"
    spec = holder_hook(trusted_dir, f"echo > {fifo}")
    other = HookSpec(
        name="stubborn",
        source="native",
        pre=[str(write_script(trusted_dir, "pre", f"sleep 60 & echo $! > {stubborn}"))],
        post=None,
        timeout=5,
    )
    phases = HookPhases([spec, other])
    fired = threading.Event()

    def end_holds(reason: str) -> None:
        phases.run_owed(only_finished=True)
        fired.set()

    with Watchdog(0.5, end_holds) as watchdog:
        phases.run_pres(on_quiesced=watchdog.hold_started, expired=lambda: False)
        holder, sleeper = int((trusted_dir / "pid").read_text()), int(stubborn.read_text())
        started = time.monotonic()
        assert fired.wait(0.5 + grace + 0.3 + 2 * processes.KILL_GRACE + 1.0)
        assert time.monotonic() - started < 0.5 + grace + 0.3 + 1.5
    assert watchdog.fired == "deadline"
    assert (trusted_dir / "trace").read_text() == "released\n", "the thaw script did not run"
    assert process_gone(holder) and process_gone(sleeper)
    [post] = phases.take_unreported()
    assert post["ok"] and "ended:" not in post["stderr"]
